"""The validate stage on columnar batches, checked against the earlier per-frame code.

Random sequences of batches (several frames per asset in a batch, NaN and ±inf, values outside
the physical or expected range, device BAD/UNCERTAIN, future and too-old timestamps, readings
out of order or at the same instant, stale runs incl. values pegged at a physical limit,
counter resets, unknown signals and assets, duplicate seqs within and across batches, restores
from snapshots between batches) go through `ReferenceValidator.validate` frame by frame,
`Validator.validate_frames` batch by batch and `Validator.validate` frame by frame; records,
dead letters, stats and snapshots must be equal.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline.settings import DEFAULT_SITE
from pipeline.site import Site, parse_site
from pipeline.stages.common import Origin, from_micros, to_micros
from pipeline.stages.frames import BAD, FLAG_BIT, GOOD, UNCERTAIN, Frames
from pipeline.stages.validate import ValidatedBatch, Validator
from pipeline.stages.validate_state import SignalLimits, ValidateSettings
from tests.unit.reference_validate import ReferenceValidator

T0 = datetime(2025, 3, 14, 6, 0, tzinfo=UTC)
KEEP = ("cnc-01", "pump-01", "conv-01", "conv-02")
"""cnc-01 and pump-01 are the sole assets of their sources; the conveyors share one."""


@pytest.fixture(scope="module")
def site() -> Site:
    spec = yaml.safe_load(DEFAULT_SITE.read_text(encoding="utf-8"))
    spec["assets"] = [a for a in spec["assets"] if a["id"] in KEEP]
    spec["alerts"] = []
    return parse_site(yaml.safe_dump(spec))


def plain(item: Any) -> Any:
    """`item` with NaN made comparable (NaN != NaN would fail every equality)."""
    if isinstance(item, float) and math.isnan(item):
        return "NaN"
    if isinstance(item, dict):
        return {k: plain(v) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return [plain(v) for v in item]
    return item


class Plant:
    """Random telemetry frames of the site's assets with every kind of trouble."""

    def __init__(self, site: Site, settings: ValidateSettings, rng: random.Random) -> None:
        self.site, self.rng = site, rng
        self.limits = {
            a.id: {n: SignalLimits(s, settings) for n, s in a.signals.items()} for a in site.assets
        }
        self.clock = T0
        self.last: dict[tuple[str, str], float] = {}
        self.stuck: set[tuple[str, str]] = set()
        self.seqs: Counter[str] = Counter()
        self.sent: dict[str, list[int]] = {}

    def batch(self, size: int) -> tuple[list[dict[str, Any]], datetime]:
        frames = [self.frame() for _ in range(size)]
        return frames, self.clock + timedelta(milliseconds=20)

    def frame(self) -> dict[str, Any]:
        rng = self.rng
        self.clock += timedelta(milliseconds=rng.choice((0, 100, 500, 500, 3000)))
        assets = [*self.site.assets]
        asset_id = rng.choice(KEEP) if rng.random() > 0.03 else "ghost-01"
        source = next((a.source_id for a in assets if a.id == asset_id), "ghost-src")
        if rng.random() < 0.05:
            source = "spare-src"
        frame = {
            "asset_id": asset_id,
            "source_id": source,
            "seq": self.seq(source),
            "ingest_ts": self.clock,
            "readings": [],
        }
        if rng.random() < 0.03:
            return frame  # no readings: invalid
        limits = self.limits.get(asset_id, {})
        names = [*limits] or ["spindle_speed"]
        for k in range(rng.randint(1, 14)):
            name = rng.choice(names) if rng.random() > 0.03 else "spindel_speed"
            frame["readings"].append(self.reading(asset_id, name, limits.get(name), k))
        return frame

    def seq(self, source: str) -> int:
        rng, sent = self.rng, self.sent.setdefault(source, [])
        draw = rng.random()
        if sent and draw < 0.06:
            return rng.choice(sent[-12:])  # duplicate (or beyond the dedup window)
        if draw < 0.1:
            self.seqs[source] += rng.randint(2, 5)  # gap
        elif sent and draw < 0.13:
            return max(0, self.seqs[source] - rng.randint(1, 20))  # late or reordered
        self.seqs[source] += 1
        sent.append(self.seqs[source])
        return self.seqs[source]

    def reading(
        self, asset_id: str, name: str, limit: SignalLimits | None, k: int
    ) -> dict[str, Any]:
        rng = self.rng
        ts = self.clock + timedelta(milliseconds=100 * k)
        draw = rng.random()
        if draw < 0.03:
            ts = self.clock + timedelta(seconds=rng.choice((6, 60)))  # future
        elif draw < 0.06:
            ts = self.clock - timedelta(seconds=rng.choice((59, 61, 400)))  # about too old
        elif draw < 0.12:
            ts = self.clock - timedelta(milliseconds=rng.choice((0, 300, 1000, 2500, 4000)))
        quality = rng.choices(("GOOD", "UNCERTAIN", "BAD"), (0.85, 0.08, 0.07))[0]
        return {
            "signal": name,
            "ts": ts,
            "value": self.value(asset_id, name, limit),
            "quality": quality,
        }

    def value(self, asset_id: str, name: str, limit: SignalLimits | None) -> float:
        rng, key = self.rng, (asset_id, name)
        if limit is None:
            return rng.uniform(-10, 10)
        if rng.random() < 0.05:
            self.stuck ^= {key}
        last = self.last.get(key, (limit.expected_min + limit.expected_max) / 2)
        if key in self.stuck and rng.random() < 0.9:
            value = last if rng.random() < 0.8 else limit.physical_max
        else:
            small = limit.rate_per_us * limit.period_us + limit.noise_allowance
            value = rng.choice(
                (
                    last + rng.uniform(-small, small),
                    last + rng.uniform(-small, small),
                    last + rng.uniform(-small, small),
                    last + 1,
                    last - 2 * small - 1,
                    last + 20 * small + 1,
                    last,
                    0.0,
                    limit.physical_min,
                    limit.physical_max,
                    limit.physical_max + 1,
                    limit.physical_min - 1,
                    (limit.expected_max + limit.physical_max) / 2,
                    rng.uniform(limit.expected_min, limit.expected_max),
                    math.nan,
                    rng.choice((math.inf, -math.inf)),
                )
            )
        if math.isfinite(value):
            self.last[key] = value
        return value


def validators(site: Site, settings: ValidateSettings) -> tuple[Any, Validator, Validator]:
    return ReferenceValidator(site, settings), Validator(site, settings), Validator(site, settings)


def restarted(validator: Any, site: Site, settings: ValidateSettings) -> Any:
    """A fresh validator of the same class with `validator`'s state, through JSON."""
    fresh = type(validator)(site, settings)
    for asset_id in validator.assets():
        fresh.restore(asset_id, json.loads(json.dumps(validator.snapshot(asset_id))))
    return fresh


def run_batch(
    reference: ReferenceValidator,
    batched: Validator,
    single: Validator,
    frames: list[dict[str, Any]],
    now: datetime,
    offset: int,
) -> ValidatedBatch:
    origins = [Origin("telemetry.raw", 1, offset + i) for i in range(len(frames))]
    payloads: list[bytes | None] = [f"payload {offset + i}".encode() for i in range(len(frames))]
    keys: list[bytes | None] = [f["asset_id"].encode() for f in frames]
    expected = [
        reference.validate(f, o, now, p, k)
        for f, o, p, k in zip(frames, origins, payloads, keys, strict=True)
    ]
    result = batched.validate_frames(Frames.from_records(frames), origins, now, payloads, keys)
    assert result.rows == [i for i, e in enumerate(expected) if e.frame is not None]
    assert plain([result.frames.record(k) for k in range(len(result.rows))]) == plain(
        [e.frame for e in expected if e.frame is not None]
    )
    assert result.dead_letters == [
        (i, e.dead_letter) for i, e in enumerate(expected) if e.dead_letter is not None
    ]
    one_by_one = [
        single.validate(f, o, now, p, k)
        for f, o, p, k in zip(frames, origins, payloads, keys, strict=True)
    ]
    assert plain([(v.frame, v.dead_letter) for v in one_by_one]) == plain(
        [(e.frame, e.dead_letter) for e in expected]
    )
    assert batched.stats == single.stats == reference.stats
    assert batched.assets() == single.assets() == reference.assets()
    for asset_id in reference.assets():
        # JSON text: same numbers, and the signals in the same order.
        snapshot = json.dumps(reference.snapshot(asset_id))
        assert json.dumps(batched.snapshot(asset_id)) == snapshot
        assert json.dumps(single.snapshot(asset_id)) == snapshot
    return result


@pytest.mark.parametrize("seed", range(16))
def test_batches_match_the_per_frame_reference(site: Site, seed: int) -> None:
    rng = random.Random(seed)
    settings = ValidateSettings(
        max_age=timedelta(seconds=60),
        out_of_order_tolerance=timedelta(milliseconds=rng.choice((0, 500, 2000))),
        stale_periods=rng.randint(1, 4),
        stale_min=timedelta(seconds=rng.choice((1, 2))),
        noise_sigmas=rng.choice((0.0, 4.0)),
        dedup_window=rng.choice((4, 16, 1024)),
    )
    plant = Plant(site, settings, rng)
    reference, batched, single = validators(site, settings)
    raised: set[str] = set()
    offset = 0
    for _ in range(30):
        frames, now = plant.batch(rng.choice((1, 2, 8, 25, 40)))
        run_batch(reference, batched, single, frames, now, offset)
        offset += len(frames)
        raised |= {flag for flag, count in reference.stats["flags"].items() if count}
        if rng.random() < 0.2:
            reference, batched, single = (
                restarted(v, site, settings) for v in (reference, batched, single)
            )
    # Not a vacuous comparison: most checks fired (all of them: the next test).
    assert len(raised) >= 8


def test_random_plant_reaches_every_outcome(site: Site) -> None:
    """Over a few seeds together: every flag but DUPLICATE, every dead letter but
    undecodable, sequence gaps and reorders."""
    flags: Counter[str] = Counter()
    letters: Counter[str] = Counter()
    gaps = reordered = 0
    for seed in range(4):
        rng = random.Random(seed)
        settings = ValidateSettings(max_age=timedelta(seconds=60), stale_min=timedelta(seconds=1))
        plant = Plant(site, settings, rng)
        validator = Validator(site, settings)
        for _ in range(30):
            frames, now = plant.batch(25)
            validator.validate_frames(
                Frames.from_records(frames), [Origin("t", 0, 0)] * len(frames), now
            )
        stats = validator.stats
        flags.update(stats["flags"])
        letters.update(stats["dead_letters"])
        gaps += stats["seq_gaps"]
        reordered += stats["seqs_reordered"]
    assert {f for f, n in flags.items() if n} == set(FLAG_BIT) - {"DUPLICATE"}
    assert {c for c, n in letters.items() if n} == {"invalid_frame", "unknown_asset", "duplicate"}
    assert gaps > 0 and reordered > 0


def test_replay_across_millennia(site: Site) -> None:
    """Readings stamped centuries apart (a replay with a huge max_age): the group keys of
    the running maxima would overflow, so times become ranks; still the reference's output."""
    settings = ValidateSettings(max_age=timedelta(days=3_000_000))
    rng = random.Random(5)
    reference, batched, single = validators(site, settings)
    lo, hi = to_micros(datetime(1, 1, 2, tzinfo=UTC)), to_micros(datetime(9000, 1, 1, tzinfo=UTC))
    now = datetime(9000, 1, 1, tzinfo=UTC)
    for b in range(6):
        frames = []
        for i in range(20):
            asset = site.assets[i % len(site.assets)]
            readings = [
                {
                    "signal": name,
                    "ts": from_micros(rng.randint(lo, hi)),
                    "value": rng.choice((1.0, 2.0, 1e6, -5.0)),
                    "quality": "GOOD",
                }
                for name in asset.signals
                for _ in range(3)
            ]
            frames.append(
                {
                    "asset_id": asset.id,
                    "source_id": asset.source_id,
                    "seq": b * 100 + i,
                    "ingest_ts": now,
                    "readings": readings,
                }
            )
        run_batch(reference, batched, single, frames, now, b * 100)
    assert reference.stats["flags"]["OUT_OF_ORDER"] > 0
    assert reference.stats["flags"]["RATE_OF_CHANGE"] > 0


def test_batch_columns(site: Site) -> None:
    """The accepted frames come back as columns: masks, verdicts and the validation time."""
    validator = Validator(site)
    now = T0 + timedelta(seconds=1)
    good = {"signal": "spindle_speed", "ts": T0, "value": 12000.0, "quality": "GOOD"}
    frames = [
        {"asset_id": "cnc-01", "source_id": "opcua-line1", "seq": 1, "ingest_ts": T0,
         "readings": [good, good | {"value": math.nan, "quality": "UNCERTAIN"}]},
        {"asset_id": "press-9", "source_id": "opcua-line1", "seq": 2, "ingest_ts": T0,
         "readings": [good]},
        {"asset_id": "cnc-01", "source_id": "opcua-line1", "seq": 3, "ingest_ts": T0,
         "readings": [good | {"signal": "nope"}, good | {"ts": T0 + timedelta(seconds=9)}]},
    ]  # fmt: skip
    origins = [Origin("telemetry.raw", 0, i) for i in range(3)]
    result = validator.validate_frames(Frames.from_records(frames), origins, now)
    assert result.rows == [0, 2]
    assert [(i, d["reason_code"]) for i, d in result.dead_letters] == [(1, "unknown_asset")]
    out = result.frames
    assert out.asset_id == ["cnc-01", "cnc-01"] and out.seq.tolist() == [1, 3]
    bits = FLAG_BIT
    assert out.flags is not None and out.flags.tolist() == [
        0,
        bits["DEVICE_UNCERTAIN"] | bits["NOT_FINITE"],
        bits["UNKNOWN_SIGNAL"],
        bits["FUTURE_TIMESTAMP"],
    ]
    assert out.quality.tolist() == [GOOD, BAD, BAD, BAD]
    assert out.validated_us is not None and out.validated_us.tolist() == [to_micros(now)] * 2
    assert UNCERTAIN == 1 and np.array_equal(out.bounds, [0, 2, 4])


def test_empty_batch(site: Site) -> None:
    validator = Validator(site)
    result = validator.validate_frames(Frames.from_records([]), [], T0)
    assert len(result.frames) == 0 and result.rows == [] and result.dead_letters == []
    assert validator.stats["frames"] == 0
