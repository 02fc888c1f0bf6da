"""`schemas/avro/catalog.json`: the stable schema ids of the topic contracts.

For each record type it records its topic and, per version, the schema id (globally unique,
from 1, never reused or changed) and the fingerprints of the file as it was recorded. A file
that no longer matches its fingerprints changed after data may have been written with its id:
that is an error, and the change belongs in a new version file.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import TwinError
from pipeline.serde.files import SchemaFile, display_path
from pipeline.topics import TOPICS

CATALOG_FILE = "catalog.json"
CATALOG_DOC = (
    "Schema ids of the topic contracts in this directory, written by `twin schemas record`. "
    "Ids are global, start at 1 and are never reused; a recorded version file must not change "
    "(fingerprint: SHA-256 of the Avro Parsing Canonical Form)."
)

#: record type -> its home topic (the first in pipeline/topics.py that carries it; a record
#: type may also travel on other topics, e.g. telemetry frames on sim.truth).
TOPIC_OF: dict[str, str] = {}
for _spec in TOPICS:
    if _spec.record_type is not None:
        TOPIC_OF.setdefault(_spec.record_type, _spec.name)


class SchemaCatalogError(TwinError):
    """The schema files and catalog.json disagree, or catalog.json is malformed."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


@dataclass(frozen=True)
class RecordedVersion:
    version: int
    schema_id: int
    fingerprint: str
    sha256_without_docs: str


@dataclass(frozen=True)
class RecordedType:
    topic: str
    versions: tuple[RecordedVersion, ...]


@dataclass(frozen=True)
class Ledger:
    """The content of catalog.json."""

    record_types: dict[str, RecordedType] = field(default_factory=dict)
    next_id: int = 1
    """The id the next recorded version gets; ids below it are taken, even if unlisted."""

    def recorded(self, record_type: str, version: int) -> RecordedVersion | None:
        entry = self.record_types.get(record_type)
        if entry is None:
            return None
        return next((v for v in entry.versions if v.version == version), None)


def read_ledger(root: Path) -> Ledger:
    """Read `<root>/catalog.json`; a missing file is an empty ledger."""
    path = root / CATALOG_FILE
    if not path.exists():
        return Ledger()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        record_types = {
            name: RecordedType(
                topic=str(entry["topic"]),
                versions=tuple(
                    RecordedVersion(
                        version=int(v["version"]),
                        schema_id=int(v["id"]),
                        fingerprint=str(v["fingerprint"]),
                        sha256_without_docs=str(v["sha256_without_docs"]),
                    )
                    for v in entry["versions"]
                ),
            )
            for name, entry in raw["record_types"].items()
        }
        return Ledger(record_types, int(raw["next_id"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        problem = f"{display_path(path)} is malformed: {type(exc).__name__}: {exc}"
        raise SchemaCatalogError(problem) from exc


def write_ledger(root: Path, ledger: Ledger) -> None:
    raw: dict[str, Any] = {
        "doc": CATALOG_DOC,
        "next_id": ledger.next_id,
        "record_types": {
            name: {
                "topic": entry.topic,
                "versions": [
                    {
                        "version": v.version,
                        "id": v.schema_id,
                        "fingerprint": v.fingerprint,
                        "sha256_without_docs": v.sha256_without_docs,
                    }
                    for v in entry.versions
                ],
            }
            for name, entry in ledger.record_types.items()
        },
    }
    path = root / CATALOG_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def unrecorded(files: list[SchemaFile], ledger: Ledger) -> list[SchemaFile]:
    """Schema files with no entry in catalog.json yet."""
    return [f for f in files if ledger.recorded(f.record_type, f.version) is None]


def ledger_problems(root: Path, files: list[SchemaFile], ledger: Ledger) -> list[str]:
    """Disagreements between the schema files, catalog.json and pipeline/topics.py, other
    than files that are simply not recorded yet."""
    problems: list[str] = []
    by_type: dict[str, list[SchemaFile]] = defaultdict(list)
    for f in files:
        by_type[f.record_type].append(f)

    for record_type, versions in by_type.items():
        numbers = [f.version for f in versions]
        if numbers != list(range(1, len(numbers) + 1)):
            found = ", ".join(f"v{n}" for n in numbers)
            problems.append(
                f"{record_type}: versions must be numbered v1, v2, ... without gaps; found {found}"
            )
        first = versions[0]
        for f in versions[1:]:
            if f.fullname != first.fullname:
                problems.append(
                    f"{f.display_path} names {f.fullname} but {first.label} names "
                    f"{first.fullname}; every version keeps the full name (a new major "
                    "version is a new record type)"
                )
        if record_type not in TOPIC_OF:
            problems.append(
                f"{record_type}: no topic in pipeline/topics.py carries this record type"
            )
    for record_type, topic in TOPIC_OF.items():
        if record_type not in by_type:
            problems.append(
                f"pipeline/topics.py says {topic} carries {record_type}, but "
                f"{display_path(root / record_type / 'v1.avsc')} does not exist"
            )

    files_by_key = {(f.record_type, f.version): f for f in files}
    seen_ids: dict[int, str] = {}
    for record_type, entry in ledger.record_types.items():
        expected_topic = TOPIC_OF.get(record_type)
        if expected_topic is not None and entry.topic != expected_topic:
            problems.append(
                f"catalog.json maps {record_type} to topic {entry.topic}, but "
                f"pipeline/topics.py maps it to {expected_topic}"
            )
        newest = max((v.version for v in entry.versions), default=0)
        for recorded in entry.versions:
            label = f"{record_type} v{recorded.version} (id {recorded.schema_id})"
            if recorded.schema_id in seen_ids:
                problems.append(
                    f"catalog.json gives id {recorded.schema_id} to both "
                    f"{seen_ids[recorded.schema_id]} and {label}"
                )
            seen_ids[recorded.schema_id] = label
            if not 1 <= recorded.schema_id < ledger.next_id:
                problems.append(
                    f"catalog.json: {label} is outside the issued ids 1..{ledger.next_id - 1}"
                )
            current = files_by_key.get((record_type, recorded.version))
            path = display_path(root / record_type / f"v{recorded.version}.avsc")
            if current is None:
                problems.append(
                    f"catalog.json records {label}, but {path} is missing or unreadable; "
                    "a recorded version must never be deleted"
                )
            elif (current.fingerprint, current.sha256_without_docs) != (
                recorded.fingerprint,
                recorded.sha256_without_docs,
            ):
                problems.append(
                    f"{path} changed after it was recorded with id {recorded.schema_id}; "
                    f"restore it and add the change as v{newest + 1}.avsc instead"
                )
    return problems
