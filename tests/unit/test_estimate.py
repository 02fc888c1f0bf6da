"""The estimate stage: Kalman filters against known truth, gating, gaps, state and the contract."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from connectors.sim.plant import PlantModel
from pipeline.serde import AvroSerde
from pipeline.settings import DEFAULT_SITE
from pipeline.site import SignalKind, Site, load_site
from pipeline.stages.estimate import EstimateError, EstimateSettings, Estimator

T0 = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
PUMP = "pump-01"
PRESSURE = "discharge_pressure"  # bar, noise 0.05, max_rate 5 bar/s, sampled every 500 ms


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(DEFAULT_SITE)


def reading(
    signal: str, t: float, value: float, quality: str = "GOOD", flags: list[str] | None = None
) -> dict[str, Any]:
    return {
        "signal": signal,
        "ts": T0 + timedelta(seconds=t),
        "value": value,
        "quality": quality,
        "flags": flags or [],
    }


def frame(readings: list[dict[str, Any]], seq: int = 1, asset_id: str = PUMP) -> dict[str, Any]:
    latest = max((r["ts"] for r in readings), default=T0)
    return {
        "asset_id": asset_id,
        "source_id": "modbus-gw1",
        "seq": seq,
        "ingest_ts": latest + timedelta(milliseconds=20),
        "validated_ts": latest + timedelta(milliseconds=30),
        "readings": readings,
    }


def state_of(record: dict[str, Any], signal: str) -> dict[str, Any]:
    return next(s for s in record["signals"] if s["signal"] == signal)


def feed(
    estimator: Estimator,
    values: list[tuple[float, float]],
    signal: str = PRESSURE,
    asset_id: str = PUMP,
) -> list[dict[str, Any]]:
    """One frame per (t, value); the signal's state after each."""
    return [
        state_of(estimator.estimate(frame([reading(signal, t, v)], i, asset_id)), signal)
        for i, (t, v) in enumerate(values)
    ]


# --- against the simulated plant's truth ------------------------------------------------------


def plant_frames(
    site: Site, seconds: float, frame_s: float = 0.5
) -> Iterator[tuple[list[dict[str, Any]], dict[tuple[str, str, datetime], float]]]:
    """Validated frames of fresh, GOOD readings of every asset every `frame_s`, with the truth
    at each reading's time. The plant is stepped every 100 ms (the fastest sampling period)."""
    plant = PlantModel(site, seed=0, start=T0)
    pending: dict[str, list[dict[str, Any]]] = {a.id: [] for a in site.assets}
    truth: dict[tuple[str, str, datetime], float] = {}
    per_frame = round(frame_s / 0.1)
    seq = 0
    for i in range(1, round(seconds / 0.1) + 1):
        now = T0 + timedelta(seconds=i * 0.1)
        for sample in plant.step(now):
            for name, value in sample.measured.items():
                if sample.sampled_at(name) == now:
                    pending[sample.asset_id].append(
                        {"signal": name, "ts": now, "value": value, "quality": "GOOD", "flags": []}
                    )
                    truth[(sample.asset_id, name, now)] = sample.true[name]
        if i % per_frame == 0:
            frames = []
            for asset_id, readings in pending.items():
                seq += 1
                frames.append(frame(readings, seq=seq, asset_id=asset_id))
                pending[asset_id] = []
            yield frames, truth


def test_estimate_is_closer_to_the_truth_than_the_readings(site: Site) -> None:
    estimator = Estimator(site)
    errors: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for frames, truth in plant_frames(site, seconds=180):
        for f in frames:
            record = estimator.estimate(f)
            asset = site.asset(f["asset_id"])
            latest = {r["signal"]: r for r in f["readings"]}
            for state in record["signals"]:
                name = state["signal"]
                r = latest.get(name)
                # Compare where the estimate and the reading refer to the same instant.
                if asset.signal(name).kind is not SignalKind.GAUGE or r is None:
                    continue
                if r["ts"] != record["ts"]:
                    continue
                true = truth[(asset.id, name, r["ts"])]
                est, raw = errors.setdefault((asset.id, name), ([], []))
                est.append(state["value"] - true)
                raw.append(r["value"] - true)
    ratios = {
        key: math.sqrt(np.mean(np.square(est)) / np.mean(np.square(raw)))
        for key, (est, raw) in errors.items()
    }
    mean_ratio = float(np.mean(list(ratios.values())))
    thermal = [v for (_, name), v in ratios.items() if "temperature" in name]
    print(f"RMSE(estimate)/RMSE(readings): mean {mean_ratio:.3f} over {len(ratios)} signals")
    for (asset_id, name), ratio in sorted(ratios.items(), key=lambda kv: kv[1]):
        print(f"  {asset_id}/{name}: {ratio:.3f}")
    assert len(ratios) > 40
    assert all(ratio < 1.0 for ratio in ratios.values()), ratios
    assert mean_ratio < 0.8
    # Slow signals (small process noise) are where filtering pays most.
    assert thermal and max(thermal) < 0.9 and float(np.mean(thermal)) < 0.75


# --- synthetic signals ------------------------------------------------------------------------


def test_ramp_rate_converges_to_the_true_slope(site: Site) -> None:
    # Spindle temperature: noise 0.2 degC, process noise 0.01 degC/s per sqrt(s), 1 s period.
    rng = np.random.default_rng(1)
    slope = 0.05  # degC/s
    values = [(float(k), 30.0 + slope * k + 0.2 * rng.standard_normal()) for k in range(240)]
    states = feed(Estimator(site), values, "spindle_temperature", "cnc-01")
    last = states[-1]
    assert abs(last["rate"] - slope) < 3 * math.sqrt(last["rate_variance"])
    assert abs(np.mean([s["rate"] for s in states[-120:]]) - slope) < 0.01
    assert abs(last["value"] - (30.0 + slope * 239)) < 0.15
    assert last["rate_variance"] < states[2]["rate_variance"] / 20
    assert not any(s["outlier"] for s in states)


def steady(n: int, level: float = 6.0, seed: int = 2) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    return [(0.5 * k, level + 0.05 * rng.standard_normal()) for k in range(n)]


def test_spike_is_gated_as_outlier_and_does_not_move_the_level(site: Site) -> None:
    estimator = Estimator(site)
    before = feed(estimator, steady(20))[-1]
    spike = feed(estimator, [(10.0, 14.0)])[0]
    after = feed(estimator, [(10.5, 6.0)])[0]
    assert spike["outlier"] and not spike["measured"]
    assert spike["nis"] > EstimateSettings().gate
    assert spike["innovation"] == pytest.approx(14.0 - 6.0, abs=0.3)
    assert abs(spike["value"] - 6.0) < 0.2
    assert spike["variance"] > before["variance"]  # predicted only
    assert after["measured"] and not after["outlier"]
    assert abs(after["value"] - 6.0) < 0.1


def test_spikes_on_both_sides_do_not_reinitialise(site: Site) -> None:
    estimator = Estimator(site, EstimateSettings(reinit_after=2))
    feed(estimator, steady(20))
    spikes = feed(estimator, [(10.0 + 0.5 * k, 6.0 + 8.0 * (-1) ** k) for k in range(3)])
    assert all(s["outlier"] and not s["measured"] for s in spikes)
    assert abs(spikes[-1]["value"] - 6.0) < 0.3


def test_level_shift_is_accepted_after_k_consecutive_outliers(site: Site) -> None:
    k = EstimateSettings().reinit_after
    estimator = Estimator(site)
    feed(estimator, steady(20))
    shifted = feed(estimator, [(10.0 + 0.5 * i, 14.0) for i in range(k + 2)])
    assert [s["outlier"] for s in shifted] == [True] * (k - 1) + [False] * 3
    assert [s["measured"] for s in shifted] == [False] * (k - 1) + [True] * 3
    assert shifted[k - 1]["value"] == pytest.approx(14.0)
    assert shifted[k - 1]["nis"] > EstimateSettings().gate
    assert abs(shifted[-1]["value"] - 14.0) < 0.1


def test_physically_reachable_jump_is_a_manoeuvre_not_an_outlier(site: Site) -> None:
    # 2 bar in 0.5 s is within max_rate (5 bar/s) but far outside the steady prediction.
    estimator = Estimator(site)
    feed(estimator, steady(20))
    ramp = feed(estimator, [(10.0 + 0.5 * i, 6.0 + 2.0 * (i + 1)) for i in range(4)])
    assert not any(s["outlier"] for s in ramp)
    assert ramp[0]["nis"] > EstimateSettings().gate
    assert abs(ramp[-1]["value"] - 14.0) < 0.3
    assert abs(ramp[-1]["rate"] - 4.0) < 0.5


def test_bad_readings_and_gaps_are_predicted_with_growing_variance(site: Site) -> None:
    estimator = Estimator(site)
    feed(estimator, steady(10))
    bad = [
        estimator.estimate(frame([reading(PRESSURE, 5.0 + 0.5 * i, 99.0, quality="BAD")], seq=i))
        for i in range(3)
    ]
    flagged = estimator.estimate(
        frame([reading(PRESSURE, 6.5, 99.0, flags=["OUT_OF_PHYSICAL_RANGE"])], seq=4)
    )
    # A frame without the signal at all: the signal is still reported, predicted.
    other = estimator.estimate(frame([reading("flow", 8.0, 100.0)], seq=5))
    states = [state_of(r, PRESSURE) for r in [*bad, flagged, other]]
    assert [s["measured"] for s in states] == [False] * 5
    assert all(s["innovation"] is None and s["nis"] is None for s in states)
    variances = [s["variance"] for s in states]
    assert variances == sorted(variances) and variances[0] < variances[-1]
    assert all(abs(s["value"] - 6.0) < 0.5 for s in states)
    assert other["ts"] == T0 + timedelta(seconds=8.0)
    # Signals never seen with a usable reading are not reported.
    assert {s["signal"] for s in other["signals"]} == {PRESSURE, "flow"}


def reference_kalman(
    values: list[tuple[float, float]], q: float, r: float, rate_var0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Textbook matrix form of the same filter, one reading at a time (no gating)."""
    t_prev, z0 = values[0]
    x = np.array([z0, 0.0])
    p = np.diag([r, rate_var0])
    h = np.array([[1.0, 0.0]])
    for t, z in values[1:]:
        dt = t - t_prev
        f = np.array([[1.0, dt], [0.0, 1.0]])
        qm = q * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])
        x, p = f @ x, f @ p @ f.T + qm
        s = (h @ p @ h.T)[0, 0] + r
        k = (p @ h.T)[:, 0] / s
        x = x + k * (z - x[0])
        p = (np.eye(2) - np.outer(k, h[0])) @ p
        t_prev = t
    return x, p


def test_variable_dt_matches_the_textbook_filter(site: Site) -> None:
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.uniform(0.05, 3.0, 40))
    values = [(float(t), 4.0 + 0.1 * float(t) + 0.05 * rng.standard_normal()) for t in times]
    last = feed(Estimator(site), values)[-1]
    signal = site.asset(PUMP).signal(PRESSURE)
    x, p = reference_kalman(
        values, signal.process_noise_density, signal.measurement_noise**2, signal.max_rate**2
    )
    assert last["value"] == pytest.approx(x[0], rel=1e-9)
    assert last["rate"] == pytest.approx(x[1], rel=1e-6)
    assert last["variance"] == pytest.approx(p[0, 0], rel=1e-6)
    assert last["rate_variance"] == pytest.approx(p[1, 1], rel=1e-6)


def test_several_readings_per_frame_are_absorbed_in_time_order(site: Site) -> None:
    values = [(0.5 * k, 3.0 + 0.2 * k) for k in range(8)]
    one_by_one = feed(Estimator(site), values)[-1]
    batched = Estimator(site)
    batched.estimate(frame([reading(PRESSURE, *values[0])]))
    shuffled = [reading(PRESSURE, t, v) for t, v in reversed(values[1:])]
    shuffled.insert(3, reading("flow", 1.2, 50.0))
    record = batched.estimate(frame(shuffled, seq=2))
    together = state_of(record, PRESSURE)
    for key in ("value", "rate", "variance", "rate_variance", "innovation", "nis"):
        assert together[key] == pytest.approx(one_by_one[key], rel=1e-12)
    assert record["ts"] == T0 + timedelta(seconds=3.5)


def test_counters_are_not_gated_and_state_codes_pass_through(site: Site) -> None:
    estimator = Estimator(site)
    cnc = "cnc-01"
    for i in range(10):
        count = 1000 + (5 if i >= 5 else 0)  # a jump of 5 parts at once
        record = estimator.estimate(
            frame(
                [
                    reading("parts_total", float(i), count),
                    reading("machine_state", float(i), i % 3),
                ],
                seq=i,
                asset_id=cnc,
            )
        )
        parts, code = state_of(record, "parts_total"), state_of(record, "machine_state")
        assert not parts["outlier"] and parts["measured"]
        assert parts["value"] == pytest.approx(count, abs=1e-3)
        assert code["value"] == i % 3 and code["rate"] == 0.0
        assert code["variance"] == 0.0 and code["rate_variance"] == 0.0
        assert code["innovation"] is None and code["measured"]


# --- state and contract -----------------------------------------------------------------------


def test_snapshot_restore_continues_exactly(site: Site) -> None:
    frames = [f for batch, _ in plant_frames(site, seconds=30) for f in batch]
    cut = len(frames) // 2
    straight = Estimator(site)
    expected = [straight.estimate(f) for f in frames]

    first = Estimator(site)
    for f in frames[:cut]:
        first.estimate(f)
    snapshots = json.loads(json.dumps({a: first.snapshot(a) for a in first.assets()}))
    resumed = Estimator(site)
    for asset_id, state in snapshots.items():
        resumed.restore(asset_id, state)
    assert sorted(resumed.assets()) == sorted(a.id for a in site.assets)
    assert [resumed.estimate(f) for f in frames[cut:]] == expected[cut:]
    assert resumed.snapshot(PUMP) == straight.snapshot(PUMP)


def test_output_encodes_with_the_state_estimate_schema(site: Site) -> None:
    serde = AvroSerde.local()
    estimator = Estimator(site)
    feed(estimator, steady(3))
    record = estimator.estimate(
        frame([reading(PRESSURE, 2.0, 0.0, quality="BAD"), reading("flow", 2.0, 80.0)], seq=9)
    )
    decoded = serde.decode(serde.encode("state_estimate", record, topic="twin.state"))
    assert decoded.record_type == "state_estimate"
    assert decoded.record == record


def test_unknown_asset_and_settings_are_errors(site: Site) -> None:
    with pytest.raises(EstimateError, match="nope"):
        Estimator(site).estimate(frame([], asset_id="nope"))
    with pytest.raises(EstimateError, match=PUMP):
        Estimator(site).restore(PUMP, {"signals": [PRESSURE]})
    with pytest.raises(ValidationError):
        EstimateSettings(gates=3.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        EstimateSettings(reinit_after=0)


def test_empty_frame_reports_at_ingest_time(site: Site) -> None:
    record = Estimator(site).estimate(frame([]))
    assert record["signals"] == [] and record["ts"] == record["ingest_ts"]
