"""`twin sql QUERY`: run one SQL statement against TWIN_CLICKHOUSE_DSN and print the result.

With the embedded engine held by a running pipeline (the sink), the statement goes to the
sink's read-only query endpoint instead (pipeline/sink/query_server.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pipeline.clickhouse import open_client, run_query
from pipeline.clickhouse.client import EngineBusy, embedded_path
from pipeline.clickhouse.format import FORMATS, render
from pipeline.clickhouse.statements import single_statement
from pipeline.errors import ClickHouseError, ConfigError
from pipeline.settings import Settings
from pipeline.sink.query_server import EndpointUnavailable, query_endpoint, read_endpoint

if TYPE_CHECKING:
    from pipeline.commands import Subparsers


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "sql",
        help="run a SQL statement against ClickHouse and print the result",
        description=(
            "Run one SQL statement against ClickHouse (TWIN_CLICKHOUSE_DSN) and print the "
            "result: an aligned table, CSV with a header, or one JSON object "
            '{"columns": [...], "rows": [[...], ...]}. Datetimes print as ISO 8601 UTC. '
            "While a pipeline holds the embedded engine, read-only statements are answered "
            "by the pipeline."
        ),
    )
    parser.add_argument("query", metavar="QUERY", help="one SQL statement; - reads it from stdin")
    parser.add_argument(
        "--format", choices=FORMATS, default="table", help="output format (default: table)"
    )
    parser.add_argument("--json", action="store_true", help="same as --format json")
    parser.set_defaults(handler=run_sql)


def run_sql(args: argparse.Namespace, settings: Settings) -> int:
    sql = sys.stdin.read() if args.query == "-" else args.query
    try:
        statement = single_statement(sql)
    except ClickHouseError as exc:
        raise ConfigError(str(exc)) from exc
    fmt = "json" if args.json else args.format
    dsn = settings.clickhouse_url()
    text = _ask_running_pipeline(dsn, statement, fmt)
    if text is None:
        text = _run_here(dsn, statement, fmt)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _run_here(dsn: str, statement: str, fmt: str) -> str:
    try:
        client = open_client(dsn)
    except EngineBusy:
        # The holder may have started its endpoint since we looked.
        text = _ask_running_pipeline(dsn, statement, fmt)
        if text is None:
            raise
        return text
    try:
        columns, rows = run_query(client, statement)
    finally:
        client.close()
    return render(fmt, columns, rows)


def _ask_running_pipeline(dsn: str, statement: str, fmt: str) -> str | None:
    """The result from the process holding the embedded engine's data path, or None when
    no live process advertises an endpoint there."""
    data_path = embedded_path(dsn)
    endpoint = None if data_path is None else read_endpoint(data_path)
    if endpoint is None:
        return None
    try:
        return query_endpoint(endpoint, statement, fmt)
    except EndpointUnavailable:
        return None
