"""Batched, idempotent writes of Kafka records to ClickHouse.

Records are buffered per table and topic. A flush seals the buffer into a batch and inserts
it, one insert per (table, topic), each with a deduplication token naming the offsets the
batch holds (`batch_token`: the topic and, per partition, the first and last offset). When an
insert fails, the batch stays sealed, exactly as it was: the next flush retries the inserts
that have not succeeded with the same rows and the same tokens, so an insert that did reach
ClickHouse before the failure was reported is dropped as a duplicate instead of stored twice.
Records added meanwhile go to a new buffer, flushed after the sealed batch.

Offsets are reported for committing only once every insert of their batch succeeded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from pipeline.clickhouse import batch_token, insert_rows
from pipeline.errors import ClickHouseError, TwinError
from pipeline.sink import metrics
from pipeline.sink.rows import MAPPINGS, Mapping, TableRows

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]


class SinkError(TwinError):
    """A record the sink cannot store (unknown record type, rows ClickHouse cannot take)."""


class SinkBackpressure(TwinError):
    """ClickHouse failed an insert: nothing was lost, the batch is kept for a retry.

    The caller should stop consuming (pause its partitions), wait `retry_after_s` and call
    `flush()` again. The hint doubles with every consecutive failure, up to a bound.
    """

    def __init__(self, retry_after_s: float, reason: str) -> None:
        super().__init__(f"ClickHouse insert failed, retrying in {retry_after_s:g} s: {reason}")
        self.retry_after_s = retry_after_s
        self.reason = reason


@dataclass
class FlushResult:
    """What a flush stored."""

    offsets: dict[TopicPartitionKey, int] = field(default_factory=dict)
    """(topic, partition) -> the next offset to commit: every message before it is stored."""
    rows: dict[str, int] = field(default_factory=dict)
    """table -> rows inserted."""

    @property
    def empty(self) -> bool:
        return not self.offsets


class _Batch:
    """Buffered rows per (table, topic) and the offsets they came from."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], TableRows] = {}
        self.ranges: dict[str, dict[int, list[int]]] = {}
        self.rows = 0
        self.started: float | None = None
        self.inserted: set[tuple[str, str]] = set()
        """(table, topic) inserts that succeeded (not repeated when the batch is retried)."""

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def note(self, topic: str, partition: int, offset: int) -> None:
        span = self.ranges.setdefault(topic, {}).get(partition)
        if span is None:
            self.ranges[topic][partition] = [offset, offset]
        else:
            span[0] = min(span[0], offset)
            span[1] = max(span[1], offset)

    def token(self, topic: str) -> str:
        return batch_token(
            topic, {p: (first, last) for p, (first, last) in self.ranges[topic].items()}
        )

    def offsets(self) -> dict[TopicPartitionKey, int]:
        return {
            (topic, partition): last + 1
            for topic, spans in self.ranges.items()
            for partition, (_first, last) in spans.items()
        }


class ClickHouseSink:
    """Buffers records and inserts them in batches bounded by rows and time.

    `add` records (or `skip` messages that hold none), ask `due(now)` and `flush()`; commit
    the offsets the flush returns. A flush that fails raises `SinkBackpressure` and keeps
    everything for the next flush.
    """

    def __init__(
        self,
        client: Client,
        max_rows: int = 50_000,
        max_delay_s: float = 1.0,
        *,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_rows < 1 or max_delay_s < 0:
            raise SinkError("max_rows must be at least 1 and max_delay_s not negative")
        self.client = client
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._open = _Batch()
        self._sealed: _Batch | None = None
        self._failures = 0
        self._retry_at = 0.0

    @property
    def buffered_rows(self) -> int:
        """Rows held, sealed or not."""
        return self._open.rows + (self._sealed.rows if self._sealed else 0)

    @property
    def open_rows(self) -> int:
        """Rows buffered since the last flush began (what `due` weighs against max_rows)."""
        return self._open.rows

    @property
    def holding(self) -> bool:
        """Whether anything (rows or offsets) waits to be flushed."""
        return bool(self._open) or self._sealed is not None

    @property
    def retrying(self) -> bool:
        """Whether a failed batch waits for its retry."""
        return self._sealed is not None

    def add(self, topic: str, partition: int, offset: int, record_type: str, record: Any) -> None:
        """Buffer the rows of one record read from `topic`/`partition` at `offset`."""
        mapping: Mapping | None = MAPPINGS.get(record_type)
        if mapping is None:
            raise SinkError(
                f"{topic}[{partition}]@{offset}: the sink does not store {record_type} records"
            )
        batch = self._open
        rows = self._buffer(mapping, topic)
        before, listed = rows.rows, len(rows.columns[0])
        try:
            mapping.append(rows, record, topic, partition, offset)
        except (KeyError, TypeError) as exc:
            # Cut the partly appended record off again: columns must stay aligned.
            for column in rows.columns:
                del column[listed:]
            rows.rows = before
            raise SinkError(
                f"{topic}[{partition}]@{offset}: {record_type} record lacks {exc}"
            ) from exc
        batch.rows += rows.rows - before
        batch.note(topic, partition, offset)

    def _buffer(self, mapping: Mapping, topic: str) -> TableRows:
        """The open batch's rows of `mapping`'s table read from `topic` (the batch starts
        its clock with its first rows)."""
        batch = self._open
        if batch.started is None:
            batch.started = self._clock()
        key = (mapping.table.name, topic)
        rows = batch.tables.get(key)
        if rows is None:
            rows = batch.tables[key] = TableRows(mapping.table)
        return rows

    def add_table(
        self, topic: str, record_type: str, table: pa.Table, messages: Iterable[tuple[int, int]]
    ) -> None:
        """Buffer rows already built as an arrow table (e.g. `rows.readings_table`): those
        of the records read from `topic` at the (partition, offset) of `messages`, in order,
        as `add` of each record would have appended them."""
        mapping: Mapping | None = MAPPINGS.get(record_type)
        if mapping is None:
            raise SinkError(f"{topic}: the sink does not store {record_type} records")
        batch = self._open
        rows = self._buffer(mapping, topic)
        try:
            rows.extend(table)
        except ValueError as exc:
            raise SinkError(f"{topic}: {exc}") from exc
        batch.rows += table.num_rows
        for partition, offset in messages:
            batch.note(topic, partition, offset)

    def skip(self, topic: str, partition: int, offset: int) -> None:
        """Count a message that yields no rows (e.g. undecodable) as processed, so that its
        offset is committed with the next flush."""
        if self._open.started is None:
            self._open.started = self._clock()
        self._open.note(topic, partition, offset)

    def due(self, now: float) -> bool:
        """Whether a flush should run now: a failed batch's retry time has come, the buffer
        reached `max_rows`, or its oldest record waited `max_delay_s`."""
        if self._sealed is not None:
            return now >= self._retry_at
        if self._open.rows >= self.max_rows:
            return True
        started = self._open.started
        return started is not None and now - started >= self.max_delay_s

    def flush(self) -> FlushResult:
        """Insert one batch: the failed one if there is one, else everything buffered.

        Returns the offsets to commit and the rows inserted; raises `SinkBackpressure` when
        ClickHouse fails (the batch is kept, `flush()` later retries it).
        """
        if self._sealed is None:
            if not self._open:
                return FlushResult()
            self._sealed, self._open = self._open, _Batch()
        batch = self._sealed
        result = FlushResult()
        for (table, topic), rows in batch.tables.items():
            if (table, topic) in batch.inserted:
                continue
            self._insert(batch, table, topic, rows)
            batch.inserted.add((table, topic))
        for (table, _topic), rows in batch.tables.items():
            result.rows[table] = result.rows.get(table, 0) + rows.rows
        result.offsets = batch.offsets()
        self._sealed = None
        self._failures = 0
        return result

    def discard(self) -> int:
        """Drop everything held, uncommitted (e.g. partitions were revoked while ClickHouse
        is down: their next owner reads the messages again). The rows dropped."""
        dropped = self.buffered_rows
        self._open = _Batch()
        self._sealed = None
        self._failures = 0
        return dropped

    def _insert(self, batch: _Batch, table: str, topic: str, rows: TableRows) -> None:
        try:
            data = rows.arrow()
        except ValueError as exc:
            raise SinkError(f"rows for {table} from {batch.token(topic)}: {exc}") from exc
        token = batch.token(topic)
        started = time.perf_counter()
        try:
            insert_rows(self.client, table, rows.spec.column_names, data, token)
        except ClickHouseError as exc:
            metrics.INSERT_FAILURES.labels(table=table).inc()
            self._failures += 1
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (self._failures - 1))
            self._retry_at = self._clock() + delay
            log.warning(
                "sink: insert of %d rows into %s (%s) failed: %s", rows.rows, table, token, exc
            )
            raise SinkBackpressure(delay, str(exc)) from exc
        metrics.INSERT_SECONDS.labels(table=table).observe(time.perf_counter() - started)
        metrics.ROWS_WRITTEN.labels(table=table).inc(rows.rows)
