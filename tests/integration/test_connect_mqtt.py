"""The MQTT connector against a real Mosquitto, the simulator's gateway and the real broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from connectors.mqtt import MqttConnector
from connectors.publisher import FramePublisher
from connectors.runtime import run_with_publisher
from connectors.sim.mqtt_gateway import MqttGateway
from connectors.sim.plant import PlantModel
from connectors.spool import Spool
from pipeline.kafka.broker import EmbeddedBroker
from pipeline.settings import Settings, load_settings
from pipeline.site import Site, load_site
from tests.integration.connect_support import make_topics, read_topic, write_site
from tests.mosquitto import Mosquitto

pytestmark = pytest.mark.integration

SOURCE = "mqtt-plant"
CONV_01_TOPIC = "plant/line-1/conv-01/telemetry"


def setup(broker: EmbeddedBroker, tmp_path: Path, mqtt_url: str) -> tuple[Settings, Site]:
    client_id = f"twinline-test-{uuid.uuid4().hex[:8]}"  # a session of its own
    path = write_site(tmp_path, sources={SOURCE: {"broker": mqtt_url, "client_id": client_id}})
    settings = load_settings(kafka_bootstrap=broker.bootstrap, site=path, data_dir=tmp_path)
    site = load_site(path)
    make_topics(settings, site)
    return settings, site


Control = Callable[[MqttGateway, MqttConnector, FramePublisher], Awaitable[None]]


async def run_with_gateway(
    settings: Settings, site: Site, mqtt_url: str, tmp_path: Path, control: Control
) -> tuple[dict[str, Any], dict[tuple[str, datetime], dict[str, float]]]:
    """Connector and publisher run while the gateway publishes the plant every 50 ms and
    `control` acts; the summary, and the values published per (asset, millisecond)."""
    start = datetime.now(UTC)
    plant = PlantModel(site, seed=5, start=start)
    published: dict[tuple[str, datetime], dict[str, float]] = {}
    connector = MqttConnector(site, SOURCE)
    publisher = FramePublisher(settings, site, SOURCE, "mqtt", Spool(tmp_path / "spool"))
    stop = asyncio.Event()
    async with MqttGateway(site, mqtt_url) as gateway:

        async def publish() -> None:
            while not stop.is_set():
                samples = [
                    s for s in plant.step(datetime.now(UTC)) if s.asset_id in gateway.bindings
                ]
                for sample in samples:
                    ms = sample.ts.replace(microsecond=sample.ts.microsecond // 1000 * 1000)
                    published[(sample.asset_id, ms)] = sample.measured
                await gateway.publish(samples)
                await asyncio.sleep(0.05)

        async def drive() -> None:
            try:
                await control(gateway, connector, publisher)
            finally:
                stop.set()

        tasks = [asyncio.create_task(publish()), asyncio.create_task(drive())]
        summary = await run_with_publisher(connector, publisher, stop, duration_s=30)
        await asyncio.gather(*tasks)
    return summary, published


async def until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def test_payloads_arrive_as_frames_and_a_malformed_one_as_a_dead_letter(
    broker: EmbeddedBroker, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings, site = setup(broker, tmp_path, mosquitto.url)
    malformed = b'{"ts": 1772366400000, "speed": "fast", "load": 12.5}'

    async def one_bad_payload(_g: MqttGateway, c: MqttConnector, p: FramePublisher) -> None:
        await until(lambda: p.frames >= 6)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            await client.publish(CONV_01_TOPIC, malformed, qos=1)
        await until(lambda: p.dead_letters == 1)
        frames = p.frames
        await until(lambda: p.frames >= frames + 6)  # and it keeps delivering

    summary, published = asyncio.run(
        run_with_gateway(settings, site, mosquitto.url, tmp_path, one_bad_payload)
    )
    assert summary["dead_letters"] == 1
    assert summary["delivered"] == summary["frames"] and summary["spool_depth"] == 0

    [dead] = read_topic(settings, site.topic("telemetry.deadletter"), expect=1)
    assert dead["payload"] == malformed
    assert dead["reason_code"] == "malformed_payload"
    assert 'speed="fast"' in dead["reason"]
    assert dead["stage"] == "connect-mqtt"
    assert dead["origin_topic"] == f"mqtt:{CONV_01_TOPIC}"
    assert (dead["asset_id"], dead["source_id"]) == ("conv-01", SOURCE)

    frames = read_topic(settings, site.topic("telemetry.raw"), expect=summary["frames"])
    assert len(frames) == summary["frames"]
    assert sorted(f["seq"] for f in frames) == list(range(summary["frames"]))
    assert {f["asset_id"] for f in frames} == {"conv-01", "conv-02"}
    for frame in frames:
        ts = frame["readings"][0]["ts"]
        values = published[(frame["asset_id"], ts)]  # the payload's own timestamp (ms)
        assert {r["ts"] for r in frame["readings"]} == {ts}
        assert {r["signal"]: r["value"] for r in frame["readings"]} == values
        assert {r["quality"] for r in frame["readings"]} == {"GOOD"}
        assert timedelta(0) <= frame["ingest_ts"] - ts < timedelta(seconds=10)


def test_the_connector_reconnects_when_the_mqtt_broker_comes_back(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    mqtt = Mosquitto(tmp_path / "mosquitto").start()  # a broker of its own, to stop it
    try:
        settings, site = setup(broker, tmp_path, mqtt.url)

        async def broker_restart(g: MqttGateway, c: MqttConnector, p: FramePublisher) -> None:
            await until(lambda: p.frames >= 4)
            mqtt.stop()
            await until(lambda: c.stats.errors >= 1)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(mqtt.start)
            await until(lambda: c.stats.reconnects >= 1)
            frames = p.frames
            await until(lambda: p.frames >= frames + 4)

        summary, _published = asyncio.run(
            run_with_gateway(settings, site, mqtt.url, tmp_path, broker_restart)
        )
    finally:
        mqtt.stop()
    assert summary["reconnects"] >= 1 and summary["errors"] >= 1
    assert summary["delivered"] == summary["frames"]
    frames = read_topic(settings, site.topic("telemetry.raw"), expect=summary["frames"])
    assert sorted(f["seq"] for f in frames) == list(range(summary["frames"]))
