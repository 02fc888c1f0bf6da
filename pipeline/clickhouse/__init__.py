"""ClickHouse: the schema analysts query, its migrations, idempotent inserts and queries.

The same code serves the embedded engine (`chdb:///path`) and a server
(`http(s)://user:password@host:8123/database`); see docs/clickhouse.md for the schema.
"""

from __future__ import annotations

from pipeline.clickhouse.client import dsn_database, is_embedded, open_client, redact_dsn
from pipeline.clickhouse.insert import batch_token, insert_rows
from pipeline.clickhouse.migrate import (
    MIGRATIONS_DIR,
    Migration,
    MigrationResult,
    MigrationStatus,
    load_migrations,
    migrate,
    migration_status,
)
from pipeline.clickhouse.query import TableInfo, list_tables, run_query
from pipeline.clickhouse.rollups import RebuiltRange, rebuild_rollups

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "MigrationResult",
    "MigrationStatus",
    "RebuiltRange",
    "TableInfo",
    "batch_token",
    "dsn_database",
    "insert_rows",
    "is_embedded",
    "list_tables",
    "load_migrations",
    "migrate",
    "migration_status",
    "open_client",
    "rebuild_rollups",
    "redact_dsn",
    "run_query",
]
