"""The estimate stage on batches: `Estimator.estimate_frames` against the per-frame reference.

Random batches hold several frames of the same asset, first frames, spikes, level shifts and
ramps, state codes and counters, unusable and unknown readings, frames without a usable reading,
untrusted, equal and earlier timestamps; both implementations get the same frames, and every
output and every snapshot must be exactly equal (element-wise IEEE operations are
deterministic, so no tolerance).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from pipeline.settings import DEFAULT_SITE
from pipeline.site import SignalKind, Site, load_site
from pipeline.stages.estimate import EstimateError, EstimateSettings, Estimator
from pipeline.stages.frames import FLAGS, Frames, concat_states
from tests.unit.reference_estimate import ReferenceEstimator
from tests.unit.test_estimate import plant_frames

T0 = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
QUALITY = ("GOOD", "UNCERTAIN", "BAD")


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(DEFAULT_SITE)


class RandomPlant:
    """Validated frames with everything the estimator must cope with, per asset in time order."""

    def __init__(self, site: Site, seed: int) -> None:
        self.site = site
        self.rng = np.random.default_rng(seed)
        self.t_us = {a.id: 0 for a in site.assets}
        self.truth = {(a.id, n): 10.0 for a in site.assets for n in a.signals}
        self.seq = 0
        self.other_signals = sorted({n for a in site.assets for n in a.signals})

    def frame(self, asset_id: str) -> dict[str, Any]:
        rng, asset = self.rng, self.site.asset(asset_id)
        # Frames mostly every 500 ms; sometimes at the same time, sometimes after a long gap.
        gap = rng.choice([0, 1, 500_000, 500_000, 500_000, 30_000_000])
        self.t_us[asset_id] += int(gap)
        now = self.t_us[asset_id]
        readings: list[dict[str, Any]] = []
        if rng.random() < 0.07:
            return self._record(asset_id, readings, now)
        for name, signal in asset.signals.items():
            for _ in range(int(rng.choice([0, 1, 1, 2, 5]))):
                readings.append(self._reading(asset_id, name, signal.kind, signal, now))
        for _ in range(int(rng.integers(0, 3))):
            name = str(rng.choice([*self.other_signals, "no_such_signal"]))
            readings.append(self._plain(name, now - int(rng.integers(0, 500_000)), 1.0))
        order = rng.permutation(len(readings))
        return self._record(asset_id, [readings[i] for i in order], now)

    def _reading(
        self, asset_id: str, name: str, kind: SignalKind, signal: Any, now: int
    ) -> dict[str, Any]:
        rng = self.rng
        noise = signal.measurement_noise or 1.0
        key = (asset_id, name)
        # The truth ramps, shifts (below and beyond max_rate), or stays.
        event = rng.random()
        if event < 0.05:
            self.truth[key] += float(rng.choice([-1, 1]) * rng.choice([10, 100, 1e4])) * noise
        elif event < 0.15:
            self.truth[key] += float(rng.normal(0, signal.max_rate))
        if kind is SignalKind.STATE:
            value = float(rng.integers(0, 5))
        elif kind is SignalKind.COUNTER:
            self.truth[key] = abs(self.truth[key]) + float(rng.integers(0, 3))
            value = self.truth[key]
        else:
            value = self.truth[key] + float(rng.normal(0, noise))
            if rng.random() < 0.04:
                value += float(rng.choice([-30, 30])) * noise  # a spike
        if rng.random() < 0.02:
            value = float(rng.choice([np.nan, np.inf, -np.inf]))
        # Earlier than now (late), equal to now, or much older.
        when = now - int(rng.choice([0, 0, rng.integers(0, 500_000), 1, 60_000_000]))
        reading = self._plain(name, when, value)
        reading["quality"] = str(rng.choice(QUALITY, p=[0.85, 0.08, 0.07]))
        reading["flags"] = [f for f in FLAGS if rng.random() < 0.02]
        return reading

    @staticmethod
    def _plain(name: str, t_us: int, value: float) -> dict[str, Any]:
        ts = T0 + timedelta(microseconds=t_us)
        return {"signal": name, "ts": ts, "value": value, "quality": "GOOD", "flags": []}

    def _record(self, asset_id: str, readings: list[dict[str, Any]], now: int) -> dict[str, Any]:
        self.seq += 1
        ingest = T0 + timedelta(microseconds=now + 20_000)
        return {
            "asset_id": asset_id,
            "source_id": "gw",
            "seq": self.seq,
            "ingest_ts": ingest,
            "validated_ts": ingest + timedelta(milliseconds=5),
            "readings": readings,
        }

    def batch(self, size: int, assets: list[str]) -> list[dict[str, Any]]:
        return [self.frame(str(self.rng.choice(assets))) for _ in range(size)]


def snapshots(estimator: Estimator | ReferenceEstimator) -> str:
    """Every asset's snapshot, as the exact text a JSON changelog would hold."""
    return json.dumps({a: estimator.snapshot(a) for a in estimator.assets()})


def check_batch(
    batch: list[dict[str, Any]], estimator: Estimator, reference: ReferenceEstimator
) -> None:
    expected = [reference.estimate(f) for f in batch]
    states = estimator.estimate_frames(Frames.from_records(batch))
    assert len(states) == len(batch)
    for i, record in enumerate(expected):
        assert states.record(i) == record, f"frame {i} of {batch[i]['asset_id']}"
    assert estimator.assets() == reference.assets()
    assert snapshots(estimator) == snapshots(reference)


@pytest.mark.parametrize("seed", range(6))
def test_random_batches_equal_the_per_frame_reference(site: Site, seed: int) -> None:
    settings = EstimateSettings(reinit_after=1 + seed % 3)
    plant = RandomPlant(site, seed)
    assets = [a.id for a in site.assets][: 3 + seed]
    estimator, reference = Estimator(site, settings), ReferenceEstimator(site, settings)
    for b in range(25):
        batch = plant.batch(int(plant.rng.integers(0, 40)), assets)
        check_batch(batch, estimator, reference)
        if b % 7 == 6:
            # Snapshot, restore into a fresh instance and go on with it.
            state = json.loads(snapshots(estimator))
            estimator = Estimator(site, settings)
            for asset_id, snapshot in state.items():
                estimator.restore(asset_id, snapshot)


def test_one_asset_with_many_frames_in_a_batch(site: Site) -> None:
    plant = RandomPlant(site, 11)
    estimator, reference = Estimator(site), ReferenceEstimator(site)
    for _ in range(3):
        check_batch(plant.batch(60, ["pump-01"]), estimator, reference)


def test_plant_frames_in_batches_of_several_per_asset(site: Site) -> None:
    estimator, reference = Estimator(site), ReferenceEstimator(site)
    batch: list[dict[str, Any]] = []
    for frames, _ in plant_frames(site, seconds=60):
        batch += frames
        if len(batch) >= 3 * len(frames):
            check_batch(batch, estimator, reference)
            states = estimator.estimate_frames(Frames.from_records([]))
            assert len(states) == 0
            batch = []
    # The same batches again (times now repeat): the filters skip what is not newer.
    for frames, _ in plant_frames(site, seconds=5):
        check_batch(frames, estimator, reference)
    assert sorted(estimator.assets()) == sorted(a.id for a in site.assets)
    for asset_id in estimator.assets():
        snapshot = estimator.snapshot(asset_id)
        assert snapshot is not None and all(snapshot["ready"])


def test_estimate_wraps_a_batch_of_one(site: Site) -> None:
    plant = RandomPlant(site, 5)
    estimator, reference = Estimator(site), ReferenceEstimator(site)
    for f in plant.batch(80, ["cnc-01", "pump-02"]):
        assert estimator.estimate(f) == reference.estimate(f)
    assert snapshots(estimator) == snapshots(reference)


def test_a_batch_with_an_unknown_asset_changes_nothing(site: Site) -> None:
    plant = RandomPlant(site, 3)
    estimator = Estimator(site)
    estimator.estimate_frames(Frames.from_records(plant.batch(10, ["pump-01"])))
    before = snapshots(estimator)
    batch = [*plant.batch(5, ["cnc-01"]), plant.frame("pump-01")]
    batch[2] = {**batch[2], "asset_id": "nope"}
    with pytest.raises(EstimateError, match="'nope' is not in site"):
        estimator.estimate_frames(Frames.from_records(batch))
    assert estimator.assets() == ["pump-01"]
    assert snapshots(estimator) == before


def test_unvalidated_batch_and_bad_snapshot_are_errors(site: Site) -> None:
    frame = RandomPlant(site, 4).frame("pump-01")
    del frame["validated_ts"]
    with pytest.raises(EstimateError, match="not validated"):
        Estimator(site).estimate_frames(Frames.from_records([frame]))
    estimator = Estimator(site)
    good = RandomPlant(site, 4).batch(5, ["pump-01"])
    estimator.estimate_frames(Frames.from_records(good))
    before = estimator.snapshot("pump-01")
    assert before is not None
    broken = {**before, "t_us": before["t_us"][:2]}
    with pytest.raises(EstimateError, match="pump-01"):
        estimator.restore("pump-01", broken)
    assert estimator.snapshot("pump-01") == before
    with pytest.raises(EstimateError, match="cnc-01"):
        estimator.restore("cnc-01", {"signals": ["spindle_speed"]})
    assert estimator.assets() == ["pump-01"]


def test_restore_of_an_older_snapshot_layout_keeps_known_signals(site: Site) -> None:
    plant = RandomPlant(site, 8)
    estimator, reference = Estimator(site), ReferenceEstimator(site)
    check_batch(plant.batch(20, ["conv-01"]), estimator, reference)
    state = estimator.snapshot("conv-01")
    assert state is not None
    # A snapshot from a site version with one signal fewer and one that no longer exists.
    old = {key: values[1:] + values[:1] for key, values in state.items()}
    old["signals"][-1] = "retired_signal"
    fresh, fresh_reference = Estimator(site), ReferenceEstimator(site)
    fresh.restore("conv-01", old)
    fresh_reference.restore("conv-01", old)
    check_batch(plant.batch(20, ["conv-01"]), fresh, fresh_reference)


def test_states_of_parts_concatenate_to_the_states_of_the_whole(site: Site) -> None:
    plant = RandomPlant(site, 21)
    frames = plant.batch(30, ["cnc-01", "pump-01", "pump-02"])
    whole = Estimator(site).estimate_frames(Frames.from_records(frames))
    estimator = Estimator(site)
    parts = [
        estimator.estimate_frames(Frames.from_records(frames[i : i + 7]))
        for i in (0, 7, 14, 21, 28)
    ]
    joined = concat_states(parts)
    assert len(joined) == len(whole) == 30
    assert [joined.record(i) for i in range(30)] == [whole.record(i) for i in range(30)]
    assert np.array_equal(joined.bounds, whole.bounds)
    # No parts (every frame of a batch failed): an empty States, as for an empty batch.
    empty = concat_states([])
    assert len(empty) == 0
    assert np.array_equal(empty.bounds, np.zeros(1, np.int64))
