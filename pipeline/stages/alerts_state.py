"""The alert stage's state: the lifecycle of one alert, an asset's alerts, and snapshots.

Event times and processing times are integer microseconds since the Unix epoch (UTC), as in
every stage snapshot. All state is bounded per asset: one `AlertState` per rule covering the
asset, one freshness entry per signal of the asset, at most `max_events_per_minute` recent
UPDATED times, and a fixed number of recent KPI windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from pipeline.stages.common import StageStateError

SNAPSHOT_FORMAT = 1
MINUTE_US = 60_000_000


class Step(Enum):
    """What one piece of evidence did to an alert (see `AlertState.advance`)."""

    QUIET = "quiet"
    """Inactive and staying so (or the raise condition is still building up)."""
    HELD = "held"
    """The raise condition is met, but the alert cleared too recently: held back."""
    RAISE = "raise"
    ACTIVE = "active"
    """Active and staying so: the caller decides whether the change is worth an UPDATED."""
    CLEARING = "clearing"
    """Active, the clear condition holds but not yet for the clear hold: no UPDATED."""
    CLEAR = "clear"


@dataclass(frozen=True, slots=True)
class Timing:
    """The event-time rules of one alert's lifecycle, in microseconds."""

    min_duration: int
    """The raise condition must hold this long, unbroken, before RAISED."""
    clear_hold: int
    """The clear condition must hold this long, unbroken, before CLEARED."""
    holdoff: int
    """After a CLEARED, no RAISED until this much event time has passed."""


@dataclass(slots=True)
class AlertState:
    """The lifecycle of one alert (one asset, one rule).

    RAISED only while inactive and CLEARED only while active: the event sequence of an
    alert is RAISED (UPDATED)* CLEARED, repeated, by construction.
    """

    active: bool = False
    raised_us: int | None = None
    since_us: int | None = None
    """Event time the raise condition started holding, unbroken (while inactive)."""
    clear_since_us: int | None = None
    """Event time the clear condition started holding, unbroken (while active)."""
    cleared_us: int | None = None
    """Event time of the last CLEARED, for the re-raise holdoff."""
    last_us: int | None = None
    """Latest event time applied: transitions never go back in time."""
    held: bool = False
    """A raise is being held back (counted once per episode)."""
    reported: float | None = None
    """Value reported by the last RAISED/UPDATED: UPDATED needs a material change from it."""
    detail: str = ""
    """A further reported fact whose change is an UPDATED (a side, a set of signals)."""
    kind: str = ""
    severity: str = ""
    """Kind and severity reported while active (to clear an alert whose rule is gone)."""

    def advance(self, t_us: int, beyond: bool, back: bool, timing: Timing) -> tuple[Step, int]:
        """Apply evidence at event time `t_us`: `beyond` = the raise condition holds, `back` =
        the clear condition holds (neither: in the hysteresis band). Returns the step and the
        event time it happened at (never earlier than evidence applied before)."""
        if self.last_us is not None and t_us < self.last_us:
            t_us = self.last_us
        self.last_us = t_us
        if not self.active:
            if not beyond:
                self.since_us = None
                self.held = False
                return Step.QUIET, t_us
            if self.since_us is None:
                self.since_us = t_us
            if t_us - self.since_us < timing.min_duration:
                return Step.QUIET, t_us
            if self.cleared_us is not None and t_us < self.cleared_us + timing.holdoff:
                if self.held:
                    return Step.QUIET, t_us
                self.held = True
                return Step.HELD, t_us
            return Step.RAISE, t_us
        if not back:
            self.clear_since_us = None
            return Step.ACTIVE, t_us
        if self.clear_since_us is None:
            self.clear_since_us = t_us
        if t_us - self.clear_since_us < timing.clear_hold:
            return Step.CLEARING, t_us
        return Step.CLEAR, t_us

    def raised(self, t_us: int, kind: str, severity: str, value: float | None, detail: str) -> None:
        self.active = True
        self.raised_us = t_us
        self.since_us = self.clear_since_us = None
        self.held = False
        self.kind, self.severity = kind, severity
        self.reported, self.detail = value, detail

    def updated(self, severity: str, value: float | None, detail: str) -> None:
        self.severity = severity
        self.reported, self.detail = value, detail

    def cleared(self, t_us: int) -> None:
        self.active = False
        self.cleared_us = t_us
        self.since_us = self.clear_since_us = None
        self.held = False
        self.reported, self.detail = None, ""


_ALERT_FIELDS = tuple(f.name for f in fields(AlertState))
"""An `AlertState`'s snapshot keys, in field order: the dict `dataclasses.asdict` gives, read
directly at a tenth of its cost (the fields are immutable scalars: nothing to deep-copy)."""


@dataclass(slots=True)
class KpiEntry:
    """The latest version of one closed tumbling window's KPIs."""

    version: int
    end_us: int
    values: dict[str, float | None]


@dataclass(slots=True)
class AssetAlerts:
    """Everything the alert stage keeps about one asset."""

    alerts: dict[str, AlertState] = field(default_factory=dict)
    """rule_id -> the lifecycle of that rule's alert on this asset."""
    fresh: dict[str, list[int]] = field(default_factory=dict)
    """signal -> [event time of its latest usable reading, processing time it arrived]."""
    clock_us: int | None = None
    """Newest trusted event time seen from the asset."""
    clock_arrival_us: int | None = None
    """Processing time the newest event time arrived."""
    watched_us: int | None = None
    """Processing time the stage last looked at the asset (a data record or a tick)."""
    updates: list[int] = field(default_factory=list)
    """Processing times of the UPDATED events of the last minute (the rate limit)."""
    windows: dict[int, KpiEntry] = field(default_factory=dict)
    """window_start -> latest version of the asset's recent closed tumbling windows."""

    def alert(self, rule_id: str) -> AlertState:
        state = self.alerts.get(rule_id)
        if state is None:
            state = self.alerts[rule_id] = AlertState()
        return state

    def allow_update(self, now_us: int, per_minute: int) -> bool:
        """Whether one more UPDATED fits in the last minute of processing time; records it."""
        recent = [u for u in self.updates if u > now_us - MINUTE_US]
        if len(recent) >= per_minute:
            self.updates = recent
            return False
        recent.append(now_us)
        self.updates = recent
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "alerts": {
                rule_id: {name: getattr(a, name) for name in _ALERT_FIELDS}
                for rule_id, a in self.alerts.items()
            },
            "fresh": {s: list(v) for s, v in self.fresh.items()},
            "clock": self.clock_us,
            "clock_arrival": self.clock_arrival_us,
            "watched": self.watched_us,
            "updates": list(self.updates),
            "windows": [
                [start, w.version, w.end_us, dict(w.values)] for start, w in self.windows.items()
            ],
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> AssetAlerts:
        """The state a `snapshot()` describes; StageStateError for anything else."""
        found = state.get("format") if isinstance(state, dict) else None
        if found != SNAPSHOT_FORMAT:
            raise StageStateError(f"alerts: unknown snapshot format {found!r}")
        names = {f.name for f in fields(AlertState)}
        try:
            alerts = {}
            for rule_id, data in state["alerts"].items():
                if not names.issuperset(data):
                    raise ValueError(f"unknown alert fields {sorted(set(data) - names)}")
                alerts[str(rule_id)] = AlertState(**data)
            return cls(
                alerts=alerts,
                fresh={str(s): [int(v[0]), int(v[1])] for s, v in state["fresh"].items()},
                clock_us=_optional_int(state["clock"]),
                clock_arrival_us=_optional_int(state["clock_arrival"]),
                watched_us=_optional_int(state["watched"]),
                updates=[int(u) for u in state["updates"]],
                windows={
                    int(start): KpiEntry(int(version), int(end), dict(values))
                    for start, version, end, values in state["windows"]
                },
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise StageStateError(f"alerts: cannot restore the snapshot: {exc!r}") from exc


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
