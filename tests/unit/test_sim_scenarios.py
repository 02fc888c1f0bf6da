"""Scenarios (which fault, which asset, when) and the generic model for unknown asset types."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from connectors.sim.plant import PlantModel
from connectors.sim.scenarios import SCENARIOS, FaultKind, build_scenario
from pipeline.errors import ConfigError
from pipeline.settings import DEFAULT_SITE
from pipeline.site import Site, load_site, parse_site

T0 = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)

OTHER_SITE = """
name: bakery
sources:
  line-opc: {kind: opcua, endpoint: "opc.tcp://127.0.0.1:4841/bakery"}
lines:
  dough: {name: Dough line}
asset_types:
  mixer:
    signals:
      bowl_temperature:
        unit: degC
        physical: {min: -10, max: 120}
        expected: {min: 18, max: 30}
        max_rate: 0.5
        sampling_period: 1s
        measurement_noise: 0.1
      torque:
        unit: N.m
        physical: {min: 0, max: 900}
        expected: {min: 0, max: 600}
        max_rate: 200
        sampling_period: 200ms
        measurement_noise: 2
      batches:
        kind: counter
        unit: batches
        physical: {min: 0, max: 1000000}
        expected: {min: 0, max: 1000000}
        max_rate: 1
        sampling_period: 1s
        measurement_noise: 0
      state:
        kind: state
        unit: code
        physical: {min: 0, max: 9}
        expected: {min: 0, max: 9}
        max_rate: 9
        sampling_period: 1s
        measurement_noise: 0
    kpi:
      state: {signal: state, codes: {running: 5, idle: [0, 6], down: 9, maintenance: 8}}
      counters: {total: batches}
      ideal_cycle_time: 20s
  oven:
    signals:
      belt_speed:
        unit: m/min
        physical: {min: 0, max: 10}
        expected: {min: 0, max: 4}
        max_rate: 1
        sampling_period: 500ms
        measurement_noise: 0.02
    kpi:
      state: {signal: belt_speed, running_above: 0.5}
assets:
  - {id: mixer-1, type: mixer, line: dough, source: line-opc}
  - {id: mixer-2, type: mixer, line: dough, source: line-opc}
  - {id: oven-1, type: oven, line: dough, source: line-opc}
"""


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(DEFAULT_SITE)


@pytest.fixture(scope="module")
def bakery() -> Site:
    return parse_site(OTHER_SITE)


def test_demo_scenario_places_each_fault_on_its_own_asset(site: Site) -> None:
    scenario = build_scenario("faults", site)
    placed = {(e.kind, e.asset_id, e.signal, e.start.total_seconds()) for e in scenario.events}
    assert placed == {
        (FaultKind.STUCK_SENSOR, "cnc-01", "spindle_temperature", 30),
        (FaultKind.SPIKES, "pump-01", "discharge_pressure", 45),
        (FaultKind.DRIFT, "conv-01", "motor_temperature", 60),
        (FaultKind.BEARING_WEAR, "cnc-02", "vibration_rms", 60),
        (FaultKind.MAINTENANCE, "cnc-02", None, 240),
        (FaultKind.BREAKDOWN, "cnc-03", None, 90),
        (FaultKind.COMM_LOSS, "pump-02", None, 120),
        (FaultKind.COMM_LOSS, "conv-02", None, 150),
        (FaultKind.COMM_LOSS, "cnc-04", None, 180),
    }
    assert all(e.end > e.start for e in scenario.events)
    assert max(e.end for e in scenario.events) <= timedelta(minutes=5)
    assert build_scenario("demo", site).events == scenario.events


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n not in ("none", "faults", "demo")])
def test_single_fault_scenarios_are_the_same_faults_alone(site: Site, name: str) -> None:
    alone = build_scenario(name, site).events
    everything = build_scenario("faults", site).events
    assert alone
    assert set(alone) <= set(everything)
    kinds = {e.kind for e in alone} - {FaultKind.MAINTENANCE}
    assert kinds == {FaultKind(name)}


def test_none_has_no_events_and_unknown_names_are_config_errors(site: Site) -> None:
    assert build_scenario("none", site).events == ()
    with pytest.raises(ConfigError, match="unknown scenario 'meltdown'"):
        build_scenario("meltdown", site)


def test_event_times_in_wall_clock_scale_with_speed(site: Site) -> None:
    plant = PlantModel(site, scenario="breakdown", start=T0, speed=4.0)
    (event,) = plant.events_dicts()
    assert event["start_offset_s"] == 90.0
    assert event["start"] == (T0 + timedelta(seconds=22.5)).isoformat()
    assert event["end"] == (T0 + timedelta(seconds=37.5)).isoformat()


def test_scenarios_fit_any_site(bakery: Site) -> None:
    events = build_scenario("faults", bakery).events
    kinds = {e.kind for e in events}
    # No Modbus or MQTT assets here: no comm loss of those kinds, the rest is placed.
    assert FaultKind.BREAKDOWN in kinds and FaultKind.STUCK_SENSOR in kinds
    assert {e.asset_id for e in events if e.kind is FaultKind.COMM_LOSS} <= {
        "mixer-1",
        "mixer-2",
        "oven-1",
    }
    assert len([e for e in events if e.kind is FaultKind.COMM_LOSS]) == 1


def test_generic_model_for_unknown_types(bakery: Site) -> None:
    plant = PlantModel(bakery, seed=1, scenario="none", start=T0)
    trace = [plant.step(T0 + timedelta(seconds=i)) for i in range(1, 1801)]
    mixer = [next(s for s in samples if s.asset_id == "mixer-1") for samples in trace]
    oven = [next(s for s in samples if s.asset_id == "oven-1") for samples in trace]
    temperature = np.array([s.true["bowl_temperature"] for s in mixer])
    spec = bakery.asset("mixer-1").signal("bowl_temperature")
    assert spec.expected.min - 2 < temperature.min() and temperature.max() < spec.expected.max + 2
    assert float(np.max(np.abs(np.diff(temperature)))) <= spec.max_rate
    assert temperature.std() > 0.1  # it moves, slowly
    batches = [s.true["batches"] for s in mixer]
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(batches))
    assert 40 < batches[-1] - batches[0] < 1800 / 20
    assert {s.true["state"] for s in mixer} <= {0.0, 5.0, 6.0}
    assert 5.0 in {s.true["state"] for s in mixer}
    running = [s.true["belt_speed"] > 0.5 for s in oven]
    assert any(running) and not all(running)  # runs, with idle periods


def test_assets_of_one_type_have_their_own_generators(bakery: Site) -> None:
    a = PlantModel(bakery, seed=3, start=T0).step(T0 + timedelta(seconds=5))
    b = PlantModel(bakery, seed=3, start=T0).step(T0 + timedelta(seconds=5))
    assert [s.measured for s in a] == [s.measured for s in b]
    assert a[0].measured != a[1].measured  # two mixers, two generators
