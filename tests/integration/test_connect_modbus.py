"""The Modbus connector against the simulator's Modbus TCP server and the real broker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.metrics import serve_metrics
from connectors.modbus import STATUS_NO_RESPONSE, STATUS_NOT_CONNECTED, ModbusConnector
from connectors.publisher import FramePublisher
from connectors.runtime import run_with_publisher
from connectors.sim.modbus_server import ModbusSimServer
from connectors.sim.plant import AssetSample, PlantModel
from connectors.spool import Spool
from pipeline.kafka.broker import EmbeddedBroker, free_port
from pipeline.settings import Settings, load_settings
from pipeline.site import ModbusSignalBinding, RegisterType, Site, load_site
from tests.conftest import REPO, run_twin
from tests.integration.connect_support import make_topics, read_topic, write_site

pytestmark = pytest.mark.integration

SOURCE = "modbus-gw1"
GATEWAY_TARGET_FAILED = 11  # Modbus exception 0x0B, what the simulator answers for a lost asset


def setup(broker: EmbeddedBroker, tmp_path: Path, **modbus: Any) -> tuple[Settings, Site, int]:
    port = free_port()
    path = write_site(tmp_path, sources={SOURCE: {"port": port, **modbus}})
    settings = load_settings(kafka_bootstrap=broker.bootstrap, site=path, data_dir=tmp_path)
    site = load_site(path)
    make_topics(settings, site)
    return settings, site, port


async def run_against_server(
    settings: Settings,
    site: Site,
    port: int,
    tmp_path: Path,
    samples: list[AssetSample],
    control: Callable[[ModbusSimServer, ModbusConnector, FramePublisher], Awaitable[None]],
) -> dict[str, Any]:
    """The connector and its publisher run while `control` drives the device; the summary."""
    async with ModbusSimServer(site, host="127.0.0.1", port=port) as server:
        server.update(samples)
        connector = ModbusConnector(site, SOURCE)
        publisher = FramePublisher(settings, site, SOURCE, "modbus", Spool(tmp_path / "spool"))
        stop = asyncio.Event()

        async def drive() -> None:
            try:
                await control(server, connector, publisher)
            finally:
                stop.set()

        driver = asyncio.create_task(drive())
        summary = await run_with_publisher(connector, publisher, stop, duration_s=30)
        await driver
    return summary


async def until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def metric(exposition: str, name: str, source_id: str) -> float:
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("source_id") == source_id:
                return float(sample.value)
    raise AssertionError(f"no metric {name} for {source_id}")


def tolerance(binding: ModbusSignalBinding, value: float) -> float:
    if binding.data_type is RegisterType.FLOAT32:
        return abs(value) * 1e-6 + 1e-9
    return abs(binding.scale) / 2 + 1e-9


def test_readings_arrive_in_kafka_with_the_device_values(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings, site, port = setup(broker, tmp_path, scan_period="200ms")
    start = datetime.now(UTC)
    samples = PlantModel(site, seed=3, start=start).step(start)
    # pump-03 (alone on unit 2) loses its communication: the gateway answers exception 0x0B.
    samples = [dataclasses.replace(s, comm_lost=s.asset_id == "pump-03") for s in samples]
    measured = {s.asset_id: s.measured for s in samples}

    async def three_scans(_s: ModbusSimServer, c: ModbusConnector, _p: FramePublisher) -> None:
        await until(lambda: c.stats.reads >= 3 * 3)  # three good blocks per scan

    metrics_port = free_port()
    server = serve_metrics(metrics_port)
    try:
        summary = asyncio.run(
            run_against_server(settings, site, port, tmp_path, samples, three_scans)
        )
        end = datetime.now(UTC)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            exposition = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    published = metric(exposition, "twin_connector_frames_published_total", SOURCE)
    assert published >= summary["frames"]  # counters are per process: earlier tests add up
    assert metric(exposition, "twin_connector_read_latency_seconds_count", SOURCE) >= 9
    assert metric(exposition, "twin_connector_spool_depth", SOURCE) == 0
    assert summary["frames"] >= 12 and summary["delivered"] == summary["frames"]
    assert summary["spool_depth"] == 0 and summary["errors"] >= 3  # pump-03's exceptions

    frames = read_topic(settings, site.topic("telemetry.raw"), expect=summary["frames"])
    assert len(frames) == summary["frames"]
    assert {f["source_id"] for f in frames} == {SOURCE}
    assert sorted(f["seq"] for f in frames) == list(range(summary["frames"]))
    assert {f["asset_id"] for f in frames} == {"pump-01", "pump-02", "pump-03", "comp-01"}
    for frame in frames:
        asset = site.asset(frame["asset_id"])
        assert [r["signal"] for r in frame["readings"]] == list(asset.signals)
        for reading in frame["readings"]:
            assert start <= reading["ts"] <= frame["ingest_ts"] <= end
            if asset.id == "pump-03":
                assert reading["quality"] == "BAD" and math.isnan(reading["value"])
                assert reading["status_code"] == GATEWAY_TARGET_FAILED
                continue
            binding = asset.signal_binding(reading["signal"])
            assert isinstance(binding, ModbusSignalBinding)
            expected = measured[asset.id][reading["signal"]]
            assert reading["quality"] == "GOOD" and reading["status_code"] is None
            # In the signal's engineering unit: raw registers x scale, per the register map.
            assert abs(reading["value"] - expected) <= tolerance(binding, expected), reading


def test_a_device_that_stops_answering_gives_bad_readings_then_recovers(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings, site, port = setup(broker, tmp_path, scan_period="200ms", timeout="200ms")
    start = datetime.now(UTC)
    samples = PlantModel(site, seed=4, start=start).step(start)
    marks: dict[str, Any] = {}

    async def hang_then_answer(
        server: ModbusSimServer, c: ModbusConnector, _p: FramePublisher
    ) -> None:
        await until(lambda: c.stats.reads >= 2 * 4)  # two good scans
        server.set_responding(False)
        marks["errors"] = c.stats.errors
        await until(lambda: c.stats.errors >= marks["errors"] + 3)  # several failed scans
        server.set_responding(True)
        marks["answering"] = datetime.now(UTC)
        reads = c.stats.reads
        await until(lambda: c.stats.reads >= reads + 2 * 4)  # two good scans again
        marks["reconnects"] = c.stats.reconnects

    summary = asyncio.run(
        run_against_server(settings, site, port, tmp_path, samples, hang_then_answer)
    )
    assert summary["reconnects"] >= 1 and summary["errors"] >= 3
    assert summary["spool_depth"] == 0

    frames = read_topic(settings, site.topic("telemetry.raw"), expect=summary["frames"])
    assert sorted(f["seq"] for f in frames) == list(range(summary["frames"]))
    pump = sorted((f for f in frames if f["asset_id"] == "pump-01"), key=lambda f: f["seq"])
    qualities = [{r["quality"] for r in f["readings"]} for f in pump]
    # GOOD scans, then BAD ones (every signal, no value), then GOOD ones again.
    pattern = [q.pop() for q in qualities if len(q) == 1]
    assert len(pattern) == len(qualities)
    assert pattern[0] == "GOOD" and pattern[-1] == "GOOD" and "BAD" in pattern
    first_bad, last_bad = pattern.index("BAD"), len(pattern) - 1 - pattern[::-1].index("BAD")
    assert set(pattern[first_bad : last_bad + 1]) == {"BAD"}
    for frame in pump[first_bad : last_bad + 1]:
        for reading in frame["readings"]:
            assert math.isnan(reading["value"])
            assert reading["status_code"] in (STATUS_NO_RESPONSE, STATUS_NOT_CONNECTED)
    recovered = pump[last_bad + 1]["readings"][0]["ts"]
    print(
        f"\nModbus recovery: first GOOD reading {recovered - marks['answering']} after the "
        f"device answered again; {summary['reconnects']} reconnects"
    )


def test_connect_usage_errors_exit_2(broker: EmbeddedBroker, tmp_path: Path) -> None:
    path = write_site(tmp_path)
    env = {"TWIN_KAFKA_BOOTSTRAP": broker.bootstrap, "TWIN_DATA_DIR": str(tmp_path / "data")}
    wrong = run_twin("connect", "modbus", "--site", str(path), "--source", "mqtt-plant", env=env)
    assert wrong.returncode == 2 and "is a mqtt source, not modbus" in wrong.stderr
    assets = run_twin("connect", "modbus", "--site", str(path), "--assets", "cnc-01", env=env)
    assert assets.returncode == 2 and "does not feed cnc-01" in assets.stderr
    duration = run_twin("connect", "mqtt", "--site", str(path), "--duration", "0", env=env)
    assert duration.returncode == 2 and "--duration must be positive" in duration.stderr


def test_twin_connect_runs_until_sigterm_and_delivers_what_it_read(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings, site, port = setup(broker, tmp_path, scan_period="100ms")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env.update(
        TWIN_KAFKA_BOOTSTRAP=broker.bootstrap,
        TWIN_SITE=str(settings.site),
        TWIN_DATA_DIR=str(tmp_path / "data"),
    )

    async def run_until_sigterm() -> tuple[int | None, bytes, bytes]:
        start = datetime.now(UTC)
        async with ModbusSimServer(site, host="127.0.0.1", port=port) as device:
            device.update(PlantModel(site, seed=8, start=start).step(start))
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", "pipeline.cli", "connect", "modbus", "--json"),
                *("--assets", "pump-01,comp-01"),
                env=env,
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            await asyncio.sleep(3.0)  # start-up included: some scans happen
            process.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        return process.returncode, out, err

    code, out, err = asyncio.run(run_until_sigterm())
    assert code == 0, err.decode()
    summary = json.loads(out)
    assert summary["frames"] > 0
    assert summary["delivered"] == summary["frames"] and summary["spool_depth"] == 0
    frames = read_topic(settings, site.topic("telemetry.raw"), expect=summary["frames"])
    assert sorted(f["seq"] for f in frames) == list(range(summary["frames"]))
    assert {f["asset_id"] for f in frames} == {"pump-01", "comp-01"}
