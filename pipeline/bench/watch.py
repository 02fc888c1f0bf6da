"""What comes out of the worker, as it arrives: an assigned consumer (no group) on
telemetry.valid, telemetry.deadletter, twin.state and twin.alerts from their first offset.

Counting messages is cheap and needs no decoding, so the watcher takes little CPU from the
pipeline it measures. It decodes only what the figures need: the first validated frame of
each partition (its `validated_ts` is when the worker started on the batch, the start of the
clock), every dead letter (to know how many readings cannot reach ClickHouse), and, while
`latency_since` is set, every validated frame, state record and alert (their ingest, pickup
and event times).
The broker's high watermarks are not trusted (DESIGN.md): ends are reached by counting.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.errors import SerdeError
from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.site import Site


@dataclass
class Arrival:
    """A record's arrival: when this consumer received it, and the time it measures from."""

    received: float
    """time.time() at receipt."""
    since: float
    """The record's ingest time (state) or event time (alert), epoch seconds."""


@dataclass
class OutputCounts:
    valid: int = 0
    dead_letters: int = 0
    dead_readings: int = 0
    states: int = 0
    alerts: int = 0
    first_validated: float | None = None
    """Earliest validated_ts seen (epoch seconds)."""
    last_state_received: float | None = None
    state_latency: list[Arrival] = field(default_factory=list)
    pickup_latency: list[Arrival] = field(default_factory=list)
    """Validated frames: `validated_ts` (the worker began their batch) after `ingest_ts`."""
    alert_latency: list[Arrival] = field(default_factory=list)
    dead_reasons: Counter[str] = field(default_factory=Counter)


class OutputWatcher:
    def __init__(self, settings: Settings, site: Site) -> None:
        self.serde = AvroSerde.from_settings(settings)
        self.topics = {
            name: site.topic(name)
            for name in ("telemetry.valid", "telemetry.deadletter", "twin.state", "twin.alerts")
        }
        self.raw_topic = site.topic("telemetry.raw")
        self.counts = OutputCounts()
        self.latency_since: float | None = None
        self._first_seen: set[int] = set()
        self.consumer = Consumer(
            {
                **settings.librdkafka(),
                "group.id": "twin-bench-watch",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,
            }
        )
        metadata = self.consumer.list_topics(timeout=15)
        self.consumer.assign(
            [
                TopicPartition(topic, p, OFFSET_BEGINNING)
                for topic in self.topics.values()
                for p in sorted(metadata.topics[topic].partitions)
            ]
        )

    def poll(self, budget_s: float) -> OutputCounts:
        """Take what arrived, for about `budget_s` at most.

        A message's arrival is stamped when `poll` returns it (it returns as soon as one is
        there), and whatever came with it is taken at once: `consume(n, timeout)` would
        return only with n messages or at the timeout, adding up to that timeout to every
        latency sample."""
        deadline = time.monotonic() + budget_s
        while True:
            first = self.consumer.poll(max(0.0, deadline - time.monotonic()))
            received = time.time()
            if first is not None:
                for message in [first, *self.consumer.consume(5000, timeout=0)]:
                    if message.error() is None:
                        self._take(message, received)
            if time.monotonic() >= deadline:
                return self.counts

    def _take(self, message: Any, received: float) -> None:
        topic = message.topic()
        counts = self.counts
        if topic == self.topics["twin.state"]:
            counts.states += 1
            counts.last_state_received = received
            if self.latency_since is not None:
                record = self._decode(message.value())
                if record is not None and record["ingest_ts"].timestamp() >= self.latency_since:
                    counts.state_latency.append(Arrival(received, record["ingest_ts"].timestamp()))
        elif topic == self.topics["telemetry.valid"]:
            counts.valid += 1
            first_of_partition = message.partition() not in self._first_seen
            if first_of_partition or self.latency_since is not None:
                self._first_seen.add(message.partition())
                record = self._decode(message.value())
                if record is None:
                    return
                stamp = record["validated_ts"].timestamp()
                if first_of_partition:
                    first = counts.first_validated
                    counts.first_validated = stamp if first is None else min(first, stamp)
                ingest = record["ingest_ts"].timestamp()
                if self.latency_since is not None and ingest >= self.latency_since:
                    counts.pickup_latency.append(Arrival(stamp, ingest))
        elif topic == self.topics["telemetry.deadletter"]:
            letter = self._decode(message.value())
            if letter is None or letter.get("origin_topic") != self.raw_topic:
                return
            counts.dead_letters += 1
            counts.dead_reasons[str(letter.get("reason_code"))] += 1
            frame = self._decode(letter.get("payload"))
            if frame is not None:
                counts.dead_readings += len(frame.get("readings") or [])
        elif topic == self.topics["twin.alerts"]:
            counts.alerts += 1
            if self.latency_since is not None:
                record = self._decode(message.value())
                if record is not None and record["ts"].timestamp() >= self.latency_since:
                    counts.alert_latency.append(Arrival(received, record["ts"].timestamp()))

    def _decode(self, value: bytes | None) -> dict[str, Any] | None:
        try:
            return self.serde.decode(value).record
        except SerdeError:
            return None

    def close(self) -> None:
        self.consumer.close()
