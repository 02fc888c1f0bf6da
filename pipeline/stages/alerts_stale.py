"""Stale-signal rules: which readings keep a signal fresh, and when it has gone stale.

Per signal the stage keeps the event time of the latest usable reading and the processing
time it arrived. A signal is stale when either age reached the rule's `after`:

- by event time: the asset's newest event time (from any of its signals, usable or not)
  minus the signal's latest usable reading: a frame arrives whose other readings are fresh
  but this signal's are missing, BAD or frozen;
- by processing time: `now` minus the arrival of the signal's latest usable reading: the
  asset stopped sending entirely, so no frame arrives to show it (seen by `tick`).

Processing time during which the stage itself did not look at the asset (longer than
`AlertSettings.unwatched_gap`: a restart, a paused worker) is not counted as silence, so a
worker that resumes after a minute does not raise every stale alert it owns before it has
read the backlog.

An event's `ts` is the asset's event time when the change was seen: its newest event time,
advanced by the processing time since that arrived (which only matters for `tick`).

Evaluating a rule also tells when a tick can next change its outcome (`stale` returns it):
the moment the next watched signal's silence reaches `after`, or the end of a re-raise
holdoff; until then the stage's ticks leave the asset alone (see `ticks`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.site import ALL_SIGNALS, Asset, OpcUaSignalBinding, StaleRule
from pipeline.stages.alerts_emit import Emitter, micros
from pipeline.stages.alerts_events import base_context, seconds
from pipeline.stages.alerts_state import AssetAlerts, Step
from pipeline.stages.common import to_micros
from pipeline.stages.ticks import DUE_NOW

FRESHNESS_UNUSABLE = frozenset(
    {
        "NOT_FINITE",
        "OUT_OF_PHYSICAL_RANGE",
        "STALE",
        "FUTURE_TIMESTAMP",
        "TOO_OLD",
        "DUPLICATE",
        "UNKNOWN_SIGNAL",
        "DEVICE_BAD",
        "DEVICE_UNCERTAIN",
    }
)
"""Flags of a reading that does not show a live sensor: broken, frozen (the validator's
STALE), untimely, repeated, or a value the device itself only vouches for as a last usable
one. The validator's own suspicions (rate of change, expected range, order) still show a
live sensor."""

UNTRUSTED_TIME = frozenset({"FUTURE_TIMESTAMP", "TOO_OLD"})


def watched_signals(asset: Asset, rule: StaleRule) -> tuple[str, ...]:
    """The signals a stale rule watches on an asset. `all` leaves out signals reported by
    exception (an OPC UA deadband): their silence means an unchanged value, not a dead
    sensor; a rule naming such a signal still watches it."""
    if rule.signal != ALL_SIGNALS:
        return (rule.signal,)
    return tuple(
        name
        for name, signal in asset.signals.items()
        if not (isinstance(signal.binding, OpcUaSignalBinding) and signal.binding.deadband)
    )


@dataclass(frozen=True, slots=True)
class StaleWatch:
    """A stale rule as it applies to one asset."""

    rule: StaleRule
    signals: tuple[str, ...]
    """The watched signals (`watched_signals`)."""
    after_us: int

    @classmethod
    def of(cls, asset: Asset, rule: StaleRule) -> StaleWatch:
        return cls(rule, watched_signals(asset, rule), micros(rule.after.total_seconds()))


def usable_readings(readings: Iterable[dict[str, Any]]) -> tuple[int | None, dict[str, int]]:
    """A validated frame's newest trusted event time, and per signal the event time of its
    newest reading that shows a live sensor."""
    newest: datetime | None = None
    fresh: dict[str, datetime] = {}
    # Compared as datetimes (exact, like their microseconds); only the few results are
    # converted. Most readings have no flags at all.
    for reading in readings:
        ts = reading["ts"]
        flags = reading["flags"]
        if flags:
            if UNTRUSTED_TIME.isdisjoint(flags) and (newest is None or ts > newest):
                newest = ts
            if not FRESHNESS_UNUSABLE.isdisjoint(flags):
                continue
        elif newest is None or ts > newest:
            newest = ts
        value = reading["value"]
        if reading["quality"] == "BAD" or value - value != 0.0:  # or NaN or infinite
            continue
        signal = reading["signal"]
        seen = fresh.get(signal)
        if seen is None or ts > seen:
            fresh[signal] = ts
    micros_of: dict[datetime, int] = {}
    for ts in fresh.values():
        if ts not in micros_of:
            micros_of[ts] = to_micros(ts)
    return (
        None if newest is None else to_micros(newest),
        {signal: micros_of[ts] for signal, ts in fresh.items()},
    )


def observe(
    state: AssetAlerts,
    asset: Asset,
    newest: int | None,
    fresh: dict[str, int],
    now_us: int,
    unwatched_gap_us: int,
) -> None:
    """Take what one record says about the asset's liveness."""
    look(state, now_us, unwatched_gap_us)
    if newest is not None and (state.clock_us is None or newest >= state.clock_us):
        state.clock_us = newest
        state.clock_arrival_us = now_us
    if not state.fresh:
        if state.clock_us is None:
            return  # nothing with a trusted time yet: freshness starts with the first
        # First sight of the asset: a signal that never reports goes stale `after` from now.
        for name in asset.signals:
            state.fresh[name] = [state.clock_us, now_us]
    for name, t_us in fresh.items():
        entry = state.fresh.get(name)
        if entry is None:
            continue  # a signal the asset does not have
        if t_us >= entry[0]:
            entry[0] = t_us
        entry[1] = now_us


def known_levels(
    state: AssetAlerts,
    signals: Iterable[dict[str, Any]],
    t_us: int,
    now_us: int,
    wanted: frozenset[str],
) -> dict[str, Any] | None:
    """The filtered levels of a state estimate's measured `wanted` signals, if its liveness is
    already known: if `observe` of it (event time `t_us`, its measured signals with a finite
    level fresh at `t_us`, at `now_us`) would change nothing. None if it would.

    That is so when the stage already looked at the asset at `now_us` or later, its
    freshness has started, the estimate does not move the asset's clock on, and each signal
    it measured already has a usable reading at least as new that arrived at `now_us`: as
    usually after `observe` of the frame the estimate came from, which holds those readings.
    The signals are read in the order the alert stage reads them for `observe` (measured,
    level, name), so a malformed one fails here as it fails there."""
    watched, clock = state.watched_us, state.clock_us
    if watched is None or watched < now_us or clock is None or not state.fresh:
        return None
    if t_us > clock or (t_us == clock and state.clock_arrival_us != now_us):
        return None
    entry_of, isfinite = state.fresh.get, math.isfinite
    levels: dict[str, Any] = {}
    for s in signals:
        if s["measured"]:
            value = s["value"]
            if isfinite(value):
                name = s["signal"]
                entry = entry_of(name)
                if entry is not None and (entry[0] < t_us or entry[1] != now_us):
                    return None
                if name in wanted:
                    levels[name] = value
    return levels


def look(state: AssetAlerts, now_us: int, unwatched_gap_us: int) -> None:
    """Note that the stage looks at the asset now; excuse the time it did not."""
    if state.watched_us is not None:
        gap = now_us - state.watched_us
        if gap > unwatched_gap_us:
            for entry in state.fresh.values():
                entry[1] += gap
            if state.clock_arrival_us is not None:
                state.clock_arrival_us += gap
    if state.watched_us is None or now_us > state.watched_us:
        state.watched_us = now_us


def stale(emit: Emitter, watch: StaleWatch) -> int | None:
    """Evaluate one stale rule on the asset's freshness. Returns the earliest processing
    time at which a tick can change the outcome, if the asset sends nothing more (`DUE_NOW`:
    the next tick; None: not by processing time alone)."""
    state = emit.state
    if state.clock_us is None or not state.fresh:
        return None
    rule, after = watch.rule, watch.after_us
    clock = state.clock_us
    now_us = emit.now_us
    arrival = state.clock_arrival_us if state.clock_arrival_us is not None else now_us
    t_us = clock + max(0, now_us - arrival)
    silent: dict[str, int] = {}
    quiet_since: int | None = None  # the earliest arrival among the signals not silent
    fresh = state.fresh
    for name in watch.signals:
        entry = fresh.get(name)
        if entry is None:
            continue
        age = max(clock - entry[0], now_us - entry[1])
        if age >= after:
            silent[name] = age
        elif quiet_since is None or entry[1] < quiet_since:
            quiet_since = entry[1]
    # The next signal to go silent, by processing time: a raise, or a change of the set.
    next_silent = None if quiet_since is None else quiet_since + after
    alert = state.alert(rule.id)
    timing = emit.timing(clear_hold=False)
    step, t_us = alert.advance(t_us, bool(silent), not silent, timing)
    emit.held(step)
    if step is Step.HELD or (step is Step.QUIET and silent):
        # Held back by the re-raise holdoff: raised once the asset's event time, moving on
        # with processing time, reaches the holdoff's end.
        if alert.cleared_us is None:
            return DUE_NOW
        return arrival + alert.cleared_us + timing.holdoff - clock
    if step is Step.QUIET:
        return next_silent
    if step is Step.CLEARING:
        return DUE_NOW  # not with a clear hold of 0; look again at the next tick if so

    names = sorted(silent)
    detail = ",".join(names)
    one = rule.signal if rule.signal != ALL_SIGNALS else None
    context = base_context(emit.asset, rule) | {"after_s": f"{rule.after.total_seconds():g}"}
    if names:
        context["stale_signals"] = detail
    what = _signals(names, rule)
    if step is Step.RAISE:
        message = (
            f"{emit.asset.id}: no usable reading of {what} for {seconds(max(silent.values()))} "
            f"(limit {seconds(after)})"
        )
        emit.raised(
            rule,
            alert,
            t_us,
            message=message,
            value=None,
            detail=detail,
            signal=one,
            context=context,
        )
    elif step is Step.CLEAR:
        raised_us = alert.raised_us if alert.raised_us is not None else t_us
        message = (
            f"{emit.asset.id}: readings of {_signals(alert.detail.split(','), rule)} are back "
            f"(stale for {seconds(t_us - raised_us)})"
        )
        emit.cleared(rule.id, alert, t_us, message=message, signal=one, context=context)
    elif emit.changed(rule, alert, None, detail, 0.0):
        message = f"{emit.asset.id}: no usable reading of {what} (limit {seconds(after)})"
        emit.updated(
            rule,
            alert,
            t_us,
            message=message,
            value=None,
            detail=detail,
            signal=one,
            context=context,
        )
    if alert.active and emit.changed(rule, alert, None, detail, 0.0):
        return DUE_NOW  # an UPDATED the rate limit held back: try again at the next tick
    return next_silent


def _signals(names: list[str], rule: StaleRule) -> str:
    if rule.signal != ALL_SIGNALS or len(names) == 1:
        return names[0] if names else rule.signal
    return f"{len(names)} signals ({', '.join(names)})"
