"""Threshold, anomaly and KPI-floor rules: evidence in, lifecycle steps and events out."""

from __future__ import annotations

from typing import Any

from pipeline.site import AnomalyRule, KpiFloorRule, ThresholdRule
from pipeline.stages.alerts_emit import Emitter
from pipeline.stages.alerts_events import base_context, number, percent, seconds, with_unit
from pipeline.stages.alerts_state import KpiEntry, Step
from pipeline.stages.common import from_micros

ABOVE, BELOW = "above", "below"


# --- threshold -------------------------------------------------------------------------------


def threshold(emit: Emitter, rule: ThresholdRule, t_us: int, value: float) -> None:
    """Apply one filtered level of the rule's signal (only measured levels reach here)."""
    alert = emit.state.alert(rule.id)
    above = rule.raise_above is not None and value > rule.raise_above
    below = rule.raise_below is not None and value < rule.raise_below
    side = ABOVE if above else BELOW if below else alert.detail
    back = False
    if alert.active:
        # Back inside, by the hysteresis, on the side that raised; the other limit's side
        # is not "back" (a jump across the band moves the alert to that side instead).
        h = rule.clear_hysteresis
        if alert.detail == ABOVE and rule.raise_above is not None:
            back = value <= rule.raise_above - h and not below
        elif rule.raise_below is not None:
            back = value >= rule.raise_below + h and not above
    since = alert.since_us
    step, t_us = alert.advance(t_us, above or below, back, emit.timing(_s(rule.min_duration)))
    emit.held(step)
    if step in (Step.QUIET, Step.HELD, Step.CLEARING):
        return

    signal = emit.asset.signal(rule.signal)
    unit = signal.unit
    limit = _limit(rule, side)
    fields: dict[str, Any] = {"signal": rule.signal, "value": value, "threshold": limit}
    context = base_context(emit.asset, rule) | {
        "side": side,
        "hysteresis": number(rule.clear_hysteresis),
        "min_duration_s": number(_s(rule.min_duration)),
        "unit": unit,
    }
    name = f"{emit.asset.id} {rule.signal}"
    if step is Step.RAISE:
        message = (
            f"{name} {with_unit(value, unit)}, {side} the {with_unit(limit, unit)} limit"
            f"{_lasting(since, t_us)}"
        )
        emit.raised(rule, alert, t_us, message=message, detail=side, context=context, **fields)
        return
    raised_us = alert.raised_us if alert.raised_us is not None else t_us
    if step is Step.CLEAR:
        limit = _limit(rule, alert.detail)
        fields["threshold"] = limit
        context["side"] = alert.detail
        message = (
            f"{name} back to {with_unit(value, unit)}, inside the {with_unit(limit, unit)} "
            f"limit by at least {with_unit(rule.clear_hysteresis, unit)} "
            f"(active for {seconds(t_us - raised_us)})"
        )
        emit.cleared(rule.id, alert, t_us, message=message, context=context, **fields)
        return
    step_size = rule.clear_hysteresis or emit.settings.update_fraction * abs(limit)
    if emit.changed(rule, alert, value, side, step_size):
        beyond = (side == ABOVE and value > limit) or (side == BELOW and value < limit)
        where = (
            f"{side} the {with_unit(limit, unit)} limit"
            if beyond
            else f"not yet {with_unit(rule.clear_hysteresis, unit)} inside the "
            f"{with_unit(limit, unit)} limit"
        )
        message = (
            f"{name} now {with_unit(value, unit)}, {where} (raised {seconds(t_us - raised_us)} ago)"
        )
        emit.updated(rule, alert, t_us, message=message, detail=side, context=context, **fields)


def _limit(rule: ThresholdRule, side: str) -> float:
    limit = rule.raise_below if side == BELOW else rule.raise_above
    if limit is None:  # a one-sided rule has one side
        limit = rule.raise_above if rule.raise_above is not None else rule.raise_below
    return float(limit) if limit is not None else 0.0


# --- anomaly ---------------------------------------------------------------------------------


def anomaly(emit: Emitter, rule: AnomalyRule, score: dict[str, Any], t_us: int) -> None:
    """Apply one anomaly_score record; scores of a warming-up model are no evidence."""
    if score["warming_up"]:
        return
    alert = emit.state.alert(rule.id)
    value = float(score["score"])
    if rule.score_above is not None:
        limit = rule.score_above
        beyond = value > limit
    else:
        limit = float(score["threshold"])
        beyond = bool(score["is_anomaly"])
    since = alert.since_us
    step, t_us = alert.advance(t_us, beyond, not beyond, emit.timing(_s(rule.min_duration)))
    emit.held(step)
    if step in (Step.QUIET, Step.HELD, Step.CLEARING):
        return

    contributors = ", ".join(
        f"{c['signal']} {c['weight'] * 100:.0f}%" for c in score["contributors"][:3]
    )
    model = f"{score['model_id']}/{score['model_version']}"
    fields: dict[str, Any] = {"value": value, "threshold": limit}
    context = base_context(emit.asset, rule) | {
        "model_id": score["model_id"],
        "model_version": score["model_version"],
        "detector_threshold": number(float(score["threshold"])),
        "min_duration_s": number(_s(rule.min_duration)),
    }
    if contributors:
        context["contributors"] = contributors
    top = f"; top signals: {contributors}" if contributors else ""
    name = f"{emit.asset.id} anomaly score"
    if step is Step.RAISE:
        message = (
            f"{name} {number(value)} above {number(limit)}{_lasting(since, t_us)} ({model}){top}"
        )
        emit.raised(rule, alert, t_us, message=message, detail=model, context=context, **fields)
        return
    raised_us = alert.raised_us if alert.raised_us is not None else t_us
    if step is Step.CLEAR:
        message = (
            f"{name} back to {number(value)}, below {number(limit)} "
            f"(active for {seconds(t_us - raised_us)}, {model})"
        )
        emit.cleared(rule.id, alert, t_us, message=message, context=context, **fields)
        return
    if emit.changed(rule, alert, value, model, emit.settings.anomaly_update_fraction * abs(limit)):
        message = f"{name} now {number(value)} (limit {number(limit)}, {model}){top}"
        emit.updated(rule, alert, t_us, message=message, detail=model, context=context, **fields)


# --- KPI floor -------------------------------------------------------------------------------


def kpi_floor(emit: Emitter, rule: KpiFloorRule) -> None:
    """Re-evaluate the rule over the asset's latest closed tumbling windows (each window at
    its latest version). Windows where the KPI is undefined (null) are no evidence: they
    neither count towards `min_windows` nor break the run."""
    alert = emit.state.alert(rule.id)
    kpi = rule.kpi.value
    known = [
        (start, entry)
        for start, entry in sorted(emit.state.windows.items())
        if entry.values.get(kpi) is not None
    ]
    if not known:
        return
    start, newest = known[-1]
    value = _kpi(newest, kpi)
    run = [_kpi(e, kpi) for _, e in known[-rule.min_windows :]]
    beyond = len(run) == rule.min_windows and all(v < rule.floor for v in run)
    back = value >= rule.floor + rule.clear_hysteresis
    step, t_us = alert.advance(newest.end_us, beyond, back, emit.timing(clear_hold=False))
    emit.held(step)
    if step in (Step.QUIET, Step.HELD, Step.CLEARING):
        return

    label = kpi.upper() if kpi == "oee" else kpi
    fields: dict[str, Any] = {"value": value, "threshold": rule.floor}
    context = base_context(emit.asset, rule) | {
        "kpi": kpi,
        "window_start": from_micros(start).isoformat(),
        "window_end": from_micros(newest.end_us).isoformat(),
        "window_version": str(newest.version),
        "min_windows": str(rule.min_windows),
        "hysteresis": number(rule.clear_hysteresis),
    }
    name = f"{emit.asset.id} {label}"
    if step is Step.RAISE:
        message = (
            f"{name} {percent(value)}, below the {percent(rule.floor)} floor in "
            f"{rule.min_windows} consecutive window{'s' if rule.min_windows > 1 else ''} "
            f"(latest {', '.join(percent(v) for v in run)})"
        )
        emit.raised(rule, alert, t_us, message=message, context=context, **fields)
        return
    if step is Step.CLEAR:
        message = (
            f"{name} back to {percent(value)}, at least {percent(rule.clear_hysteresis)} "
            f"above the {percent(rule.floor)} floor"
        )
        emit.cleared(rule.id, alert, t_us, message=message, context=context, **fields)
        return
    step_size = rule.clear_hysteresis or emit.settings.update_fraction * rule.floor
    if emit.changed(rule, alert, value, "", step_size):
        message = f"{name} now {percent(value)} (floor {percent(rule.floor)})"
        emit.updated(rule, alert, t_us, message=message, context=context, **fields)


def record_window(
    windows: dict[int, KpiEntry], window: dict[str, Any], start_us: int, end_us: int, keep: int
) -> bool:
    """Keep a closed tumbling window's latest version; False for a version already seen (a
    redelivery or an out-of-date revision), which must not count again. Keeps the `keep`
    newest windows."""
    seen = windows.get(start_us)
    version = int(window["version"])
    if seen is not None and version <= seen.version:
        return False
    windows[start_us] = KpiEntry(
        version,
        end_us,
        {k: window[k] for k in ("availability", "performance", "quality", "oee")},
    )
    for old in sorted(windows)[:-keep]:
        del windows[old]
    return True


def _lasting(since: int | None, t_us: int) -> str:
    """How long the raise condition held, for a message ("" when it did not need to)."""
    if since is None or t_us <= since:
        return ""
    return f" for {seconds(t_us - since)}"


def _kpi(entry: KpiEntry, kpi: str) -> float:
    value = entry.values.get(kpi)
    return float(value) if value is not None else float("nan")


def _s(duration: Any) -> float:
    return float(duration.total_seconds())
