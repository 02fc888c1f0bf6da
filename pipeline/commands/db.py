"""`twin db migrate|status`: the ClickHouse schema at TWIN_CLICKHOUSE_DSN."""

from __future__ import annotations

import argparse

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
from pipeline.commands import add_json_option, print_json
from pipeline.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("db", help="apply ClickHouse schema migrations or show their status")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    migrate_parser = actions.add_parser(
        "migrate",
        help="apply pending migrations in order (idempotent; creates the database if needed)",
    )
    status_parser = actions.add_parser("status", help="show applied and pending migrations")
    for p in (migrate_parser, status_parser):
        add_json_option(p)
    migrate_parser.set_defaults(handler=run_migrate)
    status_parser.set_defaults(handler=run_status)


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


_STATES = ("applied", "pending", "changed", "unknown")


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
