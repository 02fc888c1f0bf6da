"""The worker's state topic, read back after each partition assignment.

Every asset's state record (`topologies/state.py`) is a message keyed by `asset_id` in the
compacted topic `<app id>-state-changelog`, in the partition number of the asset's telemetry
(murmur2, as every producer here). After an assignment the worker reads the assigned
partitions from their start into `StateStore`, and the processor takes an asset's value from
there the first time it meets the asset (`take`: the value is dropped from the store then, the
processor holds the state from that moment).

Where a partition ends is not taken from the broker's high watermark: the embedded broker
reports one past the FIRST offset of the partition's last record batch (measured: a batch of
three records at offsets 0-2 gives 1, not 3), so a read up to it missed the rest of the last
batch of state records. Instead `load` first appends an end mark with a fresh nonce to each
partition, learns its offset from the delivery report, and reads until it. The marks share one
key, so compaction keeps one per partition, and no asset is ever looked up under it.

This also keeps the state out of Faust's tables: a Faust table's recovery started the
consumer's fetches of telemetry.raw before it moved to the committed offsets, and a restarted
worker then got some frames twice and never got others (their offsets were committed as a
gap).
"""

from __future__ import annotations

import logging
import os
import time

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from pipeline.errors import TwinError
from pipeline.kafka.clients import admin_client, consumer, producer
from pipeline.settings import Settings

log = logging.getLogger(__name__)

END_MARK_KEY = b"\x00end-of-state"
LOAD_TIMEOUT_S = 120.0
"""A read that has not reached every end mark by then fails: the broker is not serving."""
POLL_S = 0.2


class StateStoreError(TwinError):
    """The state topic could not be read back."""


class StateStore:
    """Asset state values read from the state topic's assigned partitions."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.values: dict[bytes, bytes] = {}

    def take(self, key: bytes) -> bytes | None:
        """The value stored for `key`, which the store then forgets."""
        return self.values.pop(key, None)

    def clear(self) -> None:
        self.values.clear()

    def load(self, partitions: set[int]) -> int:
        """Read `partitions` of the state topic from their start to a fresh end mark (blocks;
        replaces what the store held). Returns the number of values."""
        self.values = {}
        if not partitions:
            return 0
        started = time.monotonic()
        ends = self._mark_ends(sorted(partitions))
        # The embedded broker holds a fetch for the whole wait even when data is there.
        reader = consumer(self.settings, "twin-state-load", **{"fetch.wait.max.ms": 10})
        try:
            reader.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
            self._read(reader, ends, started)
        finally:
            reader.close()
        log.info(
            "state: %d assets' state read from %d partitions of %s in %.1f s",
            len(self.values), len(ends), self.topic, time.monotonic() - started,
        )  # fmt: skip
        return len(self.values)

    def _mark_ends(self, partitions: list[int]) -> dict[int, int]:
        """Append an end mark to each partition; partition -> the mark's offset."""
        nonce = os.urandom(8)
        ends: dict[int, int] = {}
        errors: list[str] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err.str())
            else:
                partition, offset = msg.partition(), msg.offset()
                if partition is not None and offset is not None:
                    ends[partition] = offset

        try:
            known = admin_client(self.settings).list_topics(timeout=15).topics
        except KafkaException as exc:
            raise StateStoreError(f"state topic {self.topic}: {exc.args[0].str()}") from exc
        if self.topic not in known:  # a produce would create it, not compacted
            raise StateStoreError(
                f"state topic {self.topic} does not exist (`twin topics create` makes it)"
            )
        marks = producer(self.settings, **{"linger.ms": 0})
        for partition in partitions:
            try:
                marks.produce(
                    self.topic, nonce, END_MARK_KEY, partition=partition, on_delivery=delivered
                )
            except KafkaException as exc:
                raise StateStoreError(f"state topic {self.topic}: {exc.args[0].str()}") from exc
        undelivered = marks.flush(LOAD_TIMEOUT_S)
        if errors or undelivered or len(ends) != len(partitions):
            reason = errors[0] if errors else f"{undelivered} end marks not delivered"
            raise StateStoreError(f"state topic {self.topic} cannot be written: {reason}")
        return ends

    def _read(self, reader: Consumer, ends: dict[int, int], started: float) -> None:
        remaining = dict(ends)
        values = self.values
        while remaining:
            if time.monotonic() - started > LOAD_TIMEOUT_S:
                raise StateStoreError(
                    f"state topic {self.topic}: partitions {sorted(remaining)} not read to "
                    f"their end within {LOAD_TIMEOUT_S:.0f} s"
                )
            for message in reader.consume(10_000, POLL_S):
                error = message.error()
                if error is not None:
                    if error.fatal() or error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        raise StateStoreError(f"state topic {self.topic}: {error.str()}")
                    continue
                partition, offset = message.partition(), message.offset()
                key = message.key()
                if key is not None and key != END_MARK_KEY:
                    value = message.value()
                    if value is None:  # a tombstone: the asset's state was deleted
                        values.pop(key, None)
                    else:
                        values[key] = value
                if partition is None or offset is None:
                    continue
                end = remaining.get(partition)
                if end is not None and offset >= end:
                    del remaining[partition]
