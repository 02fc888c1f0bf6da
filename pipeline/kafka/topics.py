"""Create and list Twinline's topics on a Kafka cluster (idempotent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from pipeline.errors import KafkaUnavailable, TwinError
from pipeline.topics import TOPICS, TopicSpec

TIMEOUT_S = 15.0


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    cleanup_policy: str | None
    retention_ms: str | None
    record_type: str | None
    status: str = "exists"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "partitions": self.partitions,
            "cleanup_policy": self.cleanup_policy,
            "retention_ms": self.retention_ms,
            "record_type": self.record_type,
            "status": self.status,
        }


def _metadata(admin: AdminClient) -> Any:
    try:
        return admin.list_topics(timeout=TIMEOUT_S)
    except KafkaException as exc:
        raise KafkaUnavailable(f"Kafka did not answer: {exc.args[0].str()}") from exc


def create_topics(
    admin: AdminClient, prefix: str, partitions: int, replication_factor: int
) -> list[TopicState]:
    """Create every topic of the catalog that does not exist; report each one's state."""
    existing = _metadata(admin).topics
    wanted = {prefix + spec.name: spec for spec in TOPICS}
    new = [
        NewTopic(name, partitions, replication_factor, config=spec.config())
        for name, spec in wanted.items()
        if name not in existing
    ]
    created: set[str] = set()
    if new:
        for name, future in admin.create_topics(new, request_timeout=TIMEOUT_S).items():
            try:
                future.result()
                created.add(name)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TwinError(f"could not create topic {name}: {error.str()}") from exc
    states = describe_topics(admin, prefix)
    return [
        TopicState(**{**s.as_dict(), "status": "created" if s.name in created else "exists"})
        for s in states
        if s.name in wanted
    ]


def describe_topics(admin: AdminClient, prefix: str = "") -> list[TopicState]:
    """Every non-internal topic on the cluster, Twinline's own marked with their record type."""
    metadata = _metadata(admin)
    known: dict[str, TopicSpec] = {prefix + spec.name: spec for spec in TOPICS}
    names = sorted(n for n in metadata.topics if not n.startswith("__"))
    configs = _configs(admin, names)
    return [
        TopicState(
            name=name,
            partitions=len(metadata.topics[name].partitions),
            cleanup_policy=configs.get(name, {}).get("cleanup.policy"),
            retention_ms=configs.get(name, {}).get("retention.ms"),
            record_type=known[name].record_type if name in known else None,
        )
        for name in names
    ]


def _configs(admin: AdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    futures = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names], request_timeout=TIMEOUT_S
    )
    result: dict[str, dict[str, str]] = {}
    for resource, future in futures.items():
        try:
            entries = future.result()
        except KafkaException:
            continue  # configs are informative only; a broker may not describe every topic
        result[resource.name] = {k: v.value for k, v in entries.items() if v.value is not None}
    return result
