"""Schema ids from a Confluent-compatible schema registry (`TWIN_SCHEMA_REGISTRY_URL`).

Subjects follow the TopicNameStrategy: `<topic>-value`, with the real (possibly prefixed)
topic name. Every registry failure becomes a SerdeError that names the subject or id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline.errors import SerdeError
from pipeline.serde.catalog import SchemaCatalog

COMPATIBILITY_LEVELS = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)


def redact_url(url: str) -> str:
    """The URL without user and password, fit for logs and output."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class RegistryIds:
    """Looks up (or registers) schema ids per subject and fetches writer schemas by id.

    The confluent-kafka client caches ids and schemas itself; AvroSerde also caches the
    results, so the registry is asked once per subject and once per unknown id.
    """

    def __init__(self, client: Any, url: str = "") -> None:
        self._client = client
        self.url = redact_url(url) if url else "the schema registry"

    @classmethod
    def connect(cls, url: str) -> RegistryIds:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        try:
            client = SchemaRegistryClient({"url": url})
        except Exception as exc:  # bad URL or settings
            raise SerdeError(f"schema registry {redact_url(url)}: {exc}") from exc
        return cls(client, url)

    def id_for(self, subject: str, schema_text: str) -> int:
        """The id of this schema under `subject`, registering it when the subject lacks it."""
        from confluent_kafka.schema_registry import Schema, SchemaRegistryError

        schema = Schema(schema_text, "AVRO")
        # Look up first: producing with a read-only registry account must work too.
        try:
            return int(self._client.lookup_schema(subject, schema).schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code != 404:  # not found (subject or schema): register it
                raise self._error(f"looking up subject {subject}", exc) from exc
        except Exception as exc:
            raise self._error(f"looking up subject {subject}", exc) from exc
        try:
            return int(self._client.register_schema(subject, schema))
        except Exception as exc:
            raise self._error(f"registering a schema under subject {subject}", exc) from exc

    def schema_text(self, schema_id: int) -> str:
        """The writer schema (JSON) of a schema id."""
        try:
            schema = self._client.get_schema(schema_id)
        except Exception as exc:
            raise self._error(f"fetching schema id {schema_id}", exc) from exc
        if (schema.schema_type or "AVRO") != "AVRO" or not schema.schema_str:
            raise SerdeError(
                f"{self.url}: schema id {schema_id} is a {schema.schema_type} schema, not Avro"
            )
        return str(schema.schema_str)

    def set_compatibility(self, subject: str, level: str) -> None:
        try:
            self._client.set_compatibility(subject_name=subject, level=level)
        except Exception as exc:
            raise self._error(f"setting compatibility {level} on subject {subject}", exc) from exc

    def _error(self, doing: str, exc: Exception) -> SerdeError:
        return SerdeError(f"{self.url}: {doing} failed: {exc}")


@dataclass(frozen=True)
class PushedVersion:
    subject: str
    record_type: str
    version: int
    local_id: int
    registry_id: int


def push_catalog(
    catalog: SchemaCatalog, registry: RegistryIds, prefix: str = "", compatibility: str = ""
) -> list[PushedVersion]:
    """Register every version of every record type, oldest first, under
    `<prefix><topic>-value`; set the subject's compatibility level first when given."""
    pushed = []
    for record_type in catalog.record_types:
        subject = f"{prefix}{catalog.topic(record_type)}-value"
        if compatibility:
            registry.set_compatibility(subject, compatibility)
        for version in catalog.versions(record_type):
            registry_id = registry.id_for(subject, version.schema_text)
            pushed.append(
                PushedVersion(subject, record_type, version.version, version.schema_id, registry_id)
            )
    return pushed
