"""`AlertEngine.on_frame_records` against the three calls it stands for (`on_frame_times`,
`on_state`, `on_anomaly`): over random streams of frames, ticks, pauses, restores and malformed
records, the same events, the same errors, and the same state, counters and tick schedule
after every step; and `known_levels` against the `observe` it predicts."""

from __future__ import annotations

import functools
import json
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
import yaml

from pipeline.site import Site, parse_site
from pipeline.stages.alerts import AlertEngine, AlertError, AlertSettings
from pipeline.stages.alerts_stale import known_levels, observe, usable_readings
from pipeline.stages.alerts_state import AssetAlerts
from pipeline.stages.alerts_times import FrameTimes
from pipeline.stages.common import from_micros
from tests.unit.alerts_support import DEMO, at, demo_site, now_at, score, state

WALKS = {  # asset type -> signal -> (start, step, low, high): across the demo limits
    "cnc": {"spindle_temperature": (80.0, 2.0, 55.0, 100.0), "vibration_rms": (6.8, 0.5, 0, 12)},
    "pump": {"suction_pressure": (0.15, 0.06, 0.0, 1.0), "motor_current": (108, 4, 60, 150)},
    "compressor": {"discharge_pressure": (7.0, 0.8, 3.0, 11.0)},
    "conveyor": {"gearbox_temperature": (92.0, 0.5, 86.0, 100.0)},  # always hot
}
GHOST = "ghost-01"
"""An asset the site does not have."""

Step = tuple[str, Any]


def site_with(change: Callable[[dict[str, Any]], None]) -> Site:
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    change(data)
    return parse_site(yaml.safe_dump(data, sort_keys=False))


def _mixed(data: dict[str, Any]) -> None:
    """conv-01 without rules, pump-03 without a stale rule, conv-02 with a threshold and a
    one-signal stale rule, comp-01 with a two-sided threshold and a stale rule."""
    for rule in data["alerts"]:
        if rule["id"] in ("conveyor-gearbox-hot", "conveyor-speed-stale"):
            del rule["asset_type"]
            rule["assets"] = ["conv-02"]
        elif rule["id"] == "utilities-stale":
            rule["assets"] = ["pump-01", "pump-02", "comp-01"]


SITES = {"demo": demo_site(), "mixed": site_with(_mixed)}
SETTINGS = {
    "default": AlertSettings(),
    "tight": AlertSettings(
        clear_hold=timedelta(seconds=1),
        reraise_holdoff=timedelta(seconds=8),
        max_events_per_minute=1,
    ),
}


def _readings(
    rng: random.Random, signals: list[str], dead: dict[str, float], t: float
) -> list[dict[str, Any]]:
    """Half a second of readings: live signals at the frame's end (now and then earlier),
    dead ones not at all or unusable, some flagged, BAD or not finite."""
    readings = []
    for name in signals:
        if dead.get(name, -1.0) > t and rng.random() < 0.7:
            continue
        ts = t if rng.random() < 0.9 else t - rng.choice([0.1, 0.3])
        value, quality, flags = rng.uniform(0, 10), "GOOD", []
        roll = rng.random()
        if dead.get(name, -1.0) > t or roll < 0.02:
            flags = [rng.choice(["STALE", "DEVICE_BAD", "DUPLICATE", "NOT_FINITE"])]
        elif roll < 0.04:
            flags = [rng.choice(["FUTURE_TIMESTAMP", "TOO_OLD"])]
            ts = t + 30 if flags == ["FUTURE_TIMESTAMP"] else t - 30
        elif roll < 0.06:
            flags = ["RATE_OF_CHANGE"]  # a suspicion: still a live sensor
        elif roll < 0.07:
            quality = "BAD"
        elif roll < 0.08:
            value = math.nan
        readings.append({"signal": name, "ts": at(ts), "value": value, "quality": quality,
                         "flags": flags})  # fmt: skip
    return readings


def _estimate(
    rng: random.Random, asset_id: str, t: float, times: FrameTimes, levels: dict[str, float]
) -> dict[str, Any]:
    """The state estimate of the frame: mostly what the frame says (measured = its fresh
    signals, at its newest time), sometimes not (another time, other signals measured)."""
    newest, fresh = times
    ts = from_micros(newest) if newest is not None else at(t)
    values = {s: levels.get(s, 1.0) for s in demo_site().asset(asset_id).signals}
    measured = {s: v for s, v in values.items() if s in fresh}
    if rng.random() < 0.25:
        ts += timedelta(seconds=rng.choice([-1.0, -0.5, -0.1, 0.1, 0.5]))
        measured = {s: v for s, v in values.items() if rng.random() < 0.8}
        if rng.random() < 0.2:
            measured["unknown_signal"] = 1.0
        if measured and rng.random() < 0.2:
            measured[rng.choice(list(measured))] = math.inf
    unmeasured = {s: v for s, v in values.items() if s not in measured}
    return state(asset_id, t, measured, unmeasured) | {"ts": ts}


def _malformed(rng: random.Random, records: list[Any]) -> None:
    """Break one of a frame's records in place (a field missing or of the wrong type)."""
    which = rng.randrange(3)
    if which == 0:
        records[0] = rng.choice([(None,), "times", (None, {"x": 1}, 3)])
        return
    record = records[which]
    key = rng.choice(["asset_id", "ts", "signals" if which == 1 else "warming_up"])
    if key == "asset_id" and rng.random() < 0.5:
        record[key] = 17
    elif key == "signals" and record["signals"]:
        record["signals"][0] = record["signals"][0] | {"value": None, "measured": True}
    else:
        del record[key]


@functools.cache
def stream(seed: int, rounds: int = 400) -> list[Step]:
    """Frames of every asset (first seen at different times, some falling silent, signals
    dying and coming back), ticks about every second (some repeated, going back, or after a
    pause of the worker), snapshot/restore into either site, an unknown asset, a record of
    another asset now and then, and rare malformed records."""
    rng = random.Random(seed)
    site = demo_site()
    assets = [a.id for a in site.assets]
    start = {a: rng.uniform(0, 30) for a in assets}
    silent_until = dict.fromkeys(assets, -1.0)
    dead: dict[str, dict[str, float]] = {a: {} for a in assets}
    levels = {a.id: {s: w[0] for s, w in WALKS[a.type.id].items()} for a in site.assets}
    version = dict.fromkeys(assets, 0)
    anomalous = dict.fromkeys(assets, False)
    lag = 1.0  # processing time minus event time
    steps: list[Step] = []
    for r in range(rounds):
        t = r / 2
        if rng.random() < 0.01:  # the worker pauses: its backlog comes late
            lag += rng.uniform(11, 30)
        order = [*assets, GHOST]
        rng.shuffle(order)
        for asset_id in order:
            now = now_at(t + lag - 1 + rng.uniform(-0.3, 0.3))
            if asset_id == GHOST:
                if rng.random() < 0.05:
                    nothing: FrameTimes = (None, {})
                    ghost = (GHOST, nothing, state(GHOST, t, {}), score(GHOST, t, 0.1), now)
                    steps.append(("frame", ghost))
                continue
            if t < start[asset_id] or t < silent_until[asset_id]:
                continue
            if rng.random() < 0.003:
                silent_until[asset_id] = t + rng.uniform(5, 40)
            asset = site.asset(asset_id)
            signals = list(asset.signals)
            if rng.random() < 0.06:
                dead[asset_id][rng.choice(signals)] = t + rng.uniform(3, 30)
            for name, (_, sd, low, high) in WALKS[asset.type.id].items():
                walked = levels[asset_id][name] + rng.gauss(0, sd)
                levels[asset_id][name] = min(high, max(low, walked))
            roll = rng.random()
            if roll < 0.03:  # nothing usable, or a frame delivered late
                readings = [] if roll < 0.015 else _readings(rng, signals, {}, t - 2)
            else:
                readings = _readings(rng, signals, dead[asset_id], t)
            times = usable_readings(readings)
            estimate = _estimate(rng, asset_id, t, times, levels[asset_id])
            if rng.random() < 0.005:
                version[asset_id] += 1
            if rng.random() < 0.01:
                anomalous[asset_id] = not anomalous[asset_id]
            anomaly = score(
                asset_id,
                t,
                rng.gauss(1.0, 0.08) if anomalous[asset_id] else rng.uniform(0.0, 0.8),
                warming_up=t < start[asset_id] + 15 or rng.random() < 0.05,
                model_version=f"hst-1.2.{version[asset_id]}",
            )
            if rng.random() < 0.01:  # a record of another asset
                other = rng.choice(assets)
                target = estimate if rng.random() < 0.5 else anomaly
                target["asset_id"] = other
            records: list[Any] = [times, estimate, anomaly]
            if rng.random() < 0.01:
                _malformed(rng, records)
            steps.append(("frame", (asset_id, *records, now)))
        if r % 2 == 0:
            now = now_at(t + lag - 1 + 0.25)
            steps.append(("tick", now))
            roll = rng.random()
            if roll < 0.02:
                steps.append(("tick", now))
            elif roll < 0.04:
                steps.append(("tick", now - timedelta(seconds=3)))
        # Into either site: the alerts of rules the other one lacks are cleared.
        if r == rounds // 3:
            steps.append(("restore", "demo"))
        elif r == 2 * rounds // 3:
            steps.append(("restore", "mixed"))
        elif rng.random() < 0.003:
            steps.append(("restore", rng.choice(list(SITES))))
    return steps


def three_calls(
    engine: AlertEngine,
    asset_id: str,
    times: FrameTimes,
    estimate: dict[str, Any],
    anomaly: dict[str, Any],
    now: datetime,
) -> list[dict[str, Any]]:
    out = engine.on_frame_times(asset_id, times, now)
    out += engine.on_state(estimate, now)
    return out + engine.on_anomaly(anomaly, now)


def outcome(call: Callable[..., list[dict[str, Any]]], *args: Any) -> Any:
    """The events of `call(*args)`, or the AlertError it raised."""
    try:
        return call(*args)
    except AlertError as exc:
        return ("AlertError", str(exc))


_Engine = TypeVar("_Engine", bound=AlertEngine)


def restored(engine: AlertEngine, fresh: _Engine) -> _Engine:
    """`fresh` with `engine`'s state, through JSON as the changelog keeps it."""
    for asset_id in engine.assets():
        fresh.restore(asset_id, json.loads(json.dumps(engine.snapshot(asset_id))))
    return fresh


def schedule(engine: AlertEngine) -> tuple[Any, ...]:
    ticks = engine._ticks
    return (ticks.ticks, ticks.last_us, ticks._heap, ticks._due, ticks._rank, ticks._seen)


def assert_same(three: AlertEngine, one: AlertEngine, public: bool) -> None:
    """Equal state: the tick schedule and each asset's state as it is (which `snapshot`
    would change, by catching the asset up), or with `public` what `snapshot` gives."""
    assert one.counters == three.counters
    assert one._unchecked == three._unchecked
    assert schedule(one) == schedule(three)
    assert one.assets() == three.assets()
    for asset_id in three.assets():
        if public:
            assert one.snapshot(asset_id) == three.snapshot(asset_id), asset_id
        else:
            assert one._assets[asset_id] == three._assets[asset_id], asset_id
        # In the same order too: orphaned alerts are cleared in this order after a restore.
        assert list(one._assets[asset_id].alerts) == list(three._assets[asset_id].alerts)


class Counting(AlertEngine):
    """Counts how the estimates of assets with stale rules were taken, to show that the
    streams take each way."""

    def __init__(self, site: Site, settings: AlertSettings, ways: dict[str, int]) -> None:
        super().__init__(site, settings)
        self.ways = ways

    def _on_state(self, asset: Any, st: Any, emit: Any, record: Any, again: bool = True) -> Any:
        before = st.snapshot()["fresh"], st.clock_us, st.clock_arrival_us
        result = super()._on_state(asset, st, emit, record, again)
        if self._rules[asset.id].stale:
            moved = (st.snapshot()["fresh"], st.clock_us, st.clock_arrival_us) != before
            way = f"{'again' if again else 'once'}-{'moved' if moved else 'still'}"
            self.ways[way] = self.ways.get(way, 0) + 1
        return result


def play(seed: int, settings: str, public_every: int) -> tuple[list[Any], Counter[str], Counting]:
    """Both ways over the stream, comparing after every step; the outcomes, the counters
    summed over the engines (a restore starts new ones), and the last engine."""
    site, config = SITES["mixed"], SETTINGS[settings]
    ways: dict[str, int] = {}
    three, one = AlertEngine(site, config), Counting(site, config, ways)
    outcomes: list[Any] = []
    counted: Counter[str] = Counter()
    for i, (kind, arg) in enumerate(stream(seed)):
        if kind == "tick":
            expected, got = outcome(three.tick, arg), outcome(one.tick, arg)
        elif kind == "restore":
            counted.update(asdict(one.counters))
            three = restored(three, AlertEngine(SITES[arg], config))
            one = restored(one, Counting(SITES[arg], config, ways))
            expected = got = None
        else:
            expected = outcome(three_calls, three, *arg)
            got = outcome(one.on_frame_records, *arg)
        assert got == expected, (i, kind)
        outcomes.append(expected)
        assert_same(three, one, public=i % public_every == 0)
    counted.update(asdict(one.counters))
    return outcomes, counted, one


@pytest.mark.parametrize(
    ("seed", "settings", "public_every"),
    [(1, "default", 1), (2, "tight", 1), (3, "default", 41), (4, "tight", 41), (5, "tight", 7)],
)
def test_one_call_equals_the_three_calls(seed: int, settings: str, public_every: int) -> None:
    outcomes, counted, one = play(seed, settings, public_every)
    events = [e for out in outcomes if isinstance(out, list) for e in out]
    kinds = {(e["kind"], e["event"]) for e in events}
    for kind in ("THRESHOLD", "STALE", "ANOMALY"):
        assert {(kind, "RAISED"), (kind, "CLEARED")} <= kinds, kind
    assert any("no longer in the site file" in e["message"] for e in events)  # restored
    assert any(isinstance(out, tuple) for out in outcomes)  # malformed records
    assert counted["unknown_assets"] > 0
    # The estimate was taken each way: after the frame it had nothing new to say about
    # liveness, it had, and the frame's stale UPDATED was held back by the rate limit.
    assert one.ways.get("once-still", 0) > 0 and one.ways.get("once-moved", 0) > 0
    if settings == "tight":
        assert counted["suppressed"] > 0 and one.ways.get("again-still", 0) > 0


@pytest.mark.parametrize("seed", range(4))
def test_known_levels_is_none_exactly_where_observe_would_change_something(seed: int) -> None:
    rng = random.Random(seed)
    asset = demo_site().asset("cnc-01")
    names = [*list(asset.signals)[:3], "unknown_signal"]
    wanted = frozenset(names[1:3])
    now_us, t_us, gap_us = 500_000_000, 400_000_000, 10_000_000
    near = [-1_000_000, 0, 1_000_000]
    both = {True: 0, False: 0}
    for _ in range(3000):
        alerts = AssetAlerts(
            clock_us=rng.choice([None, *(t_us + d for d in near)]),
            clock_arrival_us=now_us + rng.choice([0, -1_000_000]),
            watched_us=rng.choice([None, *(now_us + d for d in near)]),
        )
        if rng.random() < 0.9:
            alerts.fresh = {
                name: [t_us + rng.choice(near), now_us + rng.choice([0, 0, -1_000_000])]
                for name in asset.signals
            }
        signals: list[dict[str, Any]] = [
            {"signal": rng.choice(names), "measured": rng.random() < 0.8,
             "value": rng.choice([1.5, 2.0, math.inf, math.nan])}
            for _ in range(rng.randint(0, 4))
        ]  # fmt: skip
        levels = {s["signal"]: s["value"] for s in signals
                  if s["measured"] and math.isfinite(s["value"])}  # fmt: skip
        before = alerts.snapshot()
        known = known_levels(alerts, signals, t_us, now_us, wanted)
        observe(alerts, asset, t_us, dict.fromkeys(levels, t_us), now_us, gap_us)
        unchanged = alerts.snapshot() == before
        assert (known is not None) == unchanged
        if known is not None:
            assert known == {k: v for k, v in levels.items() if k in wanted}
        both[unchanged] += 1
    assert min(both.values()) > 300
