"""confluent-kafka clients configured the one way Twinline uses them."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from pipeline.settings import Settings

# murmur2 is what aiokafka/Faust and the Java clients use: with it an asset_id lands in the
# same partition whichever client produced it (co-partitioned topics and tables).
PRODUCER_DEFAULTS = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "partitioner": "murmur2_random",
    "linger.ms": 20,
}


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(settings.librdkafka())


def producer(settings: Settings, **overrides: Any) -> Producer:
    return Producer({**settings.librdkafka(), **PRODUCER_DEFAULTS, **overrides})


def consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    conf = {
        **settings.librdkafka(),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        **overrides,
    }
    return Consumer(conf)
