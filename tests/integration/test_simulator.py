"""The plant simulator's real servers: asyncua, pymodbus, Mosquitto, and `twin simulate`."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from asyncua import Client, ua
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from connectors.sim.modbus_server import ModbusSimServer
from connectors.sim.mqtt_gateway import MqttGateway
from connectors.sim.opcua_server import OpcUaSimServer
from connectors.sim.plant import AssetSample, PlantModel
from connectors.sim.truth import SOURCE_ID, TruthPublisher
from pipeline.kafka.broker import EmbeddedBroker, free_port
from pipeline.kafka.tail import assigned_consumer
from pipeline.serde import AvroSerde
from pipeline.settings import DEFAULT_SITE, Settings
from pipeline.site import (
    ModbusSignalBinding,
    MqttAssetBinding,
    OpcUaSignalBinding,
    RegisterTable,
    Site,
    load_site,
)
from tests.conftest import run_twin
from tests.mosquitto import Mosquitto

pytestmark = pytest.mark.integration

NAMESPACE = "urn:twinline:demo-plant"


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(DEFAULT_SITE)


def faulty_plant(site: Site) -> tuple[PlantModel, datetime]:
    start = datetime.now(UTC) - timedelta(minutes=10)
    return PlantModel(site, seed=3, scenario="faults", start=start), start


def node_id(site: Site, asset_id: str, signal: str, ns: int) -> str:
    binding = site.asset(asset_id).signal_binding(signal)
    assert isinstance(binding, OpcUaSignalBinding)
    return binding.node_id(ns)


def of(samples: list[AssetSample], asset_id: str) -> AssetSample:
    return next(s for s in samples if s.asset_id == asset_id)


def test_opcua_server_mirrors_the_site(site: Site) -> None:
    plant, start = faulty_plant(site)

    async def scenario() -> None:
        async with OpcUaSimServer(site, host="127.0.0.1", port=free_port()) as server:
            assert server.endpoint.endswith("/twinline")
            stuck = plant.step(start + timedelta(seconds=60))  # cnc-01's temperature stuck
            await server.update(stuck)
            async with Client(server.endpoint, timeout=5) as client:
                ns = await client.get_namespace_index(NAMESPACE)
                await _check_tree(client, ns)
                await _check_stuck(site, client, ns, stuck)
                lost = plant.step(start + timedelta(seconds=185))  # cnc-04 silent
                await server.update(lost)
                await _check_values(site, client, ns, lost, stuck)
            await server.stop()  # a device restart: sessions drop, the address space stays
            await server.start()
            async with Client(server.endpoint, timeout=5) as client:
                node = client.get_node(node_id(site, "cnc-02", "spindle_speed", ns))
                assert await node.read_value() == of(lost, "cnc-02").measured["spindle_speed"]

    asyncio.run(scenario())


async def _check_tree(client: Client, ns: int) -> None:
    plant_folder = await client.nodes.objects.get_child(f"{ns}:demo-plant")
    lines = {(await n.read_browse_name()).Name for n in await plant_folder.get_children()}
    assert lines == {"line-1"}  # line 2 is Modbus and MQTT only
    asset = await plant_folder.get_child([f"{ns}:line-1", f"{ns}:cnc-04"])
    names = {(await n.read_browse_name()).Name for n in await asset.get_children()}
    assert "spindle_speed" in names and "machine_state" in names
    speed = await asset.get_child(f"{ns}:spindle_speed")
    assert speed.nodeid.to_string() == f"ns={ns};s=Retrofit/cnc-04/Spindle.Speed"


async def _check_stuck(site: Site, client: Client, ns: int, stuck: list[AssetSample]) -> None:
    held = client.get_node(node_id(site, "cnc-01", "spindle_temperature", ns))
    value = await held.read_data_value(raise_on_bad_status=False)
    assert value.StatusCode is not None
    assert value.StatusCode.value == ua.StatusCodes.UncertainLastUsableValue
    assert value.Value is not None
    assert value.Value.Value == of(stuck, "cnc-01").measured["spindle_temperature"]


async def _check_values(
    site: Site, client: Client, ns: int, lost: list[AssetSample], stuck: list[AssetSample]
) -> None:
    cnc02 = of(lost, "cnc-02")
    temperature = client.get_node(node_id(site, "cnc-02", "spindle_temperature", ns))
    value = await temperature.read_data_value()
    assert value.Value is not None and value.Value.Value == cnc02.measured["spindle_temperature"]
    assert value.SourceTimestamp == cnc02.ts
    assert value.StatusCode is not None and value.StatusCode.is_good()
    units = await (await temperature.get_child("0:EngineeringUnits")).read_value()
    assert units.DisplayName.Text == "degC"
    assert units.UnitId == int.from_bytes(b"CEL", "big")
    limits = await (await temperature.get_child("0:EURange")).read_value()
    expected = site.asset("cnc-02").signal("spindle_temperature").expected
    assert (limits.Low, limits.High) == (expected.min, expected.max)

    state = client.get_node(node_id(site, "cnc-02", "machine_state", ns))
    assert await state.read_value() == int(cnc02.measured["machine_state"])
    assert state.nodeid.to_string().endswith("line-1/cnc-02/Status/StateCode")

    # cnc-04 lost its communication: every variable turns BadCommunicationError, its value
    # null (OPC UA: a bad value is to be ignored).
    silent = client.get_node(node_id(site, "cnc-04", "feed_rate", ns))
    value = await silent.read_data_value(raise_on_bad_status=False)
    assert value.StatusCode is not None
    assert value.StatusCode.value == ua.StatusCodes.BadCommunicationError
    assert value.Value is None or value.Value.Value is None
    assert value.SourceTimestamp == of(lost, "cnc-04").ts


def test_modbus_server_serves_the_register_map(site: Site) -> None:
    plant, start = faulty_plant(site)
    samples = plant.step(start + timedelta(seconds=100))

    async def scenario() -> None:
        port = free_port()
        async with ModbusSimServer(site, host="127.0.0.1", port=port) as server:
            assert server.update(samples) == 32
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.5, retries=0)
            await client.connect()
            try:
                for asset_id in ("pump-01", "pump-02", "pump-03", "comp-01"):
                    await _check_asset(site, client, of(samples, asset_id))
                server.set_responding(False)
                with pytest.raises(ModbusException):
                    await client.read_input_registers(0, count=2, device_id=1)
                assert server.requests_ignored >= 1
                server.set_responding(True)
                if not client.connected:
                    await client.connect()
                await _check_asset(site, client, of(samples, "pump-01"))
                # pump-02's link behind the gateway is lost: exception 0x0B for its
                # registers; pump-01 on the same unit still answers.
                lost = plant.step(start + timedelta(seconds=130))
                server.update(lost)
                reply = await client.read_input_registers(100, count=12, device_id=1)
                assert reply.isError() and reply.exception_code == 0x0B
                assert not (await client.read_input_registers(0, count=12, device_id=1)).isError()
                write = await client.write_register(0, 1, device_id=3)
                assert write.isError()
            finally:
                client.close()

    asyncio.run(scenario())


async def _check_asset(site: Site, client: AsyncModbusTcpClient, sample: AssetSample) -> None:
    for signal in site.asset(sample.asset_id).signals.values():
        binding = signal.binding
        assert isinstance(binding, ModbusSignalBinding)
        read = (
            client.read_holding_registers
            if binding.table is RegisterTable.HOLDING
            else client.read_input_registers
        )
        reply = await read(binding.address, count=binding.count, device_id=binding.unit_id)
        assert not reply.isError(), (sample.asset_id, signal.name)
        value = binding.decode(reply.registers)
        measured = sample.measured[signal.name]
        # Scaled integers hold the value to half a step; float32 to its precision.
        tolerance = max(binding.scale / 2, abs(measured) * 1e-6)
        assert math.isclose(value, measured, abs_tol=tolerance), (sample.asset_id, signal.name)


def test_mqtt_gateway_publishes_the_site_payloads(site: Site, mosquitto: Mosquitto) -> None:
    plant, start = faulty_plant(site)
    normal = plant.step(start + timedelta(seconds=10))
    silent = plant.step(start + timedelta(seconds=160))  # conv-02 without communication

    async def scenario() -> list[tuple[str, dict[str, object]]]:
        received: list[tuple[str, dict[str, object]]] = []
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as subscriber:
            await subscriber.subscribe("#", qos=1)
            async with MqttGateway(site, mosquitto.url) as gateway:
                assert await gateway.publish(normal) == 2
                assert await gateway.publish(silent) == 1
                assert gateway.published == 3
            async with asyncio.timeout(10):
                async for message in subscriber.messages:
                    received.append((str(message.topic), json.loads(message.payload)))
                    if len(received) == 3:
                        break
        return received

    received = asyncio.run(scenario())
    topics = [topic for topic, _ in received]
    assert sorted(topics) == sorted(
        [
            "plant/line-1/conv-01/telemetry",
            "sensors/conv-02/state",
            "plant/line-1/conv-01/telemetry",
        ]
    )
    for asset in (site.asset("conv-01"), site.asset("conv-02")):
        binding = asset.binding
        assert isinstance(binding, MqttAssetBinding)
        payload = next(p for topic, p in received if topic == binding.topic)
        sample = of(normal, asset.id)
        assert binding.timestamp(payload) == sample.ts.replace(
            microsecond=sample.ts.microsecond // 1000 * 1000
        )  # epoch_ms
        for name, signal_binding in binding.signals.items():
            assert signal_binding.extract(payload) == sample.measured[name]


def test_mqtt_gateway_without_broker_is_a_clear_error(site: Site) -> None:
    from connectors.sim.errors import SimulatorError

    async def scenario() -> None:
        async with MqttGateway(site, f"mqtt://127.0.0.1:{free_port()}"):
            pass

    with pytest.raises(SimulatorError, match="not reachable"):
        asyncio.run(scenario())


def test_truth_frames_on_the_truth_topic(site: Site, broker: EmbeddedBroker) -> None:
    settings = Settings(kafka_bootstrap=broker.bootstrap)
    truth = TruthPublisher.connect(settings, site)
    plant, start = faulty_plant(site)
    steps = [plant.step(start + timedelta(seconds=i)) for i in (1, 2, 3)]
    for samples in steps:
        truth.publish(samples)
    assert truth.close() == 0
    serde = AvroSerde.from_settings(settings)
    consumer = assigned_consumer(settings.librdkafka(), site.topic("sim.truth"))
    frames: list[dict[str, Any]] = []
    try:
        for _ in range(100):
            message = consumer.poll(0.5)
            if message is None or message.error():
                if len(frames) >= 30:
                    break
                continue
            frames.append(serde.decode(message.value()).record)
    finally:
        consumer.close()
    mine = [f for f in frames if f["source_id"] == SOURCE_ID and f["seq"] <= 30]
    assert len(mine) >= 30
    by_seq = {f["seq"]: f for f in mine}
    assert sorted(by_seq)[:30] == list(range(1, 31))
    first = by_seq[1]
    sample = steps[0][0]
    assert first["asset_id"] == sample.asset_id
    readings = {r["signal"]: r for r in first["readings"]}
    assert {name: r["value"] for name, r in readings.items()} == sample.true
    assert {r["quality"] for r in readings.values()} == {"GOOD"}
    assert {r["ts"] for r in readings.values()} == {sample.ts}


def test_twin_simulate_runs_and_summarises(
    twin_env: dict[str, str], mosquitto: Mosquitto, tmp_path: Path
) -> None:
    result = run_twin(
        "simulate",
        "--opcua-port",
        str(free_port()),
        "--modbus-port",
        str(free_port()),
        "--mqtt",
        mosquitto.url,
        "--scenario",
        "faults",
        "--speed",
        "20",
        "--truth",
        "--duration",
        "3",
        "--json",
        env=twin_env,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["site"] == "demo-plant" and summary["scenario"] == "faults"
    assert summary["ticks"] >= 20 and summary["tick_s"] == 0.1
    assert summary["samples"] == summary["ticks"] * 10
    assert summary["simulated_s"] > 40  # speed 20
    kinds = {s["kind"]: s for s in summary["servers"]}
    assert set(kinds) == {"opcua", "modbus", "mqtt"}
    assert kinds["mqtt"]["published"] > 0
    assert kinds["opcua"]["assets"] == ["cnc-01", "cnc-02", "cnc-03", "cnc-04"]
    assert len(summary["events"]) == 9
    assert summary["truth"]["frames"] == summary["samples"]
    assert summary["truth"]["errors"] == 0
    assert "Traceback" not in result.stderr


def test_twin_simulate_without_mqtt_broker_exits_1(twin_env: dict[str, str]) -> None:
    result = run_twin(
        "simulate",
        "--opcua-port",
        str(free_port()),
        "--modbus-port",
        str(free_port()),
        "--mqtt",
        f"mqtt://127.0.0.1:{free_port()}",
        "--duration",
        "1",
        env=twin_env,
    )
    assert result.returncode == 1
    assert "MQTT broker" in result.stderr and "not reachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_twin_simulate_rejects_unknown_scenario(twin_env: dict[str, str]) -> None:
    result = run_twin("simulate", "--scenario", "meltdown", "--duration", "1", env=twin_env)
    assert result.returncode == 2
    assert "unknown scenario 'meltdown'" in result.stderr


def test_busy_port_is_a_clear_error(site: Site) -> None:
    from connectors.sim.errors import SimulatorError

    async def scenario() -> None:
        port = free_port()
        async with ModbusSimServer(site, host="127.0.0.1", port=port):
            with pytest.raises(SimulatorError, match="port in use"):
                async with ModbusSimServer(site, host="127.0.0.1", port=port):
                    pass

    asyncio.run(scenario())


def test_mqtt_gateway_reconnects_after_a_broker_restart(site: Site, tmp_path: Path) -> None:
    own = Mosquitto(tmp_path / "mosquitto").start()
    plant, start = faulty_plant(site)

    async def scenario() -> tuple[int, int, list[str]]:
        async with MqttGateway(site, own.url) as gateway:
            assert await gateway.publish(plant.step(start + timedelta(seconds=1))) == 2
            own.stop()
            for _ in range(50):  # the gateway notices at once; bounded anyway
                if not gateway.connected:
                    break
                await asyncio.sleep(0.05)
            assert await gateway.publish(plant.step(start + timedelta(seconds=2))) == 0
            own.start()
            for _ in range(100):
                if gateway.connected:
                    break
                await asyncio.sleep(0.1)
            topics: list[str] = []
            async with aiomqtt.Client("127.0.0.1", own.port) as subscriber:
                await subscriber.subscribe("#", qos=1)
                sent = await gateway.publish(plant.step(start + timedelta(seconds=3)))
                async with asyncio.timeout(10):
                    async for message in subscriber.messages:
                        topics.append(str(message.topic))
                        if len(topics) == sent:
                            break
            return sent, gateway.reconnects, topics

    try:
        sent, reconnects, topics = asyncio.run(scenario())
    finally:
        own.stop()
    assert sent == 2 and reconnects == 1
    assert sorted(topics) == ["plant/line-1/conv-01/telemetry", "sensors/conv-02/state"]
