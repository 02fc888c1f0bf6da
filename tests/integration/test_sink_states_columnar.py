"""The sink's columnar path for state estimates end to end: estimates read from the session's
real broker are stored in the real ClickHouse engine exactly as the one-by-one rows (null,
-0.0 and NaN included), a corrupt message among them is skipped, counted and committed past,
and inserts stay near max_rows."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.sink.consumer import SinkOptions, SinkProcess, sink_consumer
from pipeline.sink.rows import MAPPINGS, STATES
from tests.integration.test_sink_columnar import RecordingSink, read_back, stored_rows
from tests.integration.test_sink_kafka import PARTITIONS, committed, db, publish, site
from tests.unit.test_sink_columnar import same_tables

__all__ = ["db", "site"]  # fixtures

ESTIMATES = 80
MAX_ROWS = 300
LARGEST = 19  # signals in an estimate, at most (as many as a bench asset reports)
START = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def estimate(seq: int, rng: random.Random) -> dict[str, Any]:
    """A state estimate of recent event time (the table keeps 90 days), signals named once
    each: rows are compared in (partition, offset, signal) order."""
    return {
        "asset_id": f"press-{seq % 5:02d}",
        "source_id": "bench-gateway",
        "seq": seq,
        "ts": START + timedelta(milliseconds=seq),
        "ingest_ts": START + timedelta(milliseconds=seq, microseconds=7),
        "signals": [signal_state(k, rng) for k in range(rng.choice([0, 1, 7, LARGEST]))],
    }


def signal_state(k: int, rng: random.Random) -> dict[str, Any]:
    def number() -> float:
        return rng.choice([rng.gauss(0, 1e3), float("nan"), -0.0, float("inf")])

    def optional() -> float | None:
        return rng.choice([None, rng.gauss(0, 3), -0.0])

    return {
        "signal": f"signal_{k:02d}",
        "value": number(),
        "rate": number(),
        "variance": abs(rng.gauss(0, 1)),
        "rate_variance": abs(rng.gauss(0, 1)),
        "innovation": optional(),
        "nis": optional(),
        "outlier": rng.random() < 0.2,
        "measured": rng.random() < 0.8,
    }


def test_state_estimates_are_stored_as_one_by_one_and_a_corrupt_one_skipped(
    site: tuple[Settings, str], db: Client
) -> None:
    settings, prefix = site
    serde = AvroSerde.local()
    topic = prefix + "twin.state"
    rng = random.Random(6)
    records = [estimate(seq, rng) for seq in range(ESTIMATES)]
    # A real NaN innovation does not read back as columns (States holds null as NaN): it is
    # stored one by one, as NaN.
    records[ESTIMATES // 3]["signals"] = [{**signal_state(0, rng), "innovation": float("nan")}]
    values = [serde.encode("state_estimate", r, topic) for r in records]
    corrupt = values[ESTIMATES // 2][:-5]
    keyed = [(r["asset_id"].encode(), v) for r, v in zip(records, values, strict=True)]
    keyed.insert(ESTIMATES // 2, (b"press-00", corrupt))
    ends = publish(settings, topic, keyed)

    options = SinkOptions(
        topics=(topic,), mode="assign", max_rows=MAX_ROWS, max_delay_s=0.2, idle_exit_s=2.0,
        duration_s=120.0,
    )  # fmt: skip
    sink = RecordingSink(db, MAX_ROWS, 0.2)
    summary = SinkProcess(sink_consumer(settings), sink, serde, options).run()

    assert summary.records == {topic: ESTIMATES}
    assert summary.undecodable == {topic: 1}
    assert committed(settings, topic) == ends
    assert len(ends) == PARTITIONS
    total = sum(len(r["signals"]) for r in records)
    # A flush as soon as max_rows is reached: no insert holds an estimate's worth more.
    assert sum(sink.flushed) == total
    assert max(sink.flushed) < MAX_ROWS + LARGEST
    assert len(sink.flushed) >= total // (MAX_ROWS + LARGEST)

    expected = read_back(settings, topic, ESTIMATES + 1, MAPPINGS["state_estimate"], corrupt)
    got = stored_rows(db, STATES)
    assert got.num_rows == expected.num_rows == total
    same_tables(got, expected)
    innovation = got.column("innovation")
    assert innovation.null_count > 0 and any(x != x for x in innovation.to_pylist())
