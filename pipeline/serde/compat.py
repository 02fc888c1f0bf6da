"""Schema evolution check: BACKWARD_TRANSITIVE, with the `avro` package's checker.

Every version of a record type, used as the reader schema, must be able to read data written
with every earlier version. That is what lets new code decode everything still on a topic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import avro.errors
import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from pipeline.serde.files import SchemaFile


@dataclass(frozen=True)
class Incompatibility:
    """A newer version of a record type that cannot read data written with an older one."""

    record_type: str
    reader: str
    """The newer schema file (display path)."""
    writer: str
    """The older schema file (display path)."""
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        reasons = "; ".join(self.reasons)
        if self.reader == self.writer:  # the file itself is unusable
            return f"{self.reader}: {reasons}"
        return f"{self.reader} cannot read data written with {self.writer}: {reasons}"


def check_compatibility(schemas: Iterable[SchemaFile]) -> list[Incompatibility]:
    """Check each version against ALL earlier versions of its record type.

    `schemas` is a `SchemaCatalog` or any schema files (e.g. ones not recorded yet).
    Returns every incompatibility found; an empty list means compatible.
    """
    by_type: dict[str, list[SchemaFile]] = defaultdict(list)
    for schema_file in schemas:
        by_type[schema_file.record_type].append(schema_file)
    found: list[Incompatibility] = []
    for record_type, versions in by_type.items():
        versions.sort(key=lambda f: f.version)
        parsed: dict[int, avro.schema.Schema] = {}
        for schema_file in versions:
            try:
                parsed[schema_file.version] = avro.schema.parse(schema_file.schema_text)
            except (avro.errors.AvroException, ValueError) as exc:
                found.append(
                    Incompatibility(
                        record_type,
                        schema_file.display_path,
                        schema_file.display_path,
                        (f"the avro package cannot parse it: {exc}",),
                    )
                )
        for i, newer in enumerate(versions):
            for older in versions[:i]:
                if newer.version not in parsed or older.version not in parsed:
                    continue
                reasons = _incompatibilities(
                    parsed[newer.version], parsed[older.version], newer.schema
                )
                if reasons:
                    found.append(
                        Incompatibility(
                            record_type, newer.display_path, older.display_path, reasons
                        )
                    )
    return found


def _incompatibilities(
    reader: avro.schema.Schema, writer: avro.schema.Schema, reader_json: dict[str, Any]
) -> tuple[str, ...]:
    # A fresh checker per pair: its memo is keyed by schema object identity.
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return ()
    kinds = ", ".join(sorted({kind.value for kind in result.incompatibilities}))
    messages = "; ".join(sorted(result.messages))
    # The checker's merge adds the root "/" of every compatible field it passed.
    locations = (result.locations - {"/"}) or result.locations
    places = ", ".join(sorted(_field_path(reader_json, loc) for loc in locations))
    return (f"{kinds} at {places}: {messages}",)


def _field_path(schema: Any, location: str) -> str:
    """Turn the checker's location (`/fields/4/type/items/fields/2`) into field names
    (`readings[].quality`), falling back to the raw location."""
    names: list[str] = []
    node = schema
    tokens = [t for t in location.split("/") if t]
    try:
        while tokens:
            token = tokens.pop(0)
            if token == "fields":
                fld = node["fields"][int(tokens.pop(0))]
                names.append(fld["name"])
                node = fld
            elif token == "type":
                node = node["type"]
            elif token == "items":
                names[-1] += "[]"
                node = node["items"]
            elif token == "values":
                names[-1] += "{}"
                node = node["values"]
            else:  # name, symbols, size or a union branch: the field is already named
                break
    except (KeyError, IndexError, TypeError, ValueError):
        return location or "/"
    # The checker loses the location inside some unions and reports the root instead.
    return ".".join(names) or location or "/"
