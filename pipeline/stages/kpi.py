"""The KPI stage: event-time windows over validated frames -> kpi_window records.

Per asset, usable readings (quality GOOD, no flag that makes them unusable) are aggregated
into panes of event time (see `kpi_windows`); tumbling and hopping windows are merges of
panes, and their KPIs follow the conventions in `kpi_aggregate`.

Windows close on watermarks kept per source and per asset: a source's watermark is the newest
event time it sent minus the out-of-orderness, an asset's is the slowest of its sources', so a
device with a fast clock only ever closes its own asset's windows. A window is emitted
(version 1) when the asset's watermark reaches its end. Data for a closed window that arrives
within the allowed lateness goes into the window's panes, which are kept until the lateness
has passed, and the window is re-emitted with the next version if its result changed; the
record is always computed from all the data, so nothing is counted twice. Data later than
that is not counted and shows in `stats.readings_too_late`. `tick(now)` lets the watermark
of a source that has been silent for the idle timeout move on with processing time, so the
windows of an asset that stopped sending still close. A tick looks only at the assets whose
windows it can close (see `ticks`): its cost follows the windows it closes, not the number of
assets, and `tick(now, limit)` takes at most `limit` of them, leaving the rest to the next
tick (`waiting`), so closing every asset's windows at once can be spread over steps.
Given a `LogClock`, processing time is the log time it makes of `now` (see `log_time`): a
worker catching up on a backlog does not take an asset whose frames the backlog spaces out
for a silent one. `emitted_ts` is always `now`.

    kpi = KpiWindows(site)
    records = kpi.add(validated_frame, now)   # windows closed or revised by this frame
    per_frame = kpi.add_frames(frames, now)   # the same for a batch (`Frames`), per frame
    records += kpi.tick(now)                  # e.g. once a second
    records += kpi.tick(now, limit=8)         # or in steps, while kpi.waiting()
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.site import KpiSettings, Site
from pipeline.stages.common import from_micros
from pipeline.stages.frames import Frames
from pipeline.stages.kpi_aggregate import KpiAggregator
from pipeline.stages.kpi_batch import (
    KpiFrameError,
    ReadingGroups,
    SignalIndex,
    pane_for,
    unusable_mask,
)
from pipeline.stages.kpi_state import AssetWindows, EmittedWindow
from pipeline.stages.kpi_windows import (
    SourceClock,
    WatermarkPolicy,
    WindowKey,
    WindowPlan,
)
from pipeline.stages.log_time import LogClock, stage_time
from pipeline.stages.ticks import TickSchedule

USABLE_FLAGS = frozenset({"OUT_OF_EXPECTED_RANGE", "OUT_OF_ORDER"})
"""Flags that leave a reading fit for KPIs: an unusual but real value, and an arrival order
the windows handle themselves. Every other flag keeps the reading out."""

_UNUSABLE = unusable_mask(USABLE_FLAGS)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_KIND_ORDER = {"TUMBLING": 0, "HOPPING": 1}


@dataclass(slots=True)
class KpiStats:
    """Counters since start (not part of the snapshot): for metrics and the demo summary."""

    frames: int = 0
    readings: int = 0
    readings_unusable: int = 0
    """Not GOOD, flagged unusable, not finite, or a signal the asset does not have."""
    readings_too_late: int = 0
    """Usable, but later than the allowed lateness of every window they fall in: not counted."""
    frames_unknown_asset: int = 0
    windows_emitted: int = 0
    windows_revised: int = 0
    """Re-emissions (version > 1) after late data."""
    assets_ticked: int = 0
    """Assets a tick looked at: only those whose windows it could close."""


class KpiWindows:
    """Tumbling and hopping event-time windows of every asset of a site."""

    def __init__(
        self, site: Site, settings: KpiSettings | None = None, log: LogClock | None = None
    ) -> None:
        self.site = site
        self._log = log
        self.settings = settings if settings is not None else site.kpi
        self.plan = WindowPlan(self.settings)
        self.watermarks = WatermarkPolicy.of(self.settings)
        self.stats = KpiStats()
        self._aggregators = {a.id: KpiAggregator(a) for a in site.assets}
        self._known = {a.id: frozenset(a.signals) for a in site.assets}
        self._signals = SignalIndex(site)
        self._assets: dict[str, AssetWindows] = {}
        self._ticks = TickSchedule()

    # --- the stage -----------------------------------------------------------------------

    def add(self, frame: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
        """Take one validated_frame (reading timestamps as aware datetimes or integer
        microseconds); return the kpi_window records it closed or revised."""
        asset_id = frame["asset_id"]
        opened = self._open(asset_id)
        if opened is None:
            return []
        aggregator, state, out = opened
        known = self._known[asset_id]
        timed = aggregator.timed
        plan = self.plan
        pane_us = plan.pane_us
        panes = state.panes
        watermark = state.watermark
        readings = frame["readings"]

        unusable = too_late = 0
        newest: int | None = None
        late_from: int | None = None
        current = -1  # start of the pane the previous reading went to
        pane = None
        is_late = False
        # A frame's readings share a few timestamps (one per scan): convert each once.
        # (Readings built from the worker's columns carry integer microseconds already.)
        micros: dict[datetime | int, int] = {}
        # One pass, no calls per reading: this is the hot path.
        for reading in readings:
            flags = reading["flags"]
            value = reading["value"]
            signal = reading["signal"]
            if (
                reading["quality"] != "GOOD"
                or (flags and not USABLE_FLAGS.issuperset(flags))
                or value - value != 0.0  # NaN or infinite
                or signal not in known
            ):
                unusable += 1
                continue
            when = reading["ts"]
            ts = micros.get(when)
            if ts is None:
                ts = micros[when] = when if type(when) is int else (when - _EPOCH) // _MICROSECOND
            start = ts - ts % pane_us
            if start != current:
                current = start
                pane, is_late = pane_for(panes, start, watermark, plan, aggregator)
            if pane is None:
                too_late += 1
                continue
            if is_late and (late_from is None or ts < late_from):
                late_from = ts
            values = pane.values.get(signal)
            if values is None:
                values = pane.new_series(signal, timed)
            values.append(value)
            if timed and signal in timed:
                pane.times[signal].append(ts)
            if newest is None or ts > newest:
                newest = ts

        counts = (len(readings), unusable, too_late)
        out += self._close(asset_id, state, frame["source_id"], now, counts, newest, late_from)
        return out

    def add_frames(self, frames: Frames, now: datetime) -> list[list[dict[str, Any]]]:
        """Take a batch of validated frames (with flags); return, per frame in batch order,
        the kpi_window records it closed or revised. The records, the state and the stats
        are exactly those of `add` on each frame in turn; the readings' checks and panes are
        worked out for the whole batch at once (see `kpi_batch`).

        KpiFrameError if frame i fails: frames 0..i-1 are applied (their records in the
        error's `done`), frame i may be partly applied, the later ones are not. ValueError,
        before anything is applied, for readings without flags."""
        groups = ReadingGroups.of(frames, self._signals, self.plan.pane_us, _UNUSABLE)
        done: list[list[dict[str, Any]]] = []
        for i, asset_id in enumerate(frames.asset_id):
            try:
                done.append(self._add_groups(groups, i, asset_id, frames.source_id[i], now))
            except Exception as exc:
                raise KpiFrameError(i, done, exc) from exc
        return done

    def tick(self, now: datetime, limit: int | None = None) -> list[dict[str, Any]]:
        """Move the watermarks of sources silent for the idle timeout on with processing time;
        return the windows that closed. Looks only at the assets whose windows can close, at
        most `limit` of them; `waiting` then says whether the next tick has more."""
        now_us = stage_time(self._log, now)
        out: list[dict[str, Any]] = []
        for asset_id, skipped in self._ticks.tick(now_us, limit):
            state = self._assets[asset_id]
            self.stats.assets_ticked += 1
            if skipped is not None:
                out += self._advance(asset_id, state, skipped, from_micros(skipped))
            out += self._advance(asset_id, state, now_us, now)
            self._ticks.due(asset_id, self._due(state))
        return out

    def waiting(self) -> bool:
        """A limited tick left assets whose windows can close: tick again soon. (A frame of
        such an asset closes them first, with the frame's records.)"""
        return self._ticks.waiting()

    # --- state ---------------------------------------------------------------------------

    def assets(self) -> list[str]:
        return list(self._assets)

    def snapshot(self, asset_id: str) -> dict[str, Any] | None:
        state = self._assets.get(asset_id)
        if state is None:
            return None
        self._catch_up(asset_id, state)
        return state.snapshot()

    def restore(self, asset_id: str, state: dict[str, Any]) -> None:
        restored = self._assets[asset_id] = AssetWindows.restore(state)
        self._ticks.add(asset_id)
        self._ticks.due(asset_id, self._due(restored))

    def watermark(self, asset_id: str) -> datetime | None:
        """The asset's watermark (for tests and logs)."""
        state = self._assets.get(asset_id)
        if state is not None:
            self._catch_up(asset_id, state)
        if state is None or state.watermark is None:
            return None
        return _EPOCH + state.watermark * _MICROSECOND

    # --- ticks ---------------------------------------------------------------------------

    def _due(self, state: AssetWindows) -> int | None:
        """The earliest processing time at which a tick can move the asset's watermark
        across a window end or a window's end plus the lateness (nothing else closes or
        expires anything)."""
        if state.watermark is None:
            return None  # no usable reading yet: only data starts the watermark
        return self.watermarks.reaches(state.clocks, self.plan.next_change(state.watermark))

    def _catch_up(self, asset_id: str, state: AssetWindows) -> list[dict[str, Any]]:
        """Apply the latest tick the asset skipped: the watermark of a silent source moved on
        with it (nothing closed, or the tick would not have skipped the asset)."""
        skipped = self._ticks.skipped(asset_id)
        if skipped is None:
            return []
        self._ticks.caught_up(asset_id)
        return self._advance(asset_id, state, skipped, from_micros(skipped))

    # --- frames --------------------------------------------------------------------------

    def _open(
        self, asset_id: str
    ) -> tuple[KpiAggregator, AssetWindows, list[dict[str, Any]]] | None:
        """The asset's aggregator and state (new, or caught up with the ticks it skipped) and
        the records catching up emitted; None, counted, for an asset the site lacks."""
        aggregator = self._aggregators.get(asset_id)
        if aggregator is None:
            self.stats.frames_unknown_asset += 1
            return None
        state = self._assets.get(asset_id)
        if state is None:
            state = self._assets[asset_id] = AssetWindows()
            self._ticks.add(asset_id)
            return aggregator, state, []
        return aggregator, state, self._catch_up(asset_id, state)

    def _add_groups(
        self, groups: ReadingGroups, i: int, asset_id: str, source_id: str, now: datetime
    ) -> list[dict[str, Any]]:
        """`add` for frame i of the batch `groups` was made of."""
        opened = self._open(asset_id)
        if opened is None:
            return []
        aggregator, state, out = opened
        too_late, newest, late_from = groups.apply(
            i, state.panes, state.watermark, self.plan, aggregator
        )
        counts = (groups.readings[i], groups.unusable[i], too_late)
        out += self._close(asset_id, state, source_id, now, counts, newest, late_from)
        return out

    def _close(
        self,
        asset_id: str,
        state: AssetWindows,
        source_id: str,
        now: datetime,
        counts: tuple[int, int, int],
        newest: int | None,
        late_from: int | None,
    ) -> list[dict[str, Any]]:
        """What follows a frame's readings: count them (`counts`: readings, unusable, too
        late), move the source's clock to `newest` (the newest event time counted), re-emit
        the windows late data from `late_from` on changed, move the watermark and schedule
        the asset's next tick; return the records emitted."""
        stats = self.stats
        stats.frames += 1
        stats.readings += counts[0]
        stats.readings_unusable += counts[1]
        stats.readings_too_late += counts[2]

        now_us = stage_time(self._log, now)
        if newest is not None:
            clock = state.clocks.get(source_id)
            if clock is None:
                state.clocks[source_id] = SourceClock(newest, now_us)
            else:
                clock.max_ts = max(clock.max_ts, newest)
                clock.last_arrival = now_us
        out: list[dict[str, Any]] = []
        if late_from is not None:
            out += self._revise(asset_id, state, late_from, now)
        out += self._advance(asset_id, state, now_us, now)
        self._ticks.due(asset_id, self._due(state))
        return out

    # --- windows -------------------------------------------------------------------------

    def _advance(
        self, asset_id: str, state: AssetWindows, now_us: int, now: datetime
    ) -> list[dict[str, Any]]:
        """Move the asset's watermark; emit the windows it closed, forget what expired."""
        old = state.watermark
        new = self.watermarks.asset_watermark(state.clocks, old, now_us)
        if new is None or new == old:
            return []
        state.watermark = new
        plan = self.plan
        if old is not None and not _crossed(old, new, plan.pane_us, plan.lateness_us):
            return []  # windows end on pane boundaries: nothing can close or expire
        closing: set[WindowKey] = set()
        for start in state.panes:
            for key in plan.windows_of_pane(start):
                if (old is None or key[2] > old) and key[2] <= new:
                    closing.add(key)
        out = self._emit(asset_id, state, sorted(closing, key=_window_order), now)

        timed = self._aggregators[asset_id].timed
        for start in sorted(state.panes):
            if plan.expires(start) > new:
                break
            state.drop_pane(start, timed)
        for key in [k for k in state.emitted if k[2] + plan.lateness_us <= new]:
            del state.emitted[key]
        return out

    def _revise(
        self, asset_id: str, state: AssetWindows, late_from: int, now: datetime
    ) -> list[dict[str, Any]]:
        """Re-emit the closed, still open-to-late-data windows that late data from event time
        `late_from` on may have changed (its state and counter readings also change the
        start of later windows); `_emit` keeps only those whose result did change."""
        watermark = state.watermark
        if watermark is None:
            return []
        lateness = self.plan.lateness_us
        keys = {
            key
            for start in state.panes
            for key in self.plan.windows_of_pane(start)
            if late_from < key[2] <= watermark < key[2] + lateness
        }
        return self._emit(asset_id, state, sorted(keys, key=_window_order), now)

    def _emit(
        self, asset_id: str, state: AssetWindows, keys: list[WindowKey], now: datetime
    ) -> list[dict[str, Any]]:
        """Records for the windows whose result differs from what was last emitted."""
        aggregator = self._aggregators[asset_id]
        asset = self.site.asset(asset_id)
        out = []
        for key in keys:
            _, start, end = key
            panes = [state.panes[p] for p in self.plan.panes_of(start, end) if p in state.panes]
            if not panes:
                continue
            result = aggregator.result(panes, state.before(start, aggregator.timed), start, end)
            fingerprint = result.fingerprint()
            emitted = state.emitted.get(key)
            if emitted is not None and emitted.fingerprint == fingerprint:
                continue
            version = 1 if emitted is None else emitted.version + 1
            state.emitted[key] = EmittedWindow(version, fingerprint)
            out.append(result.record(asset, key, version, now))
            self.stats.windows_emitted += 1
            if version > 1:
                self.stats.windows_revised += 1
        return out


def _crossed(old: int, new: int, pane_us: int, lateness_us: int) -> bool:
    """Whether the watermark passed a window end or a window's end plus the lateness."""
    return new // pane_us != old // pane_us or (
        (new - lateness_us) // pane_us != (old - lateness_us) // pane_us
    )


def _window_order(key: WindowKey) -> tuple[int, int]:
    return _KIND_ORDER[key[0]], key[1]
