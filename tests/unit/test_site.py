"""The site description: the demo plant, resolved bindings, and how bad files are reported."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from pipeline import PROJECT_ROOT
from pipeline.commands import site as site_command
from pipeline.errors import ConfigError
from pipeline.settings import load_settings
from pipeline.site import (
    MachineState,
    ModbusAssetBinding,
    ModbusSignalBinding,
    MqttAssetBinding,
    MqttSignalBinding,
    OpcUaAssetBinding,
    OpcUaSignalBinding,
    OpcUaSource,
    SignalKind,
    Site,
    SiteSpec,
    SourceKind,
    ThresholdRule,
    TimestampFormat,
    WordOrder,
    format_duration,
    load_site,
    parse_duration,
    parse_timestamp,
)

DEMO = PROJECT_ROOT / "topologies" / "sites" / "demo-plant.yaml"


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(DEMO)


@pytest.fixture(scope="module")
def demo_data() -> dict[str, Any]:
    return yaml.safe_load(DEMO.read_text(encoding="utf-8"))


def write_variant(
    tmp_path: Path, demo_data: dict[str, Any], change: Callable[[dict[str, Any]], None]
) -> Path:
    data = copy.deepcopy(demo_data)
    change(data)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    return caught.value.lines()


def asset_index(data: dict[str, Any], asset_id: str) -> int:
    return next(i for i, a in enumerate(data["assets"]) if a["id"] == asset_id)


# --- the demo plant ----------------------------------------------------------------------


def test_demo_plant_has_the_structure_the_pipeline_needs(site: Site) -> None:
    assert site.name == "demo-plant"
    assert len(site.lines) >= 1
    assert len(site.assets) >= 8
    assert len(site.asset_types) >= 3
    assert {a.source_kind for a in site.assets} == set(SourceKind)
    kinds = {s.kind for a in site.assets for s in a.signals.values()}
    assert kinds == set(SignalKind)
    for type_id, asset_type in site.asset_types.items():
        assert len(asset_type.signals) >= 6, type_id
    for asset in site.assets:
        assert list(asset.signals) == list(asset.type.signals), asset.id
        assert asset.line.id in {line.id for line in site.lines}
        assert asset.id in asset.line.asset_ids
        for signal in asset.signals.values():
            where = f"{asset.id}.{signal.name}"
            assert signal.unit, where
            assert signal.physical.min < signal.physical.max, where
            assert signal.physical.covers(signal.expected), where
            assert signal.max_rate > 0, where
            assert signal.sampling_period > timedelta(0), where
            assert signal.measurement_noise >= 0, where
            assert signal.process_noise > 0, where
            if signal.kind is SignalKind.GAUGE:
                assert signal.measurement_noise > 0, where
            assert signal.binding.kind is asset.source_kind, where


def test_summary_counts(site: Site) -> None:
    assert site_command.summary(site) == {
        "lines": 2,
        "assets": 10,
        "asset_types": 4,
        "signals": 80,
        "alert_rules": 14,
    }


def test_kafka_section_and_topic_names(
    site: Site, tmp_path: Path, demo_data: dict[str, Any]
) -> None:
    assert site.topic_prefix == ""
    assert site.topic("telemetry.raw") == "telemetry.raw"
    assert site.kafka.partitions == 4
    assert site.kafka.replication_factor == 1

    def prefixed(data: dict[str, Any]) -> None:
        data["kafka"] = {"topic_prefix": "plant1."}

    other = load_site(write_variant(tmp_path, demo_data, prefixed))
    assert other.topic("twin.alerts") == "plant1.twin.alerts"
    assert other.topic_prefix == "plant1."
    assert other.kafka.partitions == 4  # default


def test_lookups(site: Site) -> None:
    assert site.asset("pump-02").line.id == "line-2"
    assert site.get_asset("nope") is None
    with pytest.raises(KeyError, match="nope"):
        site.asset("nope")
    assert [a.id for a in site.assets_on_line("line-2")] == [
        "pump-02",
        "pump-03",
        "comp-01",
        "conv-02",
    ]
    assert {a.id for a in site.assets_fed_by("mqtt-plant")} == {"conv-01", "conv-02"}
    with pytest.raises(KeyError, match="flux"):
        site.asset("pump-01").signal("flux")


def test_per_asset_override_changes_only_that_asset(site: Site) -> None:
    big, small = site.asset("pump-03").signal("flow"), site.asset("pump-01").signal("flow")
    assert big.physical.max == 800 and big.expected.max == 650 and big.max_rate == 80
    assert small.physical.max == 400 and small.max_rate == 40
    assert big.unit == small.unit == "m3/h"
    assert big.sampling_period == small.sampling_period  # not overridden: the type's


def test_process_noise_is_taken_or_derived(site: Site) -> None:
    cnc, pump = site.asset("cnc-01"), site.asset("pump-01")
    assert cnc.signal("spindle_temperature").process_noise == pytest.approx(0.003)
    assert cnc.signal("spindle_speed").process_noise == pytest.approx(40)
    assert cnc.signal("spindle_speed").process_noise_density == pytest.approx(40**2)
    speed = pump.signal("speed")  # no process_noise in the file: derived as max_rate / 3
    assert speed.process_noise == pytest.approx(speed.max_rate / 3)
    assert speed.process_noise_density == pytest.approx((speed.max_rate / 3) ** 2)


def test_loaded_models_are_frozen(site: Site) -> None:
    with pytest.raises(ValidationError):
        site.spec.kafka.partitions = 8
    with pytest.raises(AttributeError):
        site.asset("cnc-01").signal("feed_rate").max_rate = 1.0  # type: ignore[misc]


def test_the_validated_file_round_trips_through_json(site: Site) -> None:
    dumped = json.loads(json.dumps(site.spec.model_dump(mode="json")))
    assert dumped["kpi"]["window"] == "1m"  # durations as the file writes them
    assert SiteSpec.model_validate(dumped) == site.spec


# --- resolved bindings ---------------------------------------------------------------------


def test_opcua_node_ids_from_templates_and_overrides(site: Site) -> None:
    speed = site.asset("cnc-01").signal_binding("spindle_speed")
    assert isinstance(speed, OpcUaSignalBinding)
    assert speed.source_id == "opcua-line1"
    assert speed.node_id(2) == "ns=2;s=line-1/cnc-01/spindle_speed"
    assert speed.sampling_interval == timedelta(milliseconds=100)  # the signal's period
    assert speed.deadband is not None and speed.deadband.value == 5
    state = site.asset("cnc-02").signal_binding("machine_state")
    assert isinstance(state, OpcUaSignalBinding)
    assert state.node_id(3) == "ns=3;s=line-1/cnc-02/Status/StateCode"  # type's per-signal
    retrofit = site.asset("cnc-04").signal_binding("spindle_speed")
    assert isinstance(retrofit, OpcUaSignalBinding)
    assert retrofit.node_id(2) == "ns=2;s=Retrofit/cnc-04/Spindle.Speed"  # the asset's own
    binding = site.asset("cnc-01").binding
    assert isinstance(binding, OpcUaAssetBinding)
    assert binding.source.endpoint == "opc.tcp://127.0.0.1:4840/twinline"
    assert binding.publishing_interval == timedelta(milliseconds=500)


def test_opcua_certificates_are_relative_to_the_site_file(
    tmp_path: Path, demo_data: dict[str, Any]
) -> None:
    def secure(d: dict[str, Any]) -> None:
        d["sources"]["opcua-line1"]["security"] = {
            "mode": "SignAndEncrypt",
            "policy": "Basic256Sha256",
            "certificate": "pki/client.der",
            "private_key": "/etc/twin/client.pem",
        }

    source = load_site(write_variant(tmp_path, demo_data, secure)).source("opcua-line1")
    assert isinstance(source, OpcUaSource)
    assert source.security.certificate == tmp_path / "pki" / "client.der"
    assert source.security.private_key == Path("/etc/twin/client.pem")


def test_modbus_addresses_include_the_asset_offset(site: Site) -> None:
    first = site.asset("pump-01").signal_binding("volume_total")
    second = site.asset("pump-02").signal_binding("volume_total")
    assert isinstance(first, ModbusSignalBinding) and isinstance(second, ModbusSignalBinding)
    assert (first.unit_id, first.address, first.count) == (1, 10, 2)
    assert (second.unit_id, second.address) == (1, 110)
    assert str(second.table) == "input"
    compressor = site.asset("comp-01").signal_binding("power")
    assert isinstance(compressor, ModbusSignalBinding)
    assert compressor.word_order is WordOrder.LITTLE and compressor.unit_id == 3


def test_modbus_register_coding_round_trips(site: Site) -> None:
    flow = site.asset("comp-01").signal_binding("discharge_pressure")
    assert isinstance(flow, ModbusSignalBinding)
    words = flow.encode(7.25)
    assert len(words) == 2
    assert flow.decode(words) == pytest.approx(7.25)
    assert flow.decode(tuple(reversed(words))) != pytest.approx(7.25)  # word order matters
    current = site.asset("pump-01").signal_binding("motor_current")
    assert isinstance(current, ModbusSignalBinding)
    assert current.encode(42.37) == (424,)  # scale 0.1
    assert current.decode([424]) == pytest.approx(42.4)
    assert current.encode(1e9) == (65535,)  # saturates like a sensor
    temperature = site.asset("pump-01").signal_binding("motor_temperature")
    assert isinstance(temperature, ModbusSignalBinding)
    assert temperature.decode(temperature.encode(-12.5)) == pytest.approx(-12.5)


def test_modbus_read_spans_cover_every_register(site: Site) -> None:
    binding = site.asset("pump-02").binding
    assert isinstance(binding, ModbusAssetBinding)
    spans = binding.read_spans()
    assert [(str(t), start, count) for t, start, count in spans] == [("input", 100, 12)]


def test_mqtt_topics_fields_and_payloads(site: Site) -> None:
    conv1, conv2 = site.asset("conv-01").binding, site.asset("conv-02").binding
    assert isinstance(conv1, MqttAssetBinding) and isinstance(conv2, MqttAssetBinding)
    assert conv1.topic == "plant/line-1/conv-01/telemetry"
    assert conv2.topic == "sensors/conv-02/state"
    assert conv1.qos == 1 and conv1.source.broker == "mqtt://127.0.0.1:1883"
    current = conv1.signals["motor_current"]
    assert isinstance(current, MqttSignalBinding)
    assert current.json_field == "motor.current"
    ts = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    payload = conv1.payload(ts, {"motor_current": 12.5, "belt_speed": 1.2})
    assert payload == {"ts": 1714564800250, "motor": {"current": 12.5}, "speed": 1.2}
    decoded = json.loads(json.dumps(payload))
    assert current.extract(decoded) == 12.5
    assert conv1.signals["items_total"].extract(decoded) is None
    assert conv1.timestamp(decoded) == ts


def test_timestamp_formats() -> None:
    ts = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_timestamp(TimestampFormat.ISO8601, "2024-05-01T14:00:00+02:00") == ts
    assert parse_timestamp(TimestampFormat.EPOCH_S, 1714564800) == ts
    with pytest.raises(ValueError, match="time zone"):
        parse_timestamp(TimestampFormat.ISO8601, "2024-05-01T12:00:00")
    with pytest.raises(ValueError, match="number"):
        parse_timestamp(TimestampFormat.EPOCH_MS, "soon")


# --- KPI and alert rules ---------------------------------------------------------------------


def test_machine_state_by_code_and_by_threshold(site: Site) -> None:
    cnc = site.asset("cnc-01").kpi
    assert cnc is not None and cnc.state is not None
    assert cnc.state.signal == "machine_state"
    assert cnc.state.classify(1) is MachineState.RUNNING
    assert cnc.state.classify(2) is MachineState.IDLE
    assert cnc.state.classify(3) is MachineState.DOWN
    assert cnc.state.classify(4) is MachineState.MAINTENANCE
    assert cnc.state.classify(9) is None
    assert cnc.state.classify(math.nan) is None
    assert cnc.counters is not None and cnc.counters.scrap == "parts_scrap"
    assert cnc.ideal_cycle_time == timedelta(seconds=45)
    pump = site.asset("pump-01").kpi
    assert pump is not None and pump.state is not None
    assert pump.state.classify(50) is MachineState.RUNNING
    assert pump.state.classify(10) is MachineState.IDLE
    assert pump.counters is None


def test_kpi_windows(site: Site) -> None:
    assert site.kpi.window == timedelta(minutes=1)
    assert site.kpi.hopping is not None
    assert (site.kpi.hopping.size, site.kpi.hopping.hop) == (
        timedelta(minutes=5),
        timedelta(minutes=1),
    )
    assert site.kpi.allowed_lateness == timedelta(seconds=30)
    assert site.kpi.watermark.idle_timeout == timedelta(seconds=30)


def test_alert_rules_and_their_assets(site: Site) -> None:
    assert len({r.id for r in site.alert_rules}) == len(site.alert_rules)
    assert {str(r.kind) for r in site.alert_rules} == {"threshold", "stale", "anomaly", "kpi_floor"}
    rule = site.alert_rule("compressor-pressure-band")
    assert isinstance(rule, ThresholdRule)
    assert (rule.raise_above, rule.raise_below, rule.min_duration) == (
        9.5,
        5,
        timedelta(seconds=10),
    )
    assert [a.id for a in site.rule_assets("cnc-stale")] == ["cnc-01", "cnc-02", "cnc-03", "cnc-04"]
    assert "pump-dry-running" in {r.id for r in site.rules_for("pump-03")}
    assert "pump-dry-running" not in {r.id for r in site.rules_for("comp-01")}


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("1s", timedelta(seconds=1)),
        ("1m", timedelta(minutes=1)),
        ("2h", timedelta(hours=2)),
        ("1m30s", timedelta(seconds=90)),
        ("1.5s", timedelta(milliseconds=1500)),
        ("250us", timedelta(microseconds=250)),
        ("1d", timedelta(days=1)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize("text", ["", "5", "5 sec", "ms", "-1s", "1x", "1m 30"])
def test_bad_durations_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(text)


# --- bad files ------------------------------------------------------------------------------


def _unknown_key(d: dict[str, Any]) -> None:
    d["asset_types"]["pump"]["signals"]["flow"]["rnage"] = {"min": 0, "max": 1}


def _expected_outside(d: dict[str, Any]) -> None:
    d["asset_types"]["pump"]["signals"]["flow"]["expected"] = {"min": 0, "max": 500}


def _unknown_type(d: dict[str, Any]) -> None:
    d["assets"][asset_index(d, "pump-01")]["type"] = "pmup"


def _rule_unknown_signal(d: dict[str, Any]) -> None:
    d["alerts"][0]["signal"] = "spindle_temp"


def _overlapping_registers(d: dict[str, Any]) -> None:
    d["assets"][asset_index(d, "pump-02")]["modbus"]["register_offset"] = 10


def _bad_duration(d: dict[str, Any]) -> None:
    d["asset_types"]["cnc"]["signals"]["feed_rate"]["sampling_period"] = "100 msec"


def _unitless_duration(d: dict[str, Any]) -> None:
    d["kpi"]["window"] = 60


def _float_counter(d: dict[str, Any]) -> None:
    d["asset_types"]["compressor"]["modbus"]["registers"]["run_hours"]["data_type"] = "float32"


def _wrong_source_section(d: dict[str, Any]) -> None:
    d["assets"][asset_index(d, "cnc-02")]["modbus"] = {"unit_id": 9}


def _duplicate_asset(d: dict[str, Any]) -> None:
    d["assets"][asset_index(d, "cnc-03")]["id"] = "cnc-01"


def _override_outside(d: dict[str, Any]) -> None:
    d["assets"][asset_index(d, "pump-03")]["signals"]["flow"]["expected"] = {"min": 0, "max": 900}


def _quality_without_counters(d: dict[str, Any]) -> None:
    d["alerts"].append(
        {
            "id": "pump-quality",
            "kind": "kpi_floor",
            "asset_type": "pump",
            "kpi": "quality",
            "floor": 0.9,
        }
    )


def _sign_without_certificate(d: dict[str, Any]) -> None:
    d["sources"]["opcua-line1"]["security"] = {"mode": "Sign", "policy": "Basic256Sha256"}


def _bad_placeholder(d: dict[str, Any]) -> None:
    d["sources"]["mqtt-plant"]["topic"] = "plant/{cell}/{asset}"


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        (_unknown_key, "asset_types.pump.signals.flow.rnage", "unknown key"),
        (
            _expected_outside,
            "asset_types.pump.signals.flow.expected",
            "expected range 0..500 is outside the physical range 0..400",
        ),
        (_unknown_type, "assets[5].type", "unknown asset type 'pmup' (did you mean 'pump'?)"),
        (_rule_unknown_signal, "alerts[0].signal", "unknown signal 'spindle_temp'"),
        (
            _overlapping_registers,
            "assets[6].modbus.register_offset",
            "pump-02's flow (input 10..11) overlaps pump-01's volume_total (input 10..11)",
        ),
        (
            _bad_duration,
            "asset_types.cnc.signals.feed_rate.sampling_period",
            "bad duration '100 msec'",
        ),
        (_unitless_duration, "kpi.window", "60 has no unit"),
        (
            _float_counter,
            "asset_types.compressor.modbus.registers.run_hours.data_type",
            "needs an integer type",
        ),
        (_wrong_source_section, "assets[1].modbus", "a modbus section does not apply"),
        (_duplicate_asset, "assets[2].id", "duplicate id 'cnc-01' (also assets[0])"),
        (_override_outside, "assets[7].signals.flow.expected", "outside the physical range 0..800"),
        (_quality_without_counters, "alerts[14].kpi", "quality is never computed"),
        (_bad_placeholder, "sources.mqtt-plant.topic", "unknown placeholder {cell}"),
        (
            _sign_without_certificate,
            "sources.opcua-line1.security",
            "mode Sign needs certificate and private_key",
        ),
    ],
)
def test_a_bad_file_names_file_field_and_reason(
    tmp_path: Path,
    demo_data: dict[str, Any],
    change: Callable[[dict[str, Any]], None],
    path: str,
    reason: str,
) -> None:
    bad = write_variant(tmp_path, demo_data, change)
    problems = problems_of(bad)
    assert len(problems) == 1, problems  # one mistake, one line: no knock-on noise
    file, field, why = problems[0].split(": ", 2)
    assert file == str(bad)
    assert field == path
    assert reason in why


def test_all_problems_are_reported_at_once(tmp_path: Path, demo_data: dict[str, Any]) -> None:
    def many(d: dict[str, Any]) -> None:
        d["lines"]["line-1"]["colour"] = "red"
        d["kafka"]["partitions"] = 0
        _unitless_duration(d)
        _rule_unknown_signal(d)
        _overlapping_registers(d)
        _float_counter(d)
        _wrong_source_section(d)
        _bad_placeholder(d)

    bad = write_variant(tmp_path, demo_data, many)
    problems = problems_of(bad)
    assert [line.split(": ", 2)[1] for line in problems] == [
        "kafka.partitions",
        "kpi.window",
        "lines.line-1.colour",
        "sources.mqtt-plant.topic",
        "asset_types.compressor.modbus.registers.run_hours.data_type",
        "assets[1].modbus",
        "assets[6].modbus.register_offset",
        "alerts[0].signal",
    ]
    assert all(line.startswith(f"{bad}: ") for line in problems)


def test_an_unknown_key_suggests_the_closest_one(tmp_path: Path, demo_data: dict[str, Any]) -> None:
    def typo(d: dict[str, Any]) -> None:
        signal = d["asset_types"]["conveyor"]["signals"]["belt_load"]
        signal["expectd"] = signal.pop("expected")

    bad = write_variant(tmp_path, demo_data, typo)
    # The broken conveyor type is reported once; its assets and rules add no noise.
    assert problems_of(bad) == [
        f"{bad}: asset_types.conveyor.signals.belt_load.expected: required",
        f"{bad}: asset_types.conveyor.signals.belt_load.expectd: "
        "unknown key (did you mean 'expected'?)",
    ]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "syntax.yaml"
    bad.write_text("name: x\nlines:\n  line-1: [1, 2\n  line-2: 3\n", encoding="utf-8")
    problems = problems_of(bad)
    assert len(problems) == 1
    assert problems[0].startswith(f"{bad}:4: ")
    assert "expected ',' or ']'" in problems[0]


def test_duplicate_yaml_keys_are_reported_with_their_line(tmp_path: Path) -> None:
    text = DEMO.read_text(encoding="utf-8").replace(
        "  line-2:\n", "  line-1:\n    name: again\n  line-2:\n", 1
    )
    bad = tmp_path / "dup.yaml"
    bad.write_text(text, encoding="utf-8")
    line = text.splitlines().index("    name: again")  # the key is the line before (1-based)
    assert problems_of(bad) == [f"{bad}:{line}: duplicate key 'line-1'"]


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert problems_of(empty) == [
        f"{empty}: expected a mapping with sources, lines, asset_types, assets; got an empty file"
    ]
    with pytest.raises(ConfigError, match="cannot read"):
        load_site(tmp_path / "absent.yaml")


# --- the command ----------------------------------------------------------------------------


def _local_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="twin")
    site_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args, load_settings(site=args.site)))


def test_site_check_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert _local_cli(["site", "check", "--site", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert out == "demo-plant: 2 lines, 10 assets, 4 types, 80 signals, 14 alert rules; OK\n"
    assert _local_cli(["site", "check", "--site", str(DEMO), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["signals"] == 80


def test_site_show_json_is_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert _local_cli(["site", "show", "--site", str(DEMO), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [line["id"] for line in shown["lines"]] == ["line-1", "line-2"]
    pump = next(a for a in shown["assets"] if a["id"] == "pump-02")
    assert pump["source_kind"] == "modbus" and pump["signal_count"] == 8
    assert pump["signals"][0]["address"] == "input 100 float32"


def test_site_check_of_a_bad_file_raises_one_line_per_problem(
    tmp_path: Path, demo_data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    def two(d: dict[str, Any]) -> None:
        _unknown_type(d)
        _bad_duration(d)

    bad = write_variant(tmp_path, demo_data, two)
    with pytest.raises(ConfigError) as caught:
        _local_cli(["site", "check", "--site", str(bad), "--json"])
    assert len(caught.value.lines()) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["problems"] == caught.value.lines()


_ALL_COMMANDS = all(
    importlib.util.find_spec(f"pipeline.commands.{name}") is not None
    for name in ("broker", "topics", "tail", "schemas", "site", "db", "sql", "demo")
)


@pytest.mark.skipif(not _ALL_COMMANDS, reason="the twin CLI needs every command module")
def test_twin_site_check_exits_2_on_a_bad_file(
    tmp_path: Path, demo_data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    bad = write_variant(tmp_path, demo_data, _unknown_type)
    assert main(["site", "check", "--site", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"twin site: {bad}: assets[5].type: unknown asset type 'pmup' (did you mean 'pump'?)"
    ]
    assert main(["site", "check", "--site", str(DEMO)]) == 0
