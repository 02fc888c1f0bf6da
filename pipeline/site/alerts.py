"""Alert rules: one list in the site file, each rule with a `kind` and the assets it covers.

Member names of `AlertKind` and `Severity` are the symbols of the alert_event Avro enums.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.site.common import Id, SiteModel
from pipeline.site.durations import Duration, PositiveDuration

ALL_SIGNALS = "all"


class AlertKind(StrEnum):
    THRESHOLD = "threshold"
    STALE = "stale"
    ANOMALY = "anomaly"
    KPI_FLOOR = "kpi_floor"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class KpiName(StrEnum):
    OEE = "oee"
    AVAILABILITY = "availability"
    PERFORMANCE = "performance"
    QUALITY = "quality"


class RuleBase(SiteModel):
    """Fields every rule has. A rule covers all assets of `asset_type`, or the listed `assets`."""

    id: Id
    description: str = ""
    severity: Severity = Severity.WARNING
    asset_type: str | None = None
    assets: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> RuleBase:
        if (self.asset_type is None) == (self.assets is None):
            raise ValueError("give either asset_type or assets")
        if self.assets is not None and not self.assets:
            raise ValueError("assets must list at least one asset")
        return self


class ThresholdRule(RuleBase):
    """Raised while a signal stays beyond a limit for `min_duration`; cleared with hysteresis."""

    kind: Literal["threshold"]
    signal: str
    raise_above: float | None = None
    raise_below: float | None = None
    clear_hysteresis: float = Field(default=0.0, ge=0)
    """Clears only once the value is back inside the limit by this much (signal unit)."""
    min_duration: Duration = timedelta()

    @model_validator(mode="after")
    def _limits(self) -> ThresholdRule:
        if self.raise_above is None and self.raise_below is None:
            raise ValueError("give raise_above, raise_below or both")
        if (
            self.raise_above is not None
            and self.raise_below is not None
            and self.raise_below >= self.raise_above
        ):
            raise ValueError("raise_below must be below raise_above")
        return self


class StaleRule(RuleBase):
    """Raised when a signal (or, with `all`, any signal) has had no reading for `after`."""

    kind: Literal["stale"]
    signal: str = ALL_SIGNALS
    after: PositiveDuration


class AnomalyRule(RuleBase):
    """Raised when the anomaly score stays above the threshold for `min_duration`."""

    kind: Literal["anomaly"]
    score_above: float | None = None
    """Fixed score threshold; default: the detector's calibrated threshold."""
    min_duration: Duration = timedelta()


class KpiFloorRule(RuleBase):
    """Raised when a KPI of `min_windows` consecutive closed windows is below `floor`."""

    kind: Literal["kpi_floor"]
    kpi: KpiName
    floor: float = Field(gt=0, le=1)
    clear_hysteresis: float = Field(default=0.0, ge=0, lt=1)
    min_windows: int = Field(default=1, ge=1)


AlertRule = Annotated[
    ThresholdRule | StaleRule | AnomalyRule | KpiFloorRule, Field(discriminator="kind")
]

RULE_MODELS: dict[
    str, type[ThresholdRule] | type[StaleRule] | type[AnomalyRule] | type[KpiFloorRule]
] = {
    AlertKind.THRESHOLD: ThresholdRule,
    AlertKind.STALE: StaleRule,
    AlertKind.ANOMALY: AnomalyRule,
    AlertKind.KPI_FLOOR: KpiFloorRule,
}
