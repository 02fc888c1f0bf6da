"""The ClickHouse sink: Kafka records to ClickHouse rows, in batches, idempotently.

    sink = ClickHouseSink(client, max_rows=50_000, max_delay_s=1.0)
    sink.add(topic, partition, offset, decoded.record_type, decoded.record)
    if sink.due(time.monotonic()):
        result = sink.flush()        # raises SinkBackpressure when ClickHouse fails
        commit(result.offsets)       # (topic, partition) -> next offset

`rows` maps records to columns per table, `writer` batches and inserts them, `consumer` is
the process loop on a Kafka consumer (`twin sink`).
"""

from __future__ import annotations

from pipeline.sink.rows import MAPPINGS, TableRows, TableSpec, table_of
from pipeline.sink.writer import ClickHouseSink, FlushResult, SinkBackpressure, SinkError

__all__ = [
    "MAPPINGS",
    "ClickHouseSink",
    "FlushResult",
    "SinkBackpressure",
    "SinkError",
    "TableRows",
    "TableSpec",
    "table_of",
]
