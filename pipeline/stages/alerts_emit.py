"""Turning lifecycle steps into alert_event records, with the per-asset rate limit."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.site import AlertRule, Asset
from pipeline.stages.alerts_events import CLEARED, RAISED, UPDATED, alert_event
from pipeline.stages.alerts_settings import AlertCounters, AlertSettings
from pipeline.stages.alerts_state import AlertState, AssetAlerts, Step, Timing

_SECOND_US = 1_000_000


def micros(seconds: float) -> int:
    return round(seconds * _SECOND_US)


@dataclass(slots=True)
class Emitter:
    """The events one record (or tick) produces for one asset."""

    asset: Asset
    state: AssetAlerts
    now: datetime
    now_us: int
    settings: AlertSettings
    counters: AlertCounters
    timings: dict[tuple[float, bool], Timing] = field(default_factory=dict)
    """Timings already worked out, shared between the emitters of one stage."""
    out: list[dict[str, Any]] = field(default_factory=list)

    def timing(self, min_duration_s: float = 0.0, clear_hold: bool = True) -> Timing:
        key = (min_duration_s, clear_hold)
        timing = self.timings.get(key)
        if timing is None:
            timing = self.timings[key] = Timing(
                min_duration=micros(min_duration_s),
                clear_hold=micros(self.settings.clear_hold.total_seconds()) if clear_hold else 0,
                holdoff=micros(self.settings.reraise_holdoff.total_seconds()),
            )
        return timing

    def held(self, step: Step) -> None:
        if step is Step.HELD:
            self.counters.held_back += 1

    def raised(
        self,
        rule: AlertRule,
        alert: AlertState,
        t_us: int,
        *,
        message: str,
        value: float | None,
        detail: str = "",
        **fields: Any,
    ) -> None:
        alert.raised(t_us, rule.kind, rule.severity.value, value, detail)
        self._emit(rule.id, alert, RAISED, t_us, message, value=value, **fields)

    def changed(
        self, rule: AlertRule, alert: AlertState, value: float | None, detail: str, step: float
    ) -> bool:
        """Whether an active alert changed enough for an UPDATED: its severity in the site
        file, its detail (a side, a set of signals, a model), or its value by `step`."""
        if alert.severity != rule.severity.value or alert.detail != detail:
            return True
        if value is None or alert.reported is None or step <= 0:
            return False
        return abs(value - alert.reported) >= step

    def updated(
        self,
        rule: AlertRule,
        alert: AlertState,
        t_us: int,
        *,
        message: str,
        value: float | None,
        detail: str = "",
        **fields: Any,
    ) -> None:
        """An UPDATED if the asset's rate limit allows; otherwise counted as suppressed and
        the alert keeps what it last reported, so the next change is measured from that."""
        if not self.state.allow_update(self.now_us, self.settings.max_events_per_minute):
            self.counters.suppressed += 1
            return
        alert.updated(rule.severity.value, value, detail)
        self._emit(rule.id, alert, UPDATED, t_us, message, value=value, **fields)

    def cleared(
        self, rule_id: str, alert: AlertState, t_us: int, *, message: str, **fields: Any
    ) -> None:
        self._emit(rule_id, alert, CLEARED, t_us, message, **fields)
        alert.cleared(t_us)

    def _emit(
        self, rule_id: str, alert: AlertState, event: str, t_us: int, message: str, **fields: Any
    ) -> None:
        raised_us = alert.raised_us if alert.raised_us is not None else t_us
        self.out.append(
            alert_event(
                asset=self.asset,
                rule_id=rule_id,
                kind=alert.kind,
                event=event,
                severity=alert.severity,
                t_us=t_us,
                raised_us=raised_us,
                now=self.now,
                message=message,
                **fields,
            )
        )
        self.counters.events += 1
