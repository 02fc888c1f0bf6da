"""The ClickHouse sink against the real ClickHouse engine (chDB in tmp_path): every record
type lands in its table, replays are dropped, and a failing ClickHouse loses nothing.

chDB hosts one data path per process at a time, so each test opens its own client and
closes it before it ends (the `db` fixture).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from pipeline.clickhouse import migrate, open_client
from pipeline.serde.examples import T0, example
from pipeline.sink import ClickHouseSink, SinkBackpressure

pytestmark = pytest.mark.integration

# Rows older than their table's retention are dropped as they are inserted: shift the
# examples' timestamps to a recent past.
SHIFT = (datetime.now(UTC) - timedelta(minutes=30)).replace(microsecond=0) - T0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Client]:
    client = open_client(f"chdb://{tmp_path / 'clickhouse'}", create_database=True)
    try:
        migrate(client)
        yield client
    finally:
        client.close()


def recent(record: Any) -> Any:
    """`record` with every datetime moved by SHIFT."""
    if isinstance(record, datetime):
        return record + SHIFT
    if isinstance(record, dict):
        return {k: recent(v) for k, v in record.items()}
    if isinstance(record, list):
        return [recent(v) for v in record]
    return record


def frame(seq: int, readings: int = 3) -> dict[str, Any]:
    base = recent(example("validated_frame"))
    base["seq"] = seq
    template = base["readings"][0]
    base["readings"] = [
        {**template, "signal": f"s{i}", "value": float(seq * 100 + i)} for i in range(readings)
    ]
    return base


def scalar(client: Client, sql: str) -> Any:
    return client.query(sql).result_rows[0][0]


def test_every_record_type_is_stored_in_its_table(db: Client) -> None:
    sink = ClickHouseSink(db)
    types = {
        "validated_frame": "readings",
        "state_estimate": "states",
        "anomaly_score": "anomalies",
        "kpi_window": "kpi_windows",
        "alert_event": "alerts",
        "dead_letter": "dead_letters",
    }
    for offset, record_type in enumerate(types):
        sink.add(f"t.{record_type}", 1, 40 + offset, record_type, recent(example(record_type)))
    result = sink.flush()
    assert result.rows == {
        "readings": 3, "states": 2, "anomalies": 1, "kpi_windows": 1, "alerts": 1,
        "dead_letters": 1,
    }  # fmt: skip
    assert result.offsets == {(f"t.{rt}", 1): 41 + i for i, rt in enumerate(types)}
    for table, expected in result.rows.items():
        assert scalar(db, f"SELECT count() FROM {table}") == expected, table

    reading = db.query(
        "SELECT ts, value, quality, flags, seq, validated_ts, origin_topic, origin_partition, "
        "origin_offset FROM readings WHERE signal = 'motor_current'"
    ).result_rows
    source = recent(example("validated_frame"))
    assert reading == [
        (source["readings"][2]["ts"], 31.2, "UNCERTAIN", ["DEVICE_UNCERTAIN"], 48213,
         source["validated_ts"], "t.validated_frame", 1, 40),
    ]  # fmt: skip
    assert db.query("SELECT signal, nis, measured FROM states ORDER BY signal").result_rows == [
        ("hydraulic_pressure", 1.8, True),
        ("oil_temp", None, False),
    ]
    assert db.query(
        "SELECT contributors.signal, contributors.weight FROM anomalies"
    ).result_rows == [(["hydraulic_pressure", "motor_current"], [0.61, 0.27])]
    assert db.query(
        "SELECT window_start, oee, signals.p95, parts_good FROM kpi_windows_latest"
    ).result_rows == [(recent(example("kpi_window"))["window_start"], 0.7497, [190.1], 1350)]
    assert db.query("SELECT alert_id, context FROM alerts_open").result_rows == [
        ("press-01/oil-temp-high", {"line_id": "line-1", "clear_below": "67.0"})
    ]
    letter = example("dead_letter")
    assert db.query(
        "SELECT reason_code, origin_offset, origin_key, hex(payload), seq FROM dead_letters"
    ).result_rows == [("undecodable", 918273, "press-01", letter["payload"].hex().upper(), None)]


def test_a_replayed_batch_is_stored_once(db: Client) -> None:
    frames = [frame(seq) for seq in range(10)]
    first = ClickHouseSink(db)
    for offset, record in enumerate(frames):
        first.add("plant.telemetry.valid", 0, offset, "validated_frame", record)
    assert first.flush().rows == {"readings": 30}
    # The same offsets again (e.g. read again because the commit did not happen): the
    # token is the same, so ClickHouse drops the insert, in readings and in the rollups.
    replay = ClickHouseSink(db)
    for offset, record in enumerate(frames):
        replay.add("plant.telemetry.valid", 0, offset, "validated_frame", record)
    assert replay.flush().offsets == {("plant.telemetry.valid", 0): 10}
    assert scalar(db, "SELECT count() FROM readings") == 30
    assert scalar(db, "SELECT sum(count_all) FROM readings_1m") == 30


def test_failed_insert_keeps_the_batch_and_retries_it_with_the_same_token(db: Client) -> None:
    sink = ClickHouseSink(db, backoff_s=0.25)
    for offset in range(5):
        sink.add("valid", 2, 100 + offset, "validated_frame", frame(offset))
    sink.add("state", 2, 7, "state_estimate", recent(example("state_estimate")))
    db.command("RENAME TABLE readings TO readings_away")
    try:
        with pytest.raises(SinkBackpressure) as first:
            sink.flush()
        with pytest.raises(SinkBackpressure) as second:
            sink.flush()
        assert second.value.retry_after_s == 2 * first.value.retry_after_s
        assert "readings" in second.value.reason
        # Records keep arriving during the outage; they wait behind the failed batch.
        sink.add("valid", 2, 105, "validated_frame", frame(5))
        assert sink.retrying and sink.buffered_rows == 15 + 2 + 3
    finally:
        db.command("RENAME TABLE readings_away TO readings")

    retried = sink.flush()
    assert retried.offsets == {("valid", 2): 105, ("state", 2): 8}
    assert retried.rows == {"readings": 15, "states": 2}
    later = sink.flush()
    assert later.offsets == {("valid", 2): 106} and later.rows == {"readings": 3}
    assert not sink.holding
    assert scalar(db, "SELECT count() FROM readings") == 18
    # Whichever insert happened first (states may have gone through before readings
    # failed), each row is stored once.
    assert scalar(db, "SELECT count() FROM states") == 2


def test_a_closed_client_is_backpressure_too(tmp_path: Path) -> None:
    client = open_client(f"chdb://{tmp_path / 'clickhouse'}", create_database=True)
    try:
        migrate(client)
        sink = ClickHouseSink(client)
        sink.add("valid", 0, 0, "validated_frame", frame(0))
    finally:
        client.close()
    with pytest.raises(SinkBackpressure, match="closed"):
        sink.flush()
    assert sink.retrying and sink.buffered_rows == 3
