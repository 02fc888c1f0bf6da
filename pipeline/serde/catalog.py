"""The schema catalog: every recorded version of every record type, with its schema id.

`SchemaCatalog.load()` is what the pipeline uses at run time; it refuses a catalog whose
files and catalog.json disagree, so data is never written with an id that means another
schema. `audit()` and `record_new_versions()` back `twin schemas check` and `record`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from pipeline import PROJECT_ROOT
from pipeline.errors import SchemaCompatibilityError, SerdeError
from pipeline.serde.compat import check_compatibility
from pipeline.serde.files import SchemaFile, display_path, lint_schema, read_schema_files
from pipeline.serde.ledger import (
    TOPIC_OF,
    Ledger,
    RecordedType,
    RecordedVersion,
    SchemaCatalogError,
    ledger_problems,
    read_ledger,
    unrecorded,
    write_ledger,
)
from pipeline.topics import TOPICS

DEFAULT_ROOT = PROJECT_ROOT / "schemas" / "avro"


@dataclass(frozen=True)
class SchemaVersion(SchemaFile):
    """A recorded schema version: the file plus its schema id and its topic."""

    schema_id: int
    topic: str
    """Logical topic name (before any site prefix)."""


class SchemaCatalog:
    """The recorded schema versions under one directory (default `schemas/avro/`)."""

    def __init__(self, root: Path, versions: list[SchemaVersion]) -> None:
        self.root = root
        self._by_type: dict[str, tuple[SchemaVersion, ...]] = {}
        for v in sorted(versions, key=lambda v: (_type_order(v.record_type), v.version)):
            self._by_type[v.record_type] = (*self._by_type.get(v.record_type, ()), v)
        self._by_id = {v.schema_id: v for v in versions}
        self._type_of_name = {v.fullname: v.record_type for v in versions}

    @classmethod
    def load(cls, root: Path | str | None = None) -> SchemaCatalog:
        """Load and verify the catalog; SchemaCatalogError lists every disagreement."""
        root = Path(root) if root is not None else DEFAULT_ROOT
        files, problems = read_schema_files(root)
        ledger = read_ledger(root)
        problems += ledger_problems(root, files, ledger)
        problems += [_unrecorded_problem(f) for f in unrecorded(files, ledger)]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise SchemaCatalogError(
                f"schema catalog {display_path(root)} is inconsistent: {problems[0]}{more}; "
                "`twin schemas check` lists every problem",
                problems,
            )
        versions = []
        for f in files:
            recorded = ledger.recorded(f.record_type, f.version)
            if recorded is None:  # excluded by the unrecorded problems above
                continue
            base = {fld.name: getattr(f, fld.name) for fld in fields(SchemaFile)}
            topic = ledger.record_types[f.record_type].topic
            versions.append(SchemaVersion(**base, schema_id=recorded.schema_id, topic=topic))
        return cls(root, versions)

    @property
    def record_types(self) -> tuple[str, ...]:
        """Record types, in the order of pipeline/topics.py."""
        return tuple(self._by_type)

    def versions(self, record_type: str) -> tuple[SchemaVersion, ...]:
        """All versions of a record type, oldest first."""
        try:
            return self._by_type[record_type]
        except KeyError:
            known = ", ".join(self._by_type)
            raise SerdeError(f"unknown record type {record_type!r} (known: {known})") from None

    def latest(self, record_type: str) -> SchemaVersion:
        """The newest version: what the pipeline writes, and reads all versions as."""
        return self.versions(record_type)[-1]

    def topic(self, record_type: str) -> str:
        return self.latest(record_type).topic

    def by_id(self, schema_id: int) -> SchemaVersion | None:
        return self._by_id.get(schema_id)

    def record_type_of(self, fullname: str) -> str | None:
        """The record type whose schemas carry this full name (e.g.
        `twinline.telemetry.v1.TelemetryFrame`), if any."""
        return self._type_of_name.get(fullname)

    def __iter__(self) -> Iterator[SchemaVersion]:
        for versions in self._by_type.values():
            yield from versions

    def __len__(self) -> int:
        return len(self._by_id)


@dataclass(frozen=True)
class Audit:
    """What `twin schemas check` found."""

    problems: list[str]
    record_types: int
    versions: int

    @property
    def ok(self) -> bool:
        return not self.problems


def audit(root: Path | None = None) -> Audit:
    """Check the catalog completely: readable files, agreement with catalog.json and
    pipeline/topics.py, docs and namespaces, and BACKWARD_TRANSITIVE compatibility."""
    root = root if root is not None else DEFAULT_ROOT
    files, problems = read_schema_files(root)
    try:
        ledger = read_ledger(root)
    except SchemaCatalogError as exc:
        problems += exc.problems
        ledger = None
    if ledger is not None:
        problems += ledger_problems(root, files, ledger)
        problems += [_unrecorded_problem(f) for f in unrecorded(files, ledger)]
    for f in files:
        problems += lint_schema(f)
    problems += [str(i) for i in check_compatibility(files)]
    return Audit(problems, len({f.record_type for f in files}), len(files))


def record_new_versions(root: Path | None = None) -> list[SchemaVersion]:
    """Give every schema file not yet in catalog.json the next free id, and write it.

    Refuses (SchemaCatalogError, SchemaCompatibilityError) while any other problem exists,
    so an id is only ever given to a documented, compatible version."""
    root = root if root is not None else DEFAULT_ROOT
    files, problems = read_schema_files(root)
    ledger = read_ledger(root)
    problems += ledger_problems(root, files, ledger)
    for f in files:
        problems += lint_schema(f)
    if problems:
        raise SchemaCatalogError(
            f"not recording new versions: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            problems,
        )
    incompatible = [str(i) for i in check_compatibility(files)]
    if incompatible:
        raise SchemaCompatibilityError("not recording new versions: " + "; ".join(incompatible))

    new = sorted(unrecorded(files, ledger), key=lambda f: (_type_order(f.record_type), f.version))
    record_types = dict(ledger.record_types)
    next_id = ledger.next_id
    recorded: list[SchemaVersion] = []
    for f in new:
        topic = TOPIC_OF[f.record_type]
        entry = record_types.get(f.record_type, RecordedType(topic, ()))
        version = RecordedVersion(f.version, next_id, f.fingerprint, f.sha256_without_docs)
        record_types[f.record_type] = RecordedType(entry.topic, (*entry.versions, version))
        base = {fld.name: getattr(f, fld.name) for fld in fields(SchemaFile)}
        recorded.append(SchemaVersion(**base, schema_id=next_id, topic=entry.topic))
        next_id += 1
    if recorded:
        ordered = dict(sorted(record_types.items(), key=lambda item: _type_order(item[0])))
        write_ledger(root, Ledger(ordered, next_id))
    return recorded


def _unrecorded_problem(f: SchemaFile) -> str:
    return f"{f.display_path} is not recorded in catalog.json; run `twin schemas record`"


def _type_order(record_type: str) -> tuple[int, str]:
    order = [s.record_type for s in TOPICS if s.record_type is not None]
    return (order.index(record_type), "") if record_type in order else (len(order), record_type)
