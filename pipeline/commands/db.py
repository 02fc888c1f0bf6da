"""`twin db migrate|status|rebuild-rollups`: the ClickHouse schema at TWIN_CLICKHOUSE_DSN."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING

from pipeline.clickhouse import (
    MigrationResult,
    MigrationStatus,
    migrate,
    migration_status,
    open_client,
    redact_dsn,
)
from pipeline.clickhouse.format import format_table, iso
from pipeline.clickhouse.query import TableInfo
from pipeline.clickhouse.rollups import ROLLUPS, rebuild_rollups
from pipeline.commands import add_json_option, print_json
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.commands import Subparsers

_STATES = ("applied", "pending", "changed", "unknown")


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "db", help="ClickHouse schema: apply migrations, show their status, rebuild rollups"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    migrate_parser = actions.add_parser(
        "migrate",
        help="apply pending migrations in order (idempotent; creates the database if needed)",
    )
    status_parser = actions.add_parser("status", help="show applied and pending migrations")
    rebuild_parser = actions.add_parser(
        "rebuild-rollups",
        help="recompute the 1-minute and 1-hour rollups of a time range from readings",
        description=(
            "Recompute readings_1m and readings_1h for [--from, --to), widened to whole "
            "hours, from readings FINAL: repairs rollups that counted a replay twice. "
            "Use it on a range the pipeline no longer writes to."
        ),
    )
    rebuild_parser.add_argument(
        "--from", dest="start", required=True, type=_moment, metavar="TIME",
        help="start, ISO 8601 with a timezone (e.g. 2024-05-01T00:00Z)",
    )  # fmt: skip
    rebuild_parser.add_argument(
        "--to", dest="end", required=True, type=_moment, metavar="TIME",
        help="end (exclusive), ISO 8601 with a timezone",
    )  # fmt: skip
    for p in (migrate_parser, status_parser, rebuild_parser):
        add_json_option(p)
    migrate_parser.set_defaults(handler=run_migrate)
    status_parser.set_defaults(handler=run_status)
    rebuild_parser.set_defaults(handler=run_rebuild)


def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    dsn = settings.clickhouse_url()
    client = open_client(dsn, create_database=True)
    try:
        database = client.database
        result = migrate(client)
    finally:
        client.close()
    if args.json:
        print_json({"clickhouse": redact_dsn(dsn), "database": database, **result.to_json()})
    else:
        _print_migrated(result, redact_dsn(dsn), database)
    return 0


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    dsn = settings.clickhouse_url()
    client = open_client(dsn)
    try:
        database = client.database
        statuses = migration_status(client)
    finally:
        client.close()
    counts = {state: sum(s.state == state for s in statuses) for state in _STATES}
    if args.json:
        print_json(
            {
                "clickhouse": redact_dsn(dsn),
                "database": database,
                **counts,
                "migrations": [s.to_json() for s in statuses],
            }
        )
    else:
        _print_status(statuses, counts, redact_dsn(dsn), database)
    # A changed file blocks `twin db migrate`: report it as a failure.
    return 1 if counts["changed"] else 0


def run_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    client = open_client(settings.clickhouse_url())
    try:
        rebuilt = rebuild_rollups(client, args.start, args.end)
    finally:
        client.close()
    if args.json:
        print_json(
            {
                "start": iso(rebuilt.start),
                "end": iso(rebuilt.end),
                "readings": rebuilt.readings,
                "tables": list(ROLLUPS),
            }
        )
    else:
        print(
            f"rebuilt {' and '.join(ROLLUPS)} from {iso(rebuilt.start)} to {iso(rebuilt.end)} "
            f"({rebuilt.readings} readings)"
        )
    return 0


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a timezone, e.g. {text}Z: {text!r}")
    return moment


def _print_migrated(result: MigrationResult, where: str, database: str | None) -> None:
    target = f"{where} (database {database or 'default'})"
    if result.applied:
        print(f"applied {len(result.applied)} migration(s) to {target}:")
        for migration in result.applied:
            print(f"  {migration.label}")
    else:
        print(
            f"nothing to apply: all {len(result.already_applied)} migration(s) "
            f"already applied to {target}"
        )
    print()
    print(_tables_text(result.tables), end="")


def _tables_text(tables: tuple[TableInfo, ...]) -> str:
    rows = [(t.name, t.engine, t.rows) for t in tables]
    return format_table(["table", "engine", "rows"], rows, null="-", count=False)


def _print_status(
    statuses: list[MigrationStatus], counts: dict[str, int], where: str, database: str | None
) -> None:
    print(f"{where} (database {database or 'default'})")
    rows = [
        (f"{s.version:04d}", s.name, s.state, iso(s.applied_at) if s.applied_at else "-")
        for s in statuses
    ]
    print(format_table(["version", "name", "state", "applied at"], rows, count=False), end="")
    print(", ".join(f"{n} {state}" for state, n in counts.items() if n or state != "unknown"))
    if counts["changed"]:
        print("a changed migration file blocks `twin db migrate`: restore it")
