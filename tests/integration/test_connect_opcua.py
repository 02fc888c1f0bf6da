"""The OPC UA connector against the simulator's real OPC UA server (asyncua).

Values, timestamps and status codes written by the server arrive as readings; a restarted
or vanished server is noticed, marked downstream with BAD readings, and reconnected to with
fresh subscriptions; a stop request ends the connector promptly whatever it is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from signal import SIGCONT, SIGSTOP
from typing import Any

import pytest
import yaml
from asyncua import Server, ua
from asyncua.crypto import cert_gen
from cryptography.x509.oid import ExtendedKeyUsageOID

from connectors.base import CollectingSink
from connectors.opcua import Backoff, OpcUaConnector
from connectors.opcua_readings import GAP_STATUS
from connectors.sim.opcua_server import OpcUaSimServer
from connectors.sim.plant import AssetSample, PlantModel
from pipeline import PROJECT_ROOT
from pipeline.kafka.broker import EmbeddedBroker, free_port
from pipeline.kafka.tail import assigned_consumer
from pipeline.serde import AvroSerde
from pipeline.site import Site, load_site
from tests.conftest import run_twin

pytestmark = pytest.mark.integration

SOURCE = "opcua-line1"
CNC = ("cnc-01", "cnc-02", "cnc-03", "cnc-04")
FEED_PERIOD = 0.1  # seconds between two plant samples written to the server


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(PROJECT_ROOT / "topologies" / "sites" / "demo-plant.yaml")


class Feed:
    """Steps the plant and writes every sample to the server, remembering what it wrote."""

    def __init__(self, site: Site, server: OpcUaSimServer) -> None:
        self.plant = PlantModel(site, seed=7, start=datetime.now(UTC))
        self.server = server
        self.written: dict[tuple[str, datetime], AssetSample] = {}
        self.alter: Callable[[AssetSample], AssetSample] | None = None

    async def write(self) -> list[AssetSample]:
        samples = [s for s in self.plant.step(datetime.now(UTC)) if s.asset_id in CNC]
        if self.alter is not None:
            samples = [self.alter(s) for s in samples]
        await self.server.update(samples)
        for sample in samples:
            self.written[(sample.asset_id, sample.ts)] = sample
        return samples

    async def run(self) -> None:
        while True:
            if self.server.listening:
                await self.write()
            await asyncio.sleep(FEED_PERIOD)


@contextlib.asynccontextmanager
async def running(
    connector: OpcUaConnector, sink: CollectingSink
) -> AsyncIterator[asyncio.Task[None]]:
    """The connector running in a task; stopped (and awaited) on the way out."""
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(sink, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll `check` until it holds; fail naming `what` if it does not within `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def readings(sink: CollectingSink, start: int = 0) -> list[tuple[str, dict[str, Any]]]:
    return [(asset, r) for asset, frame in sink.frames[start:] for r in frame]


def fresh(sink: CollectingSink, feed: Feed, start: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """GOOD readings of samples the feed wrote (matched by asset and source timestamp)."""
    return [
        (a, r)
        for a, r in readings(sink, start)
        if r["quality"] == "GOOD" and (a, r["ts"]) in feed.written
    ]


def gap_frames(sink: CollectingSink) -> list[tuple[int, str, list[dict[str, Any]]]]:
    return [
        (i, asset, frame)
        for i, (asset, frame) in enumerate(sink.frames)
        if frame and all(r["status_code"] == GAP_STATUS for r in frame)
    ]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_readings_carry_the_servers_values_timestamps_and_quality(site: Site) -> None:
    async def scenario() -> None:
        async with OpcUaSimServer(site, port=free_port(), source_id=SOURCE) as server:
            feed = Feed(site, server)
            await feed.write()  # so the initial read finds values, not "no data yet"
            connector = OpcUaConnector(site, SOURCE, endpoint=server.endpoint)
            sink = CollectingSink()
            async with background(feed.run()), running(connector, sink):
                await wait_until(
                    lambda: (
                        {a for a, _ in fresh(sink, feed)} == set(CNC)
                        and len(fresh(sink, feed)) > 200
                    ),
                    "readings of every CNC asset",
                )

        # The initial read: one frame per asset with every signal, the values of a sample.
        initial = {asset: frame for asset, frame in sink.frames[: len(CNC)]}
        assert set(initial) == set(CNC)
        for asset, frame in initial.items():
            assert [r["signal"] for r in frame] == list(site.asset(asset).signals)
            for reading in frame:
                sample = feed.written[(asset, reading["ts"])]
                assert reading["value"] == pytest.approx(_served(site, sample, reading["signal"]))

        # Every reading is a sample the server was given: same value (in the site's unit),
        # same source timestamp, GOOD with the raw status code 0.
        checked = 0
        for asset, reading in fresh(sink, feed):
            sample = feed.written[(asset, reading["ts"])]
            assert reading["value"] == pytest.approx(_served(site, sample, reading["signal"]))
            assert reading["status_code"] == ua.StatusCodes.Good
            assert isinstance(reading["value"], float)
            assert reading["ts"].tzinfo is not None
            checked += 1
        assert checked > 200
        assert all(r["quality"] == "GOOD" for _, r in readings(sink))

        # Batched: one frame per asset per publishing interval, not one per notification.
        sizes = [len(frame) for _, frame in sink.frames]
        assert sum(sizes) / len(sizes) > 4
        assert connector.stats.reconnects == 0 and connector.stats.errors == 0

        # The absolute deadband of 5 rpm on spindle_speed is applied by the server: a change
        # is reported only when it exceeds 5 rpm (asyncua compares with the previous sample).
        deadbanded = 0
        for asset in CNC:
            times = sorted(ts for a, ts in feed.written if a == asset)
            speeds = [
                r
                for a, r in fresh(sink, feed, len(CNC))
                if a == asset and r["signal"] == "spindle_speed"
            ]
            for reading in speeds[1:]:  # the first may be the subscription's initial value
                before = feed.written[(asset, times[times.index(reading["ts"]) - 1])]
                assert abs(reading["value"] - before.measured["spindle_speed"]) > 5
                deadbanded += 1
        assert deadbanded > 0

    run(scenario)


def _served(site: Site, sample: AssetSample, signal: str) -> float:
    """The value the server holds for a sample (state codes are served as integers)."""
    value = sample.measured[signal]
    return (
        float(round(value)) if site.asset(sample.asset_id).signal(signal).kind == "state" else value
    )


def test_uncertain_and_bad_status_codes_become_quality(site: Site) -> None:
    def degrade(sample: AssetSample) -> AssetSample:
        if sample.asset_id == "cnc-01":
            quality = {**sample.quality, "spindle_load": "UNCERTAIN", "feed_rate": "BAD"}
            return dataclasses.replace(sample, quality=quality)
        if sample.asset_id == "cnc-02":
            return dataclasses.replace(sample, comm_lost=True)
        return sample

    async def scenario() -> None:
        async with OpcUaSimServer(site, port=free_port(), source_id=SOURCE) as server:
            feed = Feed(site, server)
            await feed.write()
            connector = OpcUaConnector(site, SOURCE, endpoint=server.endpoint)
            sink = CollectingSink()
            async with running(connector, sink), background(feed.run()):
                await wait_until(lambda: len(sink.frames) >= len(CNC), "the initial read")
                start = len(sink.frames)
                feed.alter = degrade
                await wait_until(
                    lambda: (
                        {a for a, r in readings(sink, start) if r["quality"] != "GOOD"}
                        >= {"cnc-01", "cnc-02"}
                    ),
                    "degraded readings",
                )
                await asyncio.sleep(1.0)  # a couple more publishing intervals

        after = readings(sink, start)
        by = {(a, r["signal"]): r for a, r in after}  # the latest of each signal
        assert by[("cnc-01", "spindle_load")]["quality"] == "UNCERTAIN"
        assert (
            by[("cnc-01", "spindle_load")]["status_code"] == ua.StatusCodes.UncertainLastUsableValue
        )
        assert not math.isnan(by[("cnc-01", "spindle_load")]["value"])
        assert by[("cnc-01", "feed_rate")]["quality"] == "BAD"
        assert by[("cnc-01", "feed_rate")]["status_code"] == ua.StatusCodes.BadSensorFailure
        assert by[("cnc-01", "spindle_temperature")]["quality"] == "GOOD"
        for signal, spec in site.asset("cnc-02").signals.items():
            if spec.binding.deadband is not None:  # type: ignore[union-attr]
                # asyncua's server nulls the value of a Bad DataValue and then fails in its
                # deadband check (None - float), so it never reports that status change.
                continue
            assert by[("cnc-02", signal)]["quality"] == "BAD"
            assert by[("cnc-02", signal)]["status_code"] == ua.StatusCodes.BadCommunicationError
        assert by[("cnc-03", "spindle_load")]["quality"] == "GOOD"

    run(scenario)


def test_server_restart_marks_the_gap_then_resubscribes_and_delivers(site: Site) -> None:
    port = free_port()

    async def scenario() -> None:
        sink = CollectingSink()
        async with contextlib.AsyncExitStack() as servers:
            first = OpcUaSimServer(site, port=port, source_id=SOURCE)
            await first.open()
            servers.push_async_callback(first.close)
            feed = Feed(site, first)
            await feed.write()
            connector = OpcUaConnector(site, SOURCE, endpoint=first.endpoint)
            async with running(connector, sink):
                async with background(feed.run()):
                    await wait_until(lambda: len(fresh(sink, feed)) > 50, "readings before")
                stopping_at = datetime.now(UTC)
                await first.close()
                await wait_until(lambda: len(gap_frames(sink)) >= len(CNC), "the gap marked")
                marked = len(sink.frames)

                # A new server on the same port: nothing of the old one survives.
                second = OpcUaSimServer(site, port=port, source_id=SOURCE)
                await second.open()
                servers.push_async_callback(second.close)
                restarted_at = datetime.now(UTC)
                feed.server = second
                async with background(feed.run()):
                    await wait_until(
                        lambda: (
                            {a for a, r in fresh(sink, feed, marked) if r["ts"] > restarted_at}
                            == set(CNC)
                        ),
                        "fresh values from every asset after the restart",
                        timeout=30,
                    )

        gaps = gap_frames(sink)
        assert sorted(asset for _, asset, _ in gaps) == sorted(CNC)  # once per asset
        for index, asset, frame in gaps:
            assert {r["signal"] for r in frame} == set(site.asset(asset).signals)
            assert all(r["quality"] == "BAD" and math.isnan(r["value"]) for r in frame)
            assert stopping_at <= frame[0]["ts"] <= restarted_at
            # After its gap marker an asset's GOOD values all come from the new server.
            later = [r for a, f in sink.frames[index + 1 :] if a == asset for r in f]
            assert all(r["ts"] > restarted_at for r in later if r["quality"] == "GOOD")
        assert connector.stats.reconnects >= 1
        assert connector.stats.errors >= 1
        assert connector.last_reconnect_s is not None
        post = [r for a, r in fresh(sink, feed, marked) if r["ts"] > restarted_at]
        assert len(post) > 0

    run(scenario)


def test_server_down_at_start_is_retried_until_it_comes_up(site: Site) -> None:
    port = free_port()

    async def scenario() -> None:
        sink = CollectingSink()
        endpoint = f"opc.tcp://127.0.0.1:{port}/twinline"
        connector = OpcUaConnector(
            site, SOURCE, endpoint=endpoint, backoff=Backoff(initial=0.2, maximum=0.5)
        )
        async with contextlib.AsyncExitStack() as servers, running(connector, sink):
            await wait_until(lambda: connector.stats.errors >= 3, "three failed attempts")
            # Downstream hears once that nothing is live, not once per attempt.
            assert [a for _, a, _ in gap_frames(sink)] == list(CNC)
            server = OpcUaSimServer(site, port=port, source_id=SOURCE)
            await server.open()
            servers.push_async_callback(server.close)  # after the connector has stopped
            feed = Feed(site, server)
            async with background(feed.run()):
                await wait_until(
                    lambda: {a for a, _ in fresh(sink, feed)} == set(CNC),
                    "readings once the server is up",
                )
        assert connector.stats.reconnects == 1
        assert len(gap_frames(sink)) == len(CNC)

    run(scenario)


def test_stop_during_backoff_returns_promptly(site: Site) -> None:
    async def scenario() -> None:
        endpoint = f"opc.tcp://127.0.0.1:{free_port()}/twinline"
        connector = OpcUaConnector(
            site, SOURCE, endpoint=endpoint, backoff=Backoff(initial=60.0, maximum=60.0)
        )
        sink = CollectingSink()
        stop = asyncio.Event()
        task = asyncio.create_task(connector.run(sink, stop))
        await wait_until(lambda: connector.stats.errors == 1, "the first failed attempt")
        stop.set()
        await asyncio.wait_for(task, 5)  # far less than the 60 s backoff
        assert task.exception() is None

    run(scenario)


def test_stop_while_connecting_to_a_silent_endpoint_returns_promptly(site: Site) -> None:
    async def scenario() -> None:
        # A peer that accepts TCP connections and never answers (a hung device).
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            connector = OpcUaConnector(site, SOURCE, endpoint=f"opc.tcp://127.0.0.1:{port}/x")
            connector.connect_timeout = 60.0
            sink = CollectingSink()
            stop = asyncio.Event()
            task = asyncio.create_task(connector.run(sink, stop))
            await asyncio.sleep(0.5)
            assert not task.done()
            stop.set()
            await asyncio.wait_for(task, 5)
            assert task.exception() is None
            assert connector.stats.errors == 0 and sink.frames == []

    run(scenario)


def test_secured_connection_basic256sha256_sign_and_encrypt(site: Site, tmp_path: Path) -> None:
    host = socket.gethostname()

    async def scenario() -> None:
        server_key, server_cert = tmp_path / "server-key.pem", tmp_path / "server-cert.der"
        client_key, client_cert = tmp_path / "client-key.pem", tmp_path / "client-cert.der"
        await cert_gen.setup_self_signed_certificate(
            server_key,
            server_cert,
            "urn:twinline:test:server",
            host,
            [ExtendedKeyUsageOID.SERVER_AUTH],
            {},
        )
        await cert_gen.setup_self_signed_certificate(
            client_key,
            client_cert,
            "urn:twinline:test:connector",
            host,
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            {},
        )
        port = free_port()
        endpoint = f"opc.tcp://127.0.0.1:{port}/twinline"
        server = Server()
        await server.init()
        server.set_endpoint(endpoint)
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        await server.load_certificate(str(server_cert))
        await server.load_private_key(str(server_key))
        ns = await server.register_namespace(site.source(SOURCE).namespace_uri)
        asset = site.asset("cnc-01")
        ts = datetime.now(UTC)
        for index, signal in enumerate(asset.signals.values()):
            node_id = ua.NodeId.from_string(signal.binding.node_id(ns))  # type: ignore[union-attr]
            node = await server.nodes.objects.add_variable(node_id, signal.name, 0.0)
            await node.write_value(ua.DataValue(ua.Variant(float(index)), SourceTimestamp=ts))
        security = {
            "mode": "SignAndEncrypt",
            "policy": "Basic256Sha256",
            "certificate": client_cert,
            "private_key": client_key,
        }
        async with server:
            secured = OpcUaConnector(
                site, SOURCE, assets=["cnc-01"], endpoint=endpoint, security=security
            )
            sink = CollectingSink()
            async with running(secured, sink):
                await wait_until(lambda: len(sink.frames) >= 1, "the initial read, encrypted")
            plain = OpcUaConnector(
                site,
                SOURCE,
                assets=["cnc-01"],
                endpoint=endpoint,
                backoff=Backoff(initial=0.1, maximum=0.2),
            )
            refused = CollectingSink()
            async with running(plain, refused):
                await wait_until(lambda: plain.stats.errors >= 2, "the unsecured attempts to fail")

        asset_id, frame = sink.frames[0]
        assert asset_id == "cnc-01"
        assert [r["value"] for r in frame] == [float(i) for i in range(len(asset.signals))]
        assert all(r["quality"] == "GOOD" and r["ts"] == ts for r in frame)
        assert secured.stats.errors == 0
        # The server offers no unsecured endpoint: nothing but the BAD gap marker arrives.
        assert all(r["quality"] == "BAD" for _, r in readings(refused))

    run(scenario)


SERVER_PROCESS = """
import asyncio, sys
from datetime import UTC, datetime
from connectors.sim.opcua_server import OpcUaSimServer
from connectors.sim.plant import PlantModel
from pipeline.site import load_site

async def main(site_path, port):
    site = load_site(site_path)
    plant = PlantModel(site, seed=3, start=datetime.now(UTC))
    async with OpcUaSimServer(site, port=port, source_id="opcua-line1") as server:
        print("ready", flush=True)
        while True:
            await server.update(plant.step(datetime.now(UTC)))
            await asyncio.sleep(0.1)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_a_server_that_stops_answering_is_detected_and_reconnected(site: Site) -> None:
    """The server process freezes (SIGSTOP): the TCP connection stays open but nothing
    answers, as when a network path dies without a reset. The probes notice it."""
    port = free_port()
    assert site.path is not None

    async def scenario() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SERVER_PROCESS,
            str(site.path),
            str(port),
            cwd=PROJECT_ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line.strip() == b"ready"
            connector = OpcUaConnector(
                site, SOURCE, endpoint=f"opc.tcp://127.0.0.1:{port}/twinline"
            )
            sink = CollectingSink()
            async with running(connector, sink):
                good = lambda start=0: [  # noqa: E731
                    a for a, r in readings(sink, start) if r["quality"] == "GOOD"
                ]
                await wait_until(lambda: set(good()) == set(CNC), "readings before the freeze")
                process.send_signal(SIGSTOP)
                frozen_at = datetime.now(UTC)
                await wait_until(lambda: len(gap_frames(sink)) == len(CNC), "the gap marked")
                marked = len(sink.frames)
                process.send_signal(SIGCONT)
                resumed_at = datetime.now(UTC)
                await wait_until(
                    lambda: (
                        {
                            a
                            for a, r in readings(sink, marked)
                            if r["quality"] == "GOOD" and r["ts"] > resumed_at
                        }
                        == set(CNC)
                    ),
                    "fresh values after the server answers again",
                    timeout=40,
                )
            for _, _, frame in gap_frames(sink):
                assert frozen_at <= frame[0]["ts"] <= resumed_at
            assert connector.stats.reconnects >= 1
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(SIGCONT)
                process.kill()
            await process.wait()

    run(scenario)


@pytest.fixture()
def site_env(twin_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The demo plant with a topic prefix of its own, so tests never see each other's data."""
    spec = yaml.safe_load((PROJECT_ROOT / "topologies/sites/demo-plant.yaml").read_text())
    spec["kafka"]["topic_prefix"] = f"t{uuid.uuid4().hex[:8]}."
    spec["kafka"]["partitions"] = 2
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return {**twin_env, "TWIN_SITE": str(path), "PREFIX": spec["kafka"]["topic_prefix"]}


def test_twin_connect_opcua_publishes_frames_through_a_server_restart(
    broker: EmbeddedBroker, site: Site, site_env: dict[str, str]
) -> None:
    created = run_twin("topics", "create", env=site_env)
    assert created.returncode == 0, created.stderr
    topic = site_env["PREFIX"] + "telemetry.raw"
    serde = AvroSerde.local()
    consumer = assigned_consumer({"bootstrap.servers": broker.bootstrap}, topic)
    records: list[dict[str, Any]] = []

    async def consume_until(check: Callable[[], bool], what: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            if loop.time() > deadline:
                raise AssertionError(f"gave up waiting for {what}")
            message = await asyncio.to_thread(consumer.poll, 0.2)
            if message is not None and message.error() is None:
                records.append(serde.decode(message.value()).record)

    async def scenario() -> dict[str, Any]:
        async with OpcUaSimServer(site, port=free_port(), source_id=SOURCE) as server:
            feed = Feed(site, server)
            await feed.write()
            async with background(feed.run()):
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "pipeline.cli", "connect", "opcua",
                    "--endpoint", server.endpoint, "--duration", "8", "--json",
                    env=site_env, cwd=PROJECT_ROOT,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                try:
                    await consume_until(lambda: len(records) >= 8, "frames in Kafka", 30)
                    await server.stop()  # the device restarts: every session is dropped
                    await asyncio.sleep(0.5)
                    await server.start()
                    restarted = datetime.now(UTC)
                    out, err = await asyncio.wait_for(process.communicate(), 60)
                finally:
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
        assert process.returncode == 0, err.decode()
        summary: dict[str, Any] = json.loads(out)
        await consume_until(
            lambda: len(records) >= summary["delivered"], "every delivered frame", 30
        )
        summary["restarted"], summary["written"] = restarted, feed.written
        return summary

    try:
        summary = asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        consumer.close()

    assert summary["source_id"] == SOURCE and summary["kind"] == "opcua"
    assert summary["reconnects"] >= 1
    assert summary["delivered"] == summary["frames"] == len(records)
    assert summary["spool_depth"] == 0
    assert sorted(r["seq"] for r in records) == list(
        range(summary["first_seq"], summary["last_seq"] + 1)
    )
    assert {r["source_id"] for r in records} == {SOURCE}
    assert {r["asset_id"] for r in records} == set(CNC)
    flat = [(r["asset_id"], x) for r in records for x in r["readings"]]
    gaps = [(a, x) for a, x in flat if x["status_code"] == GAP_STATUS]
    assert {a for a, _ in gaps} == set(CNC)
    assert all(x["quality"] == "BAD" and math.isnan(x["value"]) for _, x in gaps)
    after = [(a, x) for a, x in flat if x["quality"] == "GOOD" and x["ts"] > summary["restarted"]]
    assert {a for a, _ in after} == set(CNC)
    # Every GOOD reading in the topic is a sample the server was given, value for value.
    written: dict[tuple[str, datetime], AssetSample] = summary["written"]
    good = [(a, x) for a, x in flat if x["quality"] == "GOOD"]
    assert len(good) > 100
    for asset, reading in good:
        sample = written[(asset, reading["ts"])]
        assert reading["value"] == pytest.approx(_served(site, sample, reading["signal"]))
