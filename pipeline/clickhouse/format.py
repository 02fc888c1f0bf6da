"""Render query results as an aligned table, CSV or JSON (the formats of `twin sql`).

Datetimes print as ISO 8601 in UTC (`2024-05-01T08:00:00.250000Z`). JSON has no NaN or
infinity, so non-finite floats are JSON null there; table and CSV print `nan`, `inf`.
NULL prints as `NULL` in a table and as an empty field in CSV.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

FORMATS = ("table", "csv", "json")

Row = Sequence[Any]


def render(fmt: str, columns: Sequence[str], rows: Sequence[Row]) -> str:
    """`rows` in the format `fmt` (one of FORMATS), ending with a newline."""
    if fmt == "table":
        return format_table(columns, rows)
    if fmt == "csv":
        return format_csv(columns, rows)
    if fmt == "json":
        return format_json(columns, rows)
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def format_table(
    columns: Sequence[str], rows: Sequence[Row], *, null: str = "NULL", count: bool = True
) -> str:
    """Columns padded to their widest cell, a header and a rule, numbers right-aligned, and
    (with `count`) a row count; `OK` for a statement without a result."""
    if not columns:
        return "OK\n"
    cells = [[_text(value, null=null) for value in row] for row in rows]
    widths = [len(name) for name in columns]
    for line in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, line, strict=True)]
    numeric = [
        bool(rows) and all(_is_number(row[i]) or row[i] is None for row in rows)
        for i in range(len(columns))
    ]

    def join(values: Sequence[str]) -> str:
        padded = (
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        )
        return "  ".join(padded).rstrip()

    lines = [join(columns), join(["-" * w for w in widths])]
    lines.extend(join(line) for line in cells)
    if count:
        lines.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(lines) + "\n"


def format_csv(columns: Sequence[str], rows: Sequence[Row]) -> str:
    """RFC 4180 CSV with a header line (nothing for a statement without a result)."""
    if not columns:
        return ""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_text(value, null="") for value in row])
    return out.getvalue()


def format_json(columns: Sequence[str], rows: Sequence[Row]) -> str:
    """One JSON object: {"columns": [names], "rows": [[values in column order], ...]}."""
    body = {"columns": list(columns), "rows": [[json_value(v) for v in row] for row in rows]}
    return json.dumps(body, ensure_ascii=False, allow_nan=False) + "\n"


def json_value(value: Any) -> Any:
    """`value` as plain JSON data (datetimes as ISO UTC strings, NaN as None)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date):
        return iso(value)
    if isinstance(value, dict):
        return {str(_plain_key(k)): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def iso(value: date) -> str:
    """ISO 8601; a datetime in UTC with a `Z` (naive ones are taken to be UTC already)."""
    if isinstance(value, datetime):
        utc = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return utc.isoformat().replace("+00:00", "Z")
    return value.isoformat()


def _text(value: Any, null: str) -> str:
    if value is None:
        return null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime | date):
        return iso(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(json_value(value), ensure_ascii=False)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _plain_key(key: Any) -> Any:
    return iso(key) if isinstance(key, datetime | date) else key


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)
