"""`twin tail`: read a topic from its earliest offset and print decoded records.

It reads without a consumer group (partitions are assigned, nothing is committed), so looking
at a topic never moves anyone's offsets. Undecodable messages are printed as errors, not fatal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from pipeline.errors import KafkaUnavailable, SerdeError, TwinError
from pipeline.serde import AvroSerde
from pipeline.serde.text import to_jsonable


@dataclass
class TailStats:
    records: int = 0
    errors: int = 0


def assigned_consumer(conf: dict[str, Any], topic: str) -> Consumer:
    """A consumer assigned to every partition of `topic`, from the earliest offset."""
    consumer = Consumer(
        {
            **conf,
            "group.id": "twin-tail",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(timeout=15)
    except KafkaException as exc:
        consumer.close()
        raise KafkaUnavailable(f"Kafka did not answer: {exc.args[0].str()}") from exc
    if topic not in metadata.topics:
        consumer.close()
        raise TwinError(f"topic {topic} does not exist (`twin topics list` shows what there is)")
    partitions = sorted(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    return consumer


def tail(
    conf: dict[str, Any],
    topic: str,
    serde: AvroSerde,
    out: TextIO,
    limit: int | None = None,
    idle_s: float = 5.0,
    as_json: bool = False,
    with_meta: bool = False,
) -> TailStats:
    """Print records of `topic` until `limit` records or `idle_s` seconds without a new one."""
    stats = TailStats()
    consumer = assigned_consumer(conf, topic)
    try:
        for message in _messages(consumer, idle_s):
            if limit is not None and stats.records >= limit:
                break
            stats.records += 1
            origin = f"{topic}[{message.partition()}]@{message.offset()}"
            key = message.key().decode("utf-8", "replace") if message.key() else None
            try:
                decoded = serde.decode(message.value())
            except SerdeError as exc:
                stats.errors += 1
                if as_json:
                    line = {"_error": str(exc), "_origin": origin, "_key": key}
                    out.write(json.dumps(line) + "\n")
                else:
                    out.write(f"{origin} key={key} UNDECODABLE: {exc}\n")
                continue
            record = to_jsonable(decoded.record)
            if with_meta:
                record["_kafka"] = {
                    "topic": topic,
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "key": key,
                    "schema_id": decoded.schema_id,
                    "record_type": decoded.record_type,
                }
            if as_json:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                header = f"{origin} key={key} {decoded.record_type} v{decoded.version}"
                out.write(f"{header}\n  {json.dumps(record, ensure_ascii=False)}\n")
            out.flush()
    finally:
        consumer.close()
    return stats


def _messages(consumer: Consumer, idle_s: float) -> Iterator[Any]:
    last = time.monotonic()
    while time.monotonic() - last < idle_s:
        message = consumer.poll(min(0.5, idle_s))
        if message is None:
            continue
        error = message.error()
        if error is not None:
            if error.fatal():
                raise TwinError(f"consumer failed: {error.str()}")
            continue  # partition EOF and transient errors: keep waiting
        last = time.monotonic()
        yield message
