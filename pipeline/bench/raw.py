"""The raw limit: read and Avro-decode the very frames the pipeline reads, and nothing more.

A plain confluent-kafka consumer, assigned every partition of telemetry.raw from the first
offset (no group, so no JoinGroup), fetching in large batches (`consume(num_messages=...)`);
every message body is decoded with fastavro's schemaless reader after the 5-byte Confluent
header, logical types included (readings get their datetimes, as the pipeline needs them).
The clock runs from the start of the `consume` call that returned the first messages to the
last message decoded. Each call waits at most `POLL_S`: `consume(n, timeout)` returns only
when it has n messages or the timeout has passed, so a long timeout either kept the whole
fetch out of the clock (a topic of fewer than `BATCH` messages came in one call, before the
clock started) or added the wait for a last, partial batch to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastavro import schemaless_reader

from pipeline.errors import TwinError
from pipeline.serde import SchemaCatalog
from pipeline.settings import Settings

BATCH = 10_000
POLL_S = 0.05
IDLE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RawFigures:
    frames: int
    readings: int
    seconds: float

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "readings": self.readings,
            "seconds": round(self.seconds, 3),
            "readings_per_s": round(self.readings_per_s),
            "frames_per_s": round(self.frames / self.seconds) if self.seconds > 0 else 0,
            "client": "confluent-kafka consume() batches of 10,000, assigned partitions; "
            "fastavro schemaless_reader",
        }


def measure_raw(settings: Settings, topic: str, frames: int) -> RawFigures:
    """Consume and decode `frames` messages of `topic` as fast as one client can."""
    schema = SchemaCatalog.load().latest("telemetry_frame").parsed
    consumer = Consumer(
        {
            **settings.librdkafka(),
            "group.id": "twin-bench-raw",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 10_485_760,
            "queued.min.messages": 200_000,
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=15).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        seen = readings = 0
        first: float | None = None
        idle_since = time.monotonic()
        while seen < frames:
            asked = time.perf_counter()
            messages = consumer.consume(BATCH, timeout=POLL_S)
            if not messages:
                if time.monotonic() - idle_since > IDLE_TIMEOUT_S:
                    raise TwinError(
                        f"raw consume: {seen} of {frames} frames of {topic} after "
                        f"{IDLE_TIMEOUT_S:.0f}s without a message"
                    )
                continue
            idle_since = time.monotonic()
            if first is None:
                first = asked
            for message in messages:
                if message.error() is not None:
                    continue
                body = BytesIO((message.value() or b"")[5:])
                record: Any = schemaless_reader(body, schema, None)
                readings += len(record["readings"])
                seen += 1
        end = time.perf_counter()
    finally:
        consumer.close()
    return RawFigures(seen, readings, end - (first or end))
