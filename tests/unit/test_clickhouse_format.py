"""Rendering query results for `twin sql`."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

from pipeline.clickhouse.format import format_csv, format_json, format_table, iso

COLUMNS = ["asset_id", "ts", "value", "flags"]
ROWS = [
    ("press-1", datetime(2024, 5, 1, 8, 0, 0, 250000, tzinfo=UTC), 1.5, ["STALE"]),
    ("press-22", datetime(2024, 5, 1, 10, 0, tzinfo=timezone(timedelta(hours=2))), None, []),
    ("oven", datetime(2024, 5, 1, 8, 1, tzinfo=UTC), float("nan"), []),
]


def test_table_aligns_columns_right_aligns_numbers_and_counts_rows() -> None:
    lines = format_table(COLUMNS, ROWS).splitlines()
    assert lines[0].split() == COLUMNS
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2] == 'press-1   2024-05-01T08:00:00.250000Z    1.5  ["STALE"]'
    assert lines[3] == "press-22  2024-05-01T08:00:00Z          NULL  []"
    assert lines[4] == "oven      2024-05-01T08:01:00Z           nan  []"
    assert lines[5] == "(3 rows)"


def test_table_of_a_command_says_ok() -> None:
    assert format_table([], []) == "OK\n"


def test_csv_has_a_header_and_empty_fields_for_null() -> None:
    text = format_csv(COLUMNS, ROWS)
    assert text.splitlines() == [
        "asset_id,ts,value,flags",
        'press-1,2024-05-01T08:00:00.250000Z,1.5,"[""STALE""]"',
        "press-22,2024-05-01T08:00:00Z,,[]",
        "oven,2024-05-01T08:01:00Z,nan,[]",
    ]


def test_json_is_one_object_with_columns_and_rows() -> None:
    body = json.loads(format_json(COLUMNS, ROWS))
    assert body["columns"] == COLUMNS
    assert body["rows"][0] == ["press-1", "2024-05-01T08:00:00.250000Z", 1.5, ["STALE"]]
    assert body["rows"][1][1] == "2024-05-01T08:00:00Z"
    assert body["rows"][2][2] is None  # NaN: JSON has none


def test_json_values_of_other_types() -> None:
    row = (date(2024, 1, 2), Decimal("1.50"), True, {"k": 1}, (1, "x"))
    body = json.loads(format_json(["d", "dec", "b", "m", "t"], [row]))
    assert body["rows"] == [["2024-01-02", "1.50", True, {"k": 1}, [1, "x"]]]


def test_iso_of_a_naive_datetime_is_taken_as_utc() -> None:
    assert iso(datetime(2024, 1, 1, 0, 0)) == "2024-01-01T00:00:00Z"  # noqa: DTZ001
