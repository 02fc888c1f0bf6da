"""Avro records in the Confluent wire format: magic byte 0, 4-byte big-endian schema id,
Avro binary body (fastavro's schemaless encoding).

Writers always use the newest version of a record type. Readers resolve whatever version the
data was written with to the newest version, so old data reads with new code (the catalog's
BACKWARD_TRANSITIVE check guarantees this works).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError, validate

from pipeline.errors import SerdeError
from pipeline.serde.catalog import SchemaCatalog, SchemaVersion
from pipeline.serde.files import parsing_fingerprint
from pipeline.serde.registry import RegistryIds

if TYPE_CHECKING:
    from pipeline.settings import Settings

MAGIC = 0
HEADER_SIZE = 5


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoded message value."""

    record_type: str
    schema_id: int
    """The id in the message header (local catalog or registry id)."""
    version: int | None
    """Catalog version the data was written with; None when a registry schema is not one
    of the local versions (e.g. written by newer code)."""
    record: dict[str, Any]
    """The record as the newest version of its record type (timestamps as aware UTC
    datetimes)."""


@dataclass(frozen=True, slots=True)
class _Reader:
    record_type: str
    schema_id: int
    version: int | None
    writer: dict[str, Any]
    reader: dict[str, Any] | None
    """None when writer and newest version are the same: no resolution needed."""


class AvroSerde:
    """Encode and decode the pipeline's records; ids from the catalog or a registry."""

    def __init__(self, catalog: SchemaCatalog, registry: RegistryIds | None = None) -> None:
        self.catalog = catalog
        self._registry = registry
        self._latest = {rt: catalog.latest(rt) for rt in catalog.record_types}
        self._local_headers = {rt: _header(v.schema_id) for rt, v in self._latest.items()}
        self._registry_headers: dict[tuple[str, str], bytes] = {}
        self._readers: dict[int, _Reader] = {}
        if registry is None:
            for v in catalog:
                self._readers[v.schema_id] = self._reader(
                    v.record_type, v.schema_id, v.version, v.fingerprint, v.parsed
                )

    @classmethod
    def local(cls, catalog: SchemaCatalog | None = None) -> AvroSerde:
        """Schema ids from the local catalog (`schemas/avro/catalog.json`)."""
        return cls(catalog if catalog is not None else SchemaCatalog.load())

    @classmethod
    def from_settings(cls, settings: Settings, catalog: SchemaCatalog | None = None) -> AvroSerde:
        """The registry at `settings.schema_registry_url` if set, else the local catalog."""
        catalog = catalog if catalog is not None else SchemaCatalog.load()
        if not settings.schema_registry_url:
            return cls(catalog)
        return cls(catalog, RegistryIds.connect(settings.schema_registry_url))

    @property
    def uses_registry(self) -> bool:
        return self._registry is not None

    def encode(self, record_type: str, record: dict[str, Any], topic: str | None = None) -> bytes:
        """Encode `record` with the newest version of `record_type`.

        `topic` is the real (possibly prefixed) topic the message goes to; with a registry it
        names the subject `<topic>-value` (default: the record type's logical topic).
        """
        latest = self._latest.get(record_type)
        if latest is None:
            raise SerdeError(
                f"unknown record type {record_type!r} (known: {', '.join(self._latest)})"
            )
        out = BytesIO()
        out.write(self._header_for(latest, topic))
        try:
            schemaless_writer(out, latest.parsed, record)
        except Exception as exc:  # fastavro raises many types; explain the record instead
            raise SerdeError(
                f"cannot encode {record_type} (v{latest.version}, "
                f"{latest.fullname}): {_explain(latest, record, exc)}"
            ) from exc
        return out.getvalue()

    def header(self, record_type: str, topic: str | None = None) -> bytes:
        """The 5-byte wire-format header `encode` writes before a `record_type` body (same
        `topic` meaning as there)."""
        latest = self._latest.get(record_type)
        if latest is None:
            raise SerdeError(
                f"unknown record type {record_type!r} (known: {', '.join(self._latest)})"
            )
        return self._header_for(latest, topic)

    def known_schema(self, schema_id: int) -> tuple[str, int | None] | None:
        """(record type, catalog version) of a schema id this serde already knows: every
        local catalog id, and registry ids it has decoded before (version None when the
        registry schema is none of the local versions). None otherwise; never asks the
        registry."""
        entry = self._readers.get(schema_id)
        return None if entry is None else (entry.record_type, entry.version)

    def _header_for(self, latest: SchemaVersion, topic: str | None) -> bytes:
        registry = self._registry
        if registry is None:
            return self._local_headers[latest.record_type]
        return self._registry_header(registry, latest, topic or latest.topic)

    def decode(self, data: bytes | None) -> Decoded:
        """Decode a message value in the Confluent wire format into the newest version of
        its record type. Raises SerdeError for anything that is not such a message."""
        if data is None:
            raise SerdeError("no message value (a tombstone?), expected an Avro record")
        if len(data) < HEADER_SIZE:
            raise SerdeError(
                f"{len(data)} bytes is too short for the Confluent wire format "
                "(magic byte 0, 4-byte schema id, Avro body)"
            )
        if data[0] != MAGIC:
            raise SerdeError(
                f"not the Confluent wire format: first byte is {data[0]}, expected magic byte 0"
            )
        schema_id = int.from_bytes(data[1:HEADER_SIZE], "big")
        entry = self._readers.get(schema_id) or self._resolve(schema_id)
        body = BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(body, entry.writer, entry.reader)
        except Exception as exc:  # EOFError, IndexError, UnicodeDecodeError, ... from fastavro
            raise SerdeError(
                f"schema id {schema_id} ({_describe(entry)}): corrupt or truncated Avro body "
                f"of {len(data) - HEADER_SIZE} bytes: {type(exc).__name__}: {exc}"
            ) from exc
        if body.tell() != len(data):
            raise SerdeError(
                f"schema id {schema_id} ({_describe(entry)}): {len(data) - body.tell()} byte(s) "
                "left after the record; the data does not match the schema"
            )
        # Every catalog and registry writer schema is a record, so the result is a dict.
        return Decoded(entry.record_type, schema_id, entry.version, cast("dict[str, Any]", record))

    def _reader(
        self,
        record_type: str,
        schema_id: int,
        version: int | None,
        fingerprint: str,
        writer: dict[str, Any],
    ) -> _Reader:
        latest = self._latest[record_type]
        reader = None if fingerprint == latest.fingerprint else latest.parsed
        return _Reader(record_type, schema_id, version, writer, reader)

    def _resolve(self, schema_id: int) -> _Reader:
        if self._registry is None:
            ids = ", ".join(str(i) for i in sorted(self._readers))
            raise SerdeError(
                f"unknown schema id {schema_id}: not in the local catalog (ids {ids}); "
                "data from a schema registry needs TWIN_SCHEMA_REGISTRY_URL"
            )
        text = self._registry.schema_text(schema_id)
        try:
            writer_json = json.loads(text)
            writer = parse_schema(writer_json)
        except Exception as exc:
            raise SerdeError(
                f"schema id {schema_id} from the registry is not a usable Avro schema: {exc}"
            ) from exc
        fullname = str(writer.get("name", "")) if isinstance(writer, dict) else ""
        record_type = self.catalog.record_type_of(fullname)
        if record_type is None or not isinstance(writer, dict):
            raise SerdeError(
                f"schema id {schema_id} from the registry is {fullname or 'not a record'}, "
                "which is not a record type of this pipeline's catalog"
            )
        fingerprint = parsing_fingerprint(writer_json)
        local = next(
            (v for v in self.catalog.versions(record_type) if v.fingerprint == fingerprint), None
        )
        version = local.version if local is not None else None
        entry = self._reader(record_type, schema_id, version, fingerprint, writer)
        self._readers[schema_id] = entry
        return entry

    def _registry_header(self, registry: RegistryIds, latest: SchemaVersion, topic: str) -> bytes:
        key = (latest.record_type, topic)
        header = self._registry_headers.get(key)
        if header is None:
            schema_id = registry.id_for(f"{topic}-value", latest.schema_text)
            header = self._registry_headers[key] = _header(schema_id)
        return header


def _header(schema_id: int) -> bytes:
    return bytes([MAGIC]) + schema_id.to_bytes(4, "big")


def _describe(entry: _Reader) -> str:
    version = f"v{entry.version}" if entry.version is not None else "a registry version"
    return f"{entry.record_type} {version}"


def _explain(latest: SchemaVersion, record: Any, exc: Exception) -> str:
    """Name the offending field, using fastavro's validator (only on the error path)."""
    try:
        validate(record, latest.parsed, raise_errors=True)
    except ValidationError as err:
        namespace = latest.fullname.rpartition(".")[0] + "."
        details = []
        for problem in err.errors[:3]:
            value = repr(problem.datum)
            value = value if len(value) <= 60 else value[:57] + "..."
            where = "the record"
            if problem.field:
                name = str(problem.field).removeprefix("Field(").removesuffix(")")
                where = "field " + name.removeprefix(namespace)
            details.append(f"{where} is {value}, expected {_type_name(problem.schema)}")
        return "; ".join(details)
    except Exception:  # the validator failing too says nothing more than the writer did
        pass
    return f"{type(exc).__name__}: {exc}"


def _type_name(schema: Any) -> str:
    if isinstance(schema, list):
        return " or ".join(_type_name(s) for s in schema)
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "enum":
            return f"one of {', '.join(schema.get('symbols', []))}"
        if "logicalType" in schema:
            return f"{kind} ({schema['logicalType']})"
        if kind in ("record", "fixed"):
            return f"{kind} {schema.get('name')}"
        return str(kind)
    return str(schema)
