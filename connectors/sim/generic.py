"""The generic asset model: plausible values for any signal of any site file.

Gauges move with a first-order lag toward the middle of their expected range plus a slow
oscillation and a slow random drift, never faster than the signal's `max_rate`. Counters
advance while the machine runs (one part per ideal cycle when the type's KPI rules name the
counter, otherwise at a fraction of `max_rate`). State signals show the operating state's
code; a signal that the KPI rules read as "running above X" sits above X while running and
below it otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from connectors.sim.physics import AssetModel, Conditions, Operation, Wander, lag
from pipeline.site import Asset, MachineState, Signal, SignalKind


class _Gauge:
    def __init__(self, signal: Signal, rng: np.random.Generator) -> None:
        expected = signal.expected
        self.signal = signal
        self.mid = (expected.min + expected.max) / 2
        self.amplitude = 0.2 * expected.span
        self.period = float(rng.uniform(120.0, 600.0))
        self.phase = float(rng.uniform(0.0, 2 * math.pi))
        # Fast enough to follow the oscillation, slow enough that the lag alone never
        # exceeds the signal's largest possible rate of change.
        self.tau = max(1.0, 2.0 * expected.span / signal.max_rate)
        self.drift = Wander(rng, 0.0, 0.05 * expected.span, 300.0, -expected.span, expected.span)
        self.value = self.mid


class GenericModel(AssetModel):
    def __init__(
        self,
        asset: Asset,
        rng: np.random.Generator,
        signals: Iterable[str] | None = None,
        operation: Operation | None = None,
    ) -> None:
        super().__init__(asset, rng)
        names = list(asset.signals) if signals is None else list(signals)
        self.owns_operation = operation is None
        if operation is not None:
            self.operation = operation
        self.time = 0.0
        self.gauges = {
            n: _Gauge(asset.signals[n], rng)
            for n in names
            if asset.signals[n].kind is SignalKind.GAUGE
        }
        self.counters = {
            n: self.initial_count(n, 1000, 100_000)
            for n in names
            if asset.signals[n].kind is SignalKind.COUNTER
        }
        self.states = [n for n in names if asset.signals[n].kind is SignalKind.STATE]
        kpi = asset.kpi
        self.state_rule = kpi.state if kpi is not None else None
        counters = kpi.counters if kpi is not None else None
        self.parts_total = counters.total if counters is not None else None
        self.parts_scrap = counters.scrap if counters is not None else None
        self.ideal_cycle = self.cycle_time(0.0)
        self.progress = 0.0

    def advance(self, dt: float, conditions: Conditions) -> None:
        if self.owns_operation:
            self.operation.advance(dt, conditions.forced)
        self.time += dt
        for name, gauge in self.gauges.items():
            gauge.drift.advance(dt)
            target = self._gauge_target(name, gauge)
            gauge.value = lag(gauge.value, target, gauge.tau, dt)
        if self.operation.running:
            self._count(dt)

    def _gauge_target(self, name: str, gauge: _Gauge) -> float:
        rule = self.state_rule
        if rule is not None and rule.signal == name and rule.running_above is not None:
            span = gauge.signal.expected.span
            state = self.operation.state
            if state is MachineState.RUNNING:
                return max(gauge.mid, rule.running_above + 0.25 * span)
            if state is not MachineState.IDLE and rule.idle_above is not None:
                return rule.idle_above - 0.05 * span
            if rule.idle_above is not None:
                return (rule.idle_above + rule.running_above) / 2
            return rule.running_above - 0.05 * span
        wave = gauge.amplitude * math.sin(2 * math.pi * self.time / gauge.period + gauge.phase)
        return gauge.mid + wave + gauge.drift.value

    def _count(self, dt: float) -> None:
        if self.parts_total in self.counters and self.ideal_cycle > 0:
            self.progress += dt / (self.ideal_cycle * 1.1)
            made = math.floor(self.progress)
            self.progress -= made
            self.counters[self.parts_total] += made
            if self.parts_scrap in self.counters and made:
                self.counters[self.parts_scrap] += int(self.rng.binomial(made, 0.02))
        for name in self.counters:
            if name not in (self.parts_total, self.parts_scrap):
                self.counters[name] += 0.3 * self.asset.signals[name].max_rate * dt

    def values(self) -> dict[str, float]:
        values = {name: gauge.value for name, gauge in self.gauges.items()}
        values.update(self.counters)
        code = self.state_code()
        for name in self.states:
            values[name] = code if code is not None else self.asset.signals[name].physical.min
        return values
