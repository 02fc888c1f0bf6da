"""The `.avsc` files under `schemas/avro/`: reading them, fingerprinting them, and the
documentation rules every topic contract follows.

Layout: `<root>/<record_type>/v<N>.avsc`, one file per version of a record type.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from pipeline import PROJECT_ROOT

SCHEMA_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")
#: `twinline.<area>.v<major>`: the major version changes only with a new record type.
NAMESPACE = re.compile(r"^twinline\.[a-z][a-z0-9_]*\.v[1-9][0-9]*$")
NAMED_TYPES = ("record", "enum", "fixed")


@dataclass(frozen=True)
class SchemaFile:
    """One version of one record type, as written in its `.avsc` file."""

    record_type: str
    version: int
    path: Path
    schema: dict[str, Any] = field(repr=False)
    """The schema as written (parsed JSON, docs included)."""
    fullname: str
    fingerprint: str
    """SHA-256 (hex) of the Avro Parsing Canonical Form: the standard Avro fingerprint."""
    sha256_without_docs: str
    """SHA-256 (hex) of the schema minus its `doc` texts: unlike the canonical form, it also
    changes with defaults, logical types, aliases and enum defaults."""
    parsed: dict[str, Any] = field(repr=False, compare=False)
    """The schema parsed by fastavro, ready for its schemaless reader and writer."""

    @property
    def label(self) -> str:
        """`<record_type>/v<N>.avsc`, the file's name within the catalog."""
        return f"{self.record_type}/v{self.version}.avsc"

    @property
    def display_path(self) -> str:
        return display_path(self.path)

    @property
    def schema_text(self) -> str:
        """Compact JSON of the schema as written, docs included (what a registry stores)."""
        return json.dumps(self.schema, separators=(",", ":"), ensure_ascii=False)


def display_path(path: Path) -> str:
    """The path relative to the project root when inside it, else as given."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def parsing_fingerprint(schema: dict[str, Any]) -> str:
    """SHA-256 (hex) of the schema's Avro Parsing Canonical Form."""
    return str(fingerprint(to_parsing_canonical_form(schema), "SHA-256"))


def sha256_without_docs(schema: dict[str, Any]) -> str:
    text = json.dumps(_without_docs(schema), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _without_docs(node: Any) -> Any:
    if isinstance(node, dict):
        # A field's default is data, not schema: a "doc" key inside it must stay.
        return {
            k: (v if k == "default" else _without_docs(v)) for k, v in node.items() if k != "doc"
        }
    if isinstance(node, list):
        return [_without_docs(v) for v in node]
    return node


def read_schema_file(path: Path, record_type: str, version: int) -> SchemaFile:
    """Read and parse one `.avsc` file; ValueError says what is wrong with it."""
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read JSON: {exc}") from exc
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise ValueError("the top-level type must be a record")
    try:
        parsed = parse_schema(schema)
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise ValueError(f"not a valid Avro schema: {exc}") from exc
    if not isinstance(parsed, dict):  # a record schema always parses to a dict
        raise ValueError("the top-level type must be a record")
    return SchemaFile(
        record_type=record_type,
        version=version,
        path=path,
        schema=schema,
        fullname=str(parsed["name"]),
        fingerprint=parsing_fingerprint(schema),
        sha256_without_docs=sha256_without_docs(schema),
        parsed=parsed,
    )


def read_schema_files(root: Path) -> tuple[list[SchemaFile], list[str]]:
    """Every schema file under `root`, ordered by record type and version, and the
    problems of the files that could not be read."""
    files: list[SchemaFile] = []
    problems: list[str] = []
    if not root.is_dir():
        return files, [f"{display_path(root)} is not a directory"]
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        if directory.name.startswith((".", "_")):
            continue
        for path in sorted(directory.iterdir()):
            match = SCHEMA_FILE.match(path.name)
            if match is None:
                problems.append(
                    f"{display_path(path)}: unexpected file; schema files are named v<N>.avsc"
                )
                continue
            try:
                files.append(read_schema_file(path, directory.name, int(match.group(1))))
            except ValueError as exc:
                problems.append(f"{display_path(path)}: {exc}")
    files.sort(key=lambda f: (f.record_type, f.version))
    return files, problems


def lint_schema(schema_file: SchemaFile) -> list[str]:
    """Contract rules beyond Avro validity: a versioned namespace, and a `doc` on every
    record, enum, fixed and field."""
    where = schema_file.display_path
    problems = []
    namespace = schema_file.fullname.rpartition(".")[0]
    if not NAMESPACE.match(namespace):
        problems.append(
            f"{where}: namespace {namespace!r} should be twinline.<area>.v<major> "
            "(e.g. twinline.telemetry.v1)"
        )
    for what, node in _documented_nodes(schema_file.schema):
        if not str(node.get("doc", "")).strip():
            problems.append(f"{where}: {what} has no doc")
        kind = node.get("type")
        # The Avro spec (and Java registries) want a union's default to match its FIRST
        # branch; fastavro alone would accept any branch.
        if (
            what.startswith("field ")
            and isinstance(kind, list)
            and "default" in node
            and (node["default"] is None) != (kind[0] == "null")
        ):
            problems.append(
                f"{where}: {what}: a union's default must match its first branch "
                f"({kind[0]!r}), found {node['default']!r}"
            )
    return problems


def _documented_nodes(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(description, node) for every named type and field that needs a doc."""
    if isinstance(node, list):
        for branch in node:
            yield from _documented_nodes(branch)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in NAMED_TYPES:
        yield f"{kind} {node.get('name')}", node
    if kind == "record":
        for fld in node.get("fields", []):
            yield f"field {node.get('name')}.{fld.get('name')}", fld
            yield from _documented_nodes(fld.get("type"))
    elif kind == "array":
        yield from _documented_nodes(node.get("items"))
    elif kind == "map":
        yield from _documented_nodes(node.get("values"))
    elif isinstance(kind, dict | list):
        yield from _documented_nodes(kind)
