"""Helpers of the connector tests: a site of their own, topics, reading a topic back."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from pipeline.kafka.clients import admin_client
from pipeline.kafka.tail import assigned_consumer
from pipeline.kafka.topics import create_topics
from pipeline.serde import AvroSerde
from pipeline.settings import DEFAULT_SITE, Settings
from pipeline.site import Site

SERDE = AvroSerde.local()


def write_site(
    directory: Path,
    partitions: int = 3,
    sources: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """The demo plant with a topic prefix of its own (tests never see each other's data)
    and `sources` merged into its sources (e.g. a shorter Modbus timeout)."""
    spec = yaml.safe_load(DEFAULT_SITE.read_text(encoding="utf-8"))
    spec["kafka"]["topic_prefix"] = f"t{uuid.uuid4().hex[:8]}."
    spec["kafka"]["partitions"] = partitions
    for source_id, changes in (sources or {}).items():
        spec["sources"][source_id].update(changes)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def make_topics(settings: Settings, site: Site) -> None:
    create_topics(admin_client(settings), site.topic_prefix, site.kafka.partitions, 1)


def read_topic(
    settings: Settings, topic: str, expect: int | None = None, idle_s: float = 3.0
) -> list[dict[str, Any]]:
    """Every record of `topic` (all partitions, from the start), decoded; stops at `expect`
    records or after `idle_s` seconds without a new one."""
    consumer = assigned_consumer(settings.librdkafka(), topic)
    records: list[dict[str, Any]] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            if expect is not None and len(records) >= expect:
                break
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            last = time.monotonic()
            records.append(SERDE.decode(message.value()).record)
    finally:
        consumer.close()
    return records
