"""The worker's state topic read back on the real broker: every latest value of the assigned
partitions, also when the last messages went out in one record batch (the broker's high
watermark then falls short of the end)."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from pipeline.kafka.broker import EmbeddedBroker
from pipeline.settings import Settings
from tests.integration.kafka_support import new_topic
from topologies.state_store import StateStore, StateStoreError

pytestmark = pytest.mark.integration


def write(broker: EmbeddedBroker, topic: str, messages: list[tuple[bytes, bytes | None]]) -> dict:
    """Produce in few record batches (long linger); key -> the partition it went to."""
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 200,
            "compression.type": "lz4",
        }
    )
    partitions: dict[bytes, int] = {}

    def delivered(err: object, msg: object) -> None:
        assert err is None, err
        partitions[msg.key()] = msg.partition()  # type: ignore[attr-defined]

    for key, value in messages:
        producer.produce(topic, value, key, on_delivery=delivered)
    assert producer.flush(15) == 0
    return partitions


def test_load_reads_every_latest_value_of_the_assigned_partitions(
    broker: EmbeddedBroker,
) -> None:
    topic = new_topic(broker, "state", partitions=2)
    keys = [f"asset-{i:02d}".encode() for i in range(12)]
    write(broker, topic, [(k, b"old " + k) for k in keys])
    where = write(broker, topic, [(k, b"new " + k) for k in keys[:8]] + [(keys[0], None)])
    store = StateStore(Settings(kafka_bootstrap=broker.bootstrap), topic)

    assert store.load({0, 1}) == 11
    expected = {k: (b"new " if i < 8 else b"old ") + k for i, k in enumerate(keys) if i}
    assert store.values == expected  # deleted asset-00 gone, no end mark among the values

    # Only the partitions asked for; and a value is handed out once.
    one = {k for k, p in where.items() if p == 0}
    assert 0 < store.load({0}) < 11
    assert set(store.values) == one - {keys[0]} | {k for k in keys[8:] if k in store.values}
    assert all(k not in store.values for k, p in where.items() if p == 1)
    some = next(iter(store.values))
    assert store.take(some) == expected[some]
    assert store.take(some) is None

    # Read again after more writes: their values replace the older ones.
    write(broker, topic, [(k, b"newer " + k) for k in keys[1:4]])
    store.load({0, 1})
    assert {k: store.values[k] for k in keys[1:4]} == {k: b"newer " + k for k in keys[1:4]}


def test_load_of_a_missing_topic_says_how_to_make_it(broker: EmbeddedBroker) -> None:
    store = StateStore(Settings(kafka_bootstrap=broker.bootstrap), "no-such-state-topic")
    with pytest.raises(StateStoreError, match=r"no-such-state-topic does not exist.*twin topics"):
        store.load({0})
