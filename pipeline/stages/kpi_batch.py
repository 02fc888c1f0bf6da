"""The KPI stage's intake of readings: which pane each usable reading goes to, for one frame
or for a whole batch of validated frames at once.

For a batch (`ReadingGroups.of`), the per-reading work is done with numpy over all readings:
whether a reading is usable (quality GOOD, no flag outside the usable ones, a finite value, a
signal its asset has) and its pane. The usable readings are then grouped by (frame, pane,
signal), each group keeping its readings in frame order, and the groups of a frame are put in
the order of their first reading. Applying frame i's groups (`ReadingGroups.apply`) is then a
few Python steps per group: the pane each group goes to depends on the asset's watermark when
the frame arrives, which the frames before it may have moved, so it is decided frame by frame.
The result is the panes, in the same order and with the same values in the same order, that
adding the readings one by one gives.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import TwinError
from pipeline.site import Site
from pipeline.stages.frames import FLAGS, GOOD, Frames, flag_mask
from pipeline.stages.kpi_aggregate import KpiAggregator, Pane
from pipeline.stages.kpi_windows import WindowPlan


class KpiFrameError(TwinError):
    """A frame of a batch given to `KpiWindows.add_frames` failed (the cause is chained):
    the frames before it were applied, and `done` holds their records, one list per frame;
    it may be partly applied; the frames after it were not."""

    def __init__(self, index: int, done: list[list[dict[str, Any]]], cause: Exception) -> None:
        super().__init__(f"kpi: frame {index} of the batch failed: {type(cause).__name__}: {cause}")
        self.index = index
        self.done = done


def pane_for(
    panes: dict[int, Pane],
    start: int,
    watermark: int | None,
    plan: WindowPlan,
    aggregator: KpiAggregator,
) -> tuple[Pane | None, bool]:
    """The pane starting at `start` that readings go to while the asset's watermark is
    `watermark` (created when missing), and whether it is late (its windows have closed).
    None when it is later than the allowed lateness of every window it is in."""
    is_late = watermark is not None and start + plan.pane_us <= watermark
    if is_late and watermark is not None and plan.expires(start) <= watermark:
        return None, True
    pane = panes.get(start)
    if pane is None:
        pane = panes[start] = aggregator.initialize()
    return pane, is_late


class SignalIndex:
    """Which signals each asset of a site has, as an (asset, signal name) table."""

    def __init__(self, site: Site) -> None:
        self.names = sorted({name for asset in site.assets for name in asset.signals})
        self._codes = _Codes((name, i) for i, name in enumerate(self.names))
        self._assets = {asset.id: i for i, asset in enumerate(site.assets)}
        # One row and one column more: an unknown asset's or name's index -1 lands there.
        self._known = np.zeros((len(site.assets) + 1, len(self.names) + 1), dtype=np.bool_)
        for a, asset in enumerate(site.assets):
            self._known[a, [self._codes[name] for name in asset.signals]] = True

    def codes(self, signal: npt.NDArray[np.object_]) -> npt.NDArray[np.int64]:
        """The index in `names` of each signal name; -1 for a name no asset has."""
        names = signal.tolist()  # a list iterates faster than an object array
        return np.fromiter(map(self._codes.__getitem__, names), np.int64, len(names))

    def known(
        self, asset_ids: list[str], frame_of: npt.NDArray[np.int64], codes: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        """Per reading, whether its frame's asset has its signal (False for unknown assets)."""
        assets = np.array([self._assets.get(a, -1) for a in asset_ids], dtype=np.int64)
        known: npt.NDArray[np.bool_] = self._known[assets[frame_of], codes]
        return known


class _Codes(dict[str, int]):
    """Signal name -> index; -1 for any other name."""

    def __missing__(self, name: str) -> int:
        return -1


def unusable_mask(usable_flags: frozenset[str]) -> int:
    """The flag mask of every flag that keeps a reading out."""
    return flag_mask([name for name in FLAGS if name not in usable_flags])


@dataclass(slots=True)
class ReadingGroups:
    """The usable readings of a batch of validated frames, grouped by (frame, pane, signal);
    the groups of frame i are `cuts[i]:cuts[i + 1]`, in the order of their first reading."""

    cuts: list[int]
    pane: list[int]
    """Pane start of each group."""
    signal: list[str]
    lo: list[int]
    """Each group's readings are `values[lo:hi]` / `times[lo:hi]`, in frame order."""
    hi: list[int]
    values: array[float]
    times: list[int]
    readings: list[int]
    """Readings per frame."""
    unusable: list[int]
    """Unusable readings per frame."""
    newest: list[int]
    """Newest event time of each frame's usable readings (of a frame without any: unused)."""

    @classmethod
    def of(cls, frames: Frames, signals: SignalIndex, pane_us: int, unusable: int) -> ReadingGroups:
        """The groups of a validated batch (`unusable`: the flag mask that keeps a reading
        out). ValueError for readings without flags (a batch of no readings needs none)."""
        flags = frames.flags
        if flags is None:
            if frames.readings:
                raise ValueError("kpi: add_frames needs validated frames (flags)")
            flags = np.zeros(0, dtype=np.uint16)
        n = len(frames)
        frame_of = frames.frame_of_reading()
        codes = signals.codes(frames.signal)
        usable = (
            (frames.quality == GOOD)
            & ((flags & unusable) == 0)
            & np.isfinite(frames.value)
            & signals.known(frames.asset_id, frame_of, codes)
        )
        rows = np.flatnonzero(usable)
        ts = frames.ts_us[rows]
        newest = np.zeros(n, dtype=np.int64)
        row_cuts = np.searchsorted(frame_of[rows], np.arange(n + 1))
        present = np.flatnonzero(row_cuts[1:] > row_cuts[:-1])
        if present.size:
            newest[present] = np.maximum.reduceat(ts, row_cuts[present])
        pane = ts - ts % pane_us
        # (frame, signal) as one number (usable readings have a known signal, code >= 0).
        width = max(len(signals.names), 1)
        series = frame_of[rows] * width + codes[rows]
        # Stable: within a group the readings stay in frame order, its first is its earliest.
        order = np.lexsort((pane, series))
        series, pane = series[order], pane[order]
        change = np.ones(order.size, dtype=np.bool_)
        change[1:] = (series[1:] != series[:-1]) | (pane[1:] != pane[:-1])
        starts = np.flatnonzero(change)
        ends = np.append(starts[1:], order.size)
        # Groups by their first reading: by frame, and within a frame in reading order.
        by_first = np.argsort(order[starts], kind="stable")
        starts, ends = starts[by_first], ends[by_first]
        group_series = series[starts]
        names = signals.names
        return cls(
            cuts=np.searchsorted(group_series // width, np.arange(n + 1)).tolist(),
            pane=pane[starts].tolist(),
            signal=[names[c] for c in (group_series % width).tolist()],
            lo=starts.tolist(),
            hi=ends.tolist(),
            values=array("d", frames.value[rows[order]].astype(np.float64, copy=False).tobytes()),
            times=ts[order].tolist(),
            readings=frames.counts().tolist(),
            unusable=np.bincount(frame_of[~usable], minlength=n).tolist(),
            newest=newest.tolist(),
        )

    def apply(
        self,
        i: int,
        panes: dict[int, Pane],
        watermark: int | None,
        plan: WindowPlan,
        aggregator: KpiAggregator,
    ) -> tuple[int, int | None, int | None]:
        """Put frame i's usable readings into the asset's panes, as the asset's watermark
        `watermark` allows; return (readings too late, newest event time counted, oldest
        event time counted into a late pane), the times None when there are none."""
        first, last = self.cuts[i], self.cuts[i + 1]
        if first == last:
            return 0, None, None
        timed = aggregator.timed
        pane_at, signal_at, lo_at, hi_at = self.pane, self.signal, self.lo, self.hi
        values_at, times_at = self.values, self.times
        late_from: int | None = None
        dropped: list[int] = []
        current = -1  # start of the pane the previous group went to
        pane: Pane | None = None
        is_late = False
        for g in range(first, last):
            start = pane_at[g]
            if start != current:
                current = start
                pane, is_late = pane_for(panes, start, watermark, plan, aggregator)
            if pane is None:
                dropped.append(g)
                continue
            lo, hi = lo_at[g], hi_at[g]
            if is_late:
                oldest = min(times_at[lo:hi])
                if late_from is None or oldest < late_from:
                    late_from = oldest
            signal = signal_at[g]
            values = pane.values.get(signal)
            if values is None:
                values = pane.new_series(signal, timed)
            values.extend(values_at[lo:hi])
            if signal in timed:
                pane.times[signal].extend(times_at[lo:hi])
        if not dropped:
            return 0, self.newest[i], late_from
        # Rare: some readings were too late; the newest counted is among the others.
        too_late = sum(hi_at[g] - lo_at[g] for g in dropped)
        kept = [max(times_at[lo_at[g] : hi_at[g]]) for g in range(first, last) if g not in dropped]
        return too_late, max(kept) if kept else None, late_from
