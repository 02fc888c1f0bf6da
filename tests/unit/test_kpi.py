"""KPI stage: OEE against hand-computed values, watermarks, lateness, idle sources."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline import PROJECT_ROOT
from pipeline.serde import AvroSerde
from pipeline.site import KpiSettings, Site, parse_site
from pipeline.stages.kpi import KpiWindows

DEMO = PROJECT_ROOT / "topologies" / "sites" / "demo-plant.yaml"
T0 = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
"""A minute boundary: window [0 s, 60 s) below is [T0, T0 + 1 min)."""

Reading = tuple[str, float, float] | tuple[str, float, float, str, Sequence[str]]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def frame(
    asset_id: str, readings: Iterable[Reading], source_id: str = "opcua-line1", seq: int = 0
) -> dict[str, Any]:
    """A validated_frame; a reading is (signal, seconds after T0, value[, quality, flags])."""
    rows = []
    for r in readings:
        quality, flags = (r[3], list(r[4])) if len(r) == 5 else ("GOOD", [])
        rows.append(
            {"signal": r[0], "ts": at(r[1]), "value": r[2], "quality": quality, "flags": flags}
        )
    return {
        "asset_id": asset_id,
        "source_id": source_id,
        "seq": seq,
        "ingest_ts": at(0),
        "validated_ts": at(0),
        "readings": rows,
    }


def demo_site(change: Any = None) -> Site:
    """The demo plant with the cnc's ideal cycle time at 10 s (round numbers by hand)."""
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["asset_types"]["cnc"]["kpi"]["ideal_cycle_time"] = "10s"
    if change is not None:
        change(data)
    return parse_site(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def site() -> Site:
    return demo_site()


def tumbling_only(site: Site, **changes: Any) -> KpiSettings:
    return site.kpi.model_copy(update={"hopping": None, **changes})


def only(records: list[dict[str, Any]], kind: str = "TUMBLING", start: float = 0) -> dict:
    matching = [r for r in records if r["window_kind"] == kind and r["window_start"] == at(start)]
    assert len(matching) == 1, records
    return matching[0]


def signal_stats(record: dict[str, Any], signal: str) -> dict[str, Any]:
    return next(s for s in record["signals"] if s["signal"] == signal)


# --- OEE and its parts ---------------------------------------------------------------------


def scripted_cnc_minute() -> list[Reading]:
    """Window [0, 60): running 0-30 s, down 30-40 s, running 40-60 s; 2 parts, 1 scrapped."""
    return [
        # before the window: the state and counter values it starts from
        ("machine_state", -5, 1),
        ("parts_total", -5, 100),
        ("parts_scrap", -5, 7),
        ("machine_state", 0, 1),
        ("parts_total", 20, 101),
        ("machine_state", 30, 3),
        ("machine_state", 40, 1),
        ("parts_total", 50, 102),
        ("parts_scrap", 50, 8),
    ]


def test_oee_matches_the_hand_computed_values(site: Site) -> None:
    kpi = KpiWindows(site, tumbling_only(site))
    out = kpi.add(frame("cnc-01", scripted_cnc_minute()), at(51))
    # a reading at 62 s moves the watermark to 60 s (out-of-orderness 2 s): the window closes
    out += kpi.add(frame("cnc-01", [("machine_state", 62, 1)], seq=1), at(63))
    record = only(out)

    # run = 30 + 20 = 50 s, down = 10 s, idle = 0, no maintenance: planned = 60 s
    assert record["run_s"] == 50.0
    assert record["down_s"] == 10.0
    assert record["idle_s"] == 0.0
    # availability = run / planned = 50 / 60
    assert record["availability"] == pytest.approx(50 / 60)
    # parts 100 -> 101 -> 102 = 2, scrap 7 -> 8 = 1, good = 1
    assert (record["parts_total"], record["parts_good"]) == (2, 1)
    # performance = ideal cycle 10 s * 2 parts / 50 s run = 0.4
    assert record["performance"] == pytest.approx(0.4)
    # quality = 1 good / 2 parts = 0.5
    assert record["quality"] == pytest.approx(0.5)
    # oee = 5/6 * 0.4 * 0.5 = 1/6
    assert record["oee"] == pytest.approx(1 / 6)
    # one transition into down (at 30 s): MTBF = 50 s run / 1, MTTR = 10 s down / 1
    assert record["failures"] == 1
    assert record["mtbf_s"] == pytest.approx(50.0)
    assert record["mttr_s"] == pytest.approx(10.0)
    assert record["version"] == 1
    assert record["line_id"] == "line-1"
    assert record["emitted_ts"] == at(63)
    assert (record["window_start"], record["window_end"]) == (at(0), at(60))


def test_maintenance_is_planned_downtime_and_idle_is_a_loss(site: Site) -> None:
    kpi = KpiWindows(site, tumbling_only(site))
    # running 0-20, idle (setup, code 2) 20-30, maintenance 30-60
    kpi.add(
        frame(
            "cnc-01", [("machine_state", 0, 1), ("machine_state", 20, 2), ("machine_state", 30, 4)]
        ),
        at(31),
    )
    record = only(kpi.add(frame("cnc-01", [("machine_state", 62, 4)], seq=1), at(63)))
    # planned = 60 - 30 maintenance = run 20 + idle 10; availability = 20 / 30
    assert (record["run_s"], record["idle_s"], record["down_s"]) == (20.0, 10.0, 0.0)
    assert record["availability"] == pytest.approx(20 / 30)
    # no parts: quality and oee undefined, performance 0 (ran 20 s, made nothing)
    assert record["performance"] == 0.0
    assert record["quality"] is None and record["oee"] is None
    assert record["failures"] == 0 and record["mtbf_s"] is None and record["mttr_s"] is None


def test_failures_count_transitions_into_down_from_a_known_state(site: Site) -> None:
    kpi = KpiWindows(site, tumbling_only(site))
    # the first state ever seen is down: no failure seen; an unmapped code (unknown state)
    # then down again: none
    readings: list[Reading] = [
        ("machine_state", 0, 3),
        ("machine_state", 10, 9),
        ("machine_state", 20, 3),
        ("machine_state", 30, 1),
        ("machine_state", 40, 3),  # running -> down: a failure
    ]
    kpi.add(frame("cnc-01", readings), at(41))
    record = only(kpi.add(frame("cnc-01", [("machine_state", 62, 3)], seq=1), at(63)))
    assert record["failures"] == 1
    # down 0-10 and 20-30 and 40-60, unknown 10-20, running 30-40
    assert (record["run_s"], record["down_s"]) == (10.0, 40.0)
    assert record["availability"] == pytest.approx(10 / 50)


def test_counter_reset_counts_from_the_new_value(site: Site) -> None:
    kpi = KpiWindows(site, tumbling_only(site))
    kpi.add(
        frame(
            "cnc-01",
            [
                ("parts_total", 5, 100),
                ("parts_total", 15, 101),
                ("parts_total", 25, 0),
                ("parts_total", 45, 2),
            ],
        ),
        at(46),
    )
    record = only(kpi.add(frame("cnc-01", [("parts_total", 62, 2)], seq=1), at(63)))
    # 100 -> 101: 1; reset to 0: 0 more; 0 -> 2: 2. Without reset handling it would be -99.
    assert record["parts_total"] == 3
    assert record["parts_good"] == 3  # no scrap readings: every part is good


def test_asset_types_without_part_counters_or_kpi_rules_leave_kpis_undefined() -> None:
    site = demo_site(lambda d: d["asset_types"]["compressor"].pop("kpi"))
    kpi = KpiWindows(site, tumbling_only(site))
    readings: list[Reading] = [("flow", 0, 50.0), ("flow", 30, 5.0)]
    kpi.add(frame("pump-01", readings, source_id="modbus-gw1"), at(31))
    kpi.add(frame("comp-01", [("power", 10, 90.0)], source_id="modbus-gw1"), at(31))
    out = kpi.add(frame("pump-01", [("flow", 62, 50.0)], "modbus-gw1", 1), at(63))
    out += kpi.add(frame("comp-01", [("power", 62, 90.0)], "modbus-gw1", 1), at(63))
    pump = next(r for r in out if r["asset_id"] == "pump-01")
    # pump: running above 10 m3/h: 0-30 running, 30-60 idle
    assert pump["availability"] == pytest.approx(0.5)
    assert pump["performance"] is None and pump["quality"] is None and pump["oee"] is None
    compressor = next(r for r in out if r["asset_id"] == "comp-01")
    assert compressor["availability"] is None and compressor["oee"] is None
    assert compressor["run_s"] == 0.0
    assert signal_stats(compressor, "power")["count"] == 1


def test_signal_statistics_use_good_usable_readings_only(site: Site) -> None:
    kpi = KpiWindows(site, tumbling_only(site))
    good = [float(v) for v in range(100, 140)]
    readings: list[Reading] = [("spindle_speed", i, v) for i, v in enumerate(good)]
    readings += [
        ("spindle_speed", 41, 5000.0, "UNCERTAIN", ["DEVICE_UNCERTAIN"]),
        ("spindle_speed", 42, 6000.0, "BAD", ["DEVICE_BAD"]),
        ("spindle_speed", 43, 7000.0, "GOOD", ["STALE"]),
        ("spindle_speed", 44, 8000.0, "GOOD", ["RATE_OF_CHANGE", "OUT_OF_EXPECTED_RANGE"]),
        ("spindle_speed", 45, float("nan"), "GOOD", []),
        ("spindle_speed", 46, 20000.0, "GOOD", ["OUT_OF_EXPECTED_RANGE"]),  # unusual, real
        ("no_such_signal", 47, 1.0),
    ]
    usable = [*good, 20000.0]
    kpi.add(frame("cnc-01", readings), at(47))
    closing = kpi.add(frame("cnc-01", [("spindle_speed", 62, 1.0)], seq=1), at(63))
    stats = signal_stats(only(closing), "spindle_speed")
    assert stats["count"] == len(usable)
    assert stats["min"] == min(usable)
    assert stats["max"] == max(usable)
    assert stats["mean"] == pytest.approx(float(np.mean(usable)))
    assert stats["p95"] == pytest.approx(float(np.percentile(usable, 95)))
    assert kpi.stats.readings_unusable == 6


# --- watermarks ----------------------------------------------------------------------------


def test_a_window_closes_when_the_watermark_reaches_its_end_and_not_before(site: Site) -> None:
    kpi = KpiWindows(site, tumbling_only(site))
    assert kpi.add(frame("cnc-01", [("spindle_speed", 30, 1.0)]), at(31)) == []
    # newest 61.9 s -> watermark 59.9 s: still open (a reading at 59.95 s may yet come)
    assert kpi.add(frame("cnc-01", [("spindle_speed", 61.9, 1.0)], seq=1), at(62)) == []
    out = kpi.add(frame("cnc-01", [("spindle_speed", 62, 1.0)], seq=2), at(62.1))
    assert [(r["window_start"], r["window_end"]) for r in out] == [(at(0), at(60))]
    assert kpi.watermark("cnc-01") == at(60)


def test_a_fast_clock_closes_only_its_own_windows(site: Site) -> None:
    kpi = KpiWindows(site, tumbling_only(site))
    kpi.add(frame("cnc-01", [("spindle_speed", 10, 1.0)]), at(11))
    kpi.add(frame("pump-01", [("flow", 10, 50.0)], source_id="modbus-gw1"), at(11))
    # the OPC UA server's clock jumps an hour ahead: its asset's window closes ...
    out = kpi.add(frame("cnc-01", [("spindle_speed", 3600, 1.0)], seq=1), at(12))
    assert [r["asset_id"] for r in out] == ["cnc-01"]
    # ... the pump's does not, its own data is still on time
    assert kpi.add(frame("pump-01", [("flow", 20, 50.0)], "modbus-gw1", 1), at(21)) == []
    assert kpi.add(frame("pump-01", [("flow", 50, 50.0)], "modbus-gw1", 2), at(51)) == []
    assert kpi.stats.readings_too_late == 0
    out = kpi.add(frame("pump-01", [("flow", 62, 50.0)], "modbus-gw1", 3), at(63))
    assert signal_stats(only(out), "flow")["count"] == 3


def test_an_asset_fed_by_two_sources_waits_for_the_slower(site: Site) -> None:
    kpi = KpiWindows(site, tumbling_only(site))
    kpi.add(frame("cnc-02", [("spindle_speed", 10, 1.0)], "opcua-line1"), at(11))
    assert kpi.add(frame("cnc-02", [("spindle_load", 3600, 1.0)], "edge-gw"), at(12)) == []
    out = kpi.add(frame("cnc-02", [("spindle_speed", 62, 1.0)], "opcua-line1", 1), at(63))
    assert [r["window_start"] for r in out] == [at(0)]


def test_tick_closes_the_windows_of_a_silent_source_after_the_idle_timeout(site: Site) -> None:
    kpi = KpiWindows(site, tumbling_only(site))  # idle timeout 30 s
    kpi.add(frame("cnc-01", [("spindle_speed", 50, 1.0)]), at(50))
    assert kpi.tick(at(79.9)) == []
    # silent 30 s: watermark = 50 - 2 + 30 = 78 s >= 60 s
    out = kpi.tick(at(80))
    assert [(r["asset_id"], r["window_start"]) for r in out] == [("cnc-01", at(0))]
    assert kpi.tick(at(200)) == []  # emitted once


# --- lateness ------------------------------------------------------------------------------


def closed_minute(site: Site) -> tuple[KpiWindows, dict[str, Any]]:
    kpi = KpiWindows(site, tumbling_only(site))  # allowed lateness 30 s
    readings: list[Reading] = [("spindle_speed", s, 100.0) for s in range(60)]
    readings += [("parts_total", 10, 100), ("parts_total", 50, 101)]
    kpi.add(frame("cnc-01", readings), at(60))
    first = only(kpi.add(frame("cnc-01", [("spindle_speed", 62, 100.0)], seq=1), at(63)))
    return kpi, first


def test_late_data_within_the_lateness_re_emits_without_double_counting(site: Site) -> None:
    kpi, first = closed_minute(site)
    assert (first["version"], first["parts_total"]) == (1, 1)
    assert signal_stats(first, "spindle_speed")["count"] == 60

    late = [("spindle_speed", 30.5, 9999.0), ("parts_total", 55, 102)]
    revised = only(kpi.add(frame("cnc-01", late, seq=2), at(64)))
    assert revised["version"] == 2
    assert revised["emitted_ts"] == at(64)
    # every reading counted once: 61 speeds, parts 100 -> 101 -> 102
    assert signal_stats(revised, "spindle_speed")["count"] == 61
    assert signal_stats(revised, "spindle_speed")["max"] == 9999.0
    assert revised["parts_total"] == 2

    # late data that changes nothing (unusable) re-emits nothing
    bad: list[Reading] = [("spindle_speed", 31, 1.0, "BAD", ["DEVICE_BAD"])]
    assert kpi.add(frame("cnc-01", bad, seq=3), at(65)) == []
    again = only(kpi.add(frame("cnc-01", [("spindle_speed", 20.5, 100.0)], seq=4), at(66)))
    assert again["version"] == 3
    assert signal_stats(again, "spindle_speed")["count"] == 62
    assert kpi.stats.windows_revised == 2


def test_data_later_than_the_lateness_is_not_counted_but_reported(site: Site) -> None:
    kpi, _ = closed_minute(site)
    # watermark 90 s = window end + 30 s lateness: the window takes no more data
    kpi.add(frame("cnc-01", [("spindle_speed", 92, 100.0)], seq=2), at(93))
    assert kpi.add(frame("cnc-01", [("spindle_speed", 30, 1.0)], seq=3), at(94)) == []
    assert kpi.stats.readings_too_late == 1
    out = kpi.add(frame("cnc-01", [("spindle_speed", 122, 1.0)], seq=4), at(123))
    assert [r["window_start"] for r in out] == [at(60)]  # the next window, not the late one
    assert signal_stats(out[0], "spindle_speed")["count"] == 2


# --- the record contract ---------------------------------------------------------------------


def test_records_encode_with_the_kpi_window_schema(site: Site) -> None:
    kpi = KpiWindows(site)  # with the demo's hopping windows
    kpi.add(frame("cnc-01", scripted_cnc_minute()), at(51))
    out = kpi.add(frame("cnc-01", [("machine_state", 62, 1), ("spindle_speed", 61, 2.0)]), at(63))
    out += kpi.tick(at(1000))
    assert {r["window_kind"] for r in out} == {"TUMBLING", "HOPPING"}
    serde = AvroSerde.local()
    for record in out:
        decoded = serde.decode(serde.encode("kpi_window", record))
        assert decoded.record_type == "kpi_window"
        assert decoded.record == copy.deepcopy(record)
