"""Avro serde for the topic contracts: the schema catalog in `schemas/avro/`, the Confluent
wire format, schema registry access and the evolution check.

    catalog = SchemaCatalog.load()
    serde = AvroSerde.from_settings(settings)   # registry if configured, else local ids
    data = serde.encode("telemetry_frame", record, topic="telemetry.raw")
    decoded = serde.decode(data)                # .record_type, .schema_id, .version, .record
"""

from __future__ import annotations

from pipeline.serde.avro import AvroSerde, Decoded
from pipeline.serde.catalog import SchemaCatalog, SchemaVersion, audit, record_new_versions
from pipeline.serde.compat import Incompatibility, check_compatibility
from pipeline.serde.ledger import SchemaCatalogError

__all__ = [
    "AvroSerde",
    "Decoded",
    "Incompatibility",
    "SchemaCatalog",
    "SchemaCatalogError",
    "SchemaVersion",
    "audit",
    "check_compatibility",
    "record_new_versions",
]
