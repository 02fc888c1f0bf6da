"""The plant model: reproducible, physically sensible, faults where the scenario puts them."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from connectors.sim.models import CncModel
from connectors.sim.physics import Conditions
from connectors.sim.plant import BAD, GOOD, UNCERTAIN, AssetSample, PlantModel
from pipeline.settings import DEFAULT_SITE
from pipeline.site import MachineState, SignalKind, Site, load_site

T0 = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
RUNNING, DOWN, MAINTENANCE = 1.0, 3.0, 4.0  # the demo plant's cnc state codes


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(DEFAULT_SITE)


def run(plant: PlantModel, seconds: float, step: float = 0.5) -> Iterator[list[AssetSample]]:
    """Samples every `step` simulated seconds (speed 1) for `seconds`."""
    for i in range(1, int(seconds / step) + 1):
        yield plant.step(T0 + timedelta(seconds=i * step))


def series(
    plant: PlantModel, asset_id: str, seconds: float, step: float = 0.5
) -> list[tuple[float, AssetSample]]:
    out = []
    for samples in run(plant, seconds, step):
        sample = next(s for s in samples if s.asset_id == asset_id)
        out.append(((sample.ts - T0).total_seconds(), sample))
    return out


def test_same_seed_same_values_different_seed_different(site: Site) -> None:
    def measured(seed: int) -> list[dict[str, float]]:
        plant = PlantModel(site, seed=seed, scenario="faults", start=T0)
        return [s.measured for samples in run(plant, 20) for s in samples]

    first, again, other = measured(5), measured(5), measured(6)
    assert first == again
    assert first != other


def test_every_asset_every_signal_sampled_with_timestamp(site: Site) -> None:
    plant = PlantModel(site, seed=1, start=T0)
    now = T0 + timedelta(seconds=1)
    samples = plant.step(now)
    assert [s.asset_id for s in samples] == [a.id for a in site.assets]
    for sample, asset in zip(samples, site.assets, strict=True):
        assert sample.ts == now
        assert set(sample.true) == set(sample.measured) == set(asset.signals)
        assert set(sample.quality.values()) == {GOOD}
        assert not sample.comm_lost


def test_values_stay_within_the_physical_range(site: Site) -> None:
    plant = PlantModel(site, seed=2, scenario="faults", start=T0)
    for samples in run(plant, 320, step=1.0):
        for sample in samples:
            asset = site.asset(sample.asset_id)
            for name, signal in asset.signals.items():
                assert signal.physical.contains(sample.true[name]), (sample.asset_id, name)
                assert signal.physical.contains(sample.measured[name]), (sample.asset_id, name)


def test_noise_has_the_site_measurement_noise(site: Site) -> None:
    plant = PlantModel(site, seed=3, start=T0)
    errors = [
        s.measured["discharge_pressure"] - s.true["discharge_pressure"]
        for _, s in series(plant, "comp-01", 300)
    ]
    expected = site.asset("comp-01").signal("discharge_pressure").measurement_noise
    assert abs(float(np.std(errors)) - expected) < 0.2 * expected
    assert abs(float(np.mean(errors))) < 0.2 * expected


def test_temperature_follows_load_with_thermal_lag(site: Site) -> None:
    asset = site.asset("cnc-01")
    model = CncModel(asset, np.random.default_rng(0))
    for _ in range(3600):  # a long stop: the spindle cools toward ambient
        model.advance(1.0, Conditions(forced=MachineState.MAINTENANCE))
    cold = model.values()
    assert cold["spindle_load"] < 1
    trace = []
    for _ in range(1200):
        model.advance(0.5, Conditions())
        trace.append(model.values())
    loaded = next(i for i, v in enumerate(trace) if v["spindle_load"] > 30)
    assert loaded < 60  # cutting within half a minute of the restart...
    at_load = trace[loaded]["spindle_temperature"]
    warmed = trace[-1]["spindle_temperature"] - at_load
    assert warmed > 8
    # ...the heat follows with the spindle's thermal lag (minutes, not seconds).
    assert trace[loaded + 20]["spindle_temperature"] - at_load < 0.1 * warmed
    max_rate = asset.signal("spindle_temperature").max_rate
    steps = np.diff([v["spindle_temperature"] for v in trace]) / 0.5
    assert float(np.max(np.abs(steps))) <= max_rate


def test_counters_never_decrease_and_count_only_while_running(site: Site) -> None:
    plant = PlantModel(site, seed=4, start=T0, speed=1.0)
    previous: dict[str, AssetSample] = {}
    counted = 0
    for samples in run(plant, 1800, step=1.0):
        for sample in samples:
            before = previous.get(sample.asset_id)
            previous[sample.asset_id] = sample
            if before is None:
                continue
            asset = site.asset(sample.asset_id)
            for name, signal in asset.signals.items():
                if signal.kind is SignalKind.COUNTER:
                    assert sample.true[name] >= before.true[name], (sample.asset_id, name)
            if asset.type.id == "cnc" and sample.true["parts_total"] > before.true["parts_total"]:
                counted += 1
                states = {before.true["machine_state"], sample.true["machine_state"]}
                assert RUNNING in states
    assert counted > 20  # four machines, ~50 s cycles, half an hour


def test_cycle_time_close_to_the_ideal(site: Site) -> None:
    plant = PlantModel(site, seed=5, start=T0)
    trace = series(plant, "conv-01", 600, step=1.0)
    running = [(t, s) for t, s in trace if s.true["belt_speed"] > 0.05]
    made = running[-1][1].true["items_total"] - running[0][1].true["items_total"]
    ideal = site.asset("conv-01").kpi.ideal_cycle_time.total_seconds()  # type: ignore[union-attr]
    rate = made / (len(running) * 1.0)
    assert 0.6 / ideal < rate <= 1.0 / ideal


def test_bearing_wear_raises_vibration(site: Site) -> None:
    plant = PlantModel(site, seed=6, scenario="bearing-wear", start=T0)
    (event,) = [e for e in plant.events if e.kind == "bearing-wear"]
    trace = series(plant, event.asset_id, event.end.total_seconds())

    def running_vibration(start: float, end: float) -> list[float]:
        return [
            s.true["vibration_rms"]
            for t, s in trace
            if start <= t < end
            and s.true["machine_state"] == RUNNING
            and s.true["spindle_speed"] > 5000
        ]

    healthy = running_vibration(0, event.start.total_seconds())
    worn = running_vibration(event.end.total_seconds() - 40, event.end.total_seconds())
    assert healthy and worn
    limit = site.asset(event.asset_id).signal("vibration_rms").expected.max
    assert max(healthy) < limit < float(np.mean(worn))
    assert float(np.mean(worn)) > 2 * float(np.mean(healthy))


def test_stuck_sensor_holds_its_value_with_uncertain_quality(site: Site) -> None:
    plant = PlantModel(site, seed=7, scenario="stuck-sensor", start=T0)
    (event,) = plant.events
    signal = event.signal
    assert signal is not None
    trace = series(plant, event.asset_id, 120)
    stuck = [s for t, s in trace if event.start.total_seconds() <= t < event.end.total_seconds()]
    after = [s for t, s in trace if t > event.end.total_seconds()]
    assert len({s.measured[signal] for s in stuck}) == 1
    assert {s.quality[signal] for s in stuck} == {UNCERTAIN}
    assert len({s.measured[signal] for s in after}) > 1
    assert {s.quality[signal] for s in after} == {GOOD}
    assert len({s.true[signal] for s in stuck}) > 1  # the truth kept moving


def test_breakdown_shows_down_then_repair(site: Site) -> None:
    plant = PlantModel(site, seed=8, scenario="breakdown", start=T0)
    (event,) = plant.events
    start, end = event.start.total_seconds(), event.end.total_seconds()
    trace = series(plant, event.asset_id, end + 60)
    during = [s for t, s in trace if start + 0.5 < t < end]
    assert {s.true["machine_state"] for s in during} == {DOWN}
    assert {s.true["spindle_speed"] for s in during[20:]} == {0.0}  # spun down
    parts = {s.true["parts_total"] for s in during}
    assert len(parts) == 1  # nothing made while down
    after = [s.true["machine_state"] for t, s in trace if t >= end]
    assert DOWN not in after
    assert RUNNING in after  # repaired and back in production


def test_maintenance_follows_the_wear(site: Site) -> None:
    plant = PlantModel(site, seed=9, scenario="bearing-wear", start=T0)
    maintenance = next(e for e in plant.events if e.kind == "maintenance")
    trace = series(plant, maintenance.asset_id, maintenance.end.total_seconds())
    codes = {
        s.true["machine_state"]
        for t, s in trace
        if maintenance.start.total_seconds() + 0.5 < t < maintenance.end.total_seconds()
    }
    assert codes == {MAINTENANCE}


def test_drift_and_spikes_change_measured_but_not_true(site: Site) -> None:
    plant = PlantModel(site, seed=10, scenario="faults", start=T0)
    drift = next(e for e in plant.events if e.kind == "drift")
    spikes = next(e for e in plant.events if e.kind == "spikes")
    offsets: dict[str, list[tuple[float, float]]] = {"drift": [], "spikes": []}
    for samples in run(plant, drift.end.total_seconds() + 10):
        for event in (drift, spikes):
            sample = next(s for s in samples if s.asset_id == event.asset_id)
            assert event.signal is not None
            error = sample.measured[event.signal] - sample.true[event.signal]
            offsets[str(event.kind)].append(((sample.ts - T0).total_seconds(), error))

    def errors(kind: str, start: float, end: float) -> list[float]:
        return [e for t, e in offsets[kind] if start <= t < end]

    assert abs(np.mean(errors("drift", 0, drift.start.total_seconds()))) < 0.5
    assert np.mean(errors("drift", drift.end.total_seconds() - 20, drift.end.total_seconds())) > 8
    assert abs(np.mean(errors("drift", drift.end.total_seconds() + 1, math.inf))) < 0.5
    noise = site.asset(spikes.asset_id).signal(str(spikes.signal)).measurement_noise
    in_window = errors("spikes", spikes.start.total_seconds(), spikes.end.total_seconds())
    outside = errors("spikes", 0, spikes.start.total_seconds())
    assert max(abs(e) for e in in_window) > 20 * noise
    assert max(abs(e) for e in outside) < 6 * noise


def test_communication_loss_marks_every_signal_bad(site: Site) -> None:
    plant = PlantModel(site, seed=11, scenario="comm-loss", start=T0)
    windows = {e.asset_id: (e.start.total_seconds(), e.end.total_seconds()) for e in plant.events}
    assert len(windows) == 3
    for samples in run(plant, 220, step=1.0):
        for sample in samples:
            t = (sample.ts - T0).total_seconds()
            start, end = windows.get(sample.asset_id, (math.inf, math.inf))
            lost = start < t < end
            assert sample.comm_lost is lost or t in (start, end)
            if lost:
                assert set(sample.quality.values()) == {BAD}


def test_speed_compresses_the_plant_time(site: Site) -> None:
    fast = PlantModel(site, seed=12, scenario="breakdown", start=T0, speed=10.0)
    (event,) = fast.events
    window = event.window(T0, 10.0)
    assert window == (T0 + event.start / 10, T0 + event.end / 10)
    sample = next(
        s
        for s in fast.step(T0 + event.start / 10 + timedelta(seconds=1))
        if s.asset_id == event.asset_id
    )
    assert sample.true["machine_state"] == DOWN
    assert fast.offset >= event.start


def test_tick_follows_the_fastest_signal_within_bounds(site: Site) -> None:
    from connectors.sim.runner import MIN_TICK_S, tick_period

    assert tick_period(site) == 0.1  # the CNC signals are sampled every 100 ms
    assert tick_period(site, speed=0.5) == pytest.approx(0.2)
    assert tick_period(site, speed=10) == MIN_TICK_S


def test_sensors_read_at_their_sampling_period_and_hold_between(site: Site) -> None:
    plant = PlantModel(site, seed=13, start=T0)
    trace = series(plant, "cnc-01", 10, step=0.1)
    temperature = site.asset("cnc-01").signal("spindle_temperature")
    assert temperature.sampling_period == timedelta(seconds=1)
    stamps = sorted({s.sampled["spindle_temperature"] for _, s in trace})
    assert stamps[0] == T0 + timedelta(seconds=0.1)  # the first step reads every sensor
    assert len(stamps) == 11
    # ...then once per second, on the second (periods count from the start).
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(stamps[1:]))
    for _, sample in trace:
        held_since = sample.sampled["spindle_temperature"]
        same = [s for _, s in trace if s.sampled["spindle_temperature"] == held_since]
        assert {s.measured["spindle_temperature"] for s in same} == {
            sample.measured["spindle_temperature"]
        }
        assert sample.sampled["spindle_speed"] == sample.ts  # 100 ms: fresh every step
        (reading,) = [r for r in sample.readings() if r["signal"] == "spindle_temperature"]
        assert reading["ts"] == held_since
        assert {r["ts"] for r in sample.readings(truth=True)} == {sample.ts}


def test_true_values_respect_the_site_max_rate(site: Site) -> None:
    plant = PlantModel(site, seed=14, scenario="faults", start=T0)
    previous: dict[str, AssetSample] = {}
    for samples in run(plant, 300, step=0.5):
        for sample in samples:
            before = previous.get(sample.asset_id)
            previous[sample.asset_id] = sample
            if before is None:
                continue
            for name, signal in site.asset(sample.asset_id).signals.items():
                if signal.kind is SignalKind.GAUGE:
                    change = abs(sample.true[name] - before.true[name])
                    assert change <= signal.max_rate * 0.5 + 1e-9, (sample.asset_id, name)
