"""The worker's output sender on the real broker: urgent topics go out at once, the others
after their linger unless a send must be confirmed at once; every topic keeps its order."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.kafka.broker import EmbeddedBroker
from pipeline.settings import Settings
from tests.integration.kafka_support import new_topic
from topologies.output import OutputSender
from topologies.processor import Output

pytestmark = pytest.mark.integration

FOREVER_MS = 120_000
"""A linger no test waits out: what goes out before it was sent on purpose."""


def read_all(broker: EmbeddedBroker, topic: str, count: int) -> list[bytes]:
    reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": uuid.uuid4().hex,
                       "enable.auto.commit": False})  # fmt: skip
    reader.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    try:
        for _ in range(100):
            for message in reader.consume(count - len(values), timeout=0.2):
                assert message.error() is None, message.error()
                values.append(message.value())
            if len(values) >= count:
                break
    finally:
        reader.close()
    return values


def test_lagging_outputs_go_out_with_their_linger_or_when_a_send_must_be_confirmed(
    broker: EmbeddedBroker,
) -> None:
    urgent, lagging = new_topic(broker, "out-urgent"), new_topic(broker, "out-lagging")
    sender = OutputSender(
        Settings(kafka_bootstrap=broker.bootstrap), urgent={urgent}, lag_linger_ms=FOREVER_MS
    )

    async def scenario() -> None:
        waiting = asyncio.ensure_future(
            sender.send([Output(lagging, b"k", b"lag %d" % i) for i in range(3)])
        )
        # Sent with both kinds in one call: the urgent output does not wait for the others.
        mixed = asyncio.ensure_future(
            sender.send([Output(lagging, b"k", b"lag 3"), Output(urgent, b"k", b"now")])
        )
        await asyncio.wait_for(asyncio.shield(_urgent_delivered(broker, urgent)), 30)
        assert not waiting.done() and not mixed.done()  # held for the lagging linger
        # A send to be confirmed at once takes everything the lagging producer holds along.
        await asyncio.wait_for(sender.send([Output(lagging, b"k", b"lag 4")], lag=False), 30)
        await asyncio.wait_for(asyncio.gather(waiting, mixed), 30)

    asyncio.run(scenario())
    assert read_all(broker, lagging, 5) == [b"lag %d" % i for i in range(5)]
    assert read_all(broker, urgent, 1) == [b"now"]
    assert sender.close() == 0


async def _urgent_delivered(broker: EmbeddedBroker, topic: str) -> None:
    loop = asyncio.get_running_loop()
    values = await loop.run_in_executor(None, read_all, broker, topic, 1)
    assert values == [b"now"]
