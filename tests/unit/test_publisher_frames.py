"""FramePublisher's sink side: frames and dead letters as they are spooled (no Kafka)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.publisher import FramePublisher
from connectors.spool import Spool
from pipeline.serde import AvroSerde
from pipeline.settings import DEFAULT_SITE, Settings
from pipeline.site import Site, load_site

SERDE = AvroSerde.local()


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(DEFAULT_SITE)


def publisher(site: Site, spool_dir: Path, kind: str = "modbus") -> FramePublisher:
    settings = Settings(kafka_bootstrap="127.0.0.1:1")  # never contacted: no tick()
    return FramePublisher(settings, site, f"{kind}-gw1", kind, Spool(spool_dir), serde=SERDE)


def reading(signal: str, value: float, quality: str = "GOOD") -> dict[str, Any]:
    ts = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    status = None if quality == "GOOD" else 256
    return {"signal": signal, "ts": ts, "value": value, "quality": quality, "status_code": status}


def spooled(pub: FramePublisher) -> list[tuple[str, bytes | None, dict[str, Any]]]:
    pub.spool.commit()
    return [(e.topic, e.key, SERDE.decode(e.value).record) for e in pub.spool.pending(0, 1000)]


def test_frames_get_the_header_and_a_seq_that_increases(site: Site, tmp_path: Path) -> None:
    pub = publisher(site, tmp_path)
    before = datetime.now(UTC)
    pub.submit("pump-01", [reading("flow", 12.5), reading("speed", math.nan, "BAD")])
    pub.submit("pump-02", [reading("flow", 3.0)])
    pub.submit("pump-01", [reading("flow", 12.75)])
    entries = spooled(pub)
    assert [topic for topic, _, _ in entries] == ["telemetry.raw"] * 3
    assert [key for _, key, _ in entries] == [b"pump-01", b"pump-02", b"pump-01"]
    frames = [record for _, _, record in entries]
    assert [f["seq"] for f in frames] == [0, 1, 2]
    assert {f["source_id"] for f in frames} == {"modbus-gw1"}
    first = frames[0]
    assert first["asset_id"] == "pump-01"
    assert before <= first["ingest_ts"] <= datetime.now(UTC) + timedelta(seconds=1)
    assert first["readings"][0]["value"] == 12.5
    assert math.isnan(first["readings"][1]["value"])
    assert first["readings"][1]["quality"] == "BAD"
    assert first["readings"][1]["status_code"] == 256
    assert (pub.frames, pub.readings, pub.first_seq, pub.last_seq) == (3, 4, 0, 2)
    pub.close()


def test_the_seq_series_continues_after_a_restart(site: Site, tmp_path: Path) -> None:
    pub = publisher(site, tmp_path)
    for value in (1.0, 2.0):
        pub.submit("pump-01", [reading("flow", value)])
    pub.close()
    again = publisher(site, tmp_path)
    again.submit("pump-01", [reading("flow", 3.0)])
    assert [record["seq"] for _, _, record in spooled(again)] == [0, 1, 2]
    assert again.spooled == 2  # what the last run left had to wait for Kafka
    again.close()


def test_a_dead_letter_keeps_the_original_bytes_and_the_reason(site: Site, tmp_path: Path) -> None:
    pub = publisher(site, tmp_path, kind="mqtt")
    pub.dead_letter(
        "payload is not UTF-8 JSON: Expecting value",
        "malformed_payload",
        b"\xff not json",
        "mqtt:plant/line-1/conv-01/telemetry",
        asset_id="conv-01",
    )
    [(topic, key, record)] = spooled(pub)
    assert topic == "telemetry.deadletter"
    assert key == b"conv-01"
    assert record["payload"] == b"\xff not json"
    assert record["reason_code"] == "malformed_payload"
    assert record["stage"] == "connect-mqtt"
    assert record["origin_topic"] == "mqtt:plant/line-1/conv-01/telemetry"
    assert record["source_id"] == "mqtt-gw1"
    assert record["origin_offset"] is None and record["seq"] is None
    assert pub.dead_letters == 1 and pub.frames == 0
    pub.close()


def test_a_frame_the_contract_cannot_carry_becomes_a_dead_letter_with_its_seq(
    site: Site, tmp_path: Path
) -> None:
    pub = publisher(site, tmp_path)
    bad = reading("flow", 1.0)
    bad["quality"] = "SO-SO"  # not a Quality symbol
    pub.submit("pump-01", [bad])
    pub.submit("pump-01", [reading("flow", 2.0)])
    entries = spooled(pub)
    assert [topic for topic, _, _ in entries] == ["telemetry.deadletter", "telemetry.raw"]
    dead = entries[0][2]
    assert dead["reason_code"] == "schema_mismatch"
    assert dead["seq"] == 0 and dead["asset_id"] == "pump-01"
    assert b"SO-SO" in dead["payload"]
    assert entries[1][2]["seq"] == 1  # the gap in seq is explained by the dead letter
    pub.close()


def test_topics_carry_the_site_prefix(tmp_path: Path) -> None:
    text = DEFAULT_SITE.read_text(encoding="utf-8").replace(
        'topic_prefix: ""', 'topic_prefix: "plant1."'
    )
    prefixed = tmp_path / "site.yaml"
    prefixed.write_text(text, encoding="utf-8")
    pub = publisher(load_site(prefixed), tmp_path / "spool")
    pub.submit("pump-01", [reading("flow", 1.0)])
    pub.dead_letter("why", "malformed_payload", b"x", "mqtt:t")
    assert [topic for topic, _, _ in spooled(pub)] == [
        "plant1.telemetry.raw",
        "plant1.telemetry.deadletter",
    ]
    pub.close()
