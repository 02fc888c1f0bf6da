"""What the demo learns from Kafka: cheap progress counts while the pipeline runs, whether the
worker and the sink have caught up, and the records the summary scores (truth, dead letters,
state estimates with their append times).

Only messages appended at or after the run's start count, so a cluster that already holds
data (TWIN_KAFKA_BOOTSTRAP) does not inflate the figures.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from pipeline.errors import SerdeError
from pipeline.serde import AvroSerde
from pipeline.settings import Settings


def _consumer(settings: Settings, group: str = "twin-demo") -> Consumer:
    return Consumer(
        {
            **settings.librdkafka(),
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        }
    )


def _partitions(consumer: Consumer, topics: list[str]) -> list[TopicPartition]:
    metadata = consumer.list_topics(timeout=15)
    return [
        TopicPartition(topic, p, OFFSET_BEGINNING)
        for topic in topics
        if topic in metadata.topics
        for p in sorted(metadata.topics[topic].partitions)
    ]


@dataclass
class TopicCounts:
    """Frames and readings seen on each topic so far (decoded, so readings are exact)."""

    frames: Counter[str] = field(default_factory=Counter)
    readings: Counter[str] = field(default_factory=Counter)


class ProgressCounter:
    """A consumer assigned to the pipeline's topics that counts as it goes (no group)."""

    def __init__(self, settings: Settings, topics: list[str], since: datetime) -> None:
        self.since_ms = int(since.timestamp() * 1000)
        self.serde = AvroSerde.from_settings(settings)
        self.counts = TopicCounts()
        self.consumer = _consumer(settings)
        self.consumer.assign(_partitions(self.consumer, topics))

    def poll(self, budget_s: float = 0.5) -> TopicCounts:
        """Read what arrived since the last call (for at most about `budget_s`)."""
        while True:
            messages = self.consumer.consume(2000, timeout=budget_s)
            for message in messages:
                if message.error() is not None or message.timestamp()[1] < self.since_ms:
                    continue
                topic = str(message.topic())
                self.counts.frames[topic] += 1
                with contextlib.suppress(SerdeError):
                    readings = self.serde.decode(message.value()).record.get("readings")
                    if isinstance(readings, list):
                        self.counts.readings[topic] += len(readings)
            if len(messages) < 2000:
                return self.counts

    def close(self) -> None:
        self.consumer.close()


def group_lag(settings: Settings, group: str, topics: list[str]) -> int | None:
    """Messages of `topics` not yet committed by consumer group `group` (None if unknown)."""
    consumer = _consumer(settings, group)
    try:
        partitions = _partitions(consumer, topics)
        committed = consumer.committed(partitions, timeout=10)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            start = tp.offset if tp.offset >= 0 else low
            lag += max(0, high - start)
        return lag
    except KafkaException:
        return None
    finally:
        consumer.close()


@dataclass(frozen=True)
class Appended:
    record: dict[str, Any]
    appended: datetime
    """The message's Kafka timestamp (when it was produced)."""


def read_all(
    settings: Settings, topic: str, since: datetime, idle_s: float = 2.0
) -> Iterator[Appended]:
    """Every decodable record of `topic` appended since `since`, from the start; stops when
    nothing has arrived for `idle_s` seconds."""
    serde = AvroSerde.from_settings(settings)
    since_ms = int(since.timestamp() * 1000)
    consumer = _consumer(settings)
    try:
        partitions = _partitions(consumer, [topic])
        if not partitions:
            return
        ends = {}
        for tp in partitions:
            ends[tp.partition] = consumer.get_watermark_offsets(tp, timeout=10)[1]
        consumer.assign(partitions)
        done = {p for p, end in ends.items() if end == 0}
        while len(done) < len(ends):
            messages = consumer.consume(5000, timeout=idle_s)
            if not messages:
                break
            for message in messages:
                if message.error() is not None:
                    continue
                partition, offset = int(message.partition() or 0), int(message.offset() or 0)
                if offset + 1 >= ends[partition]:
                    done.add(partition)
                stamp_ms = message.timestamp()[1]
                if stamp_ms < since_ms:
                    continue
                try:
                    record = serde.decode(message.value()).record
                except SerdeError:
                    continue
                yield Appended(record, datetime.fromtimestamp(stamp_ms / 1000, UTC))
    finally:
        consumer.close()
