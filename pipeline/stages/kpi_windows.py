"""Where the KPI windows fall in event time, and the watermarks that close them.

All times here are integer microseconds since the Unix epoch (UTC). Windows are aligned to the
epoch. Every window is a whole number of *panes*: the pane is the greatest common divisor of
the tumbling window and the hop of the hopping window, so readings are aggregated once into
their pane and a window's result is the merge of its panes (with the demo's 1 min tumbling and
5 min every 1 min hopping windows a pane is 1 min: one tumbling window, one fifth of a hopping
one).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from math import gcd

from pipeline.site import KpiSettings
from pipeline.stages.ticks import DUE_NOW

TUMBLING = "TUMBLING"
HOPPING = "HOPPING"

WindowKey = tuple[str, int, int]
"""(window_kind, window_start, window_end) in microseconds."""


def micros(duration: timedelta) -> int:
    """A duration in whole microseconds (exact)."""
    return (duration.days * 86_400 + duration.seconds) * 1_000_000 + duration.microseconds


class WindowPlan:
    """The window geometry of one site: tumbling and optional hopping windows over panes."""

    def __init__(self, settings: KpiSettings) -> None:
        self.tumbling_us = micros(settings.window)
        hopping = settings.hopping
        self.hopping_us = micros(hopping.size) if hopping is not None else None
        self.hop_us = micros(hopping.hop) if hopping is not None else None
        self.pane_us = (
            gcd(self.tumbling_us, self.hop_us) if self.hop_us is not None else self.tumbling_us
        )
        self.lateness_us = micros(settings.allowed_lateness)

    def pane_of(self, ts: int) -> int:
        """Start of the pane that holds event time `ts`."""
        return ts - ts % self.pane_us

    def windows_of_pane(self, pane: int) -> list[WindowKey]:
        """Every window that contains the pane starting at `pane`: its tumbling window, then
        its hopping windows from the earliest start."""
        start = pane - pane % self.tumbling_us
        keys: list[WindowKey] = [(TUMBLING, start, start + self.tumbling_us)]
        if self.hopping_us is not None and self.hop_us is not None:
            last = pane - pane % self.hop_us
            first = last - self.hopping_us + self.hop_us
            keys.extend(
                (HOPPING, s, s + self.hopping_us) for s in range(first, last + 1, self.hop_us)
            )
        return keys

    def last_end(self, pane: int) -> int:
        """The latest end of a window containing the pane: the pane is needed until then
        (plus the allowed lateness)."""
        end = pane - pane % self.tumbling_us + self.tumbling_us
        if self.hopping_us is not None and self.hop_us is not None:
            end = max(end, pane - pane % self.hop_us + self.hopping_us)
        return end

    def expires(self, pane: int) -> int:
        """The watermark at which no window containing the pane accepts data any more."""
        return self.last_end(pane) + self.lateness_us

    def panes_of(self, start: int, end: int) -> range:
        """Pane starts of the window [start, end)."""
        return range(start, end, self.pane_us)

    def next_change(self, watermark: int) -> int:
        """The lowest watermark above `watermark` at which a window can close or expire:
        windows end on pane boundaries, so it is the next boundary, or the next one plus the
        allowed lateness, whichever comes first."""
        pane, lateness = self.pane_us, self.lateness_us
        late = watermark - lateness
        return min(watermark - watermark % pane + pane, late - late % pane + pane + lateness)


@dataclass(slots=True)
class SourceClock:
    """What the KPI stage knows of one source's event-time progress, for one asset.

    Each asset keeps the clocks of the sources that feed it (normally one), so the watermark
    lives in the asset's own state and partition.
    """

    max_ts: int
    """Newest event time of a usable reading from this source, µs."""
    last_arrival: int
    """Processing time (`now`) of this source's latest frame with usable readings, µs."""


@dataclass(frozen=True, slots=True)
class WatermarkPolicy:
    out_of_orderness_us: int
    idle_timeout_us: int

    @classmethod
    def of(cls, settings: KpiSettings) -> WatermarkPolicy:
        return cls(
            micros(settings.watermark.out_of_orderness), micros(settings.watermark.idle_timeout)
        )

    def source_watermark(self, clock: SourceClock, now_us: int) -> int:
        """Newest event time minus the out-of-orderness; a source silent for the idle timeout
        is assumed to have moved on by the processing time it has been silent, so windows
        close without it (device clocks may be off: only the elapsed time is used, never the
        processing time itself)."""
        watermark = clock.max_ts - self.out_of_orderness_us
        silent = now_us - clock.last_arrival
        if silent >= self.idle_timeout_us:
            watermark += silent
        return watermark

    def asset_watermark(
        self, clocks: dict[str, SourceClock], previous: int | None, now_us: int
    ) -> int | None:
        """The slowest of the asset's sources (a fast clock cannot make the others' data
        late), never moving backwards."""
        if not clocks:
            return previous
        slowest = min(self.source_watermark(c, now_us) for c in clocks.values())
        return slowest if previous is None or slowest > previous else previous

    def reaches(self, clocks: dict[str, SourceClock], bound: int) -> int | None:
        """The earliest processing time at which the asset's watermark reaches `bound` by
        processing time alone (its sources sending nothing more): every source that is
        behind must have been silent for the idle timeout, and long enough to make up the
        difference. `DUE_NOW` if it has reached it already; None without sources."""
        if not clocks:
            return None
        latest = DUE_NOW
        for clock in clocks.values():
            behind = bound - (clock.max_ts - self.out_of_orderness_us)
            if behind > 0:
                latest = max(latest, clock.last_arrival + max(self.idle_timeout_us, behind))
        return latest
