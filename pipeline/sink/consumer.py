"""The sink process: consume the pipeline's output topics and store them in ClickHouse.

A plain confluent-kafka consumer (not Faust), so that commits are exact: offsets are
committed synchronously, and only those a successful flush returned. When ClickHouse fails,
the assigned partitions are paused (backpressure: the broker keeps the messages), the
failed batch is retried after the writer's backoff hint, and consumption resumes once it is
stored. Before partitions are given up in a rebalance, everything buffered is flushed and
committed. Messages that cannot be decoded are counted, logged with topic, partition and
offset, and skipped (their offsets are committed with the next flush): bad data ends up on
the dead-letter topic, which the sink stores, so re-reading it forever helps no one.

The validated frames and the state estimates of a consume batch are decoded together, as
columns (`pipeline.serde.validated`, `pipeline.serde.states`), and their rows built as one
arrow table per kind (`rows.readings_table`, `rows.states_table`), the same rows as one by
one; every other message, and every record the columnar read cannot vouch for, is decoded
and appended one by one.

Partitions come from the consumer group `twinline-sink` (`subscribe`, several sink
processes share the topics) or are all assigned to this one process (`assign`, offsets are
still committed to the group). On the embedded broker a group join takes about half the
session timeout (measured: ~23 s with librdkafka's default 45 s, ~3 s with 6 s), so the
consumer uses a 6 s session timeout, the least a Kafka broker accepts by default.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from confluent_kafka import OFFSET_STORED, Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.errors import KafkaUnavailable, SerdeError, TwinError
from pipeline.kafka.clients import consumer as kafka_consumer
from pipeline.serde import AvroSerde
from pipeline.serde.states import StatesDecoder
from pipeline.serde.validated import ValidatedDecoder
from pipeline.settings import Settings
from pipeline.sink import metrics
from pipeline.sink.rows import MAPPINGS, readings_table, states_table
from pipeline.sink.writer import ClickHouseSink, FlushResult, SinkBackpressure
from pipeline.stages.frames import Ints

log = logging.getLogger(__name__)

GROUP_ID = "twinline-sink"
#: Logical topics the sink stores (each holds one record type of `rows.MAPPINGS`).
SINK_TOPICS = (
    "telemetry.valid",
    "twin.state",
    "twin.kpi",
    "telemetry.deadletter",
    "twin.anomaly",
    "twin.alerts",
)
Mode = Literal["subscribe", "assign"]
CONSUMER_SETTINGS: dict[str, Any] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1500,
    "enable.auto.offset.store": False,
}


@dataclass(frozen=True)
class SinkOptions:
    topics: tuple[str, ...]
    """Real (prefixed) topic names."""
    mode: Mode = "subscribe"
    group_id: str = GROUP_ID
    max_rows: int = 50_000
    max_delay_s: float = 1.0
    duration_s: float | None = None
    """Stop after this long (None: until stopped)."""
    idle_exit_s: float | None = None
    """Stop once nothing arrived for this long and everything read is stored and committed."""
    consume_batch: int = 5_000
    """Messages fetched per consume() call."""


@dataclass
class SinkSummary:
    mode: str
    records: dict[str, int] = field(default_factory=dict)
    """Records stored, by topic."""
    undecodable: dict[str, int] = field(default_factory=dict)
    """Messages skipped because they could not be decoded or stored, by topic."""
    rows: dict[str, int] = field(default_factory=dict)
    flushes: int = 0
    retries: int = 0
    """Flushes that failed and were retried (backpressure)."""
    commits: int = 0
    committed: dict[str, int] = field(default_factory=dict)
    """"topic[partition]" -> last committed offset (the next message to read)."""
    lag: int | None = None
    """Messages not yet committed at the end, over the assigned partitions (from the
    watermarks the fetches reported; None when unknown)."""
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "records": sum(self.records.values()),
            "records_by_topic": dict(self.records),
            "undecodable": dict(self.undecodable),
            "rows": dict(self.rows),
            "flushes": self.flushes,
            "retries": self.retries,
            "commits": self.commits,
            "committed": dict(self.committed),
            "lag": self.lag,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def sink_consumer(settings: Settings, group_id: str = GROUP_ID) -> Consumer:
    """A consumer for the sink: group `group_id`, manual commits and offset storage."""
    return kafka_consumer(settings, group_id, **CONSUMER_SETTINGS)


class SinkProcess:
    """Runs the consume -> buffer -> flush -> commit loop on one consumer and one sink."""

    def __init__(
        self,
        consumer: Consumer,
        sink: ClickHouseSink,
        serde: AvroSerde,
        options: SinkOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.sink = sink
        self.serde = serde
        self.options = options
        self._clock = clock
        self._stop = threading.Event()
        self._assigned: set[tuple[str, int]] = set()
        self._active = clock()
        self._joined = options.mode == "assign"
        self._records: Counter[str] = Counter()
        self._validated = ValidatedDecoder(serde)
        self._states = StatesDecoder(serde)
        self.summary = SinkSummary(mode=options.mode)

    def stop(self) -> None:
        """Ask the loop to finish: it flushes, commits and returns (safe from a signal
        handler or another thread)."""
        self._stop.set()

    def run(self) -> SinkSummary:
        """Consume until stopped, `duration_s` passed or (with `idle_exit_s`) caught up."""
        started = self._clock()
        self._start()
        try:
            while not self._stop.is_set() and not self._finished(started):
                messages = self.consumer.consume(self.options.consume_batch, timeout=0.1)
                self._take_batch(messages, self._clock())
                if messages:
                    self._active = self._clock()
                if self.sink.due(self._clock()):
                    self._flush_and_commit()
            self._flush_and_commit(final=True)
        finally:
            self.summary.lag = self._lag()
            self.summary.elapsed_s = self._clock() - started
            self.summary.records = dict(self._records)
            self.consumer.close()
        return self.summary

    def _start(self) -> None:
        topics = list(self.options.topics)
        if self.options.mode == "subscribe":
            self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
            return
        try:
            metadata = self.consumer.list_topics(timeout=15)
        except KafkaException as exc:
            raise KafkaUnavailable(f"Kafka did not answer: {exc.args[0].str()}") from exc
        missing = [t for t in topics if t not in metadata.topics]
        if missing:
            raise TwinError(f"sink: topic {missing[0]} does not exist (`twin topics create`)")
        # OFFSET_STORED: resume from the group's committed offset (earliest if none).
        partitions = [
            TopicPartition(t, p, OFFSET_STORED)
            for t in topics
            for p in metadata.topics[t].partitions
        ]
        self.consumer.assign(partitions)
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
        log.info("sink: assigned %d partitions of %d topics", len(partitions), len(topics))

    def _finished(self, started: float) -> bool:
        now = self._clock()
        if self.options.duration_s is not None and now - started >= self.options.duration_s:
            return True
        idle = self.options.idle_exit_s
        if idle is None or not self._joined or self.sink.holding:
            return False
        return now - self._active >= idle

    def _take_batch(self, messages: list[Any], now: float) -> None:
        """Take a consume batch in message order, flushing when due. The validated frames
        and the state estimates among the messages are decoded together as columns, and
        their rows added as runs of consecutive messages of one topic and one kind
        (`rows.readings_table`, `rows.states_table`: the rows `_take` would add); a run ends
        with the message that brings the buffer to max_rows, where a flush follows as it
        would after `_take`. Every other message, and every record the columnar read leaves
        out, goes through `_take` one by one."""
        values = [m.value() if m.error() is None else None for m in messages]
        frames = self._validated.decode(values)
        states = self._states.decode(values)
        runs = [
            _Run.of("validated_frame", messages, frames.rows, frames.frames.bounds,
                    partial(readings_table, frames.frames)),
            _Run.of("state_estimate", messages, states.rows, states.states.bounds,
                    partial(states_table, states.states)),
        ]  # fmt: skip
        run_of: list[_Run | None] = [None] * len(messages)
        for kind in runs:
            for k in kind.rows:
                run_of[k] = kind
        last: _Run | None = None
        for message, run in zip(messages, run_of, strict=True):
            if last is not None and (run is not last or not last.continues(message)):
                self._add_run(last, now)
            last = run
            if run is None:
                self._take(message)
                if self.sink.due(now):  # keeps batches near max_rows
                    self._flush_and_commit()
                continue
            run.end += 1
            if self.sink.open_rows + run.pending_rows() >= self.sink.max_rows:
                self._add_run(run, now)
        if last is not None:
            self._add_run(last, now)

    def _add_run(self, run: _Run, now: float) -> None:
        """Add the rows of the run's records taken but not added yet (then flush if due)."""
        start, end = run.start, run.end
        if start >= end:
            return
        run.start = end
        topic = run.messages[start].topic()
        first = run.bounds[start]
        self.sink.add_table(
            topic,
            run.record_type,
            run.table.slice(first, run.bounds[end] - first),
            [(m.partition(), m.offset()) for m in run.messages[start:end]],
        )
        self._records[topic] += end - start
        metrics.RECORDS_CONSUMED.labels(topic=topic).inc(end - start)
        if self.sink.due(now):
            self._flush_and_commit()

    def _take(self, message: Any) -> None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise TwinError(f"sink: consumer failed: {error.str()}")
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("sink: consumer error: %s", error.str())
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        try:
            decoded = self.serde.decode(message.value())
            if decoded.record_type not in MAPPINGS:
                raise SerdeError(f"{decoded.record_type} records are not stored by the sink")
            self.sink.add(topic, partition, offset, decoded.record_type, decoded.record)
        except TwinError as exc:  # SerdeError, SinkError: the message is bad, not the sink
            self.summary.undecodable[topic] = self.summary.undecodable.get(topic, 0) + 1
            metrics.RECORDS_UNDECODABLE.labels(topic=topic).inc()
            log.warning("sink: skipping %s[%d]@%d: %s", topic, partition, offset, exc)
            self.sink.skip(topic, partition, offset)
            return
        self._records[topic] += 1
        metrics.RECORDS_CONSUMED.labels(topic=topic).inc()

    def _flush_and_commit(self, final: bool = False) -> None:
        """Flush and commit; while ClickHouse fails, pause consumption and retry (until it
        succeeds, or until stopped: then what is not stored stays uncommitted)."""
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    result = self.sink.flush()
                except SinkBackpressure as exc:
                    self.summary.retries += 1
                    if not paused:
                        paused = self._pause()
                    log.warning("sink: %s", exc)
                    if self._stop.is_set():
                        if not final:
                            return  # the final flush makes the last attempt
                        log.warning(
                            "sink: stopping with %d rows not stored; their offsets stay "
                            "uncommitted and are read again", self.sink.buffered_rows
                        )  # fmt: skip
                        return
                    self._wait(exc.retry_after_s)
                    continue
                self._commit(result)
                if not (final and self.sink.holding):
                    return
        finally:
            if paused:
                self._resume(paused)

    def _pause(self) -> list[TopicPartition]:
        partitions = self.consumer.assignment()
        if partitions:
            self.consumer.pause(partitions)
        metrics.BACKPRESSURE_PAUSES.inc()
        log.warning("sink: paused %d partitions until ClickHouse takes inserts", len(partitions))
        return list(partitions)

    def _resume(self, partitions: list[TopicPartition]) -> None:
        current = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        still = [tp for tp in partitions if (tp.topic, tp.partition) in current]
        if still:
            self.consumer.resume(still)
        log.info("sink: resumed %d partitions", len(still))

    def _wait(self, seconds: float) -> None:
        """Wait while paused; polling keeps the group membership (and serves rebalances).
        A message fetched before the pause is buffered, not lost."""
        until = self._clock() + seconds
        while not self._stop.is_set() and self._clock() < until:
            message = self.consumer.poll(min(0.2, max(0.0, until - self._clock())))
            if message is not None:
                self._take(message)

    def _commit(self, result: FlushResult) -> None:
        if result.empty:
            return
        self.summary.flushes += 1
        for table, rows in result.rows.items():
            self.summary.rows[table] = self.summary.rows.get(table, 0) + rows
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(result.offsets.items())]
        try:
            committed = self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The rows are stored: a replay of these offsets is dropped or collapsed.
            log.warning("sink: commit failed (%s); the messages may be read again", exc)
            return
        self.summary.commits += 1
        for tp in committed or offsets:
            if tp.error is None:
                self.summary.committed[f"{tp.topic}[{tp.partition}]"] = tp.offset

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
        self._active = self._clock()
        self._joined = True
        log.info("sink: assigned %s", _names(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("sink: revoking %s: flushing first", _names(partitions))
        try:
            self._commit(self.sink.flush())
        except SinkBackpressure as exc:
            dropped = self.sink.discard()
            log.warning(
                "sink: %s; %d rows left uncommitted for the partitions' next owner", exc, dropped
            )
        self._assigned = set()

    def _lag(self) -> int | None:
        if not self._assigned:
            return None
        partitions = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        try:
            committed = self.consumer.committed(partitions, timeout=5)
        except KafkaException:
            return None
        total: int | None = None
        for tp in committed:
            # Cached: the watermarks the fetches reported (no extra request per partition).
            _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                continue
            lag = max(0, high - max(tp.offset, 0))
            metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
            total = (total or 0) + lag
        return total


@dataclass
class _Run:
    """The rows of the records of one kind (validated frames, state estimates) decoded as
    columns from a consume batch, added run by run."""

    record_type: str
    table: pa.Table
    """Every record's rows (`rows.readings_table`, `rows.states_table`)."""
    messages: list[Any]
    """The message of every record."""
    rows: list[int]
    """The index of every record's message in the consume batch."""
    bounds: list[int]
    """Record i's rows are table rows bounds[i]:bounds[i + 1]."""
    start: int = 0
    """The first record not added yet."""
    end: int = 0
    """The first record not taken yet (records start:end wait to be added)."""

    @classmethod
    def of(
        cls,
        record_type: str,
        batch: list[Any],
        rows: list[int],
        bounds: Ints,
        table: Callable[[list[str], Ints, Ints], pa.Table],
    ) -> _Run:
        """The run of the records read from batch[rows[i]]; `table` builds their rows from
        the topic, partition and offset of each record's message."""
        messages = [batch[k] for k in rows]
        partitions = np.array([m.partition() for m in messages], dtype=np.int64)
        offsets = np.array([m.offset() for m in messages], dtype=np.int64)
        rows_table = table([m.topic() for m in messages], partitions, offsets)
        return cls(record_type, rows_table, messages, rows, bounds.tolist())

    def pending_rows(self) -> int:
        """Rows of the records taken but not added yet."""
        return self.bounds[self.end] - self.bounds[self.start]

    def continues(self, message: Any) -> bool:
        """Whether the run's next record, from `message`, may join the records waiting to
        be added (none wait, or they are of the same topic)."""
        return self.start == self.end or self.messages[self.start].topic() == message.topic()


def _names(partitions: list[TopicPartition]) -> str:
    if len(partitions) > 8:
        return f"{len(partitions)} partitions of {len({tp.topic for tp in partitions})} topics"
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


def run_sink(
    settings: Settings,
    client: Client,
    options: SinkOptions,
    *,
    serde: AvroSerde | None = None,
    on_start: Callable[[SinkProcess], None] | None = None,
) -> SinkSummary:
    """Run the sink process loop against `settings`' Kafka and `client`'s ClickHouse.

    `on_start` receives the process before it starts (e.g. to wire `stop()` to a signal).
    """
    process = SinkProcess(
        sink_consumer(settings, options.group_id),
        ClickHouseSink(client, options.max_rows, options.max_delay_s),
        serde if serde is not None else AvroSerde.from_settings(settings),
        options,
    )
    if on_start is not None:
        on_start(process)
    return process.run()
