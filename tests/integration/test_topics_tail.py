"""Topics on the real broker, and frames read back through `twin tail`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer

from pipeline.kafka.broker import EmbeddedBroker
from pipeline.serde import AvroSerde
from pipeline.serde.examples import example
from pipeline.settings import DEFAULT_SITE
from pipeline.topics import TOPICS
from tests.conftest import run_twin

pytestmark = pytest.mark.integration


@pytest.fixture()
def site_env(twin_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The demo plant with a topic prefix of its own, so tests never see each other's data."""
    spec = yaml.safe_load(DEFAULT_SITE.read_text(encoding="utf-8"))
    spec["kafka"]["topic_prefix"] = f"t{uuid.uuid4().hex[:8]}."
    spec["kafka"]["partitions"] = 3
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return {**twin_env, "TWIN_SITE": str(site), "PREFIX": spec["kafka"]["topic_prefix"]}


def created(env: dict[str, str]) -> dict[str, dict[str, object]]:
    result = run_twin("topics", "create", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {t["name"]: t for t in json.loads(result.stdout)["topics"]}


def test_topics_create_makes_every_topic_once_with_its_policy(site_env: dict[str, str]) -> None:
    prefix = site_env["PREFIX"]
    first = created(site_env)
    assert set(first) == {prefix + spec.name for spec in TOPICS}
    assert {t["status"] for t in first.values()} == {"created"}
    assert {t["partitions"] for t in first.values()} == {3}
    for spec in TOPICS:
        topic = first[prefix + spec.name]
        assert topic["record_type"] == spec.record_type
        assert topic["cleanup_policy"] == ("compact" if spec.compacted else "delete")
        if not spec.compacted:
            assert topic["retention_ms"] == str(spec.retention_ms)

    again = created(site_env)  # idempotent: nothing new, nothing failed
    assert {t["status"] for t in again.values()} == {"exists"}
    assert set(again) == set(first)

    listed = run_twin("topics", "list", env=site_env)
    assert listed.returncode == 0, listed.stderr
    assert f"{prefix}telemetry.raw" in listed.stdout


def produce(broker: EmbeddedBroker, topic: str, items: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    for key, value in items:
        producer.produce(topic, value, key)
    assert producer.flush(10) == 0


def test_a_produced_frame_reads_back_through_twin_tail(
    broker: EmbeddedBroker, site_env: dict[str, str]
) -> None:
    created(site_env)
    topic = site_env["PREFIX"] + "telemetry.raw"
    serde = AvroSerde.local()
    frames = []
    for i in range(3):
        frame = example("telemetry_frame")
        frame["asset_id"], frame["seq"] = f"pump-0{i + 1}", 100 + i
        frames.append(frame)
    produce(broker, topic, [(f["asset_id"], serde.encode("telemetry_frame", f)) for f in frames])

    result = run_twin("tail", "telemetry.raw", "--json", "--idle", "2", env=site_env)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted((r["asset_id"], r["seq"]) for r in records) == [
        ("pump-01", 100),
        ("pump-02", 101),
        ("pump-03", 102),
    ]
    record = records[0]  # every field of the record, readings and their timestamps included
    assert set(record) == set(frames[0])
    assert record["readings"][0]["ts"] == "2025-03-14T09:30:00Z"
    assert [r["signal"] for r in record["readings"]] == [r["signal"] for r in frames[0]["readings"]]

    limited = run_twin("tail", topic, "--json", "--limit", "1", "--meta", env=site_env)
    assert limited.returncode == 0, limited.stderr
    [only] = [json.loads(line) for line in limited.stdout.splitlines()]
    assert only["_kafka"]["topic"] == topic and only["_kafka"]["key"] == only["asset_id"]


def test_tail_reports_undecodable_messages_and_keeps_reading(
    broker: EmbeddedBroker, site_env: dict[str, str]
) -> None:
    created(site_env)
    topic = site_env["PREFIX"] + "telemetry.valid"
    good = AvroSerde.local().encode("validated_frame", example("validated_frame"))
    # One key, so all three land in one partition in this order.
    produce(broker, topic, [("press-01", b"not avro"), ("press-01", good), ("press-01", b"\0")])

    result = run_twin("tail", "telemetry.valid", "--idle", "2", env=site_env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "UNDECODABLE" in lines[0] and "magic byte" in lines[0]
    assert "validated_frame v1" in lines[1]
    assert "UNDECODABLE" in lines[3]
    assert "3 records, 2 undecodable" in result.stderr


def test_tail_of_a_missing_topic_fails_with_a_reason(site_env: dict[str, str]) -> None:
    result = run_twin("tail", "no.such.topic", "--idle", "1", env=site_env)
    assert result.returncode == 1
    assert "topic no.such.topic does not exist" in result.stderr


def test_usage_errors_exit_2(site_env: dict[str, str]) -> None:
    assert run_twin("tail", "telemetry.raw", "--limit", "0", env=site_env).returncode == 2
    bad_env = {**site_env, "TWIN_KAFKA_BOOTSTRAPS": "x"}
    result = run_twin("topics", "list", env=bad_env)
    assert result.returncode == 2
    assert "unknown setting TWIN_KAFKA_BOOTSTRAPS" in result.stderr
