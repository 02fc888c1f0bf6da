"""Alert stage: threshold lifecycle, hysteresis, minimum duration, chattering, rate limit."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pipeline.serde import AvroSerde
from pipeline.stages.alerts import AlertEngine, AlertError, AlertSettings
from tests.unit.alerts_support import at, demo_site, now_at, state, transitions

CNC_NOMINAL = {
    "spindle_speed": 12000.0,
    "spindle_load": 60.0,
    "feed_rate": 4000.0,
    "vibration_rms": 2.0,
    "machine_state": 1.0,
    "parts_total": 10.0,
    "parts_scrap": 0.0,
}


def cnc(t: float, temperature: float, asset_id: str = "cnc-01", **levels: float) -> dict:
    """A cnc state estimate with every signal measured (nothing is stale)."""
    return state(asset_id, t, CNC_NOMINAL | {"spindle_temperature": temperature} | levels)


def run(engine: AlertEngine, temperatures: list[float], start: float = 0.0) -> list[dict]:
    """One state estimate per second, the spindle temperature as given."""
    out: list[dict] = []
    for i, value in enumerate(temperatures):
        t = start + i
        out += engine.on_state(cnc(t, value), now_at(t))
    return out


def of(events: list[dict], rule_id: str) -> list[dict]:
    return [e for e in events if e["rule_id"] == rule_id]


def encode_all(events: list[dict]) -> None:
    serde = AvroSerde.local()
    for event in events:
        decoded = serde.decode(serde.encode("alert_event", event))
        assert decoded.record == event


def test_threshold_lifecycle_raise_update_clear() -> None:
    engine = AlertEngine(demo_site())
    temps = [70.0] * 5 + [80.0] * 15 + [85.0] * 5 + [60.0] * 10
    events = run(engine, temps)

    assert transitions(events) == [
        ("cnc-spindle-hot", "RAISED"),
        ("cnc-spindle-hot", "UPDATED"),
        ("cnc-spindle-hot", "CLEARED"),
    ]
    raised, updated, cleared = events
    # Beyond from t=5; min_duration 10 s: raised by the estimate at t=15.
    assert raised["ts"] == raised["raised_ts"] == at(15)
    assert raised["emitted_ts"] == now_at(15)
    assert (
        raised["alert_id"] == updated["alert_id"] == cleared["alert_id"] == "cnc-01:cnc-spindle-hot"
    )
    assert (raised["kind"], raised["severity"], raised["signal"]) == (
        "THRESHOLD",
        "WARNING",
        "spindle_temperature",
    )
    assert (raised["value"], raised["threshold"]) == (80.0, 75.0)
    assert "80 degC" in raised["message"] and "75 degC" in raised["message"]
    assert raised["context"]["line_id"] == "line-1"
    # 80 -> 85 moves by more than the hysteresis (3 degC): one UPDATED, at t=20.
    assert (updated["ts"], updated["value"], updated["raised_ts"]) == (at(20), 85.0, at(15))
    # Back inside at t=25; cleared after the 5 s clear hold.
    assert (cleared["ts"], cleared["value"], cleared["raised_ts"]) == (at(30), 60.0, at(15))
    encode_all(events)


def test_short_excursion_does_not_raise() -> None:
    engine = AlertEngine(demo_site())
    # Beyond for 9 s (t=0..9 inclusive is 9 s of event time), twice: min_duration is 10 s.
    temps = [80.0] * 10 + [74.0] + [80.0] * 10 + [70.0] * 5
    assert run(engine, temps) == []


def test_unmeasured_levels_neither_raise_nor_clear() -> None:
    engine = AlertEngine(demo_site())
    out = []
    # A gap: the predicted temperature is beyond the limit, but no reading confirmed it.
    for t in range(30):
        record = state("cnc-01", t, CNC_NOMINAL, {"spindle_temperature": 95.0})
        out += engine.on_state(record, now_at(t))
    assert of(out, "cnc-spindle-hot") == []

    out = run(engine, [80.0] * 12, start=30)
    assert transitions(of(out, "cnc-spindle-hot")) == [("cnc-spindle-hot", "RAISED")]
    # A BAD reading leaves the estimate unmeasured: a predicted 60 degC clears nothing.
    out = []
    for t in range(42, 60):
        record = state("cnc-01", t, CNC_NOMINAL, {"spindle_temperature": 60.0})
        out += engine.on_state(record, now_at(t))
    assert of(out, "cnc-spindle-hot") == []


def test_hysteresis_band_does_not_clear() -> None:
    engine = AlertEngine(demo_site())
    run(engine, [80.0] * 11)
    # Inside the 75 degC limit, but never by the 3 degC hysteresis.
    band = [74.9, 72.5, 73.0, 74.0, 72.1] * 20
    out = run(engine, band, start=11)
    assert all(e["event"] != "CLEARED" for e in out)
    out = run(engine, [71.9] * 6, start=111)
    assert transitions(out) == [("cnc-spindle-hot", "CLEARED")]


def test_clear_hold_is_an_off_delay() -> None:
    engine = AlertEngine(demo_site())
    run(engine, [80.0] * 11)
    # Back inside for 4 s, out again: the 5 s clear hold is never met.
    out = run(engine, ([70.0] * 4 + [80.0]) * 6, start=11)
    assert [e["event"] for e in out if e["event"] != "UPDATED"] == []
    out = run(engine, [70.0] * 6, start=41)
    assert transitions(out) == [("cnc-spindle-hot", "CLEARED")]
    assert out[0]["ts"] == at(46)


def test_chattering_signal_is_held_back_by_the_reraise_holdoff() -> None:
    settings = AlertSettings(clear_hold=timedelta(seconds=2), reraise_holdoff=timedelta(minutes=1))
    engine = AlertEngine(demo_site(), settings)
    # 12 s over the limit, 8 s well under it, for 10 minutes: 30 excursions.
    temps = ([80.0] * 12 + [65.0] * 8) * 30
    events = of(run(engine, temps), "cnc-spindle-hot")
    lifecycle = [e for e in events if e["event"] != "UPDATED"]

    assert [e["event"] for e in lifecycle] == ["RAISED", "CLEARED"] * (len(lifecycle) // 2)
    # Without the holdoff: 30 RAISED. With it: at most one per holdoff plus a cycle.
    raised = [e for e in lifecycle if e["event"] == "RAISED"]
    assert 5 <= len(raised) <= 10
    cleared = [e for e in lifecycle if e["event"] == "CLEARED"]
    for clear, again in zip(cleared, raised[1:], strict=False):
        assert again["ts"] - clear["ts"] >= timedelta(minutes=1)
    assert engine.counters.held_back >= len(raised) - 1


def test_two_rules_on_one_signal_are_two_alerts() -> None:
    engine = AlertEngine(demo_site())
    events = run(engine, [95.0] * 12 + [60.0] * 6)
    assert transitions(events) == [
        ("cnc-spindle-overheat", "RAISED"),
        ("cnc-spindle-hot", "RAISED"),
        ("cnc-spindle-hot", "CLEARED"),
        ("cnc-spindle-overheat", "CLEARED"),
    ]
    by_rule = {e["rule_id"]: e for e in events if e["event"] == "RAISED"}
    assert by_rule["cnc-spindle-overheat"]["severity"] == "CRITICAL"
    assert by_rule["cnc-spindle-overheat"]["ts"] == at(2)
    assert by_rule["cnc-spindle-hot"]["severity"] == "WARNING"
    assert by_rule["cnc-spindle-hot"]["ts"] == at(10)
    assert {e["alert_id"] for e in events} == {
        "cnc-01:cnc-spindle-overheat",
        "cnc-01:cnc-spindle-hot",
    }


def test_band_rule_alerts_on_either_side() -> None:
    engine = AlertEngine(demo_site())
    out = []
    pressures = [7.0] * 3 + [4.8] * 11 + [5.1] * 8 + [5.3] * 6 + [9.8] * 11
    for t, value in enumerate(pressures):
        record = state("comp-01", t, {"discharge_pressure": value})
        out += engine.on_state(record, now_at(t))
    events = of(out, "compressor-pressure-band")
    assert [(e["event"], e["ts"], e["threshold"]) for e in events] == [
        ("RAISED", at(13), 5.0),  # below 5 from t=3, for 10 s
        ("UPDATED", at(14), 5.0),  # 4.8 -> 5.1 moved by more than the hysteresis
        ("CLEARED", at(27), 5.0),  # 5.3 >= 5 + 0.2 from t=22; 5.1 did not clear
    ]
    assert events[0]["context"]["side"] == "below"
    assert "not yet 0.2 bar inside the 5 bar limit" in events[1]["message"]
    # The upper side is held back by the re-raise holdoff (60 s from the clear at t=27).
    later = []
    for t in range(39, 100):
        later += engine.on_state(state("comp-01", t, {"discharge_pressure": 9.8}), now_at(t))
    raised = of(later, "compressor-pressure-band")
    assert [(e["event"], e["ts"], e["threshold"]) for e in raised] == [("RAISED", at(87), 9.5)]
    assert raised[0]["context"]["side"] == "above"


def test_rate_limit_drops_updates_never_raised_or_cleared() -> None:
    settings = AlertSettings(max_events_per_minute=2)
    engine = AlertEngine(demo_site(), settings)
    # Climbing 1 degC a second past both limits: an UPDATED-worthy change every 3 s.
    temps = [76.0 + i for i in range(40)] + [50.0] * 10
    events = run(engine, temps)
    lifecycle = [(e["rule_id"], e["event"]) for e in events if e["event"] != "UPDATED"]
    assert lifecycle == [
        ("cnc-spindle-hot", "RAISED"),
        ("cnc-spindle-overheat", "RAISED"),
        ("cnc-spindle-hot", "CLEARED"),
        ("cnc-spindle-overheat", "CLEARED"),
    ]
    updates = [e for e in events if e["event"] == "UPDATED"]
    assert len(updates) == 2  # the whole run is within one minute of processing time
    assert engine.suppressed > 0

    silent = AlertEngine(demo_site(), AlertSettings(max_events_per_minute=0))
    events = run(silent, temps)
    assert [(e["rule_id"], e["event"]) for e in events] == lifecycle
    assert silent.suppressed > engine.suppressed


def test_rate_limit_window_is_a_minute_of_processing_time() -> None:
    engine = AlertEngine(demo_site(), AlertSettings(max_events_per_minute=1))
    out = []
    # Raised, then a material change every 10 s for 3 minutes, the hot rule only.
    for t in range(190):
        value = 80.0 + 4 * (t // 10) % 8
        out += engine.on_state(cnc(t, value), now_at(t))
    updates = [e for e in out if e["event"] == "UPDATED"]
    minutes = [(e["emitted_ts"] - now_at(0)) // timedelta(minutes=1) for e in updates]
    assert len(updates) >= 3
    assert len(minutes) == len(set(minutes))  # at most one per minute


def test_records_of_unknown_assets_are_ignored_and_malformed_ones_named() -> None:
    engine = AlertEngine(demo_site())
    assert engine.on_state(cnc(0, 99.0, asset_id="press-01"), now_at(0)) == []
    assert engine.counters.unknown_assets == 1
    assert engine.assets() == []
    broken: dict[str, Any] = cnc(0, 80.0)
    del broken["signals"][0]["measured"]
    with pytest.raises(AlertError, match="state_estimate record of asset cnc-01"):
        engine.on_state(broken, now_at(0))
