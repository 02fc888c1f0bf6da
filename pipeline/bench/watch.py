"""What comes out of the worker, as it arrives: an assigned consumer (no group) on
telemetry.valid, telemetry.deadletter, twin.state and twin.alerts from their first offset.

Counting messages is cheap and needs no decoding, so the watcher takes little CPU from the
pipeline it measures. It reads only what the figures need: the first validated frame of
each partition (its `validated_ts` is when the worker started on the batch, the start of the
clock), every dead letter (to know how many readings cannot reach ClickHouse), and, while
`latency_since` is set, every validated frame, state record and alert (their ingest, pickup
and event times). Validated frames and state records lead with the times it needs, so of
those it reads only the first fields (`leading_fields`), not the readings or signals after
them; alerts and dead letters, which are few, are decoded in full.
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
from pipeline.serde.avro import HEADER_SIZE, MAGIC
from pipeline.settings import Settings
from pipeline.site import Site
from pipeline.stages.common import to_micros

LEADING = {
    "validated_frame": ("asset_id", "source_id", "seq", "ingest_ts", "validated_ts"),
    "state_estimate": ("asset_id", "source_id", "seq", "ts", "ingest_ts"),
}
"""The first fields of the records whose times the watcher reads: two strings, three longs."""
_LEADING_KINDS = ["string", "string", "long", "long", "long"]
_LONG_MASK = (1 << 64) - 1


def leading_fields(value: bytes | None, strings: int = 2, longs: int = 3) -> tuple[int, ...] | None:
    """The first `longs` longs of an Avro record in the Confluent wire format whose body begins
    with `strings` strings and then those longs, read without decoding the rest. None for a
    value too short for them, a length or long that is no Avro varint, or no magic byte; the
    schema id is not looked at."""
    if value is None or len(value) <= HEADER_SIZE or value[0] != MAGIC:
        return None
    end, at = len(value), HEADER_SIZE
    found: list[int] = []
    for place in range(strings + longs):
        # A zigzag varint: 7 bits a byte, low groups first, high bit set on all but the last.
        raw = shift = 0
        while True:
            if at >= end or shift > 63:
                return None
            byte = value[at]
            at += 1
            raw |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        raw &= _LONG_MASK
        number = (raw >> 1) ^ -(raw & 1)
        if place < strings:
            if number < 0 or at + number > end:
                return None
            at += number  # the string's UTF-8 bytes
        else:
            found.append(number)
    return tuple(found)


class LeadingTimes:
    """Reads (seq, then the two times `LEADING` names, in microseconds) of validated frames
    and state records: from the leading bytes (`leading_fields`) when a message's schema is
    the newest version of its record type and leads as `LEADING` says, else from a full
    decode (an older version, or a registry id the serde has not decoded a message of)."""

    def __init__(self, serde: AvroSerde) -> None:
        self.serde = serde
        self._newest: dict[str, tuple[str, int]] = {}
        """Per record type, its (type, version) whose messages `leading_fields` can read."""
        for record_type, names in LEADING.items():
            latest = serde.catalog.latest(record_type)
            if leads_with(latest.schema, names):
                self._newest[record_type] = (record_type, latest.version)
        self._quick: dict[tuple[str, bytes], bool] = {}
        """(record type expected, message header) -> is the message one of `_newest`."""

    def read(self, value: bytes | None, record_type: str) -> tuple[int, ...] | None:
        """The times of a `record_type` message; None for a message that is no such record
        (a full decode says so; the leading bytes say so only when too short or no varints)."""
        header = value[:HEADER_SIZE] if value is not None else b""
        quick = self._quick.get((record_type, header))
        if quick is None and len(header) == HEADER_SIZE:
            # Registry ids are known once the serde has decoded a message with them: until
            # then nothing is stored and the message is decoded in full.
            known = self.serde.known_schema(int.from_bytes(header[1:], "big"))
            if known is not None:
                quick = known == self._newest.get(record_type)
                self._quick[record_type, header] = quick
        if quick:
            return leading_fields(value, strings=2, longs=3)
        try:
            decoded = self.serde.decode(value)
            if decoded.record_type != record_type:
                return None
            record = decoded.record
            first, second = (record[name] for name in LEADING[record_type][3:])
            return int(record["seq"]), to_micros(first), to_micros(second)
        except (SerdeError, KeyError, TypeError):
            return None


@dataclass
class Arrival:
    """A record's arrival: when this consumer received it, and the time it measures from."""

    received: float
    """time.time() at receipt (for pickup: when the worker began the frame's batch)."""
    since: float
    """The ingest time of the frame it measures from, epoch seconds."""


@dataclass
class AlertSeen:
    """An alert event's arrival at this consumer."""

    received: float
    """time.time() at receipt."""
    asset_id: str
    ts_us: int
    """The event time of the reading that changed the alert."""


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
    alerts_seen: list[AlertSeen] = field(default_factory=list)
    """Alert events with an event time in the latency phase."""
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
        self.times = LeadingTimes(self.serde)
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
                times = self.times.read(message.value(), "state_estimate")
                if times is not None and times[2] / 1e6 >= self.latency_since:
                    counts.state_latency.append(Arrival(received, times[2] / 1e6))
        elif topic == self.topics["telemetry.valid"]:
            counts.valid += 1
            first_of_partition = message.partition() not in self._first_seen
            if first_of_partition or self.latency_since is not None:
                self._first_seen.add(message.partition())
                times = self.times.read(message.value(), "validated_frame")
                if times is None:
                    return
                stamp = times[2] / 1e6
                if first_of_partition:
                    first = counts.first_validated
                    counts.first_validated = stamp if first is None else min(first, stamp)
                ingest = times[1] / 1e6
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
                    seen = AlertSeen(received, record["asset_id"], to_micros(record["ts"]))
                    counts.alerts_seen.append(seen)

    def _decode(self, value: bytes | None) -> dict[str, Any] | None:
        try:
            return self.serde.decode(value).record
        except SerdeError:
            return None

    def close(self) -> None:
        self.consumer.close()


def leads_with(schema: dict[str, Any], names: tuple[str, ...]) -> bool:
    """Does a record schema begin with `names` as two strings and three longs?"""
    fields = schema.get("fields", [])[: len(names)]
    kinds = [f["type"] if isinstance(f["type"], str) else f["type"].get("type") for f in fields]
    return [f["name"] for f in fields] == list(names) and kinds == _LEADING_KINDS
