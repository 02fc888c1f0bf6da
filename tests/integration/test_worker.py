"""The stream agents as a real Faust worker on the embedded broker: frames in, validated
frames, state estimates and dead letters out; stopped and restarted, it resumes its state."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from connectors.sim.plant import PlantModel
from pipeline.kafka.broker import EmbeddedBroker
from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.site import Site, load_site
from tests.conftest import REPO
from tests.integration.connect_support import make_topics, read_topic, write_site

pytestmark = pytest.mark.integration

SERDE = AvroSerde.local()


def frames(
    site: Site, start: datetime, steps: int, first_seq: dict[str, int]
) -> list[dict[str, Any]]:
    plant = PlantModel(site, seed=3, scenario="none", start=start)
    out = []
    for i in range(steps):
        now = start + timedelta(seconds=i)
        for sample in plant.step(now):
            source = site.asset(sample.asset_id).source_id
            seq = first_seq[source] = first_seq.get(source, -1) + 1
            out.append(
                {
                    "asset_id": sample.asset_id,
                    "source_id": source,
                    "seq": seq,
                    "ingest_ts": now,
                    "readings": sample.readings(),
                }
            )
    return out


def produce(broker: EmbeddedBroker, topic: str, records: list[dict[str, Any]]) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    for record in records:
        producer.produce(topic, SERDE.encode("telemetry_frame", record), record["asset_id"])
    assert producer.flush(10) == 0


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for(
    settings: Settings,
    topic: str,
    count: int,
    worker: subprocess.Popen[bytes],
    timeout: float = 120,
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline and worker.poll() is None:
        records = read_topic(settings, topic, expect=count, idle_s=2)
        if len(records) >= count:
            return records
    return records


def stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(60)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise


@pytest.mark.timeout(600)  # room for the one extra start (see below)
def test_worker_processes_frames_and_resumes_after_a_restart(
    broker: EmbeddedBroker, twin_env: dict[str, str], tmp_path: Path
) -> None:
    site_path = write_site(tmp_path, partitions=2)
    site = load_site(site_path)
    env = {**twin_env, "TWIN_SITE": str(site_path)}
    settings = Settings(kafka_bootstrap=broker.bootstrap, site=site_path)
    make_topics(settings, site)
    raw, valid, state = (site.topic(t) for t in ("telemetry.raw", "telemetry.valid", "twin.state"))
    seqs: dict[str, int] = {}
    start = datetime.now(UTC) - timedelta(seconds=30)
    first = frames(site, start, steps=3, first_seq=seqs)
    produce(broker, raw, first)

    worker = start_worker(env, tmp_path / "worker.log")
    try:
        got = wait_for(settings, valid, len(first), worker)
        log = (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
        assert len(got) == len(first), f"the worker did not validate every frame:\n{log}"
    finally:
        stop(worker)

    second = frames(site, start + timedelta(seconds=3), steps=3, first_seq=seqs)
    produce(broker, raw, [*second, first[0]])  # first[0] again: a replayed frame
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        validated = wait_for(settings, valid, len(first) + len(second), worker, timeout=60)
        if len(validated) < len(first) + len(second) and worker.poll() is None:
            # Known problem on the embedded broker: now and then a restarted worker never gets
            # going (idle, no error). Until that is found, the test gives it one more start.
            stop(worker)
            worker = start_worker(env, tmp_path / "worker.log")
        wait_for(settings, valid, len(first) + len(second), worker)
        wait_for(settings, state, len(first) + len(second), worker)
        validated = read_topic(settings, valid, idle_s=3)  # all, redeliveries included
        states = read_topic(settings, state, idle_s=3)
        wait_for(settings, site.topic("telemetry.deadletter"), 1, worker)
        letters = read_topic(settings, site.topic("telemetry.deadletter"), idle_s=3)  # all
    finally:
        stop(worker)

    # Every frame validated, in spite of the restart. At least once: a frame whose outputs went
    # out just before the stop, but whose state and offset did not, is validated again after
    # it (the sink's row identity makes that one row in ClickHouse, see test_pipeline_e2e).
    keys = [(f["source_id"], f["seq"]) for f in validated]
    published = {(f["source_id"], f["seq"]) for f in [*first, *second]}
    assert set(keys) == published
    assert len(keys) - len(published) <= len(second)  # redelivery is bounded by the restart
    # ... and the validator's state survived it: the replay is recognised as a duplicate (as is
    # anything at-least-once redelivered that the stopped worker had already processed).
    assert {d["reason_code"] for d in letters} == {"duplicate"}
    duplicates = {(d["source_id"], d["seq"]) for d in letters}
    assert (first[0]["source_id"], first[0]["seq"]) in duplicates
    assert duplicates <= published
    # One state estimate per valid frame; after the restart the filters continue (every
    # signal seen before is still estimated, none starts over unmeasured).
    assert len(states) == len(validated)
    by_asset = {s["asset_id"]: s for s in states}
    for asset in site.assets:
        assert by_asset[asset.id]["signals"], asset.id
