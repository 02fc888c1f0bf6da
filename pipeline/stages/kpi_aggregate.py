"""The KPI aggregation of one asset: what a pane keeps of its readings, and a window's KPIs
from its panes (the window contract: `initialize` / `agg` / `result`).

OEE conventions (per window):

- Machine state comes from the asset type's state rule. A state holds from its reading to the
  asset's next usable state reading, clipped to the window; the state at the window start is
  the one of the last reading before it. Time before the first state reading ever seen, or
  after a reading the rule cannot classify (an unmapped code), is *unknown* and counted in
  no state.
- Maintenance is planned downtime: it is excluded from planned production time, so
  planned = run + idle + down (= window length - maintenance when the state is known all
  window long). Idle (ready, setup) is an availability loss, as in the OEE six big losses.
- availability = run / planned; None without planned time or without a state rule.
- performance = ideal_cycle_time * parts_total / run, capped at 1 (a value above 1 means the
  ideal cycle time in the site file is too slow, or parts were counted late; the uncapped
  figure follows from parts_total, run_s and the site file); None without run time, part
  counters or ideal cycle time.
- quality = parts_good / parts_total; None when no parts were made.
- oee = availability * performance * quality; None when any of them is None.
- Parts are counter deltas between consecutive usable readings, credited to the window of the
  later reading; a decrease is a counter reset and counts the new value. Good parts are
  total minus scrap (at least 0); without a scrap counter every part is good.
- failures = transitions into down within the window from a known, other state; MTBF =
  run / failures and MTTR = down / failures over the window; None without failures.
- Signal statistics use the usable readings only; a signal without any in the window is left
  out. p95 interpolates linearly between closest ranks (numpy's default).
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

import numpy as np

from pipeline.site import Asset, MachineState, StateRule
from pipeline.stages.common import from_micros

Point = tuple[int, float]
"""(event time µs, value) of one reading."""

_TS = itemgetter(0)


@dataclass(slots=True)
class Pane:
    """The usable readings of one asset within one pane of event time."""

    values: dict[str, array[float]] = field(default_factory=dict)
    """Per signal, the values (for the statistics), as C doubles: a quarter of the memory
    of a list of floats, and numpy reads them without a copy."""
    times: dict[str, list[int]] = field(default_factory=dict)
    """Per state/counter signal, the event times, parallel to `values`."""

    def new_series(self, signal: str, timed: frozenset[str]) -> array[float]:
        """The (new, empty) value array of a signal the pane has no readings of yet, with a
        time list beside it for a signal in `timed` (state and counter signals)."""
        values: array[float] = array("d")
        self.values[signal] = values
        if signal in timed:
            self.times[signal] = []
        return values


@dataclass(frozen=True, slots=True)
class SignalStats:
    signal: str
    count: int
    min: float
    max: float
    mean: float
    p95: float


@dataclass(frozen=True, slots=True)
class KpiResult:
    """A window's KPIs, before they become a kpi_window record."""

    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    run_s: float
    idle_s: float
    down_s: float
    parts_total: int
    parts_good: int
    failures: int
    mtbf_s: float | None
    mttr_s: float | None
    signals: tuple[SignalStats, ...]

    def fingerprint(self) -> str:
        """A stable digest of the result (the same in every process), to tell whether late
        data changed an emitted window: of the text of `dataclasses.astuple(self)`, built
        here field by field (astuple deep-copies every value on the way, at several times
        the cost; the emitted windows' fingerprints are kept in the stage state, so the
        text must not change)."""
        fields = (
            self.availability, self.performance, self.quality, self.oee, self.run_s,
            self.idle_s, self.down_s, self.parts_total, self.parts_good, self.failures,
            self.mtbf_s, self.mttr_s,
            tuple((s.signal, s.count, s.min, s.max, s.mean, s.p95) for s in self.signals),
        )  # fmt: skip
        return hashlib.blake2b(repr(fields).encode(), digest_size=8).hexdigest()

    def record(
        self, asset: Asset, key: tuple[str, int, int], version: int, now: datetime
    ) -> dict[str, Any]:
        kind, start, end = key
        return {
            "asset_id": asset.id,
            "line_id": asset.line.id,
            "window_kind": kind,
            "window_start": from_micros(start),
            "window_end": from_micros(end),
            "version": version,
            "availability": self.availability,
            "performance": self.performance,
            "quality": self.quality,
            "oee": self.oee,
            "run_s": self.run_s,
            "idle_s": self.idle_s,
            "down_s": self.down_s,
            "parts_total": self.parts_total,
            "parts_good": self.parts_good,
            "failures": self.failures,
            "mtbf_s": self.mtbf_s,
            "mttr_s": self.mttr_s,
            "signals": [
                {
                    "signal": s.signal,
                    "count": s.count,
                    "min": s.min,
                    "max": s.max,
                    "mean": s.mean,
                    "p95": s.p95,
                }
                for s in self.signals
            ],
            "emitted_ts": now,
        }


class KpiAggregator:
    """Aggregates one asset's readings into panes and turns panes into window KPIs."""

    def __init__(self, asset: Asset) -> None:
        rules = asset.kpi
        self.signals: tuple[str, ...] = tuple(asset.signals)
        self.state_rule: StateRule | None = rules.state if rules is not None else None
        counters = rules.counters if rules is not None else None
        self.total_signal = counters.total if counters is not None else None
        self.scrap_signal = counters.scrap if counters is not None else None
        ideal = rules.ideal_cycle_time if rules is not None else None
        self.ideal_cycle_s = ideal.total_seconds() if ideal is not None else None
        timed = [self.total_signal, self.scrap_signal]
        if self.state_rule is not None:
            timed.append(self.state_rule.signal)
        self.timed: frozenset[str] = frozenset(s for s in timed if s is not None)
        """Signals whose readings keep their event time (state and part counters)."""

    def initialize(self) -> Pane:
        return Pane()

    def agg(self, pane: Pane, signal: str, value: float, ts: int) -> Pane:
        """Add one usable reading to its pane (the stage inlines this for whole frames)."""
        values = pane.values.get(signal)
        if values is None:
            values = pane.new_series(signal, self.timed)
        values.append(value)
        if signal in self.timed:
            pane.times[signal].append(ts)
        return pane

    def result(
        self, panes: list[Pane], before: dict[str, Point], start: int, end: int
    ) -> KpiResult:
        """The KPIs of the window [start, end) from its panes (in time order) and, per
        state/counter signal, the last reading before the window."""
        run_us = idle_us = down_us = 0
        failures = 0
        rule = self.state_rule
        if rule is not None:
            entry = before.get(rule.signal)
            spent, failures = _state_times(
                rule, _points(panes, rule.signal), entry[1] if entry else None, start, end
            )
            run_us, idle_us, down_us = (
                spent[MachineState.RUNNING],
                spent[MachineState.IDLE],
                spent[MachineState.DOWN],
            )
        run_s, idle_s, down_s = run_us / 1e6, idle_us / 1e6, down_us / 1e6

        parts_total = parts_good = 0
        if self.total_signal is not None:
            parts_total = _parts(_points(panes, self.total_signal), before.get(self.total_signal))
            scrap = 0
            if self.scrap_signal is not None:
                scrap = _parts(_points(panes, self.scrap_signal), before.get(self.scrap_signal))
            parts_good = min(parts_total, max(0, parts_total - scrap))

        planned_us = run_us + idle_us + down_us
        availability = run_us / planned_us if rule is not None and planned_us > 0 else None
        performance = None
        if self.ideal_cycle_s is not None and self.total_signal is not None and run_us > 0:
            performance = min(1.0, self.ideal_cycle_s * parts_total / run_s)
        quality = parts_good / parts_total if parts_total > 0 else None
        oee = None
        if availability is not None and performance is not None and quality is not None:
            oee = availability * performance * quality
        return KpiResult(
            availability=availability,
            performance=performance,
            quality=quality,
            oee=oee,
            run_s=run_s,
            idle_s=idle_s,
            down_s=down_s,
            parts_total=parts_total,
            parts_good=parts_good,
            failures=failures,
            mtbf_s=run_s / failures if failures else None,
            mttr_s=down_s / failures if failures else None,
            signals=self._stats(panes),
        )

    def _stats(self, panes: list[Pane]) -> tuple[SignalStats, ...]:
        found: list[tuple[str, Sequence[float]]] = []
        for signal in self.signals:
            parts = [p.values[signal] for p in panes if signal in p.values]
            if parts:
                values = parts[0]
                if len(parts) > 1:
                    values = array("d", values)
                    for part in parts[1:]:
                        values.extend(part)
                found.append((signal, values))
        return signal_stats(found)


def signal_stats(found: Sequence[tuple[str, Sequence[float]]]) -> tuple[SignalStats, ...]:
    """count, min, max, mean and p95 of each (signal, values), in the order given.

    Signals with the same number of values (the gauges of a machine, sampled alike) go to
    numpy as the rows of one array, sorted once: the minimum, the maximum and the two
    closest ranks of the p95 are then columns of it. The results equal `min`, `max` and
    `np.percentile(values, 95)` of each signal alone (see `_p95_of_sorted`)."""
    by_count: dict[int, list[int]] = {}
    for i, (_, values) in enumerate(found):
        by_count.setdefault(len(values), []).append(i)
    low = [0.0] * len(found)
    high = [0.0] * len(found)
    p95 = [0.0] * len(found)
    for rows in by_count.values():
        block = np.stack([_floats(found[i][1]) for i in rows])  # a copy: sorted in place
        block.sort(axis=1)
        for i, lo, hi, q in zip(
            rows,
            block[:, 0].tolist(),
            block[:, -1].tolist(),
            _p95_of_sorted(block).tolist(),
            strict=True,
        ):
            low[i], high[i], p95[i] = lo, hi, q
    return tuple(
        SignalStats(
            signal=signal,
            count=len(values),
            min=low[i],
            max=high[i],
            # fsum: exact, so the mean does not depend on how panes were merged
            mean=math.fsum(values) / len(values),
            p95=p95[i],
        )
        for i, (signal, values) in enumerate(found)
    )


def _floats(values: Sequence[float]) -> np.ndarray:
    """The values as a float64 array (without a copy for a pane's C doubles)."""
    if isinstance(values, array) and values.typecode == "d":
        return np.frombuffer(values, dtype=np.float64)
    return np.asarray(values, dtype=np.float64)


def _p95_of_sorted(block: np.ndarray) -> np.ndarray:
    """Per row of `block` (each sorted, all of one length n), the 95th percentile as
    `np.percentile(row, 95)` computes it (method "linear"): rank h = (n - 1) * 0.95, and
    between the values at floor(h) and floor(h) + 1 numpy's own interpolation (from below
    for a fraction under 0.5, from above otherwise), in the same float operations."""
    n = block.shape[1]
    h = (n - 1) * (95 / 100)
    below = math.floor(h)
    if below >= n - 1:
        return block[:, -1].copy()
    gamma = h - below
    a, b = block[:, below], block[:, below + 1]
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1 - gamma)
    return a + diff * gamma


def _points(panes: list[Pane], signal: str) -> list[Point]:
    """A timed signal's readings in the panes, by event time (arrival order among equals)."""
    points: list[Point] = []
    for pane in panes:
        times = pane.times.get(signal)
        if times:
            points.extend(zip(times, pane.values[signal], strict=True))
    points.sort(key=_TS)
    return points


def last_point(pane: Pane, signal: str) -> Point | None:
    """The pane's latest reading of a timed signal (the last to arrive among equal times)."""
    times = pane.times.get(signal)
    if not times:
        return None
    best = 0
    for i in range(1, len(times)):
        if times[i] >= times[best]:
            best = i
    return times[best], pane.values[signal][best]


def _state_times(
    rule: StateRule, points: list[Point], entry: float | None, start: int, end: int
) -> tuple[dict[MachineState, int], int]:
    """Microseconds in each machine state within [start, end), and transitions into down."""
    spent = dict.fromkeys(MachineState, 0)
    current = rule.classify(entry) if entry is not None else None
    last_known = current
    failures = 0
    since = start
    previous = entry
    for ts, value in points:
        if value == previous:
            continue  # the same reading again: the state holds, nothing to account yet
        previous = value
        state = rule.classify(value)
        if current is not None:
            spent[current] += ts - since
        if state is MachineState.DOWN and last_known is not None and last_known is not state:
            failures += 1
        if state is not None:
            last_known = state
        current, since = state, ts
    if current is not None:
        spent[current] += end - since
    return spent, failures


def _parts(points: list[Point], before: Point | None) -> int:
    """Counter increments over the readings, starting from the reading before the window."""
    previous = before[1] if before is not None else None
    total = 0.0
    for _, value in points:
        if previous is not None:
            total += value - previous if value >= previous else value
        previous = value
    return round(total)
