"""`twin sql QUERY`: run one SQL statement against TWIN_CLICKHOUSE_DSN and print the result."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pipeline.clickhouse import open_client, run_query
from pipeline.clickhouse.format import FORMATS, render
from pipeline.clickhouse.statements import single_statement
from pipeline.errors import ClickHouseError, ConfigError
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.commands import Subparsers


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "sql",
        help="run a SQL statement against ClickHouse and print the result",
        description=(
            "Run one SQL statement against ClickHouse (TWIN_CLICKHOUSE_DSN) and print the "
            "result: an aligned table, CSV with a header, or one JSON object "
            '{"columns": [...], "rows": [[...], ...]}. Datetimes print as ISO 8601 UTC.'
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
    client = open_client(settings.clickhouse_url())
    try:
        columns, rows = run_query(client, statement)
    finally:
        client.close()
    sys.stdout.write(render("json" if args.json else args.format, columns, rows))
    sys.stdout.flush()
    return 0
