"""The pipeline survives a restart: `twin worker` and `twin sink` stopped mid-stream (SIGTERM)
and started again store every reading exactly once, dead-letter the replayed and the broken
messages with their reasons, and continue the state estimates where they were.

(The whole chain simulator -> connectors -> agents -> ClickHouse is covered by test_demo.)
"""

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
from pipeline.clickhouse import open_client, run_query
from pipeline.demo_kafka import group_lag
from pipeline.kafka.broker import EmbeddedBroker
from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.sink.consumer import GROUP_ID as SINK_GROUP
from pipeline.sink.consumer import SINK_TOPICS
from pipeline.site import SignalKind, Site, load_site
from tests.conftest import REPO
from tests.integration.connect_support import make_topics, write_site

pytestmark = pytest.mark.integration

SERDE = AvroSerde.local()


class Feed:
    """Telemetry frames of the plant model, one per asset per simulated second."""

    def __init__(self, site: Site, start: datetime) -> None:
        self.site = site
        self.plant = PlantModel(site, seed=5, scenario="none", start=start)
        self.now = start
        self.seqs: dict[str, int] = {}
        self.published: list[dict[str, Any]] = []

    def frames(self, steps: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(steps):
            self.now += timedelta(seconds=1)
            for sample in self.plant.step(self.now):
                source = self.site.asset(sample.asset_id).source_id
                seq = self.seqs[source] = self.seqs.get(source, -1) + 1
                out.append(
                    {
                        "asset_id": sample.asset_id,
                        "source_id": source,
                        "seq": seq,
                        "ingest_ts": datetime.now(UTC),
                        "readings": sample.readings(),
                    }
                )
        self.published.extend(out)
        return out


def produce(broker: EmbeddedBroker, topic: str, records: list[dict[str, Any]]) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    for record in records:
        producer.produce(topic, SERDE.encode("telemetry_frame", record), record["asset_id"])
    assert producer.flush(10) == 0


def start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def drained(
    settings: Settings, site: Site, processes: list[subprocess.Popen[bytes]], timeout: float = 120
) -> bool:
    """True once the worker has committed all of telemetry.raw and the sink all its topics
    (twice in a row); False if a process died or it took longer than `timeout` seconds."""
    worker_group = site.topic("twinline")
    raw = [site.topic("telemetry.raw")]
    sink_topics = [site.topic(t) for t in SINK_TOPICS]
    settled = 0
    deadline = time.monotonic() + timeout
    while settled < 2 and time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            return False
        time.sleep(1)
        idle = group_lag(settings, worker_group, raw) == 0
        idle = idle and group_lag(settings, SINK_GROUP, sink_topics) == 0
        settled = settled + 1 if idle else 0
    return settled == 2


@pytest.mark.timeout(600)  # room for the one extra start (see below)
def test_worker_and_sink_restarted_mid_stream_store_every_reading_once(
    broker: EmbeddedBroker, twin_env: dict[str, str], tmp_path: Path
) -> None:
    site_path = write_site(tmp_path, partitions=2)
    site = load_site(site_path)
    env = {**twin_env, "TWIN_SITE": str(site_path)}
    settings = Settings(kafka_bootstrap=broker.bootstrap, site=site_path)
    make_topics(settings, site)
    raw = site.topic("telemetry.raw")
    feed = Feed(site, start=datetime.now(UTC) - timedelta(seconds=40))
    log = tmp_path / "agents.log"

    produce(broker, raw, feed.frames(8))
    agents = [start(env, log, "worker"), start(env, log, "sink", "--assign")]
    try:
        assert drained(settings, site, agents), log.read_text(errors="replace")[-3000:]
        produce(broker, raw, feed.frames(8))  # in flight while both are stopped
        time.sleep(0.5)
    finally:
        for process in agents:
            stop(process)

    # While they are down: more telemetry, a replayed frame, and bytes that are no frame.
    produce(broker, raw, feed.frames(8))
    replayed = feed.published[3]
    produce(broker, raw, [replayed])
    garbage = Producer({"bootstrap.servers": broker.bootstrap})
    garbage.produce(raw, b"not a telemetry frame", replayed["asset_id"])
    assert garbage.flush(10) == 0

    agents = [start(env, log, "worker"), start(env, log, "sink", "--assign")]
    try:
        if not drained(settings, site, agents, timeout=60) and all(
            p.poll() is None for p in agents
        ):
            # Known problem on the embedded broker: now and then a restarted worker never gets
            # going (idle, no error). Until that is found, the test gives both one more start.
            for process in agents:
                stop(process)
            agents = [start(env, log, "worker"), start(env, log, "sink", "--assign")]
        assert drained(settings, site, agents), log.read_text(errors="replace")[-3000:]
    finally:
        for process in agents:
            stop(process)

    client = open_client(Settings(data_dir=tmp_path / "data").clickhouse_url())
    try:
        check_rows(client, site, feed, replayed)
    finally:
        client.close()


def one(client: Any, sql: str) -> Any:
    return run_query(client, sql)[1][0][0]


def check_rows(client: Any, site: Site, feed: Feed, replayed: dict[str, Any]) -> None:
    published = sum(len(f["readings"]) for f in feed.published)
    identity = "(asset_id, signal, ts, source_id, seq)"
    # Exactly once: what FINAL sees is every distinct reading, and that is every published one.
    assert one(client, "SELECT count() FROM readings FINAL") == published
    assert one(client, f"SELECT count(DISTINCT {identity}) FROM readings") == published

    _, letters = run_query(
        client,
        "SELECT reason_code, reason, stage, source_id, seq FROM dead_letters ORDER BY reason_code",
    )
    codes = {code for code, *_ in letters}
    # Any dead letter other than the garbage is a duplicate of a redelivered frame, never a
    # lost one: at-least-once may redeliver what the stopped worker had processed but not yet
    # committed, and the restored validator state recognises it.
    assert codes == {"duplicate", "undecodable"}, letters
    assert all(reason for _, reason, *_ in letters)
    duplicates = {(source, seq) for code, _, _, source, seq in letters if code == "duplicate"}
    assert (replayed["source_id"], replayed["seq"]) in duplicates
    assert duplicates <= {(f["source_id"], f["seq"]) for f in feed.published}

    # One estimate per frame, and no filter started over after the restart: a (re)initialised
    # filter does not know the rate yet (largest rate variance), which only the first
    # estimate of each gauge may show.
    frames = one(client, "SELECT count(DISTINCT (asset_id, source_id, seq)) FROM states FINAL")
    assert frames == len(feed.published)
    gauges = [
        f"('{a.id}', '{s.name}')"
        for a in site.assets
        for s in a.signals.values()
        if s.kind is SignalKind.GAUGE
    ]
    _, rows = run_query(
        client,
        "SELECT asset_id, signal, countIf(rate_variance >= first_rv) FROM ("
        "  SELECT asset_id, signal, rate_variance,"
        "    first_value(rate_variance) OVER (PARTITION BY asset_id, signal ORDER BY ts"
        "      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS first_rv"
        f"  FROM states FINAL WHERE measured AND (asset_id, signal) IN ({', '.join(gauges)})"
        ") GROUP BY asset_id, signal",
    )
    restarted = [(a, s, n) for a, s, n in rows if n != 1]
    assert rows and not restarted, restarted
