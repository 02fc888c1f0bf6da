"""Connector parts without peers: MQTT payloads to readings, Modbus read plans, selection."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from connectors.base import CollectingSink
from connectors.modbus import ModbusConnector, plan_reads
from connectors.mqtt import MqttConnector
from connectors.sources import pick_assets, pick_source
from pipeline.errors import ConfigError
from pipeline.settings import DEFAULT_SITE
from pipeline.site import ModbusAssetBinding, RegisterTable, Site, load_site, parse_site

TOPIC = "plant/line-1/conv-01/telemetry"
TS = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(DEFAULT_SITE)


@pytest.fixture()
def mqtt(site: Site) -> MqttConnector:
    return MqttConnector(site, "mqtt-plant")


def payload(site: Site, values: dict[str, float], asset_id: str = "conv-01") -> bytes:
    binding = site.asset(asset_id).binding
    return json.dumps(binding.payload(TS, values)).encode()  # type: ignore[union-attr]


def test_a_gateway_payload_becomes_one_frame_with_the_payload_time(
    site: Site, mqtt: MqttConnector
) -> None:
    sink = CollectingSink()
    body = payload(site, {"belt_speed": 1.25, "motor_current": 7.5, "items_total": 1200})
    mqtt.handle(TOPIC, body, sink)
    assert sink.dead_letters == []
    [(asset_id, readings)] = sink.frames
    assert asset_id == "conv-01"
    by_signal = {r["signal"]: r for r in readings}
    assert set(by_signal) == {"belt_speed", "motor_current", "items_total"}
    assert by_signal["motor_current"]["value"] == 7.5  # nested field motor.current
    assert {r["ts"] for r in readings} == {TS}
    assert {r["quality"] for r in readings} == {"GOOD"}
    assert mqtt.stats.reads == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "expected an object"),
        (b'{"speed": 1.0}', "'ts' is missing"),
        (b'{"ts": "yesterday", "speed": 1.0}', "'ts'"),
        (b'{"ts": 1772366400000, "speed": "fast"}', 'speed="fast"'),
        (b'{"ts": 1772366400000, "colour": "red"}', "no signal field"),
    ],
)
def test_a_malformed_payload_is_a_dead_letter_with_the_reason_and_bytes(
    mqtt: MqttConnector, body: bytes, reason: str
) -> None:
    sink = CollectingSink()
    mqtt.handle(TOPIC, body, sink)
    assert sink.frames == []
    [dead] = sink.dead_letters
    assert reason in dead["reason"]
    assert dead["reason_code"] == "malformed_payload"
    assert dead["payload"] == body
    assert dead["origin_topic"] == f"mqtt:{TOPIC}"
    assert dead["asset_id"] == "conv-01"


def test_a_message_on_a_topic_of_no_asset_is_a_dead_letter(mqtt: MqttConnector) -> None:
    sink = CollectingSink()
    mqtt.handle("plant/line-9/ghost/telemetry", b'{"ts": 1}', sink)
    [dead] = sink.dead_letters
    assert dead["reason_code"] == "unknown_asset"
    assert dead["origin_topic"] == "mqtt:plant/line-9/ghost/telemetry"
    assert dead["asset_id"] is None


def test_booleans_read_as_numbers_and_null_fields_are_left_out(
    site: Site, mqtt: MqttConnector
) -> None:
    sink = CollectingSink()
    body = json.dumps({"ts": 1772366400000, "speed": True, "load": None}).encode()
    mqtt.handle(TOPIC, body, sink)
    [(_, readings)] = sink.frames
    assert [(r["signal"], r["value"]) for r in readings] == [("belt_speed", 1.0)]


def test_the_broker_override_and_asset_selection(site: Site) -> None:
    connector = MqttConnector(site, "mqtt-plant", ["conv-02"], broker="mqtt://10.0.0.5:1884")
    assert (connector.host, connector.port, connector.tls) == ("10.0.0.5", 1884, False)
    assert list(connector.bindings) == ["sensors/conv-02/state"]
    with pytest.raises(ConfigError, match="mqtt://HOST:PORT"):
        MqttConnector(site, "mqtt-plant", broker="tcp://10.0.0.5:1884")


def test_modbus_blocks_cover_every_signal_of_an_asset_exactly_once(site: Site) -> None:
    for asset in site.assets_fed_by("modbus-gw1"):
        binding = asset.binding
        assert isinstance(binding, ModbusAssetBinding)
        plan = plan_reads(binding, asset.id)
        carried = [name for block in plan.blocks for name, _ in block.signals]
        assert sorted(carried) == sorted(binding.signals)
        for block in plan.blocks:
            for _, signal in block.signals:
                assert block.address <= signal.address
                assert signal.address + signal.count <= block.address + block.count
    pump2 = plan_reads(site.asset("pump-02").binding, "pump-02")  # type: ignore[arg-type]
    assert [(b.table, b.address) for b in pump2.blocks] == [(RegisterTable.INPUT, 100)]


def test_modbus_overrides_and_units_in_order(site: Site) -> None:
    connector = ModbusConnector(site, "modbus-gw1", host="10.1.2.3", port=1502)
    assert (connector.host, connector.port) == ("10.1.2.3", 1502)
    assert [p.unit_id for p in connector.plans] == sorted(p.unit_id for p in connector.plans)
    assert connector.scan_period_s == 0.5


def test_the_source_defaults_to_the_only_one_of_its_kind(site: Site) -> None:
    assert pick_source(site, "modbus", None) == "modbus-gw1"
    with pytest.raises(ConfigError, match="opcua source, not modbus"):
        pick_source(site, "modbus", "opcua-line1")
    with pytest.raises(ConfigError, match="no source 'nope'"):
        pick_source(site, "mqtt", "nope")


def test_two_sources_of_a_kind_need_a_choice() -> None:
    text = DEFAULT_SITE.read_text(encoding="utf-8").replace(
        "  mqtt-plant:\n", "  mqtt-spare:\n    kind: mqtt\n  mqtt-plant:\n"
    )
    site = parse_site(text)
    with pytest.raises(ConfigError, match="choose one with --source") as caught:
        pick_source(site, "mqtt", None)
    assert "mqtt-plant, mqtt-spare" in str(caught.value)


def test_assets_must_be_fed_by_the_source(site: Site) -> None:
    assert [a.id for a in pick_assets(site, "modbus-gw1", ["pump-02"])] == ["pump-02"]
    with pytest.raises(ConfigError, match="does not feed cnc-01"):
        pick_assets(site, "modbus-gw1", ["pump-01", "cnc-01"])
