"""The alert stage: state estimates, validated frames, anomaly scores and KPI windows in,
alert_event records (twin.alerts) out, one message per state change of an alert.

Rules come from the site file (`pipeline.site.alerts`). An alert is one (asset, rule) with
the stable id "<asset_id>:<rule_id>"; its events are RAISED, then UPDATED any number of
times, then CLEARED, and again: never two RAISED without a CLEARED between, never a CLEARED
for an alert that is not raised. Two rules on one signal (hot, overheat) are two alerts.

Where the evidence comes from:

- **threshold** rules read the Kalman-filtered level of the signal from `on_state`, and only
  when a usable reading updated it (`measured`): the estimate carries no spikes, so one noisy
  reading does not raise, and a data gap or a BAD reading neither raises nor clears. An
  alert is raised when the level stayed beyond a limit for `min_duration` of event time
  (a rule with both limits alerts on either side) and cleared when it is back inside by
  `clear_hysteresis`.
- **stale** rules: see `alerts_stale`. `on_frame` is the better source of freshness: it sees
  each reading with its own time and quality, and an outlier the estimator rejects still
  shows a live sensor. `on_state` refreshes too (a signal with `measured` true, at the
  estimate's time), so either wiring works; with both, the later reading counts. `tick`
  raises stale alerts of assets that stopped sending entirely; it looks only at the assets
  where it can change something (see `ticks`), so its cost does not grow with the number of
  assets.
- **anomaly** rules read `on_anomaly`: the condition is `is_anomaly`, or `score >
  score_above` when the rule sets it, for `min_duration`; scores of a warming-up model are
  no evidence.
- **kpi_floor** rules read closed TUMBLING windows from `on_kpi` (hopping windows overlap and
  are ignored). The latest `min_windows` windows with a defined KPI must all be below the
  floor; one window at or above floor + `clear_hysteresis` clears. A re-emitted window
  (higher version) replaces its earlier version; a version already seen is ignored.

Against noise (chattering), three things, all in event time except the rate limit:
1. hysteresis and `min_duration` from the rule;
2. an off-delay: a threshold or anomaly alert clears only once its clear condition held for
   `AlertSettings.clear_hold` (so a value dipping in and out does not clear at all);
3. a re-raise holdoff: after a CLEARED the alert is not raised again for
   `AlertSettings.reraise_holdoff`; a condition still present when it ends is raised then.
   Delaying the re-raise (rather than the clear) keeps every CLEARED on time, so the
   consumer's view is never more alarming than the data, and it bounds an oscillating
   signal to one RAISED/CLEARED pair per holdoff. Held-back raises are counted (`held_back`).

UPDATED events (a material change of value, a change of side, of the set of stale signals,
of the model version, or of the rule's severity) are limited per asset to
`max_events_per_minute` in processing time, which is what protects a consumer from a storm;
suppressed ones are counted in `suppressed`. RAISED and CLEARED are never suppressed.

Processing time, for the stale rules, the unwatched gap, the ticks and the rate limit, is
the wall clock `now` the methods take, or, given a `LogClock`, the log time it makes of that
(see `log_time`): a worker catching up on a backlog then judges silence as it would have
live, rather than raising a stale alert for every asset whose frames the backlog spaces
out. `emitted_ts` is always the wall clock.

Event `ts` is the event time of the data that caused the transition (the state estimate's
ts, the score's ts, the window's end; for stale alerts the asset's event time when the change
was seen, see `alerts_stale`); `raised_ts` that of the RAISED; `emitted_ts` is `now`.

A record of a kind no rule of its asset reads costs next to nothing (an asset without stale
rules keeps no freshness, so its validated frames are not even read). A worker that has a
frame's usable reading times, state estimate and anomaly score at once passes them in one
call (`on_frame_records`), which does what the three calls would, for less.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pipeline.errors import TwinError
from pipeline.site import AnomalyRule, Asset, KpiFloorRule, Site, StaleRule, ThresholdRule
from pipeline.stages.alerts_emit import Emitter, micros
from pipeline.stages.alerts_rules import anomaly, kpi_floor, record_window, threshold
from pipeline.stages.alerts_settings import AlertCounters, AlertSettings
from pipeline.stages.alerts_stale import (
    StaleWatch,
    known_levels,
    look,
    observe,
    stale,
    usable_readings,
)
from pipeline.stages.alerts_state import AssetAlerts, Timing
from pipeline.stages.alerts_times import FrameTimes
from pipeline.stages.common import from_micros, to_micros
from pipeline.stages.log_time import LogClock, stage_time
from pipeline.stages.ticks import DUE_NOW, TickSchedule

__all__ = ["AlertCounters", "AlertEngine", "AlertError", "AlertSettings"]

_R = TypeVar("_R")
Handler = Callable[[Asset, AssetAlerts, "Emitter", Any], "int | None"]
"""Applies one record; returns when a tick next has work for the asset (`stale`), if the
record may have brought that forward."""


class AlertError(TwinError):
    """A record the alert stage cannot read (a field missing or of the wrong type)."""


@dataclass(frozen=True, slots=True)
class _AssetRules:
    """The rules covering one asset, by kind."""

    ids: frozenset[str]
    threshold: tuple[ThresholdRule, ...]
    stale: tuple[StaleWatch, ...]
    anomaly: tuple[AnomalyRule, ...]
    kpi_floor: tuple[KpiFloorRule, ...]
    windows_kept: int
    """Recent KPI windows to keep: enough for the longest run, with room for gaps."""
    threshold_signals: frozenset[str]
    reads: frozenset[str]
    """Record types with work for the asset's rules: stale rules need every record (each
    says the stage looked at the asset), the others only their own kind."""


class AlertEngine:
    """Alert lifecycles of every asset of a site; state per asset via `snapshot`/`restore`.

    Every method returns the alert_event records (dicts) it produced, in order.
    """

    def __init__(
        self, site: Site, settings: AlertSettings | None = None, log: LogClock | None = None
    ) -> None:
        self.site = site
        self._log = log
        self.settings = settings if settings is not None else AlertSettings()
        self.counters = AlertCounters()
        self._assets: dict[str, AssetAlerts] = {}
        self._rules = {asset.id: _rules_of(site, asset) for asset in site.assets}
        self._gap_us = micros(self.settings.unwatched_gap.total_seconds())
        # A pause between ticks longer than the unwatched gap is excused per asset: such a
        # tick must look at every asset, as the one after a restart does.
        self._ticks = TickSchedule(max_gap_us=self._gap_us)
        self._timings: dict[tuple[float, bool], Timing] = {}
        self._unchecked: set[str] = set()
        """Restored assets whose alerts may belong to rules no longer in the site file."""

    @property
    def suppressed(self) -> int:
        """UPDATED events dropped by the per-asset rate limit since start."""
        return self.counters.suppressed

    # --- the stage -----------------------------------------------------------------------

    def on_state(self, state: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
        """Threshold rules on the filtered levels of measured signals; refreshes freshness."""
        return self._guard("state_estimate", state, now, self._on_state)

    def on_frame(self, frame: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
        """Stale rules, from the usable readings of one validated frame."""
        return self._guard("validated_frame", frame, now, self._on_frame)

    def on_frame_times(
        self, asset_id: str, times: FrameTimes, now: datetime
    ) -> list[dict[str, Any]]:
        """`on_frame` for a frame the worker reduced with `alerts_times.frame_times`."""
        return self._guard(
            "validated_frame", {"asset_id": asset_id, "times": times}, now, self._on_times
        )

    def on_anomaly(self, score: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
        """Anomaly rules, from one anomaly_score record."""
        return self._guard("anomaly_score", score, now, self._on_anomaly)

    def on_frame_records(
        self,
        asset_id: str,
        times: FrameTimes,
        state: dict[str, Any],
        score: dict[str, Any],
        now: datetime,
    ) -> list[dict[str, Any]]:
        """What a worker has of one frame, in one call: `on_frame_times(asset_id, times, now)`,
        `on_state(state, now)` and `on_anomaly(score, now)`, with the same events in the same
        order, the same state and counters afterwards, and the same errors.

        Cheaper, as the three come at the same `now`: the asset is looked up and caught up
        once, with one emitter for its events. The estimate's measured signals usually say
        nothing about liveness that the frame did not (`known_levels`); then the stale rules,
        evaluated after the frame, are not evaluated again after the estimate, as they would
        come to the same result. Records that are not all of one known asset go through
        the three calls."""
        asset = self.site.get_asset(asset_id) if isinstance(asset_id, str) else None
        if (
            asset is None
            or not isinstance(state, dict)
            or not isinstance(score, dict)
            or state.get("asset_id") != asset_id
            or score.get("asset_id") != asset_id
        ):
            # Not three records of one known asset: each call says what is wrong with its own.
            out = self.on_frame_times(asset_id, times, now)
            out += self.on_state(state, now)
            return out + self.on_anomaly(score, now)
        rules = self._rules[asset.id]
        # Which of the three `_guard` lets through. A restored asset is checked by the first
        # that comes through; only the frame can be the first.
        frame = "validated_frame" in rules.reads or asset.id in self._unchecked
        estimate = "state_estimate" in rules.reads
        scored = "anomaly_score" in rules.reads
        if not (frame or estimate or scored):
            return []
        now_us = stage_time(self._log, now)
        alerts, out = self._open(asset, now_us)
        emit = self._emitter(asset, alerts, now, now_us)
        suppressed = self.counters.suppressed
        reading = "validated_frame"
        try:
            if frame:
                self._ticks.due(asset.id, self._observe_times(asset, alerts, emit, times))
            reading = "state_estimate"
            if estimate:
                # With stale rules, the frame came through (it did the stale rules' `look` at
                # `now` too, so the score need not). If the frame's evaluation of the stale
                # rules held an UPDATED back, the estimate's tries it again, and counts it.
                again = not rules.stale or self.counters.suppressed != suppressed
                self._ticks.due(asset.id, self._on_state(asset, alerts, emit, state, again))
            reading = "anomaly_score"
            if scored:
                self._anomalies(asset, emit, score)
        except _UNREADABLE as exc:
            raise _unreadable(reading, asset, exc) from exc
        return out + emit.out if out else emit.out

    def on_kpi(self, window: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
        """KPI-floor rules, from one kpi_window record (TUMBLING windows only)."""
        return self._guard("kpi_window", window, now, self._on_kpi)

    def tick(self, now: datetime) -> list[dict[str, Any]]:
        """Stale rules by processing time, for the assets where they can change something.
        (With a log clock, a tick while log time stands still takes no asset.)"""
        now_us = stage_time(self._log, now)
        out: list[dict[str, Any]] = []
        for asset_id, skipped in self._ticks.tick(now_us):
            asset = self.site.get_asset(asset_id)
            if asset is None:
                continue
            state = self._assets[asset_id]
            if skipped is not None:
                out += self._look(asset, state, from_micros(skipped), skipped, skipped=True)
            out += self._look(asset, state, now, now_us)
            self.counters.assets_ticked += 1
        return out

    # --- state ---------------------------------------------------------------------------

    def assets(self) -> list[str]:
        return list(self._assets)

    def snapshot(self, asset_id: str) -> dict[str, Any] | None:
        state = self._assets.get(asset_id)
        if state is None:
            return None
        asset = self.site.get_asset(asset_id)
        if asset is not None:
            # Nothing to emit: a tick that had something would not have skipped the asset.
            self._catch_up(asset, state)
        return state.snapshot()

    def restore(self, asset_id: str, state: dict[str, Any]) -> None:
        """Take a `snapshot`; StageStateError if it is not one."""
        self._assets[asset_id] = AssetAlerts.restore(state)
        self._ticks.add(asset_id)
        self._ticks.due(asset_id, DUE_NOW)  # the time since the snapshot may be excused
        self._unchecked.add(asset_id)

    # --- per record ----------------------------------------------------------------------

    def _on_state(
        self, asset: Asset, state: AssetAlerts, emit: Emitter, record: Any, again: bool = True
    ) -> int | None:
        """`again` False: called right after `_observe_times` at the same `now`, whose
        evaluation of the stale rules held no UPDATED back. If the estimate then says nothing
        new about liveness (`known_levels`), the stale rules are not evaluated again: on the
        same freshness at the same `now` they would do nothing and give the due time they
        gave then, which the tick schedule has already."""
        t_us = to_micros(record["ts"])
        rules = self._rules[asset.id]
        if not again:
            known = known_levels(
                state, record["signals"], t_us, emit.now_us, rules.threshold_signals
            )
            if known is not None:
                self._thresholds(emit, rules, known, t_us)
                return None
        if rules.stale:
            levels = {
                s["signal"]: s["value"]
                for s in record["signals"]
                if s["measured"] and math.isfinite(s["value"])
            }
            observe(state, asset, t_us, dict.fromkeys(levels, t_us), emit.now_us, self._gap_us)
        else:
            wanted = rules.threshold_signals
            levels = {
                s["signal"]: s["value"]
                for s in record["signals"]
                if s["signal"] in wanted and s["measured"] and math.isfinite(s["value"])
            }
        self._thresholds(emit, rules, levels, t_us)
        return _stale_rules(emit, rules)

    def _thresholds(
        self, emit: Emitter, rules: _AssetRules, levels: dict[str, Any], t_us: int
    ) -> None:
        for rule in rules.threshold:
            level = levels.get(rule.signal)
            if level is not None:
                threshold(emit, rule, t_us, float(level))

    def _on_frame(self, asset: Asset, state: AssetAlerts, emit: Emitter, record: Any) -> int | None:
        times = usable_readings(record["readings"])
        return self._observe_times(asset, state, emit, times)

    def _on_times(self, asset: Asset, state: AssetAlerts, emit: Emitter, record: Any) -> int | None:
        return self._observe_times(asset, state, emit, record["times"])

    def _observe_times(
        self, asset: Asset, state: AssetAlerts, emit: Emitter, times: FrameTimes
    ) -> int | None:
        newest, fresh = times
        observe(state, asset, newest, fresh, emit.now_us, self._gap_us)
        return _stale_rules(emit, self._rules[asset.id])

    def _on_anomaly(
        self, asset: Asset, state: AssetAlerts, emit: Emitter, record: Any
    ) -> int | None:
        if self._rules[asset.id].stale:
            look(state, emit.now_us, self._gap_us)
        self._anomalies(asset, emit, record)
        return None

    def _anomalies(self, asset: Asset, emit: Emitter, record: Any) -> None:
        t_us = to_micros(record["ts"])
        for rule in self._rules[asset.id].anomaly:
            anomaly(emit, rule, record, t_us)

    def _on_kpi(self, asset: Asset, state: AssetAlerts, emit: Emitter, record: Any) -> int | None:
        rules = self._rules[asset.id]
        if rules.stale:
            look(state, emit.now_us, self._gap_us)
        if record["window_kind"] != "TUMBLING" or not rules.kpi_floor:
            return None
        start, end = to_micros(record["window_start"]), to_micros(record["window_end"])
        if not record_window(state.windows, record, start, end, rules.windows_kept):
            self.counters.stale_records += 1
            return None
        for rule in rules.kpi_floor:
            kpi_floor(emit, rule)
        return None

    # --- ticks ---------------------------------------------------------------------------

    def _look(
        self, asset: Asset, state: AssetAlerts, now: datetime, now_us: int, skipped: bool = False
    ) -> list[dict[str, Any]]:
        """What a tick does for one asset: its stale rules by processing time. Sets when the
        next tick has work for the asset.

        A tick the asset `skipped` was regular, as were those before it that the asset
        skipped: each came within the unwatched gap of the one before, so none of them
        excused any time. It had nothing to do (or it would not have been skipped), so the
        asset's due time stands."""
        rules = self._rules[asset.id]
        if rules.stale:
            if not skipped:
                look(state, now_us, self._gap_us)
            elif state.watched_us is None or now_us > state.watched_us:
                state.watched_us = now_us
        emit = self._emitter(asset, state, now, now_us)
        due = _stale_rules(emit, rules)
        if not skipped:
            self._ticks.due(asset.id, due)
        return emit.out

    def _catch_up(self, asset: Asset, state: AssetAlerts) -> list[dict[str, Any]]:
        """Apply the latest tick that skipped the asset (it was due for nothing, so this only
        updates when the stage last looked, and the alerts' latest event time)."""
        skipped = self._ticks.skipped(asset.id)
        if skipped is None:
            return []
        self._ticks.caught_up(asset.id)
        return self._look(asset, state, from_micros(skipped), skipped, skipped=True)

    # --- plumbing ------------------------------------------------------------------------

    def _guard(
        self,
        record_type: str,
        record: dict[str, Any],
        now: datetime,
        handle: Handler,
    ) -> list[dict[str, Any]]:
        asset_id = record.get("asset_id") if isinstance(record, dict) else None
        asset = self.site.get_asset(asset_id) if isinstance(asset_id, str) else None
        if asset is None:
            if asset_id is None:
                raise AlertError(f"alerts: {record_type} record without asset_id: {record!r:.200}")
            self.counters.unknown_assets += 1
            return []
        if record_type not in self._rules[asset.id].reads and asset.id not in self._unchecked:
            return []
        now_us = stage_time(self._log, now)
        state, out = self._open(asset, now_us)
        emit = self._emitter(asset, state, now, now_us)
        try:
            due = handle(asset, state, emit, record)
        except _UNREADABLE as exc:
            raise _unreadable(record_type, asset, exc) from exc
        self._ticks.due(asset.id, due)
        return out + emit.out if out else emit.out

    def _open(self, asset: Asset, now_us: int) -> tuple[AssetAlerts, list[dict[str, Any]]]:
        """The asset's state, up to date with the ticks, and the events catching up gave."""
        state = self._assets.get(asset.id)
        if state is not None:
            return state, self._catch_up(asset, state)
        state = self._assets[asset.id] = AssetAlerts()
        self._ticks.add(asset.id)
        last_tick = self._ticks.last_us
        if last_tick is not None and now_us < last_tick:
            # Looked at before the latest tick's time: the next tick may have to excuse
            # the time since, so it must look.
            self._ticks.due(asset.id, DUE_NOW)
        return state, []

    def _emitter(self, asset: Asset, state: AssetAlerts, now: datetime, now_us: int) -> Emitter:
        emit = Emitter(asset, state, now, now_us, self.settings, self.counters, self._timings)
        if asset.id in self._unchecked:
            self._unchecked.discard(asset.id)
            self._clear_orphans(emit)
        return emit

    def _clear_orphans(self, emit: Emitter) -> None:
        """Clear the alerts of rules that no longer cover the asset (a site file changed
        between a snapshot and its restore), so no alert stays open for ever."""
        state = emit.state
        ids = self._rules[emit.asset.id].ids
        for rule_id in [r for r in state.alerts if r not in ids]:
            alert = state.alerts.pop(rule_id)
            if alert.active and alert.kind:
                t_us = alert.last_us if alert.last_us is not None else emit.now_us
                emit.cleared(
                    rule_id,
                    alert,
                    t_us,
                    message=f"{emit.asset.id}: rule {rule_id} is no longer in the site file",
                )


_UNREADABLE = (KeyError, TypeError, ValueError, AttributeError)
"""What reading a malformed record raises."""


def _unreadable(record_type: str, asset: Asset, exc: Exception) -> AlertError:
    return AlertError(f"alerts: cannot read {record_type} record of asset {asset.id}: {exc!r}")


def _stale_rules(emit: Emitter, rules: _AssetRules) -> int | None:
    """Evaluate the asset's stale rules; when a tick next has work for them."""
    due = None
    for watch in rules.stale:
        at = stale(emit, watch)
        if at is not None and (due is None or at < due):
            due = at
    return due


def _rules_of(site: Site, asset: Asset) -> _AssetRules:
    rules = site.rules_for(asset.id)
    kpi = _of(rules, KpiFloorRule)
    longest = max((r.min_windows for r in kpi), default=0)
    thresholds = _of(rules, ThresholdRule)
    stale_rules = _of(rules, StaleRule)
    anomalies = _of(rules, AnomalyRule)
    reads = {
        "state_estimate": bool(thresholds or stale_rules),
        "validated_frame": bool(stale_rules),
        "anomaly_score": bool(anomalies or stale_rules),
        "kpi_window": bool(kpi or stale_rules),
    }
    return _AssetRules(
        ids=frozenset(r.id for r in rules),
        threshold=thresholds,
        stale=tuple(StaleWatch.of(asset, r) for r in stale_rules),
        anomaly=anomalies,
        kpi_floor=kpi,
        windows_kept=2 * longest + 4,
        threshold_signals=frozenset(r.signal for r in thresholds),
        reads=frozenset(kind for kind, read in reads.items() if read),
    )


def _of(rules: tuple[Any, ...], kind: type[_R]) -> tuple[_R, ...]:
    return tuple(r for r in rules if isinstance(r, kind))
