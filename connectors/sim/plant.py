"""The simulated plant: every asset of a site, its true values and what its sensors report.

    plant = PlantModel(site, seed=0, scenario="faults", start=datetime.now(UTC))
    samples = plant.step(datetime.now(UTC))      # one AssetSample per asset

`step(now)` advances the physics to `now` and samples every signal: the true (noise-free)
value, the measured value (true + the site's measurement noise, plus any sensor fault of
the scenario, clipped to the physical range), and the quality the device would report.
True values never change faster than the signal's `max_rate` (in simulated time). A sensor
takes a fresh reading once per sampling period of its signal (periods counted from the
start) and holds it in between; `AssetSample.sampled` says when each reading was taken.

Timestamps are wall-clock time: `now` is what the samples carry. With `speed` X the plant's
dynamics run X times faster than the clock (a 45 s cycle takes 45/X s), and the scenario's
faults come X times sooner, so a demo shows hours of plant in minutes while downstream
stages still see current timestamps.

Runs are reproducible: each asset draws from its own generator, seeded from `seed` and a
stable hash of the asset id, so the same seed and the same step times give the same values,
and adding an asset to the site does not change the others.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from connectors.sim.generic import GenericModel
from connectors.sim.models import model_for
from connectors.sim.physics import AssetModel, Conditions, clip
from connectors.sim.scenarios import (
    SENSOR_FAULTS,
    FaultEvent,
    FaultKind,
    Scenario,
    build_scenario,
)
from pipeline.site import Asset, MachineState, SignalKind, Site

GOOD, UNCERTAIN, BAD = "GOOD", "UNCERTAIN", "BAD"

MAX_STEP_S = 0.5
"""Largest physics step (simulated seconds); a longer advance is split into equal steps."""
SPIKE_PROBABILITY = 0.08
SPIKE_FRACTION = 0.25  # of the expected span
DRIFT_FRACTION = 0.15  # of the expected span, reached at the end of the drift


@dataclass(frozen=True, slots=True)
class AssetSample:
    """One asset's signals at one instant, as the plant knows them and as its sensors say."""

    asset_id: str
    ts: datetime
    true: dict[str, float]
    """Noise-free values (the truth later stages are measured against)."""
    measured: dict[str, float]
    """What the sensors report: true + noise + sensor faults, within the physical range."""
    quality: dict[str, str]
    """GOOD, UNCERTAIN (e.g. a sensor diagnosed as stuck) or BAD (no communication)."""
    comm_lost: bool = False
    """The device does not communicate: servers mark it bad, the gateway stays silent."""
    sampled: dict[str, datetime] = field(default_factory=dict)
    """When each measured value was taken (its source timestamp). A sensor refreshes its
    value once per sampling period of its signal and holds it in between; `ts` is when the
    plant was sampled, which is also the time of the true values."""

    def sampled_at(self, signal: str) -> datetime:
        return self.sampled.get(signal, self.ts)

    def readings(self, truth: bool = False) -> list[dict[str, Any]]:
        """Readings (the Avro Reading record as dicts) of the measured or the true values."""
        values = self.true if truth else self.measured
        return [
            {
                "signal": name,
                "ts": self.ts if truth else self.sampled_at(name),
                "value": value,
                "quality": GOOD if truth else self.quality[name],
                "status_code": None,
            }
            for name, value in values.items()
        ]


def asset_seed(seed: int, asset_id: str) -> list[int]:
    """Entropy for an asset's generators: the run's seed and a stable hash of the asset id."""
    digest = hashlib.blake2b(asset_id.encode("utf-8"), digest_size=8).digest()
    return [seed & 0xFFFF_FFFF_FFFF_FFFF, int.from_bytes(digest, "big")]


@dataclass
class _SimulatedAsset:
    asset: Asset
    model: AssetModel
    filler: GenericModel | None
    noise: np.random.Generator
    events: tuple[FaultEvent, ...]
    start: datetime
    held: dict[str, float] = field(default_factory=dict)
    """Values of stuck sensors, captured when they got stuck."""
    true: dict[str, float] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)
    sampled: dict[str, datetime] = field(default_factory=dict)
    periods: dict[str, int] = field(default_factory=dict)
    """Per signal, the sampling period (counted from the start) of its last reading."""

    def conditions(self, offset: timedelta) -> Conditions:
        forced: MachineState | None = None
        wear = 0.0
        for event in self.events:
            if not event.active(offset):
                continue
            if event.kind is FaultKind.BREAKDOWN:
                forced = MachineState.DOWN
            elif event.kind is FaultKind.MAINTENANCE:
                forced = forced or MachineState.MAINTENANCE
            elif event.kind is FaultKind.BEARING_WEAR:
                wear = event.progress(offset)
        return Conditions(forced=forced, wear=wear)

    def advance(self, dt: float, offset: timedelta) -> None:
        conditions = self.conditions(offset)
        self.model.advance(dt, conditions)
        if self.filler is not None:
            self.filler.advance(dt, conditions)

    def _true_values(self, elapsed: float) -> dict[str, float]:
        values = self.model.values()
        if self.filler is not None:
            values.update(self.filler.values())
        true: dict[str, float] = {}
        for name, signal in self.asset.signals.items():
            value = clip(values[name], signal.physical)
            before = self.true.get(name)
            if before is not None and signal.kind is SignalKind.GAUGE:
                # The site's max_rate is a physical limit the truth must keep (the
                # validator flags faster changes); the models aim below it, this makes sure.
                step = signal.max_rate * elapsed
                value = min(max(value, before - step), before + step)
            true[name] = value
        self.true = true
        return true

    def _due(self, name: str, ts: datetime) -> bool:
        """A sensor delivers a fresh reading once per sampling period, and holds it between."""
        period = self.asset.signals[name].sampling_period
        current = (ts - self.start) // period
        if current == self.periods.get(name):
            return False
        self.periods[name] = current
        return True

    def sample(self, ts: datetime, offset: timedelta, elapsed: float) -> AssetSample:
        true = self._true_values(elapsed)
        quality = dict.fromkeys(true, GOOD)
        fresh = [name for name in true if self._due(name, ts)]
        for name in fresh:
            signal = self.asset.signals[name]
            reading = true[name]
            if signal.kind is SignalKind.GAUGE and signal.measurement_noise > 0:
                reading += signal.measurement_noise * float(self.noise.standard_normal())
            self.measured[name] = reading
            self.sampled[name] = ts
        comm_lost = False
        for event in self.events:
            active = event.active(offset)
            if event.kind is FaultKind.COMM_LOSS:
                comm_lost = comm_lost or active
            if event.signal is None or event.kind not in SENSOR_FAULTS:
                continue
            name = event.signal
            if event.kind is FaultKind.STUCK_SENSOR:
                if not active:
                    self.held.pop(name, None)
                    continue
                self.measured[name] = self.held.setdefault(name, self.measured[name])
                quality[name] = UNCERTAIN
            elif active and name in fresh:
                span = self.asset.signals[name].expected.span
                if event.kind is FaultKind.DRIFT:
                    self.measured[name] += DRIFT_FRACTION * span * event.progress(offset)
                elif self.noise.random() < SPIKE_PROBABILITY:
                    sign = 1.0 if self.noise.random() < 0.5 else -1.0
                    self.measured[name] += sign * SPIKE_FRACTION * span
        for name in fresh:
            self.measured[name] = clip(self.measured[name], self.asset.signals[name].physical)
        if comm_lost:
            quality = dict.fromkeys(quality, BAD)
        return AssetSample(
            self.asset.id, ts, true, dict(self.measured), quality, comm_lost, dict(self.sampled)
        )


class PlantModel:
    """Every asset of `site`, simulated; see the module docstring."""

    def __init__(
        self,
        site: Site,
        seed: int = 0,
        scenario: str | Scenario = "none",
        start: datetime | None = None,
        speed: float = 1.0,
    ) -> None:
        if not speed > 0 or not math.isfinite(speed):
            raise ValueError(f"speed must be a positive number, got {speed!r}")
        self.site = site
        self.seed = seed
        self.speed = speed
        self.scenario = (
            scenario if isinstance(scenario, Scenario) else build_scenario(scenario, site)
        )
        self.start = start if start is not None else datetime.now(UTC)
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.last = self.start
        self.offset = timedelta(0)
        """Simulated time since the start."""
        self._assets = [self._simulate(asset) for asset in site.assets]

    def _simulate(self, asset: Asset) -> _SimulatedAsset:
        entropy = asset_seed(self.seed, asset.id)
        model = model_for(asset, np.random.default_rng([*entropy, 0]))
        missing = [name for name in asset.signals if name not in model.values()]
        filler = None
        if missing:
            filler = GenericModel(
                asset, np.random.default_rng([*entropy, 2]), missing, model.operation
            )
        return _SimulatedAsset(
            asset,
            model,
            filler,
            np.random.default_rng([*entropy, 1]),
            self.scenario.for_asset(asset.id),
            self.start,
        )

    @property
    def events(self) -> tuple[FaultEvent, ...]:
        return self.scenario.events

    def events_dicts(self) -> list[dict[str, Any]]:
        """The scenario's events with wall-clock times, for summaries and evaluation."""
        return [event.to_dict(self.start, self.speed) for event in self.events]

    def step(self, now: datetime) -> list[AssetSample]:
        """Advance to `now` (no advance if it is not later) and sample every asset."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        elapsed = (now - self.last).total_seconds() * self.speed
        if elapsed > 0:
            steps = max(1, math.ceil(elapsed / MAX_STEP_S))
            dt = elapsed / steps
            for _ in range(steps):
                self.offset += timedelta(seconds=dt)
                for simulated in self._assets:
                    simulated.advance(dt, self.offset)
            self.last = now
        elapsed = max(elapsed, 0.0)
        return [simulated.sample(now, self.offset, elapsed) for simulated in self._assets]
