"""The batch form of the stale rules' reading times agrees with the per-frame form."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from pipeline.stages.alerts_stale import usable_readings
from pipeline.stages.alerts_times import frame_times
from pipeline.stages.frames import FLAGS, QUALITIES, Frames, flag_names

BASE_US = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp()) * 1_000_000


def random_batch(rng: random.Random, frames: int) -> Frames:
    records = []
    for i in range(frames):
        readings = []
        for _ in range(rng.randint(0, 12)):
            mask = 0
            for bit in range(len(FLAGS)):
                if rng.random() < 0.08:
                    mask |= 1 << bit
            value = rng.choice([1.5, -2.0, 0.0, float("nan"), float("inf"), 7.25])
            readings.append(
                {
                    "signal": rng.choice(["a", "b", "c", "d"]),
                    "ts": BASE_US + rng.randint(-3, 3) * 100_000,
                    "value": value,
                    "quality": rng.choice(QUALITIES),
                    "flags": flag_names(mask),
                }
            )
        records.append(
            {
                "asset_id": f"m-{i % 3}",
                "source_id": "g",
                "seq": i,
                "ingest_ts": BASE_US,
                "validated_ts": BASE_US,
                "readings": readings,
            }
        )
    return Frames.from_records(records)


@pytest.mark.parametrize("seed", range(8))
def test_batch_times_equal_the_per_frame_rules(seed: int) -> None:
    batch = random_batch(random.Random(seed), 40)
    got = frame_times(batch)
    expected = [usable_readings(batch.record(i)["readings"]) for i in range(len(batch))]
    assert got == expected
    # Both outcomes occur: frames with fresh signals, and frames with none.
    assert any(fresh for _, fresh in got) and not all(fresh for _, fresh in got)


def test_unvalidated_frames_are_refused() -> None:
    batch = random_batch(random.Random(1), 3)
    batch.flags = None
    with pytest.raises(ValueError, match="validated"):
        frame_times(batch)
