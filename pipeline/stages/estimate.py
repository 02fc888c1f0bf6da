"""The estimate stage: validated frames in, one state estimate per frame out (twin.state).

Per asset and signal a constant-velocity Kalman filter (`pipeline.stages.kalman`) tracks the
level and its rate, with the process and measurement noise of the site file and the time step
taken from the readings' own timestamps.

What the stage does with readings:

- **Usable** readings update the filter: finite value, device quality not BAD, and none of the
  `EstimateSettings.unusable_flags` (by default: broken, untimely, duplicated, stale or
  device-doubted readings; UNCERTAIN quality counts as DEVICE_UNCERTAIN). Range and
  rate-of-change flags do not make a reading unusable: judging a surprising value is the
  innovation gate's job. Other readings leave the filter predicting only (`measured` false),
  and its variance grows with the time since the last update.
- **Gating**: a reading whose normalised innovation squared (NIS = y²/S) exceeds
  `EstimateSettings.gate` is an outlier: reported, not absorbed. Unless the truth could have
  got there: a surprising reading within the signal's `max_rate` of the last estimate is a
  manoeuvre (a machine starting a ramp changes its rate far faster than the random-walk model
  expects); it is absorbed with the rate's uncertainty raised just enough to pass the gate.
  Without this, ramp starts would be rejected and the estimate would lag far behind the
  readings. A real level shift (faster than `max_rate`) must not be rejected forever, so after
  `reinit_after` consecutive outliers on the same side of the prediction the filter restarts
  at the reading with rate 0 (`outlier` false, `measured` true, the large NIS reported).
  Spikes come alone or on both sides of the truth, and do not restart it.
- **Counters** are exact: their measurement variance is floored at
  `min_measurement_variance` and they are not gated (a count that jumps did jump).
- **State codes** (kind "state") are not filtered at all: the reading passes through with rate
  0, zero variances and no innovation or NIS (a code has no noise to filter and its changes are
  not motion).
- Several readings of one signal in a frame are absorbed in time order, in rounds (the k-th
  reading of every signal in round k).

The output carries every signal of the asset that has been initialised by a usable reading at
some time (in the site's signal order), predicted to the frame's time `ts`: the latest reading
time of the frame whose timestamp is trusted (not FUTURE_TIMESTAMP or TOO_OLD), and never
earlier than the asset's last update (the frame's ingest time when there is neither). Signals
that never had a usable reading are left out: there is nothing to report about them. The
prediction to `ts` is not stored, so a slower signal's reading sampled a little before `ts` is
still absorbed by the next frame.

A batch (`Estimator.estimate_frames`) gives exactly what estimating its frames one after the
other would: the filters of all assets live in one `FilterStore`, the j-th frames of the assets
in the batch form frame round j, and each reading round of a frame round is one vectorised step
over every asset in it, so the work in numpy calls depends on the rounds, not on the frames.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import TwinError
from pipeline.site import Site
from pipeline.stages.frames import BAD, FLAG_BIT, UNCERTAIN, Frames, States
from pipeline.stages.kalman import FilterStore
from pipeline.stages.kalman_layout import SiteLayout, spans

Ints = npt.NDArray[np.int64]

CHI2_999_1DOF = 10.827566170662733
"""The 0.999 quantile of the chi-square distribution with one degree of freedom."""

DEFAULT_UNUSABLE_FLAGS = frozenset(
    {
        "NOT_FINITE",
        "OUT_OF_PHYSICAL_RANGE",
        "STALE",
        "FUTURE_TIMESTAMP",
        "TOO_OLD",
        "OUT_OF_ORDER",
        "DUPLICATE",
        "UNKNOWN_SIGNAL",
        "DEVICE_BAD",
        "DEVICE_UNCERTAIN",
    }
)
_UNTRUSTED_TIME = FLAG_BIT["FUTURE_TIMESTAMP"] | FLAG_BIT["TOO_OLD"]


class EstimateError(TwinError):
    """A frame or a state the estimate stage cannot work with (e.g. an asset the site lacks)."""


class EstimateSettings(BaseModel):
    """How the estimate stage filters; unknown keys are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gate: float = Field(default=CHI2_999_1DOF, gt=0)
    """NIS above which a reading is an outlier (default: chi-square 0.999 quantile, 1 dof)."""
    reinit_after: int = Field(default=3, ge=1)
    """Consecutive same-side outliers after which the filter restarts at the reading."""
    unusable_flags: frozenset[str] = DEFAULT_UNUSABLE_FLAGS
    """Validator flags that keep a reading out of the filter."""
    min_measurement_variance: float = Field(default=1e-9, gt=0)
    """Floor of R (signal unit²) for exact signals whose site measurement noise is 0."""


class Estimator:
    """Kalman state estimation per asset; state per asset via `snapshot`/`restore`."""

    def __init__(self, site: Site, settings: EstimateSettings | None = None) -> None:
        self.site = site
        self.settings = settings if settings is not None else EstimateSettings()
        self._layout = SiteLayout(site, self.settings.gate, self.settings.min_measurement_variance)
        self._store = FilterStore(self.settings.reinit_after)
        self._first: Ints = np.full(len(self._layout.names), -1, dtype=np.int64)
        """Store row of each slot's first signal; -1 until the asset has rows."""
        self._seen: dict[str, int] = {}
        """Asset id -> slot of the assets estimated or restored, in that order."""
        unusable = self.settings.unusable_flags
        self._unusable = sum(FLAG_BIT.get(name, 0) for name in unusable)
        self._skip_uncertain = "DEVICE_UNCERTAIN" in unusable
        # What the current frame round did to each store row (`_start_round`, `_step`).
        self._innovation = np.empty(0)
        self._nis = np.empty(0)
        self._outlier = np.empty(0, dtype=np.bool_)
        self._measured = np.empty(0, dtype=np.bool_)

    def assets(self) -> list[str]:
        return list(self._seen)

    def snapshot(self, asset_id: str) -> dict[str, Any] | None:
        slot = self._seen.get(asset_id)
        return None if slot is None else self._store.snapshot(self._rows(slot))

    def restore(self, asset_id: str, state: dict[str, Any]) -> None:
        slot = self._slots([asset_id])
        self._allocate(slot)
        first = int(self._first[slot[0]])
        try:
            self._store.restore(first, self._layout.index[int(slot[0])], state)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise EstimateError(
                f"estimate: cannot restore state of asset {asset_id}: {exc}"
            ) from exc
        self._seen.setdefault(asset_id, int(slot[0]))

    def estimate(self, frame: dict[str, Any]) -> dict[str, Any]:
        """The state_estimate record for one validated_frame record."""
        return self.estimate_frames(Frames.from_records([frame])).record(0)

    def estimate_frames(self, frames: Frames) -> States:
        """The state estimates of a validated batch, one per frame in the batch's order: what
        `estimate` of each frame in turn would give. Raises EstimateError, changing nothing,
        for a batch with an asset the site lacks."""
        flags = frames.flags
        if flags is None:
            if len(frames):
                raise EstimateError("estimate: the batch is not validated (it has no flags)")
            flags = np.zeros(0, dtype=np.uint16)
        slots = self._slots(frames.asset_id)
        for asset_id, slot in zip(frames.asset_id, slots.tolist(), strict=True):
            self._seen.setdefault(asset_id, slot)
        self._allocate(slots)
        first, size = self._first[slots], self._layout.size[slots]
        frame_of = frames.frame_of_reading()
        codes = np.fromiter(
            map(self._layout.codes.__getitem__, frames.signal.tolist()),
            dtype=np.int64,
            count=frames.readings,
        )
        offset = self._layout.offset[slots[frame_of], codes]
        known = offset >= 0
        trusted = known & ((flags & _UNTRUSTED_TIME) == 0)
        latest = _segment_max(np.where(trusted, frames.ts_us, -1), frames.bounds)
        usable = known & ((flags & self._unusable) == 0) & (frames.quality != BAD)
        if self._skip_uncertain:
            usable &= frames.quality != UNCERTAIN
        usable &= np.isfinite(frames.value)
        picked = np.flatnonzero(usable)
        rows = first[frame_of[picked]] + offset[picked]
        times, values = frames.ts_us[picked], frames.value[picked]

        frame_round = _ranks(slots)
        rounds = int(frame_round.max()) + 1 if len(frames) else 0
        reading_rounds = _reading_rounds(frame_round[frame_of[picked]], rows, times, rounds)
        by_round = np.argsort(frame_round, kind="stable")
        round_bounds = np.zeros(rounds + 1, dtype=np.int64)
        np.cumsum(np.bincount(frame_round, minlength=rounds), out=round_bounds[1:])
        ts_us = np.empty(len(frames), dtype=np.int64)
        parts: list[tuple[Any, ...]] = []
        for j in range(rounds):
            chosen = by_round[round_bounds[j] : round_bounds[j + 1]]
            out_rows = spans(first[chosen], size[chosen])
            self._start_round(out_rows)
            for sel in reading_rounds[j]:
                self._step(rows[sel], times[sel], values[sel])
            parts.append(self._outputs(chosen, out_rows, size[chosen], latest, frames, ts_us))
        return _states(frames, ts_us, parts)

    def _slots(self, asset_ids: list[str]) -> Ints:
        try:
            return np.fromiter(
                map(self._layout.slot.__getitem__, asset_ids),
                dtype=np.int64,
                count=len(asset_ids),
            )
        except KeyError as exc:
            raise EstimateError(
                f"estimate: asset {exc.args[0]!r} is not in site {self.site.name}"
            ) from None

    def _rows(self, slot: int) -> slice:
        first = int(self._first[slot])
        return slice(first, first + int(self._layout.size[slot]))

    def _allocate(self, slots: Ints) -> None:
        """Store rows for the assets of `slots` that have none yet, in order of appearance."""
        missing = slots[self._first[slots] < 0]
        if missing.size == 0:
            return
        _, at = np.unique(missing, return_index=True)
        new = missing[np.sort(at)]
        names, constants = self._layout.signals(new)
        first = self._store.allocate(names, constants)
        sizes = self._layout.size[new]
        self._first[new] = first + np.cumsum(sizes) - sizes
        capacity = self._store.capacity
        if self._innovation.size < capacity:
            self._innovation = np.empty(capacity)
            self._nis = np.empty(capacity)
            self._outlier = np.empty(capacity, dtype=np.bool_)
            self._measured = np.empty(capacity, dtype=np.bool_)

    def _start_round(self, rows: Ints) -> None:
        self._innovation[rows] = np.nan
        self._nis[rows] = np.nan
        self._outlier[rows] = False
        self._measured[rows] = False

    def _step(self, rows: Ints, times: Ints, values: npt.NDArray[np.float64]) -> None:
        result = self._store.step(rows, times, values)
        self._innovation[result.rows] = result.innovation
        self._nis[result.rows] = result.nis
        self._outlier[result.rows] |= result.outlier
        self._measured[result.rows] |= ~result.outlier

    def _outputs(
        self,
        chosen: Ints,
        rows: Ints,
        sizes: Ints,
        latest: Ints,
        frames: Frames,
        ts_us: Ints,
    ) -> tuple[Any, ...]:
        """The output columns of the frames `chosen` (one per asset), whose assets have the
        store rows `rows` (`sizes` per frame); sets their `ts_us`."""
        store = self._store
        ready = store.ready[rows]
        starts = np.cumsum(sizes) - sizes
        shown = np.add.reduceat(ready.astype(np.int64), starts)
        updated = np.maximum.reduceat(np.where(ready, store.t_us[rows], -1), starts)
        ts = np.maximum(latest[chosen], updated)
        ts = np.where(ts < 0, frames.ingest_us[chosen], ts)
        ts_us[chosen] = ts
        kept = rows[ready]
        pred = store.predict(kept, np.repeat(ts, shown))
        return (
            np.repeat(chosen, shown),
            store.signal[kept],
            pred.level,
            pred.rate,
            pred.p_ll,
            pred.p_rr,
            self._innovation[kept],
            self._nis[kept],
            self._outlier[kept],
            self._measured[kept],
        )


def _states(frames: Frames, ts_us: Ints, parts: list[tuple[Any, ...]]) -> States:
    """The States of the batch from the columns of its frame rounds, put in frame order."""
    if parts:
        columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
    else:
        columns = [np.empty(0, dtype=np.int64), np.empty(0, dtype=object)]
        columns += [np.empty(0)] * 6 + [np.empty(0, dtype=np.bool_)] * 2
    if len(parts) > 1:
        order = np.argsort(columns[0], kind="stable")
        columns = [column[order] for column in columns]
    bounds = np.zeros(len(frames) + 1, dtype=np.int64)
    np.cumsum(np.bincount(columns[0], minlength=len(frames)), out=bounds[1:])
    _, signal, value, rate, variance, rate_variance, innovation, nis, outlier, measured = columns
    return States(
        asset_id=frames.asset_id,
        source_id=frames.source_id,
        seq=frames.seq,
        ts_us=ts_us,
        ingest_us=frames.ingest_us,
        bounds=bounds,
        signal=signal,
        value=value,
        rate=rate,
        variance=variance,
        rate_variance=rate_variance,
        innovation=innovation,
        nis=nis,
        outlier=outlier,
        measured=measured,
    )


def _ranks(keys: Ints) -> Ints:
    """For each element, how many earlier elements have the same key (0 for the first)."""
    order = np.argsort(keys, kind="stable")
    return _group_ranks(keys[order])[np.argsort(order)]


def _group_ranks(sorted_keys: Ints) -> Ints:
    """Position of each element within its run of equal keys."""
    first = np.ones(sorted_keys.size, dtype=np.bool_)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    positions = np.arange(sorted_keys.size)
    return positions - np.maximum.accumulate(np.where(first, positions, 0))


def _reading_rounds(frame_round: Ints, rows: Ints, times: Ints, rounds: int) -> list[list[Ints]]:
    """Per frame round, index arrays of its reading rounds: round k holds the k-th reading (in
    time, ties in batch order) of every store row that has one in that frame round."""
    out: list[list[Ints]] = [[] for _ in range(rounds)]
    if rows.size == 0:
        return out
    order = np.lexsort((times, rows, frame_round))
    # Rows are unique per asset and signal, and an asset has one frame per frame round, so a
    # (frame round, row) pair is one signal of one frame.
    pair = frame_round[order] * (int(rows.max()) + 1) + rows[order]
    rank = _group_ranks(pair)
    width = int(rank.max()) + 1
    key = frame_round[order] * width + rank
    if int(key.max()) <= np.iinfo(np.int16).max:
        key = key.astype(np.int16)  # numpy's stable sort of 16-bit integers is a radix sort
    by_key = np.argsort(key, kind="stable")
    order, key = order[by_key], key[by_key]
    cuts = np.flatnonzero(key[1:] != key[:-1]) + 1
    for lo, hi in pairwise([0, *cuts.tolist(), key.size]):
        out[int(key[lo]) // width].append(order[lo:hi])
    return out


def _segment_max(values: Ints, bounds: Ints) -> Ints:
    """The largest of values[bounds[i]:bounds[i + 1]] for each i; -1 where that is empty."""
    # reduceat needs every start inside the array; the appended -1 covers trailing empty
    # segments, and empty segments in between are overwritten.
    padded = np.append(values, -1)
    out = np.maximum.reduceat(padded, bounds[:-1]) if bounds.size > 1 else bounds[:0]
    out[bounds[1:] == bounds[:-1]] = -1
    # Like the per-frame loop, which starts from -1: times before the epoch count as none.
    return np.maximum(out, -1)
