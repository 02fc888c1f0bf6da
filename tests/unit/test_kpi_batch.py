"""KPI stage, batches: `add_frames` on a batch of validated frames gives exactly what `add` on
each frame in turn gives (records to the float bit, snapshots, stats, tick schedule), and a
frame that fails is reported with its index and the records of the frames before it."""

from __future__ import annotations

import json
import math
import random
from datetime import datetime
from typing import Any

import pytest

from pipeline.site import Site
from pipeline.stages.frames import Frames
from pipeline.stages.kpi import KpiFrameError, KpiWindows
from tests.unit.test_kpi import at, demo_site, frame

GHOST = "ghost-99"
"""An asset the site lacks."""
FEEDS: dict[str, list[tuple[str, list[str]]]] = {
    "cnc-01": [("opcua-line1", ["spindle_speed", "feed_rate", "machine_state", "parts_total"])],
    "cnc-02": [
        ("opcua-line1", ["spindle_speed", "machine_state", "parts_total", "parts_scrap"]),
        ("edge-gw", ["spindle_load", "vibration_rms"]),
    ],
    "pump-01": [("modbus-gw1", ["flow", "discharge_pressure", "volume_total"])],
    GHOST: [("opcua-line1", ["spindle_speed"])],
}
FLAG_SETS: list[list[str]] = [
    *[[]] * 12,
    ["OUT_OF_EXPECTED_RANGE"],
    ["OUT_OF_ORDER"],
    ["OUT_OF_EXPECTED_RANGE", "OUT_OF_ORDER"],  # only usable flags: usable
    ["STALE"],
    ["RATE_OF_CHANGE", "OUT_OF_EXPECTED_RANGE"],
    ["DEVICE_BAD"],
    ["DUPLICATE", "OUT_OF_ORDER"],
]
ODD_SIGNALS = ["no_such_signal", "belt_speed"]
"""A name no asset has, and one of another asset type (unknown to these assets)."""


@pytest.fixture(scope="module")
def site() -> Site:
    return demo_site()  # 1 min tumbling, 5 min every 1 min hopping, 30 s lateness


class Plant:
    """A random stream of validated frames of the FEEDS assets."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.t = 0.0
        """Event time of the stream (s after T0)."""
        self.skew = {s: self.rng.uniform(-3, 3) for feeds in FEEDS.values() for s, _ in feeds}
        self.seq: dict[tuple[str, str], int] = {}
        self.parts: dict[tuple[str, str], float] = {}

    def value(self, asset_id: str, signal: str) -> float:
        rng = self.rng
        roll = rng.random()
        if roll < 0.03:
            return rng.choice([math.nan, math.inf, -math.inf])
        if signal == "machine_state":
            return float(rng.choice([0, 1, 1, 1, 1, 2, 3, 4, 9]))
        if signal in ("parts_total", "parts_scrap", "volume_total"):
            key = (asset_id, signal)
            count = self.parts.get(key, 100.0) + rng.choice([0, 0, 1, 1, 2])
            self.parts[key] = 0.0 if roll > 0.98 else count  # now and then a counter reset
            return self.parts[key]
        if signal == "flow" and roll < 0.3:
            return 5.0  # the pump idles below 10 m3/h
        return round(rng.gauss(100.0, 20.0), 3)

    def frame(self, asset_id: str, now: datetime) -> dict[str, Any]:
        rng = self.rng
        source, signals = rng.choice(FEEDS[asset_id])
        base = self.t + self.skew[source]
        shape = rng.random()
        if shape < 0.12:  # late data: some within the allowed lateness, some later
            times = [base - rng.uniform(35, 420) for _ in range(rng.randint(1, 3))]
        elif shape < 0.3:  # scans spread over two or three panes
            times = [base - rng.uniform(0, 150) for _ in range(rng.randint(2, 5))]
        else:
            times = [base - rng.uniform(0, 3) for _ in range(rng.randint(1, 4))]
        all_bad = rng.random() < 0.05
        readings = []
        for when in times:
            ts = at(round(when, 3))  # readings of a scan share its timestamp
            for signal in rng.sample(signals, rng.randint(1, len(signals))):
                if rng.random() < 0.05:
                    signal = rng.choice(ODD_SIGNALS)
                quality = rng.choice(["GOOD"] * 8 + ["UNCERTAIN", "BAD"])
                flags = rng.choice(FLAG_SETS)
                if all_bad:
                    quality, flags = "BAD", ["DEVICE_BAD"]
                value = self.value(asset_id, signal)
                readings.append(
                    {"signal": signal, "ts": ts, "value": value, "quality": quality, "flags": flags}
                )
                if rng.random() < 0.05:  # the same reading twice
                    readings.append(dict(readings[-1]))
        if rng.random() < 0.03:
            readings = []
        seq = self.seq[asset_id, source] = self.seq.get((asset_id, source), -1) + 1
        return {
            "asset_id": asset_id,
            "source_id": source,
            "seq": seq,
            "ingest_ts": now,
            "validated_ts": now,
            "readings": readings,
        }

    def batch(self) -> tuple[list[dict[str, Any]], datetime]:
        """A batch (often several frames of one asset, sometimes none) and its `now`."""
        rng = self.rng
        self.t += rng.uniform(0.5, 8)
        now = at(self.t + rng.uniform(0.1, 1))
        size = rng.choice([0, 1, 2, 5, 17, 40])
        return [self.frame(rng.choice(list(FEEDS)), now) for _ in range(size)], now

    def pause(self) -> datetime | None:
        """Now and then the sources fall silent: a tick at the end of the silence."""
        if self.rng.random() < 0.15:
            self.t += self.rng.uniform(20, 70)
            return at(self.t)
        return None


def identical(a: Any, b: Any) -> bool:
    """Equal, with floats to the bit (NaN equals NaN) and dict keys in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a.hex() == b.hex()
    if isinstance(a, dict):
        return list(a) == list(b) and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def per_frame(kpi: KpiWindows, batch: Frames, now: datetime) -> list[list[dict[str, Any]]]:
    """The reference: each frame of the batch in turn, as a dict record."""
    return [kpi.add(batch.record(i, micros=True), now) for i in range(len(batch))]


def assert_same_stage(site: Site, got: KpiWindows, expected: KpiWindows) -> None:
    assert got.stats == expected.stats
    assert got.assets() == expected.assets()
    for asset_id in [a.id for a in site.assets] + [GHOST]:
        snapshot, reference = got.snapshot(asset_id), expected.snapshot(asset_id)
        assert snapshot == reference
        assert json.dumps(snapshot) == json.dumps(reference)
    assert vars(got._ticks) == vars(expected._ticks)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_gives_exactly_what_its_frames_one_by_one_give(site: Site, seed: int) -> None:
    plant = Plant(seed)
    batched, reference = KpiWindows(site), KpiWindows(site)
    records = 0
    for _ in range(60):
        frames, now = plant.batch()
        batch = Frames.from_records(frames)
        expected = per_frame(reference, batch, now)
        got = batched.add_frames(batch, now)
        assert identical(got, expected)
        assert got == expected
        records += sum(map(len, got))
        assert_same_stage(site, batched, reference)
        tick = plant.pause()
        if tick is not None:
            assert identical(batched.tick(tick), reference.tick(tick))
    stats = reference.stats
    # the stream did exercise what it is meant to
    assert records > 20
    assert stats.windows_revised > 0
    assert stats.readings_too_late > 0
    assert stats.readings_unusable > 0
    assert stats.frames_unknown_asset > 0


def test_a_batch_after_a_restore_continues_as_if_never_stopped(site: Site) -> None:
    plant = Plant(4)
    batched, reference = KpiWindows(site), KpiWindows(site)
    for step in range(40):
        frames, now = plant.batch()
        batch = Frames.from_records(frames)
        assert identical(batched.add_frames(batch, now), per_frame(reference, batch, now))
        if step % 7 == 6:
            restored = KpiWindows(site)
            for asset_id in batched.assets():
                snapshot = json.loads(json.dumps(batched.snapshot(asset_id)))
                restored.restore(asset_id, snapshot)
            batched = restored
        for asset_id in reference.assets():
            assert batched.snapshot(asset_id) == reference.snapshot(asset_id)


def test_frames_of_one_asset_in_one_batch_see_each_others_watermark(site: Site) -> None:
    # the second frame closes [0, 60); the third's reading at 50 s is then late but within
    # the lateness (re-emitted, version 2); the fourth moves the watermark past 330 s, where
    # the last window holding [0, 60) (hopping [0, 300)) stops taking late data: the fifth's
    # reading at 20 s is too late.
    frames = [
        frame("cnc-01", [("spindle_speed", 30, 1.0), ("machine_state", 31, 1)], seq=0),
        frame("cnc-01", [("spindle_speed", 65, 2.0)], seq=1),
        frame("cnc-01", [("spindle_speed", 50, 3.0), ("spindle_speed", 66, 3.0)], seq=2),
        frame("cnc-01", [("spindle_speed", 400, 4.0)], seq=3),
        frame("cnc-01", [("spindle_speed", 20, 5.0), ("spindle_speed", 401, 5.0)], seq=4),
    ]
    batched, reference = KpiWindows(site), KpiWindows(site)
    batch = Frames.from_records(frames)
    got = batched.add_frames(batch, at(402))
    assert identical(got, per_frame(reference, batch, at(402)))
    versions = [(r["window_kind"], r["window_start"], r["version"]) for r in got[2]]
    assert ("TUMBLING", at(0), 2) in versions
    assert batched.stats.readings_too_late == 1
    assert_same_stage(site, batched, reference)


def test_readings_spanning_panes_make_the_panes_in_reading_order(site: Site) -> None:
    # panes first seen 120 s, 0 s, 60 s: the snapshot lists them in that order
    readings = [("spindle_speed", 130, 1.0), ("spindle_speed", 10, 2.0), ("machine_state", 70, 1)]
    readings += [("machine_state", 20, 3), ("spindle_speed", 140, 3.0), ("feed_rate", 15, 4.0)]
    batched, reference = KpiWindows(site), KpiWindows(site)
    batch = Frames.from_records([frame("cnc-01", readings)])
    assert identical(batched.add_frames(batch, at(141)), per_frame(reference, batch, at(141)))
    snapshot = batched.snapshot("cnc-01")
    assert snapshot is not None
    assert [p["start"] // 60_000_000 % 60 for p in snapshot["panes"]] == [32, 30, 31]
    assert list(snapshot["panes"][1]["values"]) == ["spindle_speed", "machine_state", "feed_rate"]
    assert_same_stage(site, batched, reference)


def test_unusable_readings_and_unknown_assets_are_counted_not_kept(site: Site) -> None:
    nan, inf = math.nan, math.inf
    unusable = [
        ("spindle_speed", 1, 1.0, "BAD", ["DEVICE_BAD"]),
        ("spindle_speed", 2, 2.0, "UNCERTAIN", ["DEVICE_UNCERTAIN"]),
        ("spindle_speed", 3, 3.0, "UNCERTAIN", []),
        ("spindle_speed", 4, 4.0, "GOOD", ["STALE"]),
        ("spindle_speed", 5, 5.0, "GOOD", ["OUT_OF_ORDER", "DUPLICATE"]),
        ("spindle_speed", 6, nan, "GOOD", []),
        ("spindle_speed", 7, inf, "GOOD", []),
        ("spindle_speed", 8, -inf, "GOOD", []),
        ("flow", 9, 1.0, "GOOD", []),  # a pump's signal: the cnc has none
    ]
    usable = [("spindle_speed", 10, 10.0, "GOOD", ["OUT_OF_EXPECTED_RANGE", "OUT_OF_ORDER"])]
    frames = [
        frame("cnc-01", unusable),  # all unusable: no pane, no clock
        frame(GHOST, [("spindle_speed", 1, 1.0)]),
        frame("cnc-01", unusable + usable, seq=1),
        frame("cnc-01", [], seq=2),
    ]
    batched, reference = KpiWindows(site), KpiWindows(site)
    batch = Frames.from_records(frames)
    assert identical(batched.add_frames(batch, at(11)), per_frame(reference, batch, at(11)))
    stats = batched.stats
    assert (stats.frames, stats.readings, stats.readings_unusable) == (3, 19, 18)
    assert stats.frames_unknown_asset == 1
    snapshot = batched.snapshot("cnc-01")
    assert snapshot is not None
    assert [list(p["values"]) for p in snapshot["panes"]] == [["spindle_speed"]]
    assert_same_stage(site, batched, reference)


def test_an_empty_batch_changes_nothing(site: Site) -> None:
    kpi = KpiWindows(site)
    assert kpi.add_frames(Frames.from_records([]), at(1)) == []
    assert kpi.assets() == [] and kpi.stats.frames == 0


def test_a_batch_without_flags_is_refused_before_anything_is_applied(site: Site) -> None:
    record = frame("cnc-01", [("spindle_speed", 1, 1.0)])
    del record["validated_ts"]
    for reading in record["readings"]:
        del reading["flags"]
    kpi = KpiWindows(site)
    with pytest.raises(ValueError, match="validated"):
        kpi.add_frames(Frames.from_records([record]), at(2))
    assert kpi.assets() == []


def test_a_failing_frame_names_its_index_and_keeps_the_records_before_it(site: Site) -> None:
    # a corrupt state: cnc-01's pane [0, 60) has machine_state values without their times,
    # so a machine_state reading into that pane fails
    seed = KpiWindows(site)
    seed.add(frame("cnc-01", [("machine_state", 10, 1)]), at(11))
    corrupt = seed.snapshot("cnc-01")
    assert corrupt is not None
    del corrupt["panes"][0]["times"]["machine_state"]
    frames = [
        frame("pump-01", [("flow", 30, 50.0)], "modbus-gw1", 0),
        frame("pump-01", [("flow", 63, 50.0)], "modbus-gw1", 1),  # closes [0, 60)
        frame("cnc-01", [("spindle_speed", 12, 1.0), ("machine_state", 20, 3)]),
        frame("pump-01", [("flow", 125, 50.0)], "modbus-gw1", 2),
    ]
    batch = Frames.from_records(frames)
    batched, reference = KpiWindows(site), KpiWindows(site)
    batched.restore("cnc-01", corrupt)
    reference.restore("cnc-01", corrupt)
    expected = [reference.add(batch.record(i, micros=True), at(130)) for i in range(2)]
    with pytest.raises(KeyError):
        reference.add(batch.record(2, micros=True), at(130))

    with pytest.raises(KpiFrameError) as caught:
        batched.add_frames(batch, at(130))
    assert caught.value.index == 2
    assert identical(caught.value.done, expected)
    assert any(caught.value.done)
    assert isinstance(caught.value.__cause__, KeyError)
    # the frames before it are applied, the one after it is not
    assert batched.snapshot("pump-01") == reference.snapshot("pump-01")
    assert batched.stats.frames == reference.stats.frames == 2
