"""What a signal is: its kind, unit, ranges, dynamics and noise, as an asset type defines it."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from pipeline.site.common import Range, SiteModel
from pipeline.site.durations import PositiveDuration

PROCESS_NOISE_FRACTION = 1 / 3
"""Default process noise as a fraction of `max_rate` (see `SignalSpec.process_noise`)."""


class SignalKind(StrEnum):
    GAUGE = "gauge"
    """A continuous measurement (speed, pressure, temperature)."""
    COUNTER = "counter"
    """A monotonically increasing count (parts made, parts scrapped, running hours)."""
    STATE = "state"
    """An enumerated code (the machine state); the asset type's KPI rules say what it means."""


class SignalSpec(SiteModel):
    """One signal of an asset type, as the site file writes it."""

    kind: SignalKind = SignalKind.GAUGE
    unit: str = Field(min_length=1)
    """Engineering unit of every value of this signal (e.g. "rpm", "bar", "degC", "parts")."""
    description: str = ""
    physical: Range
    """What the sensor can physically report; a value outside is a broken reading."""
    expected: Range
    """Normal operation; a value outside is plausible but unusual. Inside `physical`."""
    max_rate: float = Field(gt=0)
    """Largest physically possible rate of change, in units per second."""
    sampling_period: PositiveDuration
    """How often the source produces a fresh value (OPC UA sampling, simulator update)."""
    measurement_noise: float = Field(ge=0)
    """Standard deviation of the sensor noise, in the signal's unit (> 0 for gauges)."""
    process_noise: float | None = Field(default=None, gt=0)
    """How fast the true rate of change wanders, for the estimator's level+rate model.

    The standard deviation of the rate's random walk after one second, in units per second
    per square root of a second: Q = process_noise² · [[dt³/3, dt²/2], [dt²/2, dt]].
    When omitted it is derived as `max_rate * PROCESS_NOISE_FRACTION` (a rate change from
    0 to `max_rate` within one second is then a 3-sigma event).
    """

    def resolved_process_noise(self) -> float:
        if self.process_noise is not None:
            return self.process_noise
        return self.max_rate * PROCESS_NOISE_FRACTION


class SignalOverride(SiteModel):
    """Per-asset changes to a signal of the asset's type (e.g. a larger pump's flow range)."""

    description: str | None = None
    physical: Range | None = None
    expected: Range | None = None
    max_rate: float | None = Field(default=None, gt=0)
    sampling_period: PositiveDuration | None = None
    measurement_noise: float | None = Field(default=None, ge=0)
    process_noise: float | None = Field(default=None, gt=0)

    def apply(self, spec: SignalSpec) -> dict[str, object]:
        """The fields of `spec` with this override's values in place (for re-validation)."""
        merged: dict[str, object] = dict(spec)
        merged.update({name: getattr(self, name) for name in self.model_fields_set})
        return merged
