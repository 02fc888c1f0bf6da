"""Versioned schema migrations: `migrations/NNNN_name.sql`, applied in version order.

Each applied migration is recorded in `schema_migrations` with the sha256 of its file, so a
second run applies nothing, and a file changed after it was applied is refused rather than
silently diverging from the database it describes. ClickHouse DDL is not transactional:
a migration is recorded only after all its statements succeeded, and its statements use
IF NOT EXISTS so that re-running an interrupted migration completes it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from clickhouse_connect.driver.client import Client

from pipeline.clickhouse.client import driver_errors
from pipeline.clickhouse.query import TableInfo, list_tables
from pipeline.clickhouse.statements import split_statements
from pipeline.errors import ClickHouseError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
LEDGER = "schema_migrations"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_LEDGER_DDL = f"""
CREATE TABLE IF NOT EXISTS {LEDGER}
(
    version    UInt32 COMMENT 'Migration number (the NNNN of NNNN_name.sql)',
    name       String COMMENT 'Migration name (the name of NNNN_name.sql)',
    checksum   String COMMENT 'sha256 of the migration file when it was applied',
    applied_at DateTime64(6, 'UTC') COMMENT 'When it was applied (UTC)'
)
ENGINE = MergeTree
ORDER BY version
COMMENT 'Schema migrations applied by twin db migrate'
"""

MigrationState = Literal["applied", "pending", "changed", "unknown"]


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    path: Path
    checksum: str
    """sha256 (hex) of the file's bytes."""

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    def statements(self) -> list[str]:
        return split_statements(self.path.read_text(encoding="utf-8"))

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "checksum": self.checksum}


@dataclass(frozen=True)
class AppliedMigration:
    """One row of the ledger."""

    version: int
    name: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True)
class MigrationResult:
    applied: tuple[Migration, ...]
    """Migrations this run applied, in order."""
    already_applied: tuple[Migration, ...]
    """Migrations found applied (with unchanged files) before this run."""
    tables: tuple[TableInfo, ...]
    """Tables and views of the database after the run."""

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": [m.to_json() for m in self.applied],
            "already_applied": [m.to_json() for m in self.already_applied],
            "tables": [t._asdict() for t in self.tables],
        }


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    state: MigrationState
    """applied; pending; changed (file differs from what was applied); unknown (applied,
    but this version of the code has no such file)."""
    applied_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        applied_at = self.applied_at.isoformat() if self.applied_at else None
        return {
            "version": self.version,
            "name": self.name,
            "state": self.state,
            "applied_at": applied_at,
        }


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files of `directory`, by version; every `.sql` file must be one."""
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ClickHouseError(f"migration file {path.name}: name must be NNNN_name.sql")
        checksum = hashlib.sha256(path.read_bytes()).hexdigest()
        migrations.append(Migration(int(match.group(1)), match.group(2), path, checksum))
    migrations.sort(key=lambda m: m.version)
    for earlier, later in pairwise(migrations):
        if earlier.version == later.version:
            raise ClickHouseError(
                f"migrations {earlier.path.name} and {later.path.name} share version "
                f"{earlier.version}"
            )
    return migrations


def migrate(client: Client, directory: Path | None = None) -> MigrationResult:
    """Apply the pending migrations of `directory` (default: the packaged ones) in order.

    Refuses, before applying anything, when an applied migration's file has changed.
    """
    migrations = load_migrations(directory or MIGRATIONS_DIR)
    with driver_errors(f"creating {LEDGER}"):
        client.command(_LEDGER_DDL)
    ledger = read_ledger(client)
    _refuse_changed(migrations, ledger)
    already = tuple(m for m in migrations if m.version in ledger)
    applied: list[Migration] = []
    for migration in migrations:
        if migration.version in ledger:
            continue
        _apply(client, migration)
        applied.append(migration)
    return MigrationResult(tuple(applied), already, tuple(list_tables(client)))


def migration_status(client: Client, directory: Path | None = None) -> list[MigrationStatus]:
    """Every migration known to the files or the ledger, by version, with its state."""
    migrations = {m.version: m for m in load_migrations(directory or MIGRATIONS_DIR)}
    ledger = read_ledger(client) if _ledger_exists(client) else {}
    statuses: list[MigrationStatus] = []
    for version in sorted(migrations.keys() | ledger.keys()):
        migration, row = migrations.get(version), ledger.get(version)
        if row is None and migration is not None:
            statuses.append(MigrationStatus(version, migration.name, "pending", None))
        elif row is not None and migration is None:
            statuses.append(MigrationStatus(version, row.name, "unknown", row.applied_at))
        elif row is not None and migration is not None:
            state: MigrationState = "applied" if row.checksum == migration.checksum else "changed"
            statuses.append(MigrationStatus(version, migration.name, state, row.applied_at))
    return statuses


def read_ledger(client: Client) -> dict[int, AppliedMigration]:
    with driver_errors(f"reading {LEDGER}"):
        result = client.query(f"SELECT version, name, checksum, applied_at FROM {LEDGER}")
    return {
        int(version): AppliedMigration(int(version), str(name), str(checksum), applied_at)
        for version, name, checksum, applied_at in result.result_rows
    }


def _ledger_exists(client: Client) -> bool:
    with driver_errors(f"looking for {LEDGER}"):
        result = client.query(f"EXISTS TABLE {LEDGER}")
    return bool(result.result_rows and result.result_rows[0][0])


def _refuse_changed(migrations: list[Migration], ledger: dict[int, AppliedMigration]) -> None:
    changed = [
        m for m in migrations if m.version in ledger and ledger[m.version].checksum != m.checksum
    ]
    if changed:
        names = ", ".join(m.path.name for m in changed)
        raise ClickHouseError(
            f"applied migration file changed since it was applied: {names} "
            "(checksum mismatch); restore the file and add the change as a new migration"
        )


def _apply(client: Client, migration: Migration) -> None:
    statements = migration.statements()
    for number, statement in enumerate(statements, start=1):
        with driver_errors(
            f"migration {migration.path.name}, statement {number} of {len(statements)}"
        ):
            client.command(statement)
    with driver_errors(f"recording migration {migration.path.name} in {LEDGER}"):
        client.insert(
            LEDGER,
            [[migration.version], [migration.name], [migration.checksum], [datetime.now(UTC)]],
            column_names=["version", "name", "checksum", "applied_at"],
            column_oriented=True,
        )
