"""The sink's record -> row mapping and its batching rules, in memory (no insert is made)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from clickhouse_connect.driver.client import Client

from pipeline.serde.examples import example
from pipeline.sink import MAPPINGS, ClickHouseSink, SinkError, TableRows, table_of


def rows_of(record_type: str, record: dict[str, Any] | None = None) -> TableRows:
    mapping = MAPPINGS[record_type]
    rows = TableRows(mapping.table)
    mapping.append(rows, record or example(record_type), "plant1.topic", 3, 77)
    return rows


def test_validated_frame_explodes_into_one_row_per_reading() -> None:
    frame = example("validated_frame")
    table = rows_of("validated_frame", frame).arrow().to_pylist()
    assert [row["signal"] for row in table] == [r["signal"] for r in frame["readings"]]
    assert [row["ts"] for row in table] == [r["ts"] for r in frame["readings"]]
    assert table[2]["flags"] == ["DEVICE_UNCERTAIN"] and table[2]["quality"] == "UNCERTAIN"
    assert {row["seq"] for row in table} == {frame["seq"]}
    assert {row["validated_ts"] for row in table} == {frame["validated_ts"]}
    assert {(r["origin_topic"], r["origin_partition"], r["origin_offset"]) for r in table} == {
        ("plant1.topic", 3, 77)
    }


def test_state_estimate_explodes_per_signal_and_keeps_nulls() -> None:
    table = rows_of("state_estimate").arrow().to_pylist()
    assert [(r["signal"], r["measured"], r["nis"]) for r in table] == [
        ("hydraulic_pressure", True, 1.8),
        ("oil_temp", False, None),
    ]


def test_nested_and_map_columns_are_parallel_lists() -> None:
    anomaly = rows_of("anomaly_score").arrow().to_pylist()[0]
    assert anomaly["contributors.signal"] == ["hydraulic_pressure", "motor_current"]
    assert anomaly["contributors.weight"] == [0.61, 0.27]
    kpi = rows_of("kpi_window").arrow().to_pylist()[0]
    assert kpi["signals.count"] == [35800] and kpi["version"] == 1
    alert = rows_of("alert_event").arrow().to_pylist()[0]
    assert dict(alert["context"]) == {"line_id": "line-1", "clear_below": "67.0"}


def test_dead_letter_keeps_the_rejected_messages_origin_and_bytes() -> None:
    letter = rows_of("dead_letter").arrow().to_pylist()[0]
    assert (letter["origin_topic"], letter["origin_offset"]) == ("telemetry.raw", 918273)
    assert letter["payload"] == example("dead_letter")["payload"]
    assert letter["source_id"] is None


def test_every_column_has_one_value_per_row() -> None:
    for record_type in MAPPINGS:
        rows = rows_of(record_type)
        assert {len(column) for column in rows.columns} == {rows.rows}, record_type
        assert rows.arrow().column_names == rows.spec.column_names


def test_tables_by_record_type() -> None:
    assert table_of("validated_frame") == "readings"
    assert table_of("kpi_window") == "kpi_windows"
    assert table_of("telemetry_frame") is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def unflushed_sink(**kwargs: Any) -> ClickHouseSink:
    # These tests never flush, so the sink needs no ClickHouse behind it.
    return ClickHouseSink(cast(Client, None), **kwargs)


def test_due_by_size_or_by_age_of_the_oldest_record() -> None:
    clock = Clock()
    sink = unflushed_sink(max_rows=5, max_delay_s=1.0, clock=clock)
    assert not sink.due(clock.now)
    sink.add("valid", 0, 10, "validated_frame", example("validated_frame"))  # 3 rows
    assert not sink.due(clock.now)
    assert sink.due(clock.now + 1.0)
    sink.add("valid", 0, 11, "validated_frame", example("validated_frame"))
    assert sink.buffered_rows == 6
    assert sink.due(clock.now)


def test_skipped_messages_count_toward_the_time_bound_without_rows() -> None:
    clock = Clock()
    sink = unflushed_sink(max_delay_s=0.5, clock=clock)
    sink.skip("valid", 2, 40)
    assert sink.holding and sink.buffered_rows == 0
    assert sink.due(clock.now + 0.5)


def test_unknown_record_type_and_incomplete_record_are_refused_without_residue() -> None:
    sink = unflushed_sink()
    with pytest.raises(SinkError, match="telemetry_frame"):
        sink.add("raw", 0, 1, "telemetry_frame", example("telemetry_frame"))
    broken = example("state_estimate")
    del broken["signals"][1]["rate"]
    with pytest.raises(SinkError, match=r"valid\[0\]@2"):
        sink.add("valid", 0, 2, "state_estimate", broken)
    assert sink.buffered_rows == 0 and not sink.holding
