"""The embedded stack, end to end on one machine: broker, topics, ClickHouse schema, and a
round trip of telemetry frames through Kafka.

The stream agents, simulator and connectors join this as they are built; for now it proves
each part is up and wired: every asset's frame is encoded, produced, read back and decoded.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.clickhouse import TableInfo, migrate, open_client, redact_dsn
from pipeline.errors import TwinError
from pipeline.kafka.broker import EmbeddedBroker
from pipeline.kafka.clients import admin_client, producer
from pipeline.kafka.tail import assigned_consumer
from pipeline.kafka.topics import TopicState, create_topics
from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.site import Asset, SignalKind, Site

Progress = Callable[[str], None]


@dataclass
class DemoReport:
    bootstrap: str
    embedded_broker: bool
    clickhouse: str
    topics: list[TopicState] = field(default_factory=list)
    tables: list[TableInfo] = field(default_factory=list)
    migrations_applied: int = 0
    frames_published: int = 0
    readings_published: int = 0
    frames_read_back: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "bootstrap": self.bootstrap,
            "embedded_broker": self.embedded_broker,
            "clickhouse": self.clickhouse,
            "topics": [t.as_dict() for t in self.topics],
            "tables": [t._asdict() for t in self.tables],
            "migrations_applied": self.migrations_applied,
            "frames_published": self.frames_published,
            "readings_published": self.readings_published,
            "frames_read_back": self.frames_read_back,
            "seconds": round(self.seconds, 2),
        }


@contextlib.contextmanager
def kafka_for_demo(settings: Settings, progress: Progress) -> Iterator[tuple[Settings, bool]]:
    """The cluster at TWIN_KAFKA_BOOTSTRAP when it is set, else a fresh embedded broker."""
    if "TWIN_KAFKA_BOOTSTRAP" in os.environ:
        yield settings, False
        return
    progress("starting the embedded Kafka broker")
    with EmbeddedBroker(log_path=settings.data_dir / "broker.log") as broker:
        progress(f"broker ready on {broker.bootstrap}")
        yield settings.model_copy(update={"kafka_bootstrap": broker.bootstrap}), True


def sample_frame(asset: Asset, seq: int, now: datetime) -> dict[str, Any]:
    """One telemetry frame of `asset`: every signal at the middle of its expected range."""
    readings = []
    for signal in asset.signals.values():
        middle = (signal.expected.min + signal.expected.max) / 2
        value = 0.0 if signal.kind is SignalKind.COUNTER else middle
        readings.append(
            {"signal": signal.name, "ts": now, "value": value, "quality": "GOOD", "status_code": 0}
        )
    return {
        "asset_id": asset.id,
        "source_id": f"demo-{asset.source_kind.value}",
        "seq": seq,
        "ingest_ts": now,
        "readings": readings,
    }


def run_demo(settings: Settings, site: Site, progress: Progress, hold: bool = False) -> DemoReport:
    started = time.monotonic()
    with kafka_for_demo(settings, progress) as (kafka, embedded):
        report = DemoReport(kafka.kafka_bootstrap, embedded, redact_dsn(kafka.clickhouse_url()))
        progress("creating topics")
        report.topics = create_topics(
            admin_client(kafka),
            site.topic_prefix,
            site.kafka.partitions,
            site.kafka.replication_factor,
        )
        progress(f"migrating ClickHouse at {report.clickhouse}")
        client = open_client(kafka.clickhouse_url(), create_database=True)
        try:
            result = migrate(client)
        finally:
            client.close()
        report.migrations_applied = len(result.applied)
        report.tables = list(result.tables)
        progress(f"publishing a frame per asset ({len(site.assets)} assets)")
        _round_trip(kafka, site, report)
        report.seconds = time.monotonic() - started
        if hold and embedded:
            progress(f"broker stays up on {kafka.kafka_bootstrap}; Ctrl-C stops it")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
    return report


def _round_trip(kafka: Settings, site: Site, report: DemoReport) -> None:
    serde = AvroSerde.from_settings(kafka)
    topic = site.topic("telemetry.raw")
    now = datetime.now(UTC)
    out = producer(kafka)
    for asset in site.assets:
        frame = sample_frame(asset, seq=int(now.timestamp() * 1000), now=now)
        out.produce(topic, serde.encode("telemetry_frame", frame, topic=topic), asset.id)
        report.frames_published += 1
        report.readings_published += len(frame["readings"])
    if out.flush(30) != 0:
        raise TwinError(f"could not deliver the demo frames to {topic}")
    seqs = {f"{a.id}": int(now.timestamp() * 1000) for a in site.assets}
    consumer = assigned_consumer(kafka.librdkafka(), topic)
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline and report.frames_read_back < report.frames_published:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            record = serde.decode(message.value()).record
            if seqs.get(record["asset_id"]) == record["seq"]:
                report.frames_read_back += 1
    finally:
        consumer.close()
