"""KPI stage: windows merged from panes equal a brute-force computation over all readings;
a snapshot restored into a fresh stage continues exactly as if it had never stopped."""

from __future__ import annotations

import itertools
import json
import math
import random
from array import array
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from pipeline.site import MachineState, Site
from pipeline.stages.common import to_micros
from pipeline.stages.kpi import KpiWindows
from pipeline.stages.kpi_aggregate import KpiAggregator, signal_stats
from tests.unit.test_kpi import (
    T0,
    at,
    demo_site,
    frame,
    only,
    scripted_cnc_minute,
    tumbling_only,
)

Reading = tuple[str, float, float]
T0_US = to_micros(T0)


@pytest.fixture(scope="module")
def site() -> Site:
    return demo_site()  # demo windows: 1 min tumbling, 5 min every 1 min hopping


def scripted_stream(seed: int, minutes: int) -> list[Reading]:
    """A cnc's readings in event-time order: state changes, part counters (with a reset) and
    a 10 Hz spindle speed; ms-resolution times so the order is unambiguous."""
    rng = random.Random(seed)
    readings: list[Reading] = []
    state, parts, scrap = 1, 500, 20
    for tenth in range(minutes * 600):
        t = tenth / 10 + rng.randrange(1, 90) / 1000
        readings.append(("spindle_speed", t, round(rng.gauss(12000, 800), 3)))
        if tenth % 5 == 0:
            if rng.random() < 0.05:
                state = rng.choice([0, 1, 1, 1, 2, 3, 4])
            readings.append(("machine_state", t + 0.001, state))
        if tenth % 10 == 0:
            if state == 1 and rng.random() < 0.3:
                parts += 1
                scrap += rng.random() < 0.2
            if tenth == 3000:
                parts, scrap = 3, 0  # controller restart resets the counters
            readings.append(("parts_total", t + 0.002, parts))
            readings.append(("parts_scrap", t + 0.003, scrap))
    return readings


def frames_of(readings: list[Reading], size: int, seed: int) -> list[dict[str, Any]]:
    """Frames of `size` readings, shuffled within each frame (out of order, never late)."""
    rng = random.Random(seed)
    frames = []
    for seq, i in enumerate(range(0, len(readings), size)):
        chunk = readings[i : i + size]
        rng.shuffle(chunk)
        frames.append(frame("cnc-01", chunk, seq=seq))
    return frames


def brute_force(site: Site, readings: list[Reading], start_s: float, end_s: float) -> dict:
    """The window's KPIs straight from all readings, without panes, carries or watermarks."""
    rule = site.asset("cnc-01").kpi.state  # type: ignore[union-attr]
    assert rule is not None
    us = lambda t: round(t * 1e6)  # noqa: E731
    start, end = us(start_s), us(end_s)
    series: dict[str, list[tuple[int, float]]] = {}
    for signal, t, value in readings:
        series.setdefault(signal, []).append((us(t), value))
    for points in series.values():
        points.sort(key=lambda p: p[0])

    spent = dict.fromkeys(MachineState, 0)
    failures = 0
    states = [(ts, rule.classify(v)) for ts, v in series["machine_state"]]
    for i, (ts, state) in enumerate(states):
        until = states[i + 1][0] if i + 1 < len(states) else math.inf
        overlap = min(until, end) - max(ts, start)
        if state is not None and overlap > 0:
            spent[state] += int(overlap)
        previous = states[i - 1][1] if i else None
        if start <= ts < end and state is MachineState.DOWN and previous not in (None, state):
            failures += 1

    def parts(signal: str) -> int:
        points = series[signal]
        total = 0.0
        for (_, before), (ts, value) in itertools.pairwise(points):
            if start <= ts < end:
                total += value - before if value >= before else value
        return round(total)

    total, scrap = parts("parts_total"), parts("parts_scrap")
    run, planned = (
        spent[MachineState.RUNNING],
        sum(spent.values()) - spent[MachineState.MAINTENANCE],
    )
    speeds = [v for ts, v in series["spindle_speed"] if start <= ts < end]
    return {
        "run_s": run / 1e6,
        "idle_s": spent[MachineState.IDLE] / 1e6,
        "down_s": spent[MachineState.DOWN] / 1e6,
        "availability": run / planned if planned else None,
        "performance": min(1.0, 10 * total / (run / 1e6)) if run else None,
        "parts_total": total,
        "parts_good": max(0, total - scrap),
        "failures": failures,
        "speed": (len(speeds), min(speeds), max(speeds), float(np.mean(speeds)),
                  float(np.percentile(speeds, 95))),
    }  # fmt: skip


def test_tumbling_and_hopping_windows_equal_a_brute_force_computation(site: Site) -> None:
    readings = scripted_stream(seed=7, minutes=8)
    kpi = KpiWindows(site)
    out = []
    for i, f in enumerate(frames_of(readings, 50, seed=1)):
        out += kpi.add(f, at(i * 0.5))
    out += kpi.tick(at(10_000))
    assert kpi.stats.readings_too_late == 0

    tumbling = [r for r in out if r["window_kind"] == "TUMBLING"]
    hopping = [r for r in out if r["window_kind"] == "HOPPING"]
    # minutes 0..7; hopping windows of 5 min starting from -4 min to 7 min
    assert [r["window_start"] for r in tumbling] == [at(60 * m) for m in range(8)]
    assert [r["window_start"] for r in hopping] == [at(60 * m) for m in range(-4, 8)]
    assert all(r["version"] == 1 for r in out)
    failures = 0
    for record in out:
        start = (record["window_start"] - T0) / timedelta(seconds=1)
        end = (record["window_end"] - T0) / timedelta(seconds=1)
        expected = brute_force(site, readings, start, end)
        speed = next(s for s in record["signals"] if s["signal"] == "spindle_speed")
        got_speed = (speed["count"], speed["min"], speed["max"], speed["mean"], speed["p95"])
        assert got_speed == pytest.approx(expected.pop("speed"), rel=1e-12)
        for name, value in expected.items():
            assert record[name] == pytest.approx(value, rel=1e-12), (name, start)
        failures += record["failures"] if record["window_kind"] == "TUMBLING" else 0
    # the stream had real variety: otherwise the comparison proves little
    assert failures > 0
    assert any(r["parts_total"] for r in tumbling)
    assert len({round(r["run_s"]) for r in tumbling}) > 1


def first_after(frames: list[dict[str, Any]], seconds: float) -> int:
    """Index of the first frame with a reading later than `seconds`."""
    return next(
        i for i, f in enumerate(frames) if max(r["ts"] for r in f["readings"]) > at(seconds)
    )


def test_a_restored_snapshot_continues_exactly_as_without_stopping(site: Site) -> None:
    readings = scripted_stream(seed=3, minutes=7)
    frames = frames_of(readings, 50, seed=2)
    # Stop at 340 s: pane [0 s, 60 s) was dropped at watermark 330 s (its last window, the
    # hopping [0 s, 300 s), took late data until then), so the hopping window [60 s, 360 s)
    # starts from the state and counters carried over in the snapshot.
    # After the restore: late data within the lateness (window [300 s, 360 s) closes at
    # watermark 360 s and takes late data until 390 s), and data too late for every window.
    frames.insert(first_after(frames, 375), frame("cnc-01", [("spindle_speed", 330.05, 1.0)]))
    frames.insert(first_after(frames, 350), frame("cnc-01", [("machine_state", 10.0, 3.0)]))
    half = first_after(frames, 340)

    def feed(kpi: KpiWindows, part: list[dict[str, Any]], offset: int) -> list[dict]:
        out = []
        for i, f in enumerate(part, start=offset):
            out += kpi.add(f, at(i * 0.5))
            if i % 20 == 0:
                out += kpi.tick(at(i * 0.5))
        return out

    straight = KpiWindows(site)
    expected = feed(straight, frames, 0)
    expected += straight.tick(at(10_000))

    first = KpiWindows(site)
    got = feed(first, frames[:half], 0)
    snapshots = {a: json.loads(json.dumps(first.snapshot(a))) for a in first.assets()}
    second = KpiWindows(site)
    for asset_id, state in snapshots.items():
        second.restore(asset_id, state)
    got += feed(second, frames[half:], half)
    got += second.tick(at(10_000))

    assert snapshots["cnc-01"]["carried"]
    assert got == expected
    assert straight.stats.windows_revised > 0
    assert straight.stats.readings_too_late > 0
    assert second.snapshot("cnc-01") == straight.snapshot("cnc-01")


def test_the_aggregator_contract_gives_the_stage_result(site: Site) -> None:
    """initialize/agg/result on their own agree with the stage's inlined frame loop."""
    readings = scripted_cnc_minute() + [("spindle_speed", s / 2, 100.0 + s) for s in range(120)]
    kpi = KpiWindows(site, tumbling_only(site))
    kpi.add(frame("cnc-01", readings), at(60))
    record = only(kpi.add(frame("cnc-01", [("machine_state", 62, 1)], seq=1), at(63)))

    aggregator = KpiAggregator(site.asset("cnc-01"))
    before, pane = aggregator.initialize(), aggregator.initialize()
    for signal, t, value in readings:
        target = pane if t >= 0 else before
        aggregator.agg(target, signal, value, round(t * 1e6) + T0_US)
    entry = {s: (ts[-1], before.values[s][-1]) for s, ts in before.times.items()}
    result = aggregator.result([pane], entry, T0_US, T0_US + 60_000_000)
    assert result.record(site.asset("cnc-01"), ("TUMBLING", T0_US, T0_US + 60_000_000), 1,
                         at(63)) == record  # fmt: skip


@pytest.mark.parametrize("seed", [5, 6, 7])
@pytest.mark.parametrize("kind", ["list", "doubles"])
def test_signal_stats_of_signals_grouped_by_count_equal_each_signal_alone(
    seed: int, kind: str
) -> None:
    """Lists (as tests build them) and C doubles (as panes keep them); counts whose 95 %
    rank falls below, at and above the middle of two values, ties, a single value."""
    rng = np.random.default_rng(seed)
    found: list[tuple[str, Any]] = []
    counts = [600, 1, 600, 120, 2, 600, 120, 37, 1, 11, 21, 3, 4, 1001, *range(5, 11)]
    for i, count in enumerate(counts * 2):
        values = rng.normal(50.0, 20.0, count) * 10.0 ** rng.integers(-3, 6)
        if i < len(counts):
            values = values.round(rng.integers(0, 4))
        found.append((f"s{i}", values.tolist() if kind == "list" else array("d", values)))
    stats = signal_stats(found)
    assert [s.signal for s in stats] == [name for name, _ in found]
    for (name, values), got in zip(found, stats, strict=True):
        alone = np.asarray(values, dtype=np.float64)
        # exactly what a call per signal gives, not merely close
        assert got.count == len(values)
        assert got.min == float(alone.min()) and got.max == float(alone.max())
        assert got.p95 == float(np.percentile(alone, 95)), name
        assert got.mean == math.fsum(values) / len(values)
    assert signal_stats([]) == ()
