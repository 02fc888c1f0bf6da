"""Alert stage: stale signals (event time and tick), anomaly scores, KPI floors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pydantic
import pytest
import yaml

from pipeline.site import Site, parse_site
from pipeline.stages.alerts import AlertEngine, AlertSettings
from tests.unit.alerts_support import (
    DEMO,
    all_signals,
    at,
    demo_site,
    frame,
    now_at,
    score,
    transitions,
    window,
)


def site_with(change: Callable[[dict[str, Any]], None]) -> Site:
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    change(data)
    return parse_site(yaml.safe_dump(data, sort_keys=False))


# --- stale -----------------------------------------------------------------------------------


def test_stale_by_event_time_when_one_signal_goes_missing() -> None:
    engine = AlertEngine(demo_site())
    out = []
    for t in range(5):
        out += engine.on_frame(frame("cnc-01", t, all_signals("cnc-01")), now_at(t))
    # vibration_rms stops; every other signal keeps coming (2 frames a second).
    for i in range(10, 40):
        half = i / 2
        out += engine.on_frame(
            frame("cnc-01", half, all_signals("cnc-01", "vibration_rms")), now_at(half)
        )
    for t in range(20, 25):
        out += engine.on_frame(frame("cnc-01", t, all_signals("cnc-01")), now_at(t))

    assert transitions(out) == [("cnc-stale", "RAISED"), ("cnc-stale", "CLEARED")]
    raised, cleared = out
    # Last vibration reading at t=4: stale from t=14 on.
    assert raised["ts"] == at(14)
    assert (raised["kind"], raised["signal"], raised["value"]) == ("STALE", None, None)
    assert raised["context"]["stale_signals"] == "vibration_rms"
    assert "no usable reading of vibration_rms for 10s" in raised["message"]
    assert cleared["ts"] == at(20)


def test_bad_frozen_or_doubtful_readings_do_not_keep_a_signal_fresh() -> None:
    for quality, flags in [("BAD", ("DEVICE_BAD",)), ("UNCERTAIN", ("STALE",))]:
        engine = AlertEngine(demo_site())
        out = []
        for t in range(30):
            good = frame("cnc-01", t, all_signals("cnc-01", "feed_rate"))
            bad = frame("cnc-01", t, ["feed_rate"], quality=quality, flags=flags)
            good["readings"] += bad["readings"]
            out += engine.on_frame(good, now_at(t))
        assert transitions(out) == [("cnc-stale", "RAISED")]
        assert out[0]["context"]["stale_signals"] == "feed_rate"
        assert out[0]["ts"] == at(10)


def test_rate_of_change_suspicion_still_shows_a_live_sensor() -> None:
    engine = AlertEngine(demo_site())
    out = []
    for t in range(30):
        good = frame("cnc-01", t, all_signals("cnc-01", "feed_rate"))
        odd = frame("cnc-01", t, ["feed_rate"], quality="UNCERTAIN", flags=("RATE_OF_CHANGE",))
        good["readings"] += odd["readings"]
        out += engine.on_frame(good, now_at(t))
    assert out == []


def test_all_leaves_out_deadband_signals() -> None:
    engine = AlertEngine(demo_site())
    out = []
    # spindle_speed is reported by exception (OPC UA deadband): a still spindle is silent.
    for t in range(60):
        out += engine.on_frame(
            frame("cnc-01", t, all_signals("cnc-01", "spindle_speed")), now_at(t)
        )
    assert out == []


def test_stale_by_tick_when_the_asset_stops_sending() -> None:
    engine = AlertEngine(demo_site())
    out = []
    for t in range(6):
        out += engine.on_frame(frame("pump-01", t, all_signals("pump-01")), now_at(t))
        out += engine.tick(now_at(t + 0.5))
    # Silent from t=5 (arrived at now 5): utilities-stale has after 15 s.
    for s in range(6, 30):
        out += engine.tick(now_at(s))
    assert transitions(out) == [("utilities-stale", "RAISED")]
    raised = out[0]
    assert raised["emitted_ts"] == now_at(20)
    assert raised["ts"] == at(20)  # the last event time, advanced by the silent 15 s
    assert raised["severity"] == "WARNING"
    assert len(raised["context"]["stale_signals"].split(",")) == len(all_signals("pump-01"))

    back = engine.on_frame(frame("pump-01", 31, all_signals("pump-01")), now_at(31))
    assert transitions(back) == [("utilities-stale", "CLEARED")]
    assert back[0]["ts"] == at(31)


def test_single_signal_rule_names_its_signal() -> None:
    engine = AlertEngine(demo_site())
    out = []
    for t in range(30):
        out += engine.on_frame(frame("conv-01", t, all_signals("conv-01", "belt_speed")), now_at(t))
    assert transitions(out) == [("conveyor-speed-stale", "RAISED")]
    assert (out[0]["signal"], out[0]["severity"], out[0]["ts"]) == ("belt_speed", "INFO", at(20))


def test_time_the_stage_did_not_run_is_not_silence() -> None:
    engine = AlertEngine(demo_site())
    for t in range(5):
        engine.on_frame(frame("pump-01", t, all_signals("pump-01")), now_at(t))
        engine.tick(now_at(t + 0.5))
    snapshot = engine.snapshot("pump-01")
    assert snapshot is not None

    restarted = AlertEngine(demo_site())
    restarted.restore("pump-01", snapshot)
    # The worker was down for two minutes; its first looks do not count that as silence.
    assert restarted.tick(now_at(125)) == []
    assert restarted.tick(now_at(130)) == []
    # No data since the restart: after 15 s of watching, the asset is stale.
    out = []
    for s in range(131, 145):
        out += restarted.tick(now_at(s))
    assert transitions(out) == [("utilities-stale", "RAISED")]
    assert out[0]["emitted_ts"] == now_at(140)


# --- anomaly ---------------------------------------------------------------------------------


def test_anomaly_rule_follows_the_detector_for_min_duration() -> None:
    engine = AlertEngine(demo_site())
    out = []
    # Warming up: high scores are no evidence.
    for t in range(0, 60):
        out += engine.on_anomaly(score("cnc-02", t, 0.95, warming_up=True), now_at(t))
    assert out == []
    # Anomalous for 20 s (less than the 30 s minimum), then from t=85 on, higher from t=120.
    scores = [0.9] * 20 + [0.5] * 5 + [0.9] * 35 + [1.6] * 6 + [0.4] * 10
    for i, value in enumerate(scores):
        t = 60 + i
        out += engine.on_anomaly(score("cnc-02", t, value), now_at(t))

    assert transitions(out) == [
        ("cnc-anomaly", "RAISED"),
        ("cnc-anomaly", "UPDATED"),
        ("cnc-anomaly", "CLEARED"),
    ]
    raised, updated, cleared = out
    assert (raised["kind"], raised["ts"], raised["value"], raised["threshold"]) == (
        "ANOMALY",
        at(115),
        0.9,
        0.74,
    )
    assert raised["context"]["model_version"] == "hst-1.2.0"
    assert "spindle_load 61%" in raised["context"]["contributors"]
    assert (updated["ts"], updated["value"]) == (at(120), 1.6)
    # Normal again from t=126; cleared after the 5 s clear hold.
    assert (cleared["ts"], cleared["value"], cleared["raised_ts"]) == (at(131), 0.4, at(115))


def test_anomaly_rule_with_score_above() -> None:
    def strict(data: dict[str, Any]) -> None:
        for rule in data["alerts"]:
            if rule["id"] == "cnc-anomaly":
                rule["score_above"] = 1.0
                rule["min_duration"] = "0s"

    engine = AlertEngine(site_with(strict))
    out = []
    # The detector says anomalous (0.9 > 0.74), the rule's own limit does not.
    for t in range(30):
        out += engine.on_anomaly(score("cnc-03", t, 0.9), now_at(t))
    assert out == []
    out = engine.on_anomaly(score("cnc-03", 30, 1.2), now_at(30))
    assert transitions(out) == [("cnc-anomaly", "RAISED")]
    assert (out[0]["value"], out[0]["threshold"]) == (1.2, 1.0)
    # A score still flagged by the detector but under the rule's limit clears it.
    out = []
    for t in range(31, 40):
        out += engine.on_anomaly(score("cnc-03", t, 0.9), now_at(t))
    assert transitions(out) == [("cnc-anomaly", "CLEARED")]
    assert out[0]["ts"] == at(36)


# --- KPI floor -------------------------------------------------------------------------------


def kpi(engine: AlertEngine, minute: int, oee: float | None, **kw: Any) -> list[dict]:
    now = now_at(60 * minute + 63)
    return engine.on_kpi(window("cnc-04", minute, oee, **kw), now)


def test_kpi_floor_needs_min_windows_in_a_row() -> None:
    engine = AlertEngine(demo_site())
    out = []
    for minute, oee in enumerate([0.7, 0.5, 0.55, 0.65, 0.5, 0.58]):
        out += kpi(engine, minute, oee)
    assert out == []  # never three below 0.6 in a row
    out = kpi(engine, 6, 0.4)
    assert transitions(out) == [("cnc-oee-floor", "RAISED")]
    assert (out[0]["kind"], out[0]["value"], out[0]["threshold"]) == ("KPI_FLOOR", 0.4, 0.6)
    assert out[0]["ts"] == at(7 * 60)  # the end of the window that completed the run
    assert "OEE 40.0%" in out[0]["message"] and "60.0% floor" in out[0]["message"]
    # 0.62 is above the floor but not by the 0.05 hysteresis; 0.66 is.
    assert [e["event"] for e in kpi(engine, 7, 0.62)] in ([], ["UPDATED"])
    out = kpi(engine, 8, 0.66)
    assert transitions(out) == [("cnc-oee-floor", "CLEARED")]


def test_kpi_windows_are_counted_once_per_window_whatever_the_versions() -> None:
    engine = AlertEngine(demo_site())
    out = kpi(engine, 0, 0.5)
    # The same window re-emitted twice: still one window below the floor, not three.
    out += kpi(engine, 0, 0.45, version=2)
    out += kpi(engine, 0, 0.45, version=2)
    out += kpi(engine, 1, 0.5)
    assert out == []
    assert engine.counters.stale_records == 1
    # A revision lifting window 1 above the floor breaks the run that window 2 would end.
    out = kpi(engine, 1, 0.7, version=2)
    out += kpi(engine, 2, 0.5)
    assert out == []
    # Revised back below: now windows 0, 1, 2 are all below the floor.
    out = kpi(engine, 1, 0.55, version=3)
    assert transitions(out) == [("cnc-oee-floor", "RAISED")]
    # An out-of-date version arriving late changes nothing.
    assert kpi(engine, 1, 0.9, version=2) == []


def test_kpi_floor_ignores_hopping_and_undefined_windows() -> None:
    engine = AlertEngine(demo_site())
    out = []
    for minute in range(5):
        out += kpi(engine, minute, 0.1, kind="HOPPING")
    assert out == []
    # Undefined OEE (no parts made) neither counts nor breaks the run.
    out = kpi(engine, 0, 0.5) + kpi(engine, 1, None) + kpi(engine, 2, 0.5)
    assert out == []
    out = kpi(engine, 3, 0.5)
    assert transitions(out) == [("cnc-oee-floor", "RAISED")]


def test_availability_floor_on_pumps() -> None:
    engine = AlertEngine(demo_site())
    out = []
    for minute in range(5):
        now = now_at(60 * minute + 63)
        out += engine.on_kpi(window("pump-02", minute, None, availability=0.8), now)
    assert transitions(out) == [("pump-availability-floor", "RAISED")]
    assert out[0]["severity"] == "CRITICAL"
    assert out[0]["message"].startswith("pump-02 availability 80.0%")


def test_settings_reject_unknown_keys() -> None:
    with pytest.raises(pydantic.ValidationError):
        AlertSettings(clear_hold_s=3)  # type: ignore[call-arg]
    assert AlertSettings(clear_hold=timedelta(0)).clear_hold == timedelta(0)
