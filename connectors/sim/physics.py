"""Building blocks of the asset models: first-order lags, rate limits, slow random drifts,
and the machine's operating state machine.

Every model advances in small time steps (seconds of simulated time) and draws its randomness
from the asset's own `numpy.random.Generator`, so a run is reproducible for a given seed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from pipeline.site import Asset, MachineState, Range, SignalKind


def lag(value: float, target: float, tau: float, dt: float) -> float:
    """First-order lag (thermal mass, filters): exact for any step, so large steps stay stable."""
    if tau <= 0:
        return target
    return target + (value - target) * math.exp(-dt / tau)


def ramp(value: float, target: float, max_rate: float, dt: float) -> float:
    """Move toward `target` no faster than `max_rate` units per second (drives, valves)."""
    step = max_rate * dt
    return min(max(target, value - step), value + step)


def follow(value: float, target: float, tau: float, max_rate: float, dt: float) -> float:
    """A first-order lag whose rate of change is also limited (inertia and actuator limits)."""
    return ramp(value, lag(value, target, tau, dt), max_rate, dt)


def clip(value: float, bounds: Range) -> float:
    return min(max(value, bounds.min), bounds.max)


class Wander:
    """A slowly varying quantity: a mean-reverting random walk (Ornstein-Uhlenbeck) in bounds.

    Used for the things a plant does not control tightly: demand, job parameters,
    ambient temperature. `tau` is how long a deviation lasts, `sigma` its typical size.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        mean: float,
        sigma: float,
        tau: float,
        low: float,
        high: float,
    ) -> None:
        self.rng = rng
        self.mean = mean
        self.sigma = sigma
        self.tau = tau
        self.low = low
        self.high = high
        self.value = min(max(mean + sigma * float(rng.standard_normal()), low), high)

    def advance(self, dt: float) -> float:
        decay = math.exp(-dt / self.tau)
        spread = self.sigma * math.sqrt(1.0 - decay * decay)
        self.value = self.mean + (self.value - self.mean) * decay
        self.value += spread * float(self.rng.standard_normal())
        self.value = min(max(self.value, self.low), self.high)
        return self.value


@dataclass(frozen=True, slots=True)
class Conditions:
    """What the scenario imposes on an asset's physics during one step."""

    forced: MachineState | None = None
    """DOWN (breakdown) or MAINTENANCE while a fault holds the machine there."""
    wear: float = 0.0
    """Bearing wear, 0 (new) .. 1 (about to fail)."""


class Operation:
    """The operating state machine: running and idle periods, breakdowns and maintenance.

    Left alone, a machine alternates running periods (minutes) with short idle periods
    (setup, waiting for material). A scenario can force it DOWN or into MAINTENANCE; when the
    force lifts the machine restarts after a short idle period, as after a repair.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        run_s: tuple[float, float] = (120.0, 420.0),
        idle_s: tuple[float, float] = (20.0, 60.0),
        restart_s: float = 10.0,
    ) -> None:
        self.rng = rng
        self.run_s = run_s
        self.idle_s = idle_s
        self.restart_s = restart_s
        self.state = MachineState.RUNNING
        self.idle_variant = 0
        """Which of the idle codes applies (e.g. ready vs setup), chosen per idle period."""
        self.remaining = self._draw(run_s)
        self.time_in_state = 0.0

    def _draw(self, bounds: tuple[float, float]) -> float:
        return float(self.rng.uniform(*bounds))

    def _enter(self, state: MachineState, duration: float) -> None:
        self.state = state
        self.remaining = duration
        self.time_in_state = 0.0
        if state is MachineState.IDLE:
            self.idle_variant = int(self.rng.integers(0, 1 << 16))

    def advance(self, dt: float, forced: MachineState | None) -> MachineState:
        self.time_in_state += dt
        if forced is not None:
            if self.state is not forced:
                self._enter(forced, math.inf)
            return self.state
        if self.state in (MachineState.DOWN, MachineState.MAINTENANCE):
            self._enter(MachineState.IDLE, self.restart_s)
            return self.state
        self.remaining -= dt
        if self.remaining <= 0:
            if self.state is MachineState.RUNNING:
                self._enter(MachineState.IDLE, self._draw(self.idle_s))
            else:
                self._enter(MachineState.RUNNING, self._draw(self.run_s))
        return self.state

    @property
    def running(self) -> bool:
        return self.state is MachineState.RUNNING


class AssetModel(ABC):
    """The true (noise-free) values of one asset's signals, advanced step by step.

    `values()` may name signals the asset does not have (they are ignored) and may leave out
    signals it has (the plant fills those with the generic model).
    """

    RUN_S: tuple[float, float] = (120.0, 420.0)
    """How long a running period lasts (uniform between the bounds), simulated seconds."""
    IDLE_S: tuple[float, float] = (20.0, 60.0)

    def __init__(self, asset: Asset, rng: np.random.Generator) -> None:
        self.asset = asset
        self.rng = rng
        self.operation = Operation(rng, self.RUN_S, self.IDLE_S)

    @abstractmethod
    def advance(self, dt: float, conditions: Conditions) -> None:
        """Move the physics forward by `dt` seconds of simulated time."""

    @abstractmethod
    def values(self) -> dict[str, float]:
        """The current true values, by signal name."""

    # Helpers that read the site file, so a model adapts to an asset's own ranges.

    def expected(self, signal: str, default: Range) -> Range:
        found = self.asset.signals.get(signal)
        return found.expected if found is not None else default

    def max_rate(self, signal: str, fraction: float, default: float) -> float:
        """A fraction of the signal's largest possible rate: what the machine normally does."""
        found = self.asset.signals.get(signal)
        return fraction * (found.max_rate if found is not None else default)

    def state_code(self) -> float | None:
        """The code of the current state per the type's KPI rule, or None without codes."""
        rule = self.asset.kpi.state if self.asset.kpi is not None else None
        if rule is None or rule.codes is None:
            return None
        codes = rule.codes.get(self.operation.state)
        if not codes:
            return None
        return float(codes[self.operation.idle_variant % len(codes)])

    def initial_count(self, signal: str, low: int, high: int) -> float:
        """Counters of a real machine do not start at zero."""
        found = self.asset.signals.get(signal)
        if found is None or found.kind is not SignalKind.COUNTER:
            return 0.0
        return float(self.rng.integers(low, high))

    def cycle_time(self, default: float) -> float:
        rules = self.asset.kpi
        if rules is not None and rules.ideal_cycle_time is not None:
            return rules.ideal_cycle_time.total_seconds()
        return default
