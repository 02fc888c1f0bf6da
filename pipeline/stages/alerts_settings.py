"""How the alert stage suppresses noise: the settings, and the counters for metrics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field


class AlertSettings(BaseModel):
    """How the alert stage debounces, suppresses and rate-limits; unknown keys are rejected.

    The rules themselves (limits, hysteresis, minimum durations, severities) come from the
    site file; these settings apply to every rule.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    clear_hold: timedelta = Field(default=timedelta(seconds=5), ge=timedelta())
    """Threshold and anomaly alerts clear only after the clear condition held this long,
    unbroken, in event time (an off-delay: a value dipping in and out of the limit does not
    clear and re-raise)."""
    reraise_holdoff: timedelta = Field(default=timedelta(seconds=60), ge=timedelta())
    """After a CLEARED, the same alert is not raised again before this much event time has
    passed; a condition still present then is raised at once."""
    max_events_per_minute: int = Field(default=6, ge=0)
    """UPDATED events per asset in any minute of processing time; more are suppressed
    (RAISED and CLEARED are never suppressed)."""
    update_fraction: float = Field(default=0.05, gt=0)
    """A threshold or KPI alert is UPDATED when its value moved by the rule's hysteresis
    (or, with none, by this fraction of the limit) from the value last reported."""
    anomaly_update_fraction: float = Field(default=0.25, gt=0)
    """An anomaly alert is UPDATED when its score moved by this fraction of the threshold
    from the score last reported."""
    unwatched_gap: timedelta = Field(default=timedelta(seconds=10), gt=timedelta())
    """Processing time between two looks at an asset (a record or a tick) longer than this
    means the stage itself was not running (a restart, a pause): that time does not count
    as silence of the asset's signals. Keep it above the tick interval."""


@dataclass(slots=True)
class AlertCounters:
    """Counters since start (not part of the snapshot): for metrics."""

    events: int = 0
    suppressed: int = 0
    """UPDATED events dropped by the per-asset rate limit."""
    held_back: int = 0
    """Raises held back by the re-raise holdoff (once per held episode)."""
    unknown_assets: int = 0
    """Records of assets the site does not have: ignored."""
    stale_records: int = 0
    """KPI windows whose version was not newer than one already seen: ignored."""
    assets_ticked: int = 0
    """Assets a tick looked at: only those where stale rules could change something."""
