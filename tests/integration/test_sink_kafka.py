"""The sink process end to end: the session's real broker -> sink loop -> real ClickHouse
engine. Every reading is stored exactly once, the committed offsets reach the end of every
partition, a restart stores nothing twice, and a ClickHouse outage pauses and loses nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import KafkaError, Message, TopicPartition

from pipeline.clickhouse import migrate, open_client
from pipeline.kafka.broker import EmbeddedBroker
from pipeline.kafka.clients import admin_client, producer
from pipeline.kafka.topics import create_topics
from pipeline.serde import AvroSerde
from pipeline.serde.examples import example
from pipeline.settings import Settings
from pipeline.sink import ClickHouseSink
from pipeline.sink.consumer import (
    SINK_TOPICS,
    Mode,
    SinkOptions,
    SinkProcess,
    SinkSummary,
    sink_consumer,
)
from tests.integration.test_sink_clickhouse import frame, recent

pytestmark = pytest.mark.integration

Keyed = tuple[bytes, bytes]
PARTITIONS = 3
FRAMES = 120
READINGS = 50


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Client]:
    client = open_client(f"chdb://{tmp_path / 'clickhouse'}", create_database=True)
    try:
        migrate(client)
        yield client
    finally:
        client.close()


@pytest.fixture
def site(broker: EmbeddedBroker) -> tuple[Settings, str]:
    """Settings on the session broker and a topic prefix of this test's own."""
    settings = Settings(kafka_bootstrap=broker.bootstrap)
    prefix = f"sink-{uuid.uuid4().hex[:8]}."
    create_topics(admin_client(settings), prefix, PARTITIONS, 1)
    return settings, prefix


def publish(settings: Settings, topic: str, values: list[Keyed]) -> dict[int, int]:
    """Produce (key, value) pairs; the end offset of every partition written to."""
    ends: dict[int, int] = {}
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        partition, offset = message.partition(), message.offset()
        if error is not None or partition is None or offset is None:
            errors.append(error or KafkaError(KafkaError.UNKNOWN))
        else:
            ends[partition] = max(ends.get(partition, 0), offset + 1)

    out = producer(settings)
    for key, value in values:
        out.produce(topic, key=key, value=value, on_delivery=delivered)
        out.poll(0)
    assert out.flush(30) == 0
    assert not errors
    return ends


def frames_in(
    serde: AvroSerde, topic: str, first_seq: int, count: int
) -> list[tuple[bytes, bytes]]:
    values = []
    for seq in range(first_seq, first_seq + count):
        record = frame(seq, READINGS)
        record["asset_id"] = f"press-{seq % 7:02d}"
        values.append((record["asset_id"].encode(), serde.encode("validated_frame", record, topic)))
    return values


def committed(settings: Settings, topic: str) -> dict[int, int]:
    reader = sink_consumer(settings)
    try:
        offsets = reader.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)
    finally:
        reader.close()
    return {tp.partition: tp.offset for tp in offsets if tp.offset >= 0}


def run(settings: Settings, db: Client, prefix: str, mode: Mode) -> SinkSummary:
    options = SinkOptions(
        topics=tuple(prefix + name for name in SINK_TOPICS),
        mode=mode,
        max_rows=2_000,
        max_delay_s=0.2,
        idle_exit_s=2.0,
        duration_s=120.0,
    )
    process = SinkProcess(
        sink_consumer(settings), ClickHouseSink(db, 2_000, 0.2), AvroSerde.local(), options
    )
    return process.run()


def count(db: Client, sql: str) -> int:
    return int(db.query(sql).result_rows[0][0])


def test_every_reading_is_stored_once_and_offsets_committed_to_the_end(
    site: tuple[Settings, str], db: Client
) -> None:
    settings, prefix = site
    serde = AvroSerde.local()
    valid, dead = prefix + "telemetry.valid", prefix + "telemetry.deadletter"
    ends = publish(settings, valid, frames_in(serde, valid, 0, FRAMES))
    ends_dead = publish(
        settings,
        dead,
        [(b"press-01", serde.encode("dead_letter", recent(example("dead_letter")), dead)),
         (b"press-01", b"\x00not avro at all")],
    )  # fmt: skip

    summary = run(settings, db, prefix, "subscribe")

    assert summary.records == {valid: FRAMES, dead: 1}
    assert summary.undecodable == {dead: 1}
    assert count(db, "SELECT count() FROM readings") == FRAMES * READINGS
    assert count(db, "SELECT uniqExact(seq) FROM readings") == FRAMES
    assert count(db, "SELECT count() FROM dead_letters") == 1
    assert committed(settings, valid) == ends
    # The undecodable message is skipped, and committed past, not read again forever.
    assert committed(settings, dead) == ends_dead
    assert summary.lag == 0

    # A restart (in the other mode: both use the group's offsets) finds nothing to do.
    again = run(settings, db, prefix, "assign")
    assert sum(again.records.values()) == 0 and again.rows == {}
    assert count(db, "SELECT count() FROM readings") == FRAMES * READINGS

    more = publish(settings, valid, frames_in(serde, valid, FRAMES, 30))
    third = run(settings, db, prefix, "assign")
    assert third.records == {valid: 30}
    assert count(db, "SELECT count() FROM readings") == (FRAMES + 30) * READINGS
    assert committed(settings, valid) == {p: max(ends.get(p, 0), more.get(p, 0)) for p in ends}


def test_stored_but_uncommitted_messages_are_not_stored_twice(
    site: tuple[Settings, str], db: Client
) -> None:
    settings, prefix = site
    serde = AvroSerde.local()
    valid = prefix + "telemetry.valid"
    values = frames_in(serde, valid, 0, 40)
    publish(settings, valid, values)
    # A sink that crashed after its inserts and before its commit: the rows are stored,
    # the group's offsets are not.
    crashed = ClickHouseSink(db)
    for offset, (_key, value) in enumerate(values):
        crashed.add("elsewhere", 0, offset, "validated_frame", serde.decode(value).record)
    crashed.flush()

    summary = run(settings, db, prefix, "assign")
    assert summary.records == {valid: 40}
    assert count(db, "SELECT count() FROM readings FINAL") == 40 * READINGS


class RepairingSink(SinkProcess):
    """A sink process that repairs ClickHouse while it waits out its first backoff."""

    repaired = False

    def _wait(self, seconds: float) -> None:
        if not self.repaired:
            self.sink.client.command("RENAME TABLE readings_away TO readings")
            self.repaired = True
        super()._wait(seconds)


def test_clickhouse_outage_pauses_consumption_and_loses_nothing(
    site: tuple[Settings, str], db: Client
) -> None:
    settings, prefix = site
    serde = AvroSerde.local()
    valid = prefix + "telemetry.valid"
    ends = publish(settings, valid, frames_in(serde, valid, 0, 60))
    db.command("RENAME TABLE readings TO readings_away")
    options = SinkOptions(
        topics=(valid,), mode="assign", max_rows=1_000, max_delay_s=0.2, idle_exit_s=2.0,
        duration_s=120.0,
    )  # fmt: skip
    process = RepairingSink(sink_consumer(settings), ClickHouseSink(db, 1_000, 0.2), serde, options)
    summary = process.run()
    assert process.repaired and summary.retries >= 1
    assert count(db, "SELECT count() FROM readings") == 60 * READINGS
    assert committed(settings, valid) == ends
