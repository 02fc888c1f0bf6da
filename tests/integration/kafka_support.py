"""Helpers for tests on the real broker."""

from __future__ import annotations

import uuid

from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.kafka.broker import EmbeddedBroker


def new_topic(broker: EmbeddedBroker, prefix: str, partitions: int = 1) -> str:
    """A topic of its own for one test: `<prefix>-<random>`, created and ready."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(15)
    return name
