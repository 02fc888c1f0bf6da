"""Kafka unreachable: frames wait in the durable spool and all arrive, in order, afterwards.

Each test runs a broker of its own (it is stopped mid-test). The embedded broker keeps data
in memory only: what it had confirmed before it stopped is gone after its restart, so the
tests account for those frames through the publisher's confirmations.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.modbus import ModbusConnector
from connectors.publisher import FramePublisher
from connectors.runtime import run_with_publisher
from connectors.sim.modbus_server import ModbusSimServer
from connectors.sim.plant import PlantModel
from connectors.spool import Spool
from pipeline.kafka.broker import EmbeddedBroker, free_port
from pipeline.settings import Settings, load_settings
from pipeline.site import Site, load_site
from tests.conftest import REPO
from tests.integration.connect_support import make_topics, read_topic, write_site

pytestmark = pytest.mark.integration

SOURCE = "modbus-gw1"


def setup(tmp_path: Path, kafka_port: int, partitions: int) -> tuple[Settings, Site, int]:
    modbus_port = free_port()
    path = write_site(
        tmp_path,
        partitions=partitions,
        sources={SOURCE: {"port": modbus_port, "scan_period": "100ms"}},
    )
    settings = load_settings(
        kafka_bootstrap=f"127.0.0.1:{kafka_port}", site=path, data_dir=tmp_path / "data"
    )
    return settings, load_site(path), modbus_port


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def test_frames_read_while_the_broker_is_down_all_arrive_after_its_restart(
    tmp_path: Path,
) -> None:
    kafka = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    # One partition: Kafka confirms in seq order, so what it confirmed before the outage is
    # exactly a prefix of the seq series.
    settings, site, modbus_port = setup(tmp_path, kafka.port, partitions=1)
    marks: dict[str, Any] = {}

    async def scenario() -> dict[str, Any]:
        start = datetime.now(UTC)
        plant = PlantModel(site, seed=6, start=start)
        async with ModbusSimServer(site, host="127.0.0.1", port=modbus_port) as device:
            device.update(plant.step(start))
            connector = ModbusConnector(site, SOURCE)
            publisher = FramePublisher(
                settings, site, SOURCE, "modbus", Spool(tmp_path / "spool"), stall_s=2.0
            )
            stop = asyncio.Event()

            async def outage() -> None:
                try:
                    await until(lambda: publisher.delivered >= 20)
                    # A crash: stopping it gracefully takes seconds while clients are connected.
                    pid = kafka.pid
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)
                    kafka.stop()  # reaps the process
                    await asyncio.sleep(1.0)  # reports already received are served by now
                    marks["confirmed_before"] = publisher.delivered
                    marks["frames_at_stop"] = publisher.frames
                    await until(lambda: publisher.frames >= marks["frames_at_stop"] + 40)
                    await asyncio.to_thread(kafka.start)
                    await asyncio.to_thread(make_topics, settings, site)
                    marks["back"] = publisher.frames
                    # Everything spooled is delivered, and new frames keep flowing.
                    await until(lambda: publisher.delivered >= marks["back"] + 10)
                finally:
                    stop.set()

            task = asyncio.create_task(outage())
            summary = await run_with_publisher(connector, publisher, stop, duration_s=60)
            await task
        return summary

    try:
        make_topics(settings, site)
        summary = asyncio.run(scenario())
        assert summary["spool_depth"] == 0
        assert summary["spooled"] >= 40
        assert summary["delivered"] == summary["frames"]
        expected = summary["last_seq"] + 1 - marks["confirmed_before"]
        after = read_topic(settings, site.topic("telemetry.raw"), expect=expected)
    finally:
        kafka.stop()

    seqs = [f["seq"] for f in after]
    duplicates = sum(n - 1 for n in Counter(seqs).values())
    first_after = marks["confirmed_before"]  # frames 0 .. confirmed_before-1 died with it
    assert set(seqs) == set(range(first_after, summary["last_seq"] + 1))  # none lost
    assert seqs == sorted(seqs)  # in the order they were read
    assert summary["first_seq"] == 0
    print(
        f"\nspool: {summary['frames']} frames, {summary['spooled']} spooled, "
        f"{len(set(seqs))} read back after the restart, {duplicates} duplicates, "
        f"{summary['producer_restarts']} producer restarts"
    )


async def twin_connect(env: dict[str, str], *args: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline.cli",
        "connect",
        "modbus",
        "--json",
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    summary: dict[str, Any] = json.loads(out)
    return summary


def test_a_restarted_connector_delivers_what_its_spool_kept(tmp_path: Path) -> None:
    kafka_port = free_port()  # nothing listens there yet: Kafka is unreachable
    settings, site, modbus_port = setup(tmp_path, kafka_port, partitions=3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env.update(
        TWIN_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        TWIN_SITE=str(settings.site),
        TWIN_DATA_DIR=str(settings.data_dir),
    )
    kafka = EmbeddedBroker(port=kafka_port, log_path=tmp_path / "broker.log")

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        start = datetime.now(UTC)
        async with ModbusSimServer(site, host="127.0.0.1", port=modbus_port) as device:
            device.update(PlantModel(site, seed=7, start=start).step(start))
            offline = await twin_connect(env, "--duration", "1.5")
            await asyncio.to_thread(kafka.start)
            await asyncio.to_thread(make_topics, settings, site)
            online = await twin_connect(env, "--duration", "1")
        return offline, online

    try:
        offline, online = asyncio.run(scenario())
        total = offline["frames"] + online["frames"]
        frames = read_topic(settings, site.topic("telemetry.raw"), expect=total)
    finally:
        kafka.stop()

    assert offline["frames"] > 0 and offline["delivered"] == 0
    assert offline["spooled"] == offline["frames"] == offline["spool_depth"]
    assert online["recovered"] == offline["frames"]
    assert online["delivered"] == total and online["spool_depth"] == 0
    assert online["first_seq"] == offline["last_seq"] + 1  # the seq series goes on
    seqs = sorted(f["seq"] for f in frames)
    assert seqs == list(range(total))  # every frame once, none lost
    by_asset: dict[str, list[int]] = {}
    for frame in frames:  # read back partition by partition: per asset, in read order
        by_asset.setdefault(frame["asset_id"], []).append(frame["seq"])
    assert all(s == sorted(s) for s in by_asset.values())
