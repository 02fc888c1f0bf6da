"""KPI rules: the windows every asset's KPIs are computed over, and per asset type how the
machine state and the part counts are read from its signals."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import BeforeValidator, model_validator

from pipeline.site.common import SiteModel
from pipeline.site.durations import Duration, PositiveDuration


class MachineState(StrEnum):
    RUNNING = "running"
    IDLE = "idle"
    DOWN = "down"
    MAINTENANCE = "maintenance"


class HoppingWindow(SiteModel):
    size: PositiveDuration
    hop: PositiveDuration

    @model_validator(mode="after")
    def _hop_divides_size(self) -> HoppingWindow:
        if self.hop > self.size or self.size % self.hop:
            raise ValueError("hop must divide size (e.g. size 5m, hop 1m)")
        return self


class Watermark(SiteModel):
    out_of_orderness: Duration = timedelta(seconds=2)
    """The watermark trails the newest event time seen by this much."""
    idle_timeout: PositiveDuration = timedelta(seconds=30)
    """An asset silent for this long no longer holds windows open (they close on wall time)."""


class KpiSettings(SiteModel):
    """Event-time windows for every asset's KPIs."""

    window: PositiveDuration = timedelta(minutes=1)
    """Tumbling window size."""
    hopping: HoppingWindow | None = None
    """An extra hopping window (e.g. 5m every 1m), emitted alongside the tumbling one."""
    allowed_lateness: Duration = timedelta(seconds=30)
    """A closed window is re-emitted (higher version) for data up to this late; data later
    than that no longer changes it."""
    watermark: Watermark = Watermark()


def _codes(value: object) -> object:
    # `running: 1` is shorthand for `running: [1]`.
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


class StateRule(SiteModel):
    """How the machine state is read from one signal: by code, or by thresholds.

    With `codes`, each state lists the codes of a state signal that mean it. With
    `running_above`, a value above it means running; at or below it means idle, unless
    `idle_above` is set, in which case a value at or below `idle_above` means down.
    """

    signal: str
    codes: dict[MachineState, Annotated[tuple[int, ...], BeforeValidator(_codes)]] | None = None
    running_above: float | None = None
    idle_above: float | None = None

    @model_validator(mode="after")
    def _one_way(self) -> StateRule:
        if (self.codes is None) == (self.running_above is None):
            raise ValueError("give either codes or running_above")
        if self.codes is not None and self.idle_above is not None:
            raise ValueError("idle_above goes with running_above, not with codes")
        if (
            self.running_above is not None
            and self.idle_above is not None
            and self.idle_above >= self.running_above
        ):
            raise ValueError("idle_above must be below running_above")
        return self

    def classify(self, value: float) -> MachineState | None:
        """The machine state a value of `signal` means; None for an unmapped code or NaN."""
        if value != value:  # NaN: no reading, no state
            return None
        if self.codes is not None:
            for state, codes in self.codes.items():
                if value in codes:
                    return state
            return None
        if self.running_above is not None and value > self.running_above:
            return MachineState.RUNNING
        if self.idle_above is not None and value <= self.idle_above:
            return MachineState.DOWN
        return MachineState.IDLE


class PartCounters(SiteModel):
    total: str
    """Counter signal of all parts made (good and scrap)."""
    scrap: str | None = None
    """Counter signal of scrapped parts; without it every part counts as good."""


class KpiRules(SiteModel):
    """KPI rules of an asset type."""

    state: StateRule | None = None
    """Machine state (-> availability, MTBF/MTTR); without it availability is not computed."""
    counters: PartCounters | None = None
    """Part counters (-> performance, quality); without them those KPIs are not computed."""
    ideal_cycle_time: PositiveDuration | None = None
    """Time per part at full speed (-> performance)."""
