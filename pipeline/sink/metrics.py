"""Prometheus metrics of the ClickHouse sink.

`twin sink --metrics-port P` serves them on http://127.0.0.1:P/metrics; a process that runs
the sink among other things serves them with its own endpoint (same registry).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INSERT_SECONDS = Histogram(
    "twin_sink_insert_seconds",
    "Time of one ClickHouse insert of the sink (one table, one topic, one batch)",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
INSERT_FAILURES = Counter(
    "twin_sink_insert_failures",
    "ClickHouse inserts that failed (the batch is kept and retried with the same token)",
    ["table"],
)
ROWS_WRITTEN = Counter(
    "twin_sink_rows_written",
    "Rows sent to ClickHouse in successful inserts (a replay dropped by deduplication counts)",
    ["table"],
)
RECORDS_CONSUMED = Counter(
    "twin_sink_records_consumed",
    "Kafka records the sink read and decoded, by topic",
    ["topic"],
)
RECORDS_UNDECODABLE = Counter(
    "twin_sink_records_undecodable",
    "Kafka messages the sink could not decode or store (skipped, logged with their offset)",
    ["topic"],
)
BACKPRESSURE_PAUSES = Counter(
    "twin_sink_backpressure_pauses",
    "Times the sink paused consumption because ClickHouse failed",
)
CONSUMER_LAG = Gauge(
    "twin_sink_consumer_lag",
    "Messages between the last committed offset and the end of the partition",
    ["topic", "partition"],
)
