"""The validate stage's reading checks over a whole batch of frames, as array operations.

`SignalTable` holds the limits of every (asset, signal) pair of the site as arrays, one row
per pair, so the limits of all readings of a batch are one gather. `check_readings` flags the
readings of the batch's accepted frames (the checks and flags of the `validate` module doc)
and moves the per-signal state forward, with a fixed number of numpy calls per batch.

The stateful checks (rate of change, stale, out of order) compare a reading with its signal's
reference: the latest accepted reading before it. Accepted readings are those that are timely,
finite, physically possible and not BAD by the device; of those, a reading moves the reference
only when it is strictly later than the reference. So, with the readings of each (asset,
signal) in batch order after the state carried from earlier batches, the reference time is the
running maximum of the accepted times, a reading that raises it is the new reference, and
"the reference before reading k" is a forward fill of those. The time since which a stale-
checked value has not changed is a forward fill too, over the readings that reset it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.site import Site
from pipeline.stages.frames import BAD, FLAG_BIT, FLAGS, GOOD, UNCERTAIN, Frames, Ints
from pipeline.stages.validate_state import (
    COUNTER,
    GAUGE,
    SignalLimits,
    SignalState,
    ValidateSettings,
)

Mask = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]
_KEY_LIMIT = 1 << 62
"""Grouped running maxima add a group offset to each time; above this, times become ranks."""


class SignalTable:
    """The limits of every (asset, signal) of a site as arrays, one row per pair."""

    def __init__(self, site: Site, settings: ValidateSettings) -> None:
        self.asset_index = {asset.id: i for i, asset in enumerate(site.assets)}
        names = sorted({name for asset in site.assets for name in asset.signals})
        name_index = self._name_index = _NameIndex((name, i) for i, name in enumerate(names))
        # One column more than there are names: an unknown name's index -1 lands there.
        self._rows = np.full((len(site.assets), len(names) + 1), -1, dtype=np.int64)
        self.row_asset: list[int] = []
        """Asset index of each row."""
        self.row_signal: list[str] = []
        """Signal name of each row."""
        limits: list[SignalLimits] = []
        for a, asset in enumerate(site.assets):
            for name, signal in asset.signals.items():
                self._rows[a, name_index[name]] = len(limits)
                self.row_asset.append(a)
                self.row_signal.append(name)
                limits.append(SignalLimits(signal, settings))
        self.kind = np.array([x.kind for x in limits], dtype=np.int8)
        self.physical_min = np.array([x.physical_min for x in limits], dtype=np.float64)
        self.physical_max = np.array([x.physical_max for x in limits], dtype=np.float64)
        self.expected_min = np.array([x.expected_min for x in limits], dtype=np.float64)
        self.expected_max = np.array([x.expected_max for x in limits], dtype=np.float64)
        self.rate_per_us = np.array([x.rate_per_us for x in limits], dtype=np.float64)
        self.noise_allowance = np.array([x.noise_allowance for x in limits], dtype=np.float64)
        self.period_us = np.array([x.period_us for x in limits], dtype=np.int64)
        self.stale_us = np.array([x.stale_us for x in limits], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.row_asset)

    def rows(self, asset: Ints, signal: npt.NDArray[np.object_]) -> Ints:
        """The row of each reading (its frame's asset index, its signal name); -1 where the
        asset has no such signal."""
        index = np.fromiter(map(self._name_index.__getitem__, signal), np.int64, signal.size)
        return self._rows[asset, index]


class _NameIndex(dict[str, int]):
    """Signal name -> column of the row table; -1 (the last column) for any other name."""

    def __missing__(self, name: str) -> int:
        return -1


@dataclass(frozen=True, slots=True)
class Window:
    """The time limits of one batch, in microseconds since the epoch."""

    future_us: int
    """Later than this is FUTURE_TIMESTAMP."""
    oldest_us: int
    """Earlier than this is TOO_OLD."""
    order_us: int
    """Earlier than the signal's reference by more than this is OUT_OF_ORDER."""


@dataclass(frozen=True, slots=True)
class Checked:
    """Flags and verdicts of a batch's readings."""

    flags: npt.NDArray[np.uint16]
    quality: npt.NDArray[np.int8]


def check_readings(
    table: SignalTable,
    frames: Frames,
    assets: Ints,
    signals: Mapping[int, dict[str, SignalState]],
    window: Window,
) -> Checked:
    """Check every reading of `frames` (accepted frames; `assets` is each frame's asset
    index) and move the signal states of `signals` (by asset index) forward."""
    t, value, device = frames.ts_us, frames.value, frames.quality
    row = table.rows(np.repeat(assets, frames.counts()), frames.signal)
    flags = np.zeros(t.size, dtype=np.uint16)
    device_bad = device == BAD
    future = t > window.future_us
    too_old = t < window.oldest_us
    unknown = row < 0
    finite = np.isfinite(value)
    not_finite = ~finite & ~unknown & ~device_bad
    checked = finite & ~unknown & ~device_bad
    # Unknown signals read row -1 (some real row); their limits are masked out by `checked`.
    physical = (value < table.physical_min[row]) | (value > table.physical_max[row])
    physical &= checked
    possible = checked & ~physical
    expected = (value < table.expected_min[row]) | (value > table.expected_max[row])
    expected &= possible
    accepted = np.flatnonzero(possible & ~future & ~too_old)
    late, rate, stale = _follow(
        table, row[accepted], t[accepted], value[accepted], signals, window.order_us
    )
    for name, mask in (
        ("DEVICE_BAD", device_bad),
        ("DEVICE_UNCERTAIN", device == UNCERTAIN),
        ("FUTURE_TIMESTAMP", future),
        ("TOO_OLD", too_old),
        ("UNKNOWN_SIGNAL", unknown),
        ("NOT_FINITE", not_finite),
        ("OUT_OF_PHYSICAL_RANGE", physical),
        ("OUT_OF_EXPECTED_RANGE", expected),
    ):
        np.bitwise_or(flags, FLAG_BIT[name], out=flags, where=mask)
    for name, picks in (("OUT_OF_ORDER", late), ("RATE_OF_CHANGE", rate), ("STALE", stale)):
        flags[accepted[picks]] |= FLAG_BIT[name]
    bad = future | too_old | unknown | not_finite | physical
    suspect = np.zeros(t.size, dtype=np.bool_)
    suspect[accepted[rate | stale]] = True
    quality = np.where(suspect & (device == GOOD), np.int8(UNCERTAIN), device)
    quality[bad] = BAD
    return Checked(flags, quality.astype(np.int8, copy=False))


def flag_counts(flags: npt.NDArray[np.uint16]) -> dict[str, int]:
    """Readings per flag."""
    return {name: int(np.count_nonzero(flags & FLAG_BIT[name])) for name in FLAGS}


def _follow(
    table: SignalTable,
    row: Ints,
    t: Ints,
    value: Floats,
    signals: Mapping[int, dict[str, SignalState]],
    order_us: int,
) -> tuple[Mask, Mask, Mask]:
    """Order, rate and stale checks of the accepted readings (rows, times and values in batch
    order) against their signals' state, which they then move forward; the OUT_OF_ORDER,
    RATE_OF_CHANGE and STALE masks over the accepted readings."""
    n = t.size
    if n == 0:
        empty = np.zeros(0, dtype=np.bool_)
        return empty, empty, empty
    groups = np.flatnonzero(np.bincount(row, minlength=len(table)))
    held = _held(table, groups.tolist(), signals)
    seeded_groups = [k for k, state in enumerate(held) if state is not None]
    carried = [state for state in held if state is not None]
    seed_row = groups[seeded_groups]
    s = seed_row.size
    # Each signal's readings in batch order, after the state it carries (its seed).
    rows = np.concatenate((seed_row, row))
    position = np.concatenate((np.zeros(s, dtype=np.int64), np.arange(1, n + 1)))
    order = np.argsort(rows * (n + 1) + position)
    g = rows[order]
    ts = np.concatenate((np.array([c.ts for c in carried], dtype=np.int64), t))[order]
    vs = np.concatenate((np.array([c.value for c in carried], dtype=np.float64), value))[order]
    index = np.arange(s + n, dtype=np.int64)
    start = np.ones(s + n, dtype=np.bool_)
    np.not_equal(g[1:], g[:-1], out=start[1:])
    follower = ~start

    # The reference of each reading: the latest one before it that was later than all
    # earlier ones of its signal (the first of a signal, or its seed, to begin with).
    running = np.maximum.accumulate(_grouped_times(g, ts, t))
    # (A group's first key is above every key of the groups before: a start always sets.)
    setter = np.ones(s + n, dtype=np.bool_)
    np.greater(running[1:], running[:-1], out=setter[1:])
    latest = np.maximum.accumulate(np.where(setter, index, 0))
    ref = np.concatenate(([0], latest[:-1]))
    dt = ts - ts[ref]
    change = vs - vs[ref]
    updater = setter & follower
    late = follower & ~setter & (dt < -order_us)

    kind, rate_per_us = table.kind[g], table.rate_per_us[g]
    gauge = np.abs(change) > rate_per_us * dt + table.noise_allowance[g]
    gauge &= kind == GAUGE
    counter = (change < 0) | (change > rate_per_us * np.maximum(dt, table.period_us[g]))
    counter &= kind == COUNTER
    rate = updater & (gauge | counter)

    # Since when the value has not changed: set by a signal's first reading (or carried by
    # its seed), reset by a change or a value pegged at a physical limit.
    stale_us = table.stale_us[g]
    watched = updater & (stale_us > 0)
    pegged = (vs == table.physical_min[g]) | (vs == table.physical_max[g])
    resetter = start | (watched & ((change != 0.0) | pegged))
    since_of = ts.copy()
    seeded = np.flatnonzero(order < s)
    since_of[seeded] = np.array([c.since for c in carried], dtype=np.int64)[order[seeded]]
    since = since_of[np.maximum.accumulate(np.where(resetter, index, 0))]
    stale = watched & ~resetter & (ts - since >= stale_us)

    # Final state of each signal; new ones (no seed: they begin with a reading) are ordered
    # by the batch position of their first reading.
    begin = np.flatnonzero(start)
    end = np.append(begin[1:] - 1, s + n - 1)
    last = latest[end]
    first = order[begin] - s
    final = (ts[last].tolist(), vs[last].tolist(), since[end].tolist())
    _write_back(table, groups.tolist(), held, first, *final, signals)
    batch_order = np.empty(n, dtype=np.int64)
    batch_order[order[order >= s] - s] = index[order >= s]
    return late[batch_order], rate[batch_order], stale[batch_order]


def _grouped_times(group: Ints, ts: Ints, readings: Ints) -> Ints:
    """Times made comparable within a group only (`group`: the ascending row numbers the
    batch is sorted by): every group's keys lie above the previous group's, so one running
    maximum over the sorted batch is a running maximum per group. A carried time outside the
    batch's readings is clipped to just outside them (the comparisons stay the same), which
    keeps the keys small; if they would still overflow, times become their ranks."""
    lo = int(readings.min()) - 1
    hi = int(readings.max()) + 1
    times = np.clip(ts, lo, hi) - lo
    span = hi - lo + 1
    if (int(group[-1]) + 1) * span >= _KEY_LIMIT:
        distinct, times = np.unique(times, return_inverse=True)
        span = distinct.size
    return group * span + times


def _held(
    table: SignalTable, groups: list[int], signals: Mapping[int, dict[str, SignalState]]
) -> list[SignalState | None]:
    """The carried state of each signal (row) in `groups`, None for a signal without one."""
    row_asset, row_signal = table.row_asset, table.row_signal
    return [signals[row_asset[r]].get(row_signal[r]) for r in groups]


def _write_back(
    table: SignalTable,
    groups: list[int],
    held: list[SignalState | None],
    first: Ints,
    times: list[int],
    values: list[float],
    sinces: list[int],
    signals: Mapping[int, dict[str, SignalState]],
) -> None:
    """Store each group's final state; new signals join their asset's state in the order of
    their first reading (the order the snapshot lists them in)."""
    fresh: list[int] = []
    for k, state in enumerate(held):
        if state is None:
            fresh.append(k)
        else:
            state.ts, state.value, state.since = times[k], values[k], sinces[k]
    if not fresh:
        return
    row_asset, row_signal = table.row_asset, table.row_signal
    for k in np.array(fresh)[np.argsort(first[fresh], kind="stable")].tolist():
        r = groups[k]
        signals[row_asset[r]][row_signal[r]] = SignalState(times[k], values[k], sinces[k])
