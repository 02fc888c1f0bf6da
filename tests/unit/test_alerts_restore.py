"""Alert stage over a long mixed stream: lifecycle invariants, schema, snapshot/restore."""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from typing import Any

import pytest
import yaml

from pipeline.serde import AvroSerde
from pipeline.site import parse_site
from pipeline.stages.alerts import AlertEngine
from pipeline.stages.common import StageStateError
from tests.unit.alerts_support import (
    DEMO,
    all_signals,
    demo_site,
    frame,
    now_at,
    score,
    state,
    window,
)

Call = tuple[str, Any, Any]
"""(method, record or None, now)"""

WALKS = {
    "cnc-01": {"spindle_temperature": (76.0, 1.5, 55.0, 100.0), "vibration_rms": (6.8, 0.4, 0, 12)},
    "cnc-02": {"spindle_temperature": (88.0, 1.5, 55.0, 100.0), "vibration_rms": (7.0, 0.3, 0, 12)},
    "pump-01": {"suction_pressure": (0.15, 0.05, 0.0, 1.0), "motor_current": (108, 3, 60, 150)},
    "comp-01": {"discharge_pressure": (7.0, 0.6, 3.0, 11.0)},
    "conv-01": {"gearbox_temperature": (84.0, 1.0, 60.0, 100.0)},
}


def stream(seed: int, seconds: int = 600) -> list[Call]:
    """Two estimates a second per asset (random walks across the demo limits), frames with
    signals dropping out and assets falling silent, anomaly scores, KPI windows with
    re-emissions, and a tick a second."""
    rng = random.Random(seed)
    site = demo_site()
    levels = {a: {s: w[0] for s, w in walks.items()} for a, walks in WALKS.items()}
    silent_until = dict.fromkeys(WALKS, -1.0)
    calls: list[Call] = []
    for step in range(seconds * 2):
        t = step / 2
        now = now_at(t + rng.random() * 0.3)
        for asset_id, walks in WALKS.items():
            if t < silent_until[asset_id]:
                continue
            if rng.random() < 0.002:
                silent_until[asset_id] = t + rng.uniform(5, 40)
            for name, (_, sd, low, high) in walks.items():
                levels[asset_id][name] = min(
                    high, max(low, levels[asset_id][name] + rng.gauss(0, sd))
                )
            others = {s: 1.0 for s in site.asset(asset_id).signals if s not in walks}
            measured = dict(levels[asset_id]) | others
            unmeasured = {}
            if rng.random() < 0.1:  # a BAD reading or a gap on one watched signal
                name = rng.choice(list(walks))
                unmeasured[name] = measured.pop(name)
            calls.append(("on_state", state(asset_id, t, measured, unmeasured), now))
            dropped = {n for n in all_signals(asset_id) if rng.random() < 0.05}
            calls.append(("on_frame", frame(asset_id, t, all_signals(asset_id, *dropped)), now))
            if asset_id.startswith(("cnc", "pump")):
                value = max(0.0, rng.gauss(0.6, 0.25))
                warming = t < 30
                calls.append(("on_anomaly", score(asset_id, t, value, warming_up=warming), now))
        if step % 2 == 0:
            calls.append(("tick", None, now))
        if step % 120 == 0 and step > 0:
            minute = step // 120 - 1
            for asset_id in ("cnc-01", "cnc-02", "pump-01"):
                oee = rng.choice([None, rng.uniform(0.3, 0.9)])
                availability = rng.uniform(0.7, 1.0)
                record = window(asset_id, minute, oee, availability=availability)
                calls.append(("on_kpi", record, now))
                if rng.random() < 0.3:  # late data: a revision of the window
                    revised = window(asset_id, minute, oee and oee + 0.2, availability, version=2)
                    calls.append(("on_kpi", revised, now))
    return calls


def play(engine: AlertEngine, calls: list[Call]) -> list[dict]:
    out: list[dict] = []
    for method, record, now in calls:
        if method == "tick":
            out += engine.tick(now)
        else:
            out += getattr(engine, method)(record, now)
    return out


@pytest.fixture(scope="module")
def calls() -> list[Call]:
    return stream(seed=7)


@pytest.fixture(scope="module")
def straight(calls: list[Call]) -> list[dict]:
    return play(AlertEngine(demo_site()), calls)


def test_every_kind_fires_over_the_stream(straight: list[dict]) -> None:
    kinds = {(e["kind"], e["event"]) for e in straight}
    for kind in ("THRESHOLD", "STALE", "ANOMALY", "KPI_FLOOR"):
        assert (kind, "RAISED") in kinds
    assert ("THRESHOLD", "CLEARED") in kinds and ("STALE", "CLEARED") in kinds


def test_each_alert_is_raised_updated_cleared_in_order(straight: list[dict]) -> None:
    letters: dict[str, str] = defaultdict(str)
    for event in straight:
        letters[event["alert_id"]] += event["event"][0]
        assert event["alert_id"] == f"{event['asset_id']}:{event['rule_id']}"
        assert event["ts"] >= event["raised_ts"]
    for alert_id, sequence in letters.items():
        assert re.fullmatch(r"(RU*C)*(RU*)?", sequence), (alert_id, sequence)


def test_records_match_the_alert_event_schema(straight: list[dict]) -> None:
    serde = AvroSerde.local()
    for event in straight:
        assert serde.decode(serde.encode("alert_event", event)).record == event


@pytest.mark.parametrize("cut", [1, 377, 1500, 4321, 9000])
def test_restore_and_continue_equals_never_stopping(
    calls: list[Call], straight: list[dict], cut: int
) -> None:
    first = AlertEngine(demo_site())
    before = play(first, calls[:cut])
    # Through JSON, as the changelog stores it.
    snapshots = {a: json.loads(json.dumps(first.snapshot(a))) for a in first.assets()}

    second = AlertEngine(demo_site())
    for asset_id, snapshot in snapshots.items():
        second.restore(asset_id, snapshot)
    assert before + play(second, calls[cut:]) == straight


def test_state_stays_bounded(calls: list[Call]) -> None:
    engine = AlertEngine(demo_site())
    play(engine, calls)
    for asset_id in engine.assets():
        snapshot = engine.snapshot(asset_id)
        assert snapshot is not None
        assert len(snapshot["updates"]) <= engine.settings.max_events_per_minute
        assert len(snapshot["windows"]) <= 2 * 5 + 4
        assert len(snapshot["fresh"]) == len(demo_site().asset(asset_id).signals)
        assert len(json.dumps(snapshot)) < 8_000


def test_alert_of_a_removed_rule_is_cleared_after_restore() -> None:
    engine = AlertEngine(demo_site())
    for t in range(20):
        engine.on_state(state("cnc-01", t, {"vibration_rms": 9.0}), now_at(t))
    out = []
    for t in range(20, 40):
        out += engine.on_state(state("cnc-01", t, {"vibration_rms": 9.0}), now_at(t))
    assert ("cnc-vibration-high", "RAISED") in [(e["rule_id"], e["event"]) for e in out]
    snapshot = engine.snapshot("cnc-01")
    assert snapshot is not None

    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["alerts"] = [r for r in data["alerts"] if r["id"] != "cnc-vibration-high"]
    changed = AlertEngine(parse_site(yaml.safe_dump(data, sort_keys=False)))
    changed.restore("cnc-01", snapshot)
    out = changed.tick(now_at(41))
    vibration = [e for e in out if e["rule_id"] == "cnc-vibration-high"]
    assert [e["event"] for e in vibration] == ["CLEARED"]
    assert vibration[0]["raised_ts"] <= vibration[0]["ts"]
    assert "no longer in the site file" in vibration[0]["message"]
    assert [e for e in changed.tick(now_at(42)) if e["rule_id"] == "cnc-vibration-high"] == []


def test_a_severity_changed_in_the_site_file_is_an_update() -> None:
    engine = AlertEngine(demo_site())
    for t in range(40):
        engine.on_state(state("cnc-01", t, {"vibration_rms": 9.0}), now_at(t))
    snapshot = engine.snapshot("cnc-01")
    assert snapshot is not None

    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    for rule in data["alerts"]:
        if rule["id"] == "cnc-vibration-high":
            rule["severity"] = "critical"
    changed = AlertEngine(parse_site(yaml.safe_dump(data, sort_keys=False)))
    changed.restore("cnc-01", snapshot)
    out = changed.on_state(state("cnc-01", 40, {"vibration_rms": 9.0}), now_at(40))
    vibration = [e for e in out if e["rule_id"] == "cnc-vibration-high"]
    assert [(e["event"], e["severity"]) for e in vibration] == [("UPDATED", "CRITICAL")]
    out = changed.on_state(state("cnc-01", 41, {"vibration_rms": 9.0}), now_at(41))
    assert [e for e in out if e["rule_id"] == "cnc-vibration-high"] == []


def test_a_snapshot_of_another_shape_is_refused() -> None:
    engine = AlertEngine(demo_site())
    engine.on_state(state("cnc-01", 0, {"vibration_rms": 9.0}), now_at(0))
    good = engine.snapshot("cnc-01")
    assert good is not None
    broken = json.loads(json.dumps(good))
    broken["alerts"]["cnc-vibration-high"]["colour"] = "red"
    for snapshot in ({"format": 99}, {"format": 1}, broken):
        with pytest.raises(StageStateError, match="alerts"):
            AlertEngine(demo_site()).restore("cnc-01", snapshot)
