"""KPI stage ticks: a tick looks only at the assets whose windows it can close, and that gives
exactly what looking at every asset on every tick gives, also after a restore."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from typing import Any

import pytest
import yaml

from pipeline.bench.plant import BenchPlant, site_document
from pipeline.site import Site, parse_site
from pipeline.stages.common import to_micros
from pipeline.stages.kpi import KpiWindows
from pipeline.stages.kpi_state import AssetWindows
from pipeline.stages.log_time import LogClock
from pipeline.stages.ticks import DUE_NOW
from tests.unit.test_kpi import at, demo_site, frame

Call = tuple[str, Any, datetime]
"""("add", frame, now) or ("tick", None, now)"""

FEEDS = {
    "cnc-01": ("opcua-line1", ["spindle_speed", "machine_state", "parts_total"]),
    "cnc-02": ("opcua-line1", ["spindle_speed", "machine_state"]),
    "pump-01": ("modbus-utilities", ["motor_current"]),
    "conv-01": ("mqtt-line2", ["belt_speed"]),
}
SECOND_SOURCE = ("cnc-02", "edge-gw", "spindle_load")


class EveryTick(KpiWindows):
    """The reference: every asset is due on every tick."""

    def _due(self, state: AssetWindows) -> int | None:
        return DUE_NOW


@pytest.fixture(scope="module")
def site() -> Site:
    return demo_site()


def stream(seed: int, seconds: int = 900) -> list[Call]:
    """Frames every 0.5 s per asset and source (device clocks off by up to 3 s, some late
    readings), sources falling silent for 5 s to 4 min, and a tick a second, now and then
    repeated, going back in time or after a pause."""
    rng = random.Random(seed)
    feeds = dict(FEEDS)
    feeds[SECOND_SOURCE[0] + "/2"] = (SECOND_SOURCE[1], [SECOND_SOURCE[2]])
    skew = {name: rng.uniform(-3, 3) for name in feeds}
    silent_until = dict.fromkeys(feeds, -1.0)
    seqs = dict.fromkeys(feeds, 0)
    calls: list[Call] = []
    paused_until = -1.0
    for step in range(seconds * 2):
        t = step / 2
        now = at(t + 0.2 + rng.random() * 0.2)
        for name, (source, signals) in feeds.items():
            if t < silent_until[name]:
                continue
            if rng.random() < 0.004:
                silent_until[name] = t + rng.choice([rng.uniform(5, 40), rng.uniform(40, 240)])
            event = t + skew[name]
            readings = [
                (s, event + rng.random() * 0.4, rng.choice([0.0, 1.0, 3.0])) for s in signals
            ]
            if rng.random() < 0.02:  # late data, some within the lateness, some beyond
                readings.append((signals[0], event - rng.uniform(0, 400), 2.0))
            seqs[name] += 1
            calls.append(("add", frame(name.split("/")[0], readings, source, seqs[name]), now))
        if step % 2 == 0 and t >= paused_until:
            calls.append(("tick", None, now))
            roll = rng.random()
            if roll < 0.01:
                calls.append(("tick", None, now))  # the same time again
            elif roll < 0.02:
                calls.append(("tick", None, now - timedelta(seconds=2)))  # back in time
            elif roll < 0.03:
                paused_until = t + rng.uniform(10, 60)  # no ticks for a while
    return calls


def play(kpi: KpiWindows, calls: list[Call], by_tick: list[dict] | None = None) -> list[dict]:
    out: list[dict[str, Any]] = []
    for method, record, now in calls:
        if method == "tick":
            closed = kpi.tick(now)
            if by_tick is not None:
                by_tick += closed
            out += closed
        else:
            out += kpi.add(record, now)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ticks_give_what_looking_at_every_asset_gives(site: Site, seed: int) -> None:
    calls = stream(seed)
    lazy, reference = KpiWindows(site), EveryTick(site)
    by_tick: list[dict] = []
    # Call by call: a tick that comes late shows as windows one call later.
    each = [play(lazy, [call], by_tick) for call in calls]
    assert each == [play(reference, [call]) for call in calls]
    assert len({r["asset_id"] for r in by_tick}) >= 3  # silent sources' windows closed
    assert lazy.stats.windows_revised > 0 and lazy.stats.readings_too_late > 0
    ticked = lazy.stats.assets_ticked
    lazy.stats.assets_ticked = reference.stats.assets_ticked
    assert lazy.stats == reference.stats
    lazy.stats.assets_ticked = ticked
    for asset_id in FEEDS:
        assert lazy.watermark(asset_id) == reference.watermark(asset_id)
        assert lazy.snapshot(asset_id) == reference.snapshot(asset_id)
    # The lazy stage looked at far fewer assets on its ticks than the reference.
    assert lazy.stats.assets_ticked * 5 < reference.stats.assets_ticked


@pytest.mark.parametrize("cut", [100, 1500, 2900, 4444])
def test_ticks_after_a_restore_continue_as_without_stopping(site: Site, cut: int) -> None:
    calls = stream(seed=4)
    straight = KpiWindows(site)
    expected = [play(straight, [call]) for call in calls]

    first = KpiWindows(site)
    got = [play(first, [call]) for call in calls[:cut]]
    snapshots = {a: json.loads(json.dumps(first.snapshot(a))) for a in first.assets()}
    second = KpiWindows(site)
    for asset_id, state in snapshots.items():
        second.restore(asset_id, state)
    got += [play(second, [call]) for call in calls[cut:]]
    assert got == expected


def test_windows_of_a_restored_silent_asset_close_by_tick(site: Site) -> None:
    """A snapshot taken while the source is silent, then only ticks: the windows close at
    the same tick as without the restore."""
    first = KpiWindows(site)
    first.add(frame("cnc-01", [("spindle_speed", 50, 1.0)]), at(50))
    first.tick(at(60))
    snapshot = json.loads(json.dumps(first.snapshot("cnc-01")))
    second = KpiWindows(site)
    second.restore("cnc-01", snapshot)
    closed = []
    for kpi in (first, second):
        assert kpi.tick(at(79)) == []
        closed.append(kpi.tick(at(80)))  # silent 30 s: watermark 50 - 2 + 30 = 78 s
    assert closed[0] == closed[1]
    assert ("TUMBLING", at(0)) in [(r["window_kind"], r["window_start"]) for r in closed[1]]


def test_a_tick_looks_only_at_assets_whose_windows_it_can_close() -> None:
    document = site_document(BenchPlant(assets=300, gauges=2, partitions=1, topic_prefix=""))
    site = parse_site(yaml.safe_dump(document, sort_keys=False))
    kpi = KpiWindows(site)
    ids = [a.id for a in site.assets]
    kpi.tick(at(0))

    def send(asset_ids: list[str], t: float) -> None:
        for asset_id in asset_ids:
            kpi.add(frame(asset_id, [("spindle_speed", t, 1.0)], "bench-gateway"), at(t))

    send(ids, 1)
    for s in range(2, 31):  # every source sent within the idle timeout (30 s)
        assert kpi.tick(at(s)) == []
        send(ids[:10], s)
    assert kpi.stats.assets_ticked == 0
    closed = []
    for s in range(31, 80):
        closed += kpi.tick(at(s))
        send(ids[:10], s)
    # Each silent asset closes its window [0 s, 60 s) by tick; the ones sending close it with
    # their data. Every asset is looked at a few times (when a source's idle timeout runs
    # out and when the watermark crosses a window end or a window's lateness), not on each
    # of the 49 ticks.
    assert {r["asset_id"] for r in closed} == set(ids[10:])
    assert kpi.stats.assets_ticked <= 3 * len(ids)


def _slow_backlog(site: Site, log: LogClock | None) -> list[dict[str, Any]]:
    """An hour-old backlog around a window end (cnc-01's data from 50 s to 64 s), read by
    a swamped worker: a frame of cnc-01 every 40 s of wall clock, ticking every second, and
    the frames of other assets of its partition in between."""
    kpi = KpiWindows(site, log=log)
    wall = at(3600)
    out: list[dict[str, Any]] = []
    for seq, t in enumerate(x / 2 for x in range(100, 129)):
        out += kpi.add(frame("cnc-01", [("spindle_speed", t, 1000.0)], seq=seq), wall)
        for _ in range(40):
            if log is not None:
                log.heard(0, to_micros(at(t)), to_micros(wall))
            wall += timedelta(seconds=1)
            out += kpi.tick(wall)
    return [r for r in out if r["window_kind"] == "TUMBLING"]


def test_with_a_log_clock_a_slowly_read_backlog_closes_no_window_by_idle_timeout(
    site: Site,
) -> None:
    """By the wall clock the asset is silent for 40 s between frames, and its idle timeout
    (30 s) closes the window before the data reaches its end. In log time the window closes
    when the data passes its end (at 62 s: the out-of-orderness is 2 s)."""
    first = at(0)
    by_wall = [r for r in _slow_backlog(site, None) if r["window_start"] == first]
    assert by_wall[0]["emitted_ts"] < at(3600 + 24 * 40)
    by_log = [r for r in _slow_backlog(site, LogClock()) if r["window_start"] == first]
    assert [(r["version"], r["emitted_ts"]) for r in by_log] == [(1, at(3600 + 24 * 40))]


def _key(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=str)


@pytest.mark.parametrize("seed", [1, 5])
def test_limited_ticks_in_steps_give_what_one_tick_gives(site: Site, seed: int) -> None:
    """Each tick taken one asset at a time, stepping while assets wait: the same windows as
    the whole tick, call by call (in another order across assets), and the same state."""
    calls = stream(seed)
    stepped, whole = KpiWindows(site), KpiWindows(site)
    steps = 0
    for call in calls:
        method, record, now = call
        if method == "tick":
            got = stepped.tick(now, limit=1)
            for _ in range(len(FEEDS)):
                if not stepped.waiting():
                    break
                got += stepped.tick(now, limit=1)
                steps += 1
            assert not stepped.waiting()
        else:
            got = stepped.add(record, now)
        assert sorted(map(_key, got)) == sorted(map(_key, play(whole, [call])))
    assert steps > 0  # some ticks had more than one asset to close
    for asset_id in FEEDS:
        assert stepped.snapshot(asset_id) == whole.snapshot(asset_id)


def test_an_asset_a_limited_tick_left_closes_its_windows_with_its_next_frame(site: Site) -> None:
    """Two silent assets, a tick limited to one: the other's windows wait for the next tick,
    and a frame of it before then closes them first, as the whole tick would have."""
    kpi, whole = KpiWindows(site), KpiWindows(site)
    for stage in (kpi, whole):
        stage.tick(at(0))
        for asset_id in ("cnc-01", "pump-01"):
            readings = [("spindle_speed" if asset_id == "cnc-01" else "motor_current", 50, 1.0)]
            source = "opcua-line1" if asset_id == "cnc-01" else "modbus-utilities"
            stage.add(frame(asset_id, readings, source), at(50))
        for s in range(51, 80):
            assert stage.tick(at(s)) == []
    first = kpi.tick(at(80), limit=1)  # silent 30 s: both watermarks reach 78 s
    assert {r["asset_id"] for r in first} == {"cnc-01"}
    assert kpi.waiting()
    closed = whole.tick(at(80))
    late = frame("pump-01", [("motor_current", 81, 2.0)], "modbus-utilities", seq=2)
    with_frame = kpi.add(late, at(80.5))
    pump = [r for r in closed if r["asset_id"] == "pump-01"]
    assert pump and [_key(r) for r in with_frame[: len(pump)]] == [_key(r) for r in pump]
    assert kpi.tick(at(81)) == whole.tick(at(81)) == []  # (its old due time: a look, no more)
    assert not kpi.waiting()
