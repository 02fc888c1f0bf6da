"""Alert stage ticks: a tick looks only at the assets where a stale rule can change, and that
gives exactly what looking at every asset on every tick gives, also after a restore."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest
import yaml

from pipeline.bench.plant import BenchPlant, site_document
from pipeline.site import parse_site
from pipeline.stages.alerts import AlertEngine
from pipeline.stages.ticks import DUE_NOW, TickSchedule
from tests.unit.alerts_support import DEMO, all_signals, demo_site, frame, now_at, state
from tests.unit.test_alerts_restore import Call, play, stream


def play_each(engine: AlertEngine, calls: list[Call]) -> list[list[dict[str, Any]]]:
    """The events of each call: a tick that comes late shows as events one call later."""
    return [play(engine, [call]) for call in calls]


class _AlwaysDue(TickSchedule):
    def due(self, asset_id: str, due_us: int | None) -> None:
        super().due(asset_id, DUE_NOW)


class EveryTick(AlertEngine):
    """The reference: every asset is due on every tick."""

    def __init__(self) -> None:
        super().__init__(demo_site())
        self._ticks = _AlwaysDue(self._ticks.max_gap_us)


def irregular(calls: list[Call], seed: int) -> list[Call]:
    """The stream with ticks now and then repeated, going back in time, or missing for more
    than the unwatched gap (a paused worker)."""
    rng = random.Random(seed)
    out: list[Call] = []
    paused_until = None
    for method, record, now in calls:
        if method != "tick":
            out.append((method, record, now))
            continue
        if paused_until is not None and now < paused_until:
            continue
        out.append((method, record, now))
        roll = rng.random()
        if roll < 0.01:
            out.append(("tick", None, now))
        elif roll < 0.02:
            out.append(("tick", None, now - timedelta(seconds=3)))
        elif roll < 0.03:
            paused_until = now + timedelta(seconds=rng.uniform(5, 30))
    return out


@pytest.mark.parametrize("seed", [7, 8])
def test_ticks_give_what_looking_at_every_asset_gives(seed: int) -> None:
    calls = irregular(stream(seed), seed)
    lazy, reference = AlertEngine(demo_site()), EveryTick()
    each = play_each(lazy, calls)
    assert each == play_each(reference, calls)
    out = [e for events in each for e in events]
    assert {e["kind"] for e in out if e["event"] == "RAISED"} >= {"STALE", "THRESHOLD"}
    for asset_id in reference.assets():
        assert lazy.snapshot(asset_id) == reference.snapshot(asset_id)
    assert lazy.counters.suppressed == reference.counters.suppressed
    assert lazy.counters.held_back == reference.counters.held_back
    assert lazy.counters.assets_ticked * 5 < reference.counters.assets_ticked


@pytest.mark.parametrize("cut", [2000, 6000])
def test_ticks_after_a_restore_continue_as_without_stopping(cut: int) -> None:
    calls = irregular(stream(9), 9)
    straight = play_each(AlertEngine(demo_site()), calls)
    first = AlertEngine(demo_site())
    before = play_each(first, calls[:cut])
    snapshots = {a: json.loads(json.dumps(first.snapshot(a))) for a in first.assets()}
    second = AlertEngine(demo_site())
    for asset_id, snapshot in snapshots.items():
        second.restore(asset_id, snapshot)
    assert before + play_each(second, calls[cut:]) == straight


def test_a_silent_asset_restored_goes_stale_at_the_same_tick() -> None:
    signals = all_signals("cnc-01")
    raised = []
    for restart in (False, True):
        engine = AlertEngine(demo_site())
        for t in range(5):
            engine.on_frame(frame("cnc-01", t, signals), now_at(t))
            engine.tick(now_at(t + 0.5))
        if restart:
            snapshot = json.loads(json.dumps(engine.snapshot("cnc-01")))
            engine = AlertEngine(demo_site())
            engine.restore("cnc-01", snapshot)
        out = []
        for s in range(5, 30):
            out += engine.tick(now_at(s))
        raised.append([(e["event"], e["emitted_ts"]) for e in out])
    assert raised[0] == raised[1]
    assert raised[0] == [("RAISED", now_at(14))]  # last reading at 4 s, stale after 10 s


def test_a_tick_looks_only_at_assets_where_a_stale_rule_can_change() -> None:
    document = site_document(BenchPlant(assets=300, gauges=2, partitions=1, topic_prefix=""))
    site = parse_site(yaml.safe_dump(document, sort_keys=False))
    signals = list(site.assets[0].signals)
    ids = [a.id for a in site.assets]
    engine = AlertEngine(site)
    engine.tick(now_at(0))
    for s in range(1, 10):  # all send for 9 s; their stale rule (10 s) cannot fire
        for asset_id in ids:
            engine.on_frame(frame(asset_id, s, signals), now_at(s))
        assert engine.tick(now_at(s + 0.5)) == []
    assert engine.counters.assets_ticked == 0
    out: list[dict[str, Any]] = []
    for s in range(10, 40):  # 10 keep sending, the others stop
        for asset_id in ids[:10]:
            engine.on_frame(frame(asset_id, s, signals), now_at(s))
        out += engine.tick(now_at(s + 0.5))
    assert sorted((e["asset_id"], e["event"]) for e in out) == [(a, "RAISED") for a in ids[10:]]
    # Not every asset on every tick (39 ticks): each asset when its stale rule could first
    # fire by its first frame (11 s; its later frames had put that off to 19 s), all again
    # at 19 s (the silent ones raise), and the 10 sending at 29 s.
    assert engine.counters.assets_ticked == 300 + 300 + 10


def test_records_no_rule_of_the_asset_reads_leave_no_state() -> None:
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["alerts"] = [r for r in data["alerts"] if r["kind"] != "stale"]
    site = parse_site(yaml.safe_dump(data, sort_keys=False))
    engine = AlertEngine(site)
    # conv-01 has a threshold rule but no stale rule: frames have nothing to say about it.
    assert engine.on_frame(frame("conv-01", 0, all_signals("conv-01")), now_at(0)) == []
    assert engine.snapshot("conv-01") is None
    engine.on_state(state("conv-01", 0, {"belt_speed": 1.0}), now_at(0))
    snapshot = engine.snapshot("conv-01")
    assert snapshot is not None and snapshot["fresh"] == {}


def test_a_raise_held_back_by_the_holdoff_comes_at_the_same_tick() -> None:
    """Stale, back, stale again within the re-raise holdoff (60 s): held back, then raised
    by the tick at which the asset's event time reaches the holdoff's end."""
    signals = all_signals("cnc-01")
    calls: list[Call] = []
    for tenth in range(0, 1200, 5):
        t = tenth / 10
        if t < 5 or 20 <= t < 25:
            calls.append(("on_frame", frame("cnc-01", t, signals), now_at(t)))
        if tenth % 10 == 0:
            calls.append(("tick", None, now_at(t + 0.25)))
    lazy, reference = AlertEngine(demo_site()), EveryTick()
    each = play_each(lazy, calls)
    assert each == play_each(reference, calls)
    out = [e for events in each for e in events]
    assert [e["event"] for e in out] == ["RAISED", "CLEARED", "RAISED"]
    assert lazy.counters.held_back == 1
    # Cleared at event time 20 s; the last reading at 24.5 s, so the event time moves on
    # with processing time from then: 80 s of event time is reached at 80 s of processing time.
    assert out[2]["emitted_ts"] == now_at(80.25)
    assert lazy.counters.assets_ticked < 10
