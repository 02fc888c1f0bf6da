"""Run analyst SQL and describe the schema: what `twin sql` and `twin db` read."""

from __future__ import annotations

from typing import Any, NamedTuple

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

from pipeline.clickhouse.client import driver_errors
from pipeline.clickhouse.statements import first_keyword, single_statement

#: Statements that return a result set; anything else runs as a command with no result.
RESULT_KEYWORDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS", "CHECK", "VALUES"}
)
#: Statements whose column names can be asked of ClickHouse without running them.
_DESCRIBABLE = frozenset({"SELECT", "WITH"})

Row = tuple[Any, ...]


class TableInfo(NamedTuple):
    name: str
    engine: str
    rows: int | None
    """Rows stored (before merges collapse replaced rows); None for views."""


def run_query(client: Client, sql: str) -> tuple[list[str], list[Row]]:
    """Run one SQL statement; its column names and rows (both empty for a command).

    Datetimes come back timezone-aware. A trailing semicolon is allowed; more than one
    statement is an error.
    """
    statement = single_statement(sql)
    keyword = first_keyword(statement)
    with driver_errors("query failed"):
        if keyword not in RESULT_KEYWORDS:
            client.command(statement)
            return [], []
        result = client.query(statement)
        columns = list(result.column_names)
        rows = [tuple(row) for row in result.result_rows]
    if not columns and keyword in _DESCRIBABLE:
        columns = _describe(client, statement)
    return columns, rows


def _describe(client: Client, statement: str) -> list[str]:
    """Column names of a SELECT without running it (the embedded engine sends no header
    for an empty result); empty if ClickHouse cannot describe it."""
    try:
        described = client.query(f"DESCRIBE TABLE ({statement})")
    except DriverError:
        return []
    return [str(row[0]) for row in described.result_rows]


def list_tables(client: Client) -> list[TableInfo]:
    """Tables and views of the client's database, by name."""
    with driver_errors("listing tables failed"):
        result = client.query(
            "SELECT name, engine, total_rows FROM system.tables "
            "WHERE database = currentDatabase() AND NOT is_temporary ORDER BY name"
        )
    return [
        TableInfo(str(name), str(engine), None if rows is None else int(rows))
        for name, engine, rows in result.result_rows
    ]
