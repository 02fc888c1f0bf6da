"""FramePublisher: the `FrameSink` that carries a connector's frames into Kafka.

`submit()` gives the frame its header (asset_id, source_id, the source's next `seq`,
ingest_ts), encodes it (Avro, Confluent wire format) and appends it to the durable spool;
`dead_letter()` does the same for a `dead_letter` record. Neither touches the network.
`tick()` (called every few milliseconds by `run()`) does the Kafka side, in the event loop's
thread, so no locks are needed:

1. serve delivery reports (`poll`): a confirmed entry leaves the spool;
2. commit the spool (new entries become durable, confirmed ones are gone for good);
3. hand the oldest waiting entries to the producer, in spool order, keeping at most `window`
   unconfirmed messages in flight, so an outage piles up on disk, not in memory.

Failures and what happens:

- a delivery error: the entry stays in the spool; sending pauses until every message in
  flight is reported, then resumes from the head of the spool after a backoff, one probe
  message at a time until Kafka confirms one again;
- a fatal producer error (e.g. the broker forgot the idempotent producer's state after a
  restart: UNKNOWN_PRODUCER_ID, OUT_OF_ORDER_SEQUENCE_NUMBER), or no delivery confirmation
  for `stall_s` seconds (librdkafka can retry such a producer forever without reporting
  anything): the producer is purged and re-created and the spool is sent again from its
  head.

Frames are therefore delivered at least once and, per partition (so per asset), in the
order they were read. A frame sent again after a stall or a fatal error may already have
been written once; such a duplicate carries the same (source_id, seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from connectors import metrics
from connectors.spool import Spool, SpoolEntry
from pipeline.errors import SerdeError
from pipeline.kafka.clients import producer as kafka_producer
from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.site import Site

log = logging.getLogger(__name__)

# Delivery is bounded by the stall check below, not by librdkafka's message timeout: a
# message that times out inside the idempotent producer can only be retried out of order.
PRODUCER_OVERRIDES: dict[str, Any] = {
    "message.timeout.ms": 0,  # infinite
    # Topics come from `twin topics create` with the site's partitions and retention; a
    # producer must not create them with the broker's defaults (e.g. after a broker restart).
    "allow.auto.create.topics": False,
}


class _LibrdkafkaLog(logging.LoggerAdapter[logging.Logger]):
    """librdkafka's own log lines, at debug level: during an outage it logs every connection
    attempt; the publisher reports the outage itself, once, through the error callback."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


LIBRDKAFKA_LOG = _LibrdkafkaLog(logging.getLogger("connectors.librdkafka"), {})
DEFAULT_WINDOW = 1000
DEFAULT_STALL_S = 5.0
TICK_S = 0.01
_PURGED = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}
_UNKNOWN_TOPIC = {KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART}
_BACKOFF_MAX_S = 10.0

ProducerFactory = Callable[[dict[str, Any]], Producer]


class FramePublisher:
    """Spools, numbers, encodes and delivers one source's frames and dead letters."""

    def __init__(
        self,
        settings: Settings,
        site: Site,
        source_id: str,
        kind: str,
        spool: Spool,
        serde: AvroSerde | None = None,
        window: int = DEFAULT_WINDOW,
        stall_s: float = DEFAULT_STALL_S,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        self.source_id = source_id
        self.kind = kind
        self.stage = f"connect-{kind}"
        self.spool = spool
        self.raw_topic = site.topic("telemetry.raw")
        self.deadletter_topic = site.topic("telemetry.deadletter")
        self.window = max(1, window)
        self.stall_s = stall_s
        self._serde = serde if serde is not None else AvroSerde.from_settings(settings)
        self._producer_config = {**PRODUCER_OVERRIDES, **(producer_config or {})}
        self._settings = settings
        self._generation = 0
        self._producer: Producer | None = None
        self._inflight: dict[int, tuple[SpoolEntry, float]] = {}  # insertion = send order
        self._confirmed: list[SpoolEntry] = []
        self._last_sent = 0
        self._probe = False
        self._rewind = False
        self._resume_at = 0.0
        self._backoff = 0.5
        self._fatal: KafkaError | None = None
        self._available = True
        self._spooled_upto = spool.last_id()
        self._last_log: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._dropped_seen = 0
        # What this run did (the connector summary):
        self.frames = 0
        self.readings = 0
        self.dead_letters = 0
        self.delivered = 0
        self.delivered_readings = 0
        self.delivered_dead_letters = 0
        self.spooled = spool.recovered_frames
        self.publish_errors = 0
        self.producer_restarts = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        spool.pinned = self._inflight
        metrics.register_source(source_id)

    # -- FrameSink ----------------------------------------------------------------------------

    def submit(self, asset_id: str, readings: list[dict[str, Any]]) -> None:
        """Number, encode and spool one frame of `asset_id`; never blocks on Kafka."""
        seq = self.spool.take_seq()
        frame = {
            "asset_id": asset_id,
            "source_id": self.source_id,
            "seq": seq,
            "ingest_ts": datetime.now(UTC),
            "readings": readings,
        }
        try:
            value = self._serde.encode("telemetry_frame", frame, topic=self.raw_topic)
        except SerdeError as exc:
            # A frame the contract cannot carry is a defect, never silently lost: its seq
            # and content go to the dead-letter topic.
            payload = json.dumps(frame, default=str).encode("utf-8")
            self.dead_letter(str(exc), "schema_mismatch", payload, self.raw_topic, asset_id, seq)
            return
        entry_id = self.spool.append(self.raw_topic, asset_id.encode(), value, seq, len(readings))
        self.frames += 1
        self.readings += len(readings)
        self.first_seq = seq if self.first_seq is None else self.first_seq
        self.last_seq = seq
        metrics.FRAMES_READ.labels(source_id=self.source_id).inc()
        if entry_id is not None and not self._available:
            self.spooled += 1
            self._spooled_upto = entry_id
        self._wake.set()

    def dead_letter(
        self,
        reason: str,
        reason_code: str,
        payload: bytes,
        origin_topic: str,
        asset_id: str | None = None,
        seq: int | None = None,
    ) -> None:
        """Spool a `dead_letter` record with the original bytes and why they were rejected."""
        record = {
            "reason": reason,
            "reason_code": reason_code,
            "stage": self.stage,
            "origin_topic": origin_topic,
            "origin_partition": None,
            "origin_offset": None,
            "origin_key": None,
            "payload": bytes(payload),
            "asset_id": asset_id,
            "source_id": self.source_id,
            "seq": seq,
            "detected_ts": datetime.now(UTC),
        }
        value = self._serde.encode("dead_letter", record, topic=self.deadletter_topic)
        key = asset_id.encode() if asset_id else None
        self.spool.append(self.deadletter_topic, key, value, None)
        self.dead_letters += 1
        metrics.DEAD_LETTERS.labels(source_id=self.source_id).inc()
        self._wake.set()

    # -- the Kafka side -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver from the spool until `stop` is set (then `drain()` and `close()`)."""
        while not stop.is_set():
            self.tick()
            if self._inflight or self._rewind or self._wake.is_set():
                await asyncio.sleep(TICK_S)
            else:
                # Idle: wake on the next submit, or in a while to serve librdkafka's events.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.1)
        self.tick()

    async def drain(self, timeout_s: float) -> bool:
        """Deliver what the spool holds, for at most `timeout_s`; True when it is empty."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.tick()
            if self.spool.depth == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(TICK_S)

    def tick(self) -> None:
        """Serve delivery reports, commit the spool and send the next entries in order."""
        self._wake.clear()
        producer = self._ensure_producer()
        producer.poll(0)
        if self._confirmed:
            self.spool.remove(self._confirmed)
            self._confirmed.clear()
        self.spool.commit()
        now = time.monotonic()
        if self._fatal is not None:
            error, self._fatal = self._fatal, None
            self._restart_producer(f"fatal producer error: {error.str()}")
        elif self._inflight:
            _entry, sent = next(iter(self._inflight.values()))
            if now - sent > self.stall_s:
                self._mark_unavailable()
                self._restart_producer(
                    f"no delivery confirmation for {self.stall_s:g}s (Kafka unreachable, a "
                    "topic missing, or the broker lost the producer's state)"
                )
        if self._rewind:
            if self._inflight or now < self._resume_at:
                self._update_gauges()
                return
            self._rewind = False
            self._last_sent = 0
            self._probe = True
        self._send(now)
        self._update_gauges()

    def close(self) -> None:
        """Stop the producer; what it did not confirm stays in the spool for the next start."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.poll(0)
            self._generation += 1  # reports of purged messages are not deliveries
            _discard(producer)
            if self._confirmed:
                self.spool.remove(self._confirmed)
                self._confirmed.clear()
        self._inflight.clear()
        self._update_gauges()
        self.spool.close()

    # -- internals ----------------------------------------------------------------------------

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            self._producer = kafka_producer(
                self._settings,
                error_cb=self._on_error,
                logger=LIBRDKAFKA_LOG,
                **self._producer_config,
            )
        return self._producer

    def _send(self, now: float) -> None:
        # A probe (after a failure) is one message alone in flight, until Kafka confirms it.
        probe_room = 0 if self._inflight else 1
        room = probe_room if self._probe else self.window - len(self._inflight)
        if room <= 0:
            return
        producer = self._ensure_producer()
        generation = self._generation
        for entry in self.spool.pending(self._last_sent, room):
            try:
                producer.produce(
                    entry.topic,
                    entry.value,
                    entry.key,
                    on_delivery=functools.partial(self._on_delivery, generation, entry),
                )
            except BufferError:
                break  # librdkafka's own queue is full: the rest waits in the spool
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal():
                    self._fatal = error
                else:
                    self._note_error(error)
                break
            self._inflight[entry.id] = (entry, now)
            self._last_sent = entry.id

    def _on_delivery(
        self, generation: int, entry: SpoolEntry, err: KafkaError | None, _msg: object
    ) -> None:
        if generation != self._generation:
            return  # a report from a producer that was purged and replaced
        self._inflight.pop(entry.id, None)
        if err is None:
            self._confirmed.append(entry)
            self._available = True
            self._probe = False
            self._backoff = 0.5
            if entry.is_frame:
                self.delivered += 1
                self.delivered_readings += entry.readings
                metrics.FRAMES_PUBLISHED.labels(source_id=self.source_id).inc()
                metrics.READINGS_PUBLISHED.labels(source_id=self.source_id).inc(entry.readings)
            else:
                self.delivered_dead_letters += 1
            return
        if err.code() in _PURGED:
            return
        if err.fatal():
            self._fatal = err
        self._note_error(err, entry.topic)

    def _note_error(self, err: KafkaError, topic: str | None = None) -> None:
        self.publish_errors += 1
        metrics.PUBLISH_ERRORS.labels(source_id=self.source_id).inc()
        self._mark_unavailable()
        if not self._rewind:
            self._rewind = True
            self._resume_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX_S)
        if err.code() in _UNKNOWN_TOPIC:
            self._log(
                "topic",
                logging.ERROR,
                "topic %s does not exist on %s; create it with `twin topics create` "
                "(frames wait in the spool)",
                topic,
                self._settings.kafka_bootstrap,
            )
        else:
            self._log("delivery", logging.WARNING, "delivery failed, will resend: %s", err.str())

    def _on_error(self, err: KafkaError) -> None:
        # librdkafka's error callback, served by poll() in this thread.
        if err.fatal():
            self._fatal = err
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._mark_unavailable()
            self._log(
                "down",
                logging.WARNING,
                "Kafka at %s is unreachable; frames wait in the spool (%d waiting)",
                self._settings.kafka_bootstrap,
                self.spool.depth,
            )

    def _mark_unavailable(self) -> None:
        if self._available:
            self._available = False
            # Every frame waiting now waits because of Kafka; each is counted once.
            self.spooled += self.spool.frames_after(self._spooled_upto)
            self._spooled_upto = self.spool.last_id()

    def _restart_producer(self, why: str) -> None:
        self._log("restart", logging.WARNING, "re-creating the Kafka producer: %s", why)
        producer, self._producer = self._producer, None
        self._generation += 1
        if producer is not None:
            _discard(producer)
        self._inflight.clear()
        self._last_sent = 0
        self._probe = True
        self._rewind = False
        self.producer_restarts += 1
        metrics.PRODUCER_RESTARTS.labels(source_id=self.source_id).inc()

    def _update_gauges(self) -> None:
        metrics.SPOOL_DEPTH.labels(source_id=self.source_id).set(self.spool.depth)
        metrics.SPOOL_BYTES.labels(source_id=self.source_id).set(self.spool.size_bytes)
        if self.spool.dropped != self._dropped_seen:
            delta = self.spool.dropped - self._dropped_seen
            metrics.SPOOL_DROPPED.labels(source_id=self.source_id).inc(delta)
            self._dropped_seen = self.spool.dropped

    def _log(self, topic: str, level: int, message: str, *args: object) -> None:
        # At most one line per kind of trouble every 30 s: an outage must not flood the log.
        now = time.monotonic()
        if now - self._last_log.get(topic, -1e9) >= 30.0:
            self._last_log[topic] = now
            log.log(level, "%s: " + message, self.source_id, *args)


def _discard(producer: Producer) -> None:
    """Drop a producer without waiting for Kafka: purge what it holds, then close it."""
    try:
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.poll(0)
        producer.flush(0)
    except (KafkaException, RuntimeError) as exc:
        log.debug("purging the producer: %s", exc)
