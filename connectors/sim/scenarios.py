"""Fault scenarios: which faults happen to which asset, and when (known, for evaluation).

Times are offsets from the start of the simulation in simulated time; with `--speed X` they
come X times sooner on the wall clock (`FaultEvent.window` gives the wall-clock times).

Scenarios (`twin simulate --scenario NAME`):

- `none`: normal operation only (running and idle periods, no faults).
- `faults` (alias `demo`): every fault below, on different assets.
- one fault kind alone: `bearing-wear`, `stuck-sensor`, `spikes`, `drift`, `breakdown`,
  `comm-loss`, with the same assets and times as in `faults`.

The faults, with their times in `faults`:

    kind          offset (s)  what happens                                     demo plant
    stuck-sensor   30 -  90   a temperature holds its value; quality UNCERTAIN cnc-01 spindle_temp.
    spikes         45 -  75   ~8% of readings jump by 1/4 of the expected span pump-01 discharge_p.
    drift          60 - 240   a temperature reads high, offset up to 15% span  conv-01 motor_temp.
    bearing-wear   60 - 240   wear 0 -> 1: vibration, heat, current, scrap up  cnc-02
    maintenance   240 - 300   the worn bearing is replaced (after the wear)    cnc-02
    breakdown      90 - 150   the machine is down, then repaired, restarts     cnc-03
    comm-loss     120 - 150   a Modbus asset: gateway exception 0x0B           pump-02
    comm-loss     150 - 180   an MQTT asset stops publishing                   conv-02
    comm-loss     180 - 210   an OPC UA asset: BadCommunicationError           cnc-04

Assets are picked from the site by what the fault needs (a temperature signal, a vibration
signal, a state signal, a source kind), preferring a different asset for every fault, so the
scenarios work for any site file; the right-hand column is what the demo plant gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pipeline.errors import ConfigError
from pipeline.site import Asset, SignalKind, Site, SourceKind


class FaultKind(StrEnum):
    BEARING_WEAR = "bearing-wear"
    STUCK_SENSOR = "stuck-sensor"
    SPIKES = "spikes"
    DRIFT = "drift"
    BREAKDOWN = "breakdown"
    MAINTENANCE = "maintenance"
    COMM_LOSS = "comm-loss"


SENSOR_FAULTS = frozenset({FaultKind.STUCK_SENSOR, FaultKind.SPIKES, FaultKind.DRIFT})
"""Faults of one sensor (the event names the signal); the others affect the whole asset."""


@dataclass(frozen=True, slots=True)
class FaultEvent:
    asset_id: str
    kind: FaultKind
    start: timedelta
    """Offset from the start of the simulation, simulated time."""
    end: timedelta
    signal: str | None = None
    """The faulty sensor's signal (stuck, spikes, drift), or for bearing wear the signal
    that shows it; None for faults of the whole asset."""

    def active(self, offset: timedelta) -> bool:
        return self.start <= offset < self.end

    def progress(self, offset: timedelta) -> float:
        """0 at the start, 1 at the end (for ramps such as wear and drift)."""
        return min(max((offset - self.start) / (self.end - self.start), 0.0), 1.0)

    def window(self, origin: datetime, speed: float = 1.0) -> tuple[datetime, datetime]:
        """Wall-clock start and end for a simulation started at `origin` with `speed`."""
        return origin + self.start / speed, origin + self.end / speed

    def to_dict(self, origin: datetime, speed: float = 1.0) -> dict[str, Any]:
        start, end = self.window(origin, speed)
        return {
            "asset_id": self.asset_id,
            "kind": str(self.kind),
            "signal": self.signal,
            "start_offset_s": self.start.total_seconds(),
            "end_offset_s": self.end.total_seconds(),
            "start": start.isoformat(),
            "end": end.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    events: tuple[FaultEvent, ...]

    def for_asset(self, asset_id: str) -> tuple[FaultEvent, ...]:
        return tuple(e for e in self.events if e.asset_id == asset_id)


def _has_signal(word: str) -> Callable[[Asset], str | None]:
    def pick(asset: Asset) -> str | None:
        return next(
            (
                s.name
                for s in asset.signals.values()
                if word in s.name and s.kind is SignalKind.GAUGE
            ),
            None,
        )

    return pick


def _has_state(asset: Asset) -> str | None:
    return "" if asset.kpi is not None and asset.kpi.state is not None else None


def _any(asset: Asset) -> str | None:
    return ""


@dataclass(frozen=True, slots=True)
class _Template:
    kind: FaultKind
    start_s: float
    end_s: float
    prefer: SourceKind | None
    needs: Callable[[Asset], str | None]
    """The signal the fault applies to ("" for the whole asset), None if the asset lacks it."""
    strict: bool = False
    """Only assets of the preferred source kind qualify."""
    follow_up: tuple[FaultKind, float, float] | None = None


_TEMPLATES = (
    _Template(FaultKind.STUCK_SENSOR, 30, 90, SourceKind.OPCUA, _has_signal("temperature")),
    _Template(FaultKind.SPIKES, 45, 75, SourceKind.MODBUS, _has_signal("pressure")),
    _Template(FaultKind.DRIFT, 60, 240, SourceKind.MQTT, _has_signal("temperature")),
    _Template(
        FaultKind.BEARING_WEAR,
        60,
        240,
        SourceKind.OPCUA,
        _has_signal("vibration"),
        follow_up=(FaultKind.MAINTENANCE, 240, 300),
    ),
    _Template(FaultKind.BREAKDOWN, 90, 150, SourceKind.OPCUA, _has_state),
    _Template(FaultKind.COMM_LOSS, 120, 150, SourceKind.MODBUS, _any, strict=True),
    _Template(FaultKind.COMM_LOSS, 150, 180, SourceKind.MQTT, _any, strict=True),
    _Template(FaultKind.COMM_LOSS, 180, 210, SourceKind.OPCUA, _any, strict=True),
)

SCENARIOS = (
    "none",
    "faults",
    "demo",
    *(k.value for k in FaultKind if k is not FaultKind.MAINTENANCE),
)
"""Every scenario name `build_scenario` accepts."""


def _place(template: _Template, site: Site, used: set[str]) -> tuple[Asset, str] | None:
    """The asset (and signal) a fault goes to: preferred source kind first, unused first."""
    ranked: list[tuple[int, int, Asset, str]] = []
    for order, asset in enumerate(site.assets):
        found = template.needs(asset)
        preferred = asset.source_kind is template.prefer
        if found is None or (template.strict and not preferred):
            continue
        rank = (0 if preferred else 1) + (0 if asset.id not in used else 2)
        ranked.append((rank, order, asset, found))
    if not ranked:
        return None
    _, _, asset, signal = min(ranked, key=lambda r: (r[0], r[1]))
    return asset, signal


def build_scenario(name: str, site: Site) -> Scenario:
    """The scenario `name` placed on the site's assets (ConfigError for an unknown name)."""
    if name not in SCENARIOS:
        raise ConfigError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    if name == "none":
        return Scenario(name, ())
    events: list[FaultEvent] = []
    used: set[str] = set()
    for template in _TEMPLATES:
        placed = _place(template, site, used)
        if placed is None:
            continue
        asset, signal = placed
        used.add(asset.id)
        if name not in ("faults", "demo") and name != template.kind:
            continue
        events.append(
            FaultEvent(
                asset.id,
                template.kind,
                timedelta(seconds=template.start_s),
                timedelta(seconds=template.end_s),
                signal or None,
            )
        )
        if template.follow_up is not None:
            kind, start, end = template.follow_up
            events.append(
                FaultEvent(asset.id, kind, timedelta(seconds=start), timedelta(seconds=end))
            )
    return Scenario(name, tuple(sorted(events, key=lambda e: (e.start, e.asset_id))))
