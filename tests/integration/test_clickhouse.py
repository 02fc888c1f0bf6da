"""The ClickHouse schema, its migrations, idempotent inserts and `twin db` / `twin sql`,
against the real ClickHouse engine (chDB, in-process).

chDB hosts one engine per process: a process can open a new data path only after closing
every client of the previous one, and a path held by one process cannot be opened by
another. So every test opens its own path under tmp_path and closes its client before it
ends (the `db` fixture), and the CLI runs in subprocesses while the test holds no client.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client

from pipeline import PROJECT_ROOT
from pipeline.clickhouse import (
    MIGRATIONS_DIR,
    batch_token,
    insert_rows,
    list_tables,
    migrate,
    migration_status,
    open_client,
    rebuild_rollups,
    run_query,
)
from pipeline.errors import ClickHouseError
from tests.conftest import run_twin

pytestmark = pytest.mark.integration

TABLES = {
    "schema_migrations": "MergeTree",
    "readings": "ReplacingMergeTree",
    "readings_1m": "AggregatingMergeTree",
    "readings_1h": "AggregatingMergeTree",
    "readings_1m_mv": "MaterializedView",
    "readings_1h_mv": "MaterializedView",
    "readings_1m_v": "View",
    "readings_1h_v": "View",
    "states": "ReplacingMergeTree",
    "anomalies": "ReplacingMergeTree",
    "kpi_windows": "ReplacingMergeTree",
    "kpi_windows_latest": "View",
    "alerts": "ReplacingMergeTree",
    "alerts_open": "View",
    "dead_letters": "ReplacingMergeTree",
}
READING_COLUMNS = [
    "asset_id", "signal", "ts", "value", "quality", "flags", "source_id", "seq",
    "ingest_ts", "validated_ts", "origin_topic", "origin_partition", "origin_offset",
]  # fmt: skip
# Recent enough to be inside every retention tier: older rows expire as they are inserted.
MINUTE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)


def dsn_of(path: Path) -> str:
    return f"chdb://{path}"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Client]:
    client = open_client(dsn_of(tmp_path / "clickhouse"), create_database=True)
    try:
        migrate(client)
        yield client
    finally:
        client.close()


def reading(
    signal: str, second: float, value: float, quality: str = "GOOD", seq: int = 1, **extra: Any
) -> dict[str, Any]:
    ts = MINUTE + timedelta(seconds=second)
    row = {
        "asset_id": "press-1",
        "signal": signal,
        "ts": ts,
        "value": value,
        "quality": quality,
        "flags": [] if quality == "GOOD" else ["OUT_OF_EXPECTED_RANGE"],
        "source_id": "opcua-line1",
        "seq": seq,
        "ingest_ts": ts + timedelta(milliseconds=5),
        "validated_ts": ts + timedelta(milliseconds=9),
        "origin_topic": "telemetry.valid",
        "origin_partition": 0,
        "origin_offset": seq,
    }
    row.update(extra)
    return row


def columnar(rows: list[dict[str, Any]], columns: list[str]) -> list[list[Any]]:
    return [[row[name] for row in rows] for name in columns]


def insert_readings(client: Client, rows: list[dict[str, Any]], token: str | None) -> int:
    return insert_rows(client, "readings", READING_COLUMNS, columnar(rows, READING_COLUMNS), token)


def scalar(client: Client, sql: str) -> Any:
    return run_query(client, sql)[1][0][0]


# --- migrations -------------------------------------------------------------------------


def test_migrate_creates_every_table_and_view_then_applies_nothing(db: Client) -> None:
    tables = {t.name: t.engine for t in list_tables(db)}
    assert tables == TABLES
    again = migrate(db)
    assert again.applied == ()
    assert [m.label for m in again.already_applied] == [
        "0001_readings",
        "0002_readings_rollups",
        "0003_states_anomalies",
        "0004_kpi_windows",
        "0005_alerts",
        "0006_dead_letters",
    ]
    assert scalar(db, "SELECT count() FROM schema_migrations") == 6
    assert {s.state for s in migration_status(db)} == {"applied"}


def test_changed_migration_file_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql"))[:2]:
        (directory / path.name).write_bytes(path.read_bytes())
    client = open_client(dsn_of(tmp_path / "clickhouse"))
    try:
        assert len(migrate(client, directory).applied) == 2
        changed = directory / "0002_readings_rollups.sql"
        changed.write_text(changed.read_text() + "\n-- an edit after it was applied\n")
        (directory / "0003_more.sql").write_text(
            "CREATE TABLE IF NOT EXISTS more (x Int8) ENGINE=Log"
        )
        with pytest.raises(ClickHouseError, match=r"0002_readings_rollups\.sql \(checksum"):
            migrate(client, directory)
        states = {s.version: s.state for s in migration_status(client, directory)}
        assert states == {1: "applied", 2: "changed", 3: "pending"}
        # Refused before anything was applied.
        assert "more" not in {t.name for t in list_tables(client)}
    finally:
        client.close()


def test_database_named_in_the_dsn_is_created_by_migrate_only(tmp_path: Path) -> None:
    dsn = f"{dsn_of(tmp_path / 'clickhouse')}?database=plant1"
    with pytest.raises(ClickHouseError, match="'plant1' does not exist"):
        open_client(dsn)
    client = open_client(dsn, create_database=True)
    try:
        migrate(client)
        assert scalar(client, "SELECT currentDatabase()") == "plant1"
        assert "readings" in {t.name for t in list_tables(client)}
    finally:
        client.close()


def test_a_second_data_path_waits_until_the_first_is_closed(tmp_path: Path) -> None:
    first = open_client(dsn_of(tmp_path / "one"))
    try:
        with pytest.raises(ClickHouseError, match="one process can hold one embedded data path"):
            open_client(dsn_of(tmp_path / "two"))
    finally:
        first.close()
    second = open_client(dsn_of(tmp_path / "two"))
    second.close()


# --- deduplication ----------------------------------------------------------------------


def test_replayed_batch_is_inserted_once(db: Client) -> None:
    batch = [reading("temp", s, 20.0 + s, seq=s) for s in range(10)]
    token = batch_token("telemetry.valid", {0: (0, 9)})
    assert insert_readings(db, batch, token) == 10
    insert_readings(db, batch, token)
    assert scalar(db, "SELECT count() FROM readings") == 10
    assert scalar(db, "SELECT sum(count_all) FROM readings_1m") == 10
    assert scalar(db, "SELECT sum(count_all) FROM readings_1h") == 10
    # Another batch (another token) with new rows is inserted.
    insert_readings(
        db, [reading("temp", 30, 1.0, seq=30)], batch_token("telemetry.valid", {0: (10, 10)})
    )
    assert scalar(db, "SELECT count() FROM readings") == 11


def test_replay_cut_into_other_batches_collapses_with_final(db: Client) -> None:
    batch = [reading("temp", s, float(s), seq=s) for s in range(10)]
    insert_readings(db, batch[:6], batch_token("telemetry.valid", {0: (0, 5)}))
    insert_readings(db, batch[4:], batch_token("telemetry.valid", {0: (4, 9)}))
    assert scalar(db, "SELECT count() FROM readings FINAL") == 10
    rows = run_query(db, "SELECT seq, value FROM readings FINAL ORDER BY seq")[1]
    assert rows == [(s, float(s)) for s in range(10)]


def test_arrow_batches_are_deduplicated_too(db: Client) -> None:
    rows = [reading("speed", s, 100.0 + s, seq=s) for s in range(5)]
    table = pa.table({name: [row[name] for row in rows] for name in READING_COLUMNS})
    token = batch_token("telemetry.valid", {1: (0, 4)})
    assert insert_rows(db, "readings", READING_COLUMNS, table, token) == 5
    insert_rows(db, "readings", READING_COLUMNS, table, token)
    assert scalar(db, "SELECT count() FROM readings WHERE signal = 'speed'") == 5
    assert scalar(db, "SELECT sum(count_all) FROM readings_1m WHERE signal = 'speed'") == 5


# --- rollups ----------------------------------------------------------------------------


def test_rollups_cover_good_readings_and_count_every_reading(db: Client) -> None:
    good = [3.0, 1.0, 4.0, 1.5, 5.0]
    batch = [reading("temp", i + 1, v, seq=i + 1) for i, v in enumerate(good)]
    batch += [
        reading("temp", 6, 100.0, "BAD", seq=6),
        reading("temp", 7, 7.0, "UNCERTAIN", seq=7),
        reading("temp", 8, math.nan, seq=8),  # GOOD but without a value: counted, not used
        reading("temp", 61, 10.0, seq=9),  # the next minute
        reading("flow", 2, -1.0, "BAD", seq=10),  # no GOOD reading at all
    ]
    token = batch_token("telemetry.valid", {0: (1, 10)})
    insert_readings(db, batch, token)
    insert_readings(db, batch, token)  # a replay must not count twice

    columns, rows = run_query(
        db,
        "SELECT signal, ts, count_all, count_good, count_bad, value_min, value_max, "
        "value_avg, value_p95 FROM readings_1m_v ORDER BY signal, ts",
    )
    by_key = {(r[0], r[1]): dict(zip(columns, r, strict=True)) for r in rows}
    assert set(by_key) == {
        ("flow", MINUTE),
        ("temp", MINUTE),
        ("temp", MINUTE + timedelta(minutes=1)),
    }
    temp = by_key["temp", MINUTE]
    assert (temp["count_all"], temp["count_good"], temp["count_bad"]) == (8, 5, 1)
    assert (temp["value_min"], temp["value_max"]) == (1.0, 5.0)
    assert temp["value_avg"] == pytest.approx(sum(good) / 5)
    assert temp["value_p95"] == pytest.approx(4.8)  # linear interpolation of 5 values
    later = by_key["temp", MINUTE + timedelta(minutes=1)]
    assert (later["count_all"], later["value_min"], later["value_max"]) == (1, 10.0, 10.0)
    flow = by_key["flow", MINUTE]
    assert (flow["count_all"], flow["count_bad"], flow["value_min"], flow["value_avg"]) == (
        1,
        1,
        None,
        None,
    )

    hour = MINUTE.replace(minute=0)
    hourly = run_query(
        db,
        "SELECT count_all, count_good, value_min, value_max FROM readings_1h_v "
        f"WHERE signal = 'flow' AND ts = toDateTime('{hour:%Y-%m-%d %H:%M:%S}', 'UTC')",
    )[1]
    assert hourly == [(1, 0, None, None)]
    assert scalar(db, "SELECT sum(count_all) FROM readings_1h_v WHERE signal = 'temp'") == 9


def rollup_rows(client: Client) -> list[tuple[Any, ...]]:
    """Every finalized rollup row, floats rounded (summation order may differ)."""
    rows: list[tuple[Any, ...]] = []
    for view in ("readings_1m_v", "readings_1h_v"):
        for row in run_query(client, f"SELECT '{view}', * FROM {view} ORDER BY ALL")[1]:
            rows.append(tuple(round(v, 9) if isinstance(v, float) else v for v in row))
    return rows


def test_rebuilt_rollups_undo_a_recut_replay(db: Client) -> None:
    hour = MINUTE.replace(minute=0)
    batch = [reading("temp", (hour - MINUTE).total_seconds(), 7.0, seq=0)]
    batch += [
        reading("temp", s, float(s % 4), "BAD" if s == 5 else "GOOD", seq=s) for s in range(1, 11)
    ]
    insert_readings(db, batch, batch_token("telemetry.valid", {0: (0, 10)}))
    exact = rollup_rows(db)
    # Replayed in other batches: readings collapse, the rollups count the replay again.
    insert_readings(db, batch[4:], batch_token("telemetry.valid", {0: (4, 10)}))
    assert scalar(db, "SELECT count() FROM readings FINAL") == 11
    assert scalar(db, "SELECT sum(count_all) FROM readings_1h_v") == 18

    for _ in range(2):  # a second rebuild of the same range changes nothing
        rebuilt = rebuild_rollups(db, MINUTE, MINUTE + timedelta(minutes=1))
        assert (rebuilt.start, rebuilt.readings) == (hour, 11)
        assert rollup_rows(db) == exact

    with pytest.raises(ClickHouseError, match="stored only since"):
        rebuild_rollups(db, hour - timedelta(hours=1), hour)


# --- KPI windows, alerts and the other record tables -------------------------------------

KPI_COLUMNS = [
    "line_id", "asset_id", "window_kind", "window_start", "window_end", "version",
    "availability", "performance", "quality", "oee", "run_s", "idle_s", "down_s",
    "parts_total", "parts_good", "failures", "mtbf_s", "mttr_s", "signals.signal",
    "signals.count", "signals.min", "signals.max", "signals.mean", "signals.p95", "emitted_ts",
]  # fmt: skip


def kpi_window(asset: str, version: int, oee: float, parts: int) -> dict[str, Any]:
    start = MINUTE - timedelta(hours=1)
    return {
        "line_id": "line1",
        "asset_id": asset,
        "window_kind": "TUMBLING",
        "window_start": start,
        "window_end": start + timedelta(hours=1),
        "version": version,
        "availability": 0.9,
        "performance": 0.8,
        "quality": oee / 0.72,
        "oee": oee,
        "run_s": 3240.0,
        "idle_s": 0.0,
        "down_s": 360.0,
        "parts_total": parts,
        "parts_good": parts - 2,
        "failures": 1,
        "mtbf_s": 3240.0,
        "mttr_s": None,
        "signals.signal": ["temp", "speed"],
        "signals.count": [3600, 3600 + version],
        "signals.min": [20.0, 0.0],
        "signals.max": [80.0, 1500.0],
        "signals.mean": [55.5, 1200.0],
        "signals.p95": [78.0, 1490.0],
        "emitted_ts": start + timedelta(hours=1, seconds=version),
    }


def test_reemitted_kpi_window_replaces_the_old_one(db: Client) -> None:
    def emit(window: dict[str, Any], offset: int) -> None:
        token = batch_token("twin.kpi", {0: (offset, offset)})
        insert_rows(db, "kpi_windows", KPI_COLUMNS, columnar([window], KPI_COLUMNS), token)

    emit(kpi_window("press-1", 1, 0.5, 100), 0)
    emit(kpi_window("press-2", 1, 0.7, 90), 1)
    emit(kpi_window("press-1", 2, 0.6, 120), 2)  # late data: re-emitted with version 2
    emit(kpi_window("press-1", 2, 0.6, 120), 2)  # and replayed
    rows = run_query(
        db,
        "SELECT asset_id, version, oee, parts_total, signals.signal, signals.count "
        "FROM kpi_windows_latest ORDER BY asset_id",
    )[1]
    assert rows == [
        ("press-1", 2, 0.6, 120, ["temp", "speed"], [3600, 3602]),
        ("press-2", 1, 0.7, 90, ["temp", "speed"], [3600, 3601]),
    ]
    exploded = run_query(
        db,
        "SELECT signals.signal, signals.p95 FROM kpi_windows_latest ARRAY JOIN signals "
        "WHERE asset_id = 'press-1' ORDER BY signals.signal",
    )[1]
    assert exploded == [("speed", 1490.0), ("temp", 78.0)]


def test_alerts_open_shows_alerts_not_cleared(db: Client) -> None:
    columns = [
        "alert_id", "asset_id", "rule_id", "kind", "event", "severity", "ts", "raised_ts",
        "emitted_ts", "message", "signal", "value", "threshold", "context",
    ]  # fmt: skip

    def alert(alert_id: str, event: str, minute: int) -> list[Any]:
        ts = MINUTE + timedelta(minutes=minute)
        return [
            alert_id, "press-1", alert_id.split("/")[1], "THRESHOLD", event, "WARNING", ts,
            MINUTE, ts, f"{event.lower()}", "temp", 91.5, 90.0, {"unit": "degC"},
        ]  # fmt: skip

    rows = [
        alert("press-1/temp-high", "RAISED", 0),
        alert("press-1/temp-high", "CLEARED", 5),
        alert("press-1/vibration", "RAISED", 1),
        alert("press-1/vibration", "UPDATED", 2),
    ]
    insert_rows(
        db, "alerts", columns, rows, batch_token("twin.alerts", {0: (0, 3)}), column_oriented=False
    )
    open_alerts = run_query(db, "SELECT alert_id, event, context FROM alerts_open")[1]
    assert open_alerts == [("press-1/vibration", "UPDATED", {"unit": "degC"})]


def test_states_anomalies_and_dead_letters_take_their_records(db: Client) -> None:
    ts = MINUTE + timedelta(seconds=1)
    insert_rows(
        db,
        "states",
        ["asset_id", "signal", "ts", "value", "rate", "variance", "rate_variance", "innovation",
         "nis", "outlier", "measured", "source_id", "seq", "ingest_ts"],
        [["press-1"] * 2, ["temp", "speed"], [ts] * 2, [20.5, 1200.0], [0.01, 0.0], [0.2, 4.0],
         [0.001, 0.01], [0.3, None], [0.45, None], [False, False], [True, False],
         ["opcua-line1"] * 2, [7, 7], [ts] * 2],
        batch_token("twin.state", {0: (7, 7)}),
    )  # fmt: skip
    insert_rows(
        db,
        "anomalies",
        ["asset_id", "ts", "ingest_ts", "model_id", "model_version", "score", "threshold",
         "is_anomaly", "warming_up", "contributors.signal", "contributors.weight"],
        [["press-1"], [ts], [ts], ["hst"], ["3"], [0.93], [0.8], [True], [False],
         [["temp", "speed"]], [[0.7, 0.3]]],
        batch_token("twin.anomaly", {0: (3, 3)}),
    )  # fmt: skip
    payload = b"\x00\x00\x00\x00\x07not avro"
    insert_rows(
        db,
        "dead_letters",
        ["detected_ts", "stage", "reason_code", "reason", "origin_topic", "origin_partition",
         "origin_offset", "origin_key", "payload", "asset_id", "source_id", "seq"],
        [[ts], ["validate"], ["undecodable"], ["schema id 7 is unknown"], ["telemetry.raw"],
         [2], [41], [b"press-1"], [payload], [None], [None], [None]],
        batch_token("telemetry.deadletter", {0: (0, 0)}),
    )  # fmt: skip
    assert run_query(db, "SELECT signal, innovation, measured FROM states ORDER BY signal")[1] == [
        ("speed", None, False),
        ("temp", 0.3, True),
    ]
    assert run_query(db, "SELECT contributors.signal, is_anomaly FROM anomalies")[1] == [
        (["temp", "speed"], True)
    ]
    assert run_query(db, "SELECT reason_code, length(payload), origin_offset FROM dead_letters")[
        1
    ] == [("undecodable", len(payload), 41)]


# --- the analyst's guide ------------------------------------------------------------------

GUIDE = PROJECT_ROOT / "docs" / "clickhouse.md"


def guide_queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_every_query_of_the_guide_runs(db: Client) -> None:
    queries = guide_queries()
    assert len(queries) >= 10
    for query in queries:
        run_query(db, query)  # raises ClickHouseError if the schema and the guide disagree


def test_guide_oee_per_hour_weights_windows_by_length(db: Client) -> None:
    yesterday = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0)
    yesterday -= timedelta(days=1)

    def window(asset: str, minute: int, minutes: int, version: int, oee: float) -> dict[str, Any]:
        row = kpi_window(asset, version, oee, 100)
        row["window_start"] = yesterday + timedelta(minutes=minute)
        row["window_end"] = row["window_start"] + timedelta(minutes=minutes)
        return row

    windows = [
        window("press-1", 0, 30, 1, 0.5),
        window("press-1", 30, 30, 1, 0.7),
        window("press-1", 30, 30, 2, 0.9),  # re-emitted: replaces 0.7
        window("press-2", 0, 60, 1, 0.6),
    ]
    hopping = window("press-2", 15, 60, 1, 0.0) | {"window_kind": "HOPPING"}
    for offset, row in enumerate([*windows, hopping]):
        token = batch_token("twin.kpi", {0: (offset, offset)})
        insert_rows(db, "kpi_windows", KPI_COLUMNS, columnar([row], KPI_COLUMNS), token)

    per_asset, per_line = [q for q in guide_queries() if "line_id = 'line1'" in q]
    assert run_query(db, per_asset)[1] == [
        (yesterday, "press-1", 0.7, 200, 196),
        (yesterday, "press-2", 0.6, 100, 98),
    ]
    assert run_query(db, per_line)[1] == [(yesterday, 0.65)]


# --- the CLI ----------------------------------------------------------------------------


def twin(path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env["TWIN_CLICKHOUSE_DSN"] = dsn_of(path)
    return run_twin(*args, env=env, stdin=stdin)


def test_twin_db_migrate_and_status(tmp_path: Path) -> None:
    path = tmp_path / "clickhouse"
    first = twin(path, "db", "migrate", "--json")
    assert first.returncode == 0, first.stderr
    body = json.loads(first.stdout)
    assert len(body["applied"]) == 6 and body["already_applied"] == []
    assert {t["name"] for t in body["tables"]} == set(TABLES)
    assert "clickhouse" in body and body["clickhouse"].startswith("chdb://")

    second = twin(path, "db", "migrate")
    assert second.returncode == 0, second.stderr
    assert "nothing to apply: all 6 migration(s) already applied" in second.stdout

    status = twin(path, "db", "status", "--json")
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    assert (body["applied"], body["pending"], body["changed"]) == (6, 0, 0)

    # A moment inside an hour: the range widens to that whole hour. (MINUTE itself is on
    # the hour when the test runs at half past, and [h:00, h:00) is an empty range.)
    start = MINUTE.replace(minute=15).isoformat()
    empty = twin(path, "db", "rebuild-rollups", "--from", start, "--to", start)
    assert empty.returncode == 1
    assert "no readings are stored" in empty.stderr
    naive = twin(path, "db", "rebuild-rollups", "--from", "2024-05-01T00:00", "--to", start)
    assert naive.returncode == 2
    assert "give a timezone" in naive.stderr


def test_twin_sql_formats_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "clickhouse"
    client = open_client(dsn_of(path))
    try:
        migrate(client)
        insert_readings(
            client,
            [reading("temp", 1.25, 20.5, seq=1), reading("temp", 2, math.nan, "BAD", seq=2)],
            None,
        )
    finally:
        client.close()
    query = "SELECT signal, ts, value, quality, flags FROM readings ORDER BY ts"
    stamp = (MINUTE + timedelta(seconds=1.25)).strftime("%Y-%m-%dT%H:%M:%S.250000Z")
    stamp2 = (MINUTE + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")

    table = twin(path, "sql", query)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["signal", "ts", "value", "quality", "flags"]
    assert lines[2].split() == ["temp", stamp, "20.5", "GOOD", "[]"]
    assert lines[3].split() == ["temp", stamp2, "nan", "BAD", '["OUT_OF_EXPECTED_RANGE"]']
    assert lines[4] == "(2 rows)"

    csv_out = twin(path, "sql", query, "--format", "csv")
    assert csv_out.returncode == 0, csv_out.stderr
    assert csv_out.stdout.splitlines() == [
        "signal,ts,value,quality,flags",
        f"temp,{stamp},20.5,GOOD,[]",
        f'temp,{stamp2},nan,BAD,"[""OUT_OF_EXPECTED_RANGE""]"',
    ]

    json_out = twin(path, "sql", "-", "--format", "json", stdin=query + ";\n")
    assert json_out.returncode == 0, json_out.stderr
    assert json.loads(json_out.stdout) == {
        "columns": ["signal", "ts", "value", "quality", "flags"],
        "rows": [
            ["temp", stamp, 20.5, "GOOD", []],
            ["temp", stamp2, None, "BAD", ["OUT_OF_EXPECTED_RANGE"]],
        ],
    }

    empty = twin(path, "sql", "SELECT asset_id, value FROM readings WHERE 0", "--format", "csv")
    assert (empty.returncode, empty.stdout) == (0, "asset_id,value\n")

    bad = twin(path, "sql", "SELECT no_such_column FROM readings")
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "UNKNOWN_IDENTIFIER" in bad.stderr and "Traceback" not in bad.stderr

    several = twin(path, "sql", "SELECT 1; SELECT 2")
    assert several.returncode == 2
    assert "expected one SQL statement, got 2" in several.stderr
