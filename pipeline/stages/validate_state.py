"""The validator's settings, its per-signal limits and its per-asset state (with snapshots).

Times inside the validator are integer microseconds since the Unix epoch, so state compares
exactly and a snapshot (JSON: only ints, floats, strings, lists and dicts) restores exactly.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.site import Signal, SignalKind, Site
from pipeline.stages.common import StageStateError

GAUGE, COUNTER, STATE = 0, 1, 2
_KINDS = {SignalKind.GAUGE: GAUGE, SignalKind.COUNTER: COUNTER, SignalKind.STATE: STATE}
_US = timedelta(microseconds=1)
SNAPSHOT_VERSION = 1


class ValidateSettings(BaseModel):
    """Tolerances of the validate stage (durations accept seconds or `timedelta`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    future_tolerance: timedelta = Field(default=timedelta(seconds=5), ge=timedelta(0))
    """A reading stamped later than now + this is FUTURE_TIMESTAMP (clock skew allowance)."""
    max_age: timedelta = Field(default=timedelta(hours=1), gt=timedelta(0))
    """A reading stamped earlier than now - this is TOO_OLD."""
    out_of_order_tolerance: timedelta = Field(default=timedelta(seconds=2), ge=timedelta(0))
    """A reading this much earlier than its signal's latest accepted one is OUT_OF_ORDER."""
    stale_periods: int = Field(default=10, ge=1)
    stale_min: timedelta = Field(default=timedelta(seconds=30), gt=timedelta(0))
    """A noisy gauge repeating the exact same value for max(stale_periods sampling periods,
    stale_min) is STALE: real sensor noise never repeats a float that long."""
    noise_sigmas: float = Field(default=4.0, ge=0)
    """Rate-of-change allowance for noise: a change between two readings may exceed
    max_rate·dt by noise_sigmas·√2·measurement_noise (both readings carry noise)."""
    dedup_window: int = Field(default=1024, ge=1)
    """Frame sequence numbers remembered per asset and source for duplicate detection."""

    @classmethod
    def for_site(cls, site: Site) -> ValidateSettings:
        """The defaults, with the time tolerances of the site's `validation:` section."""
        return cls(**site.validation.model_dump())


class SignalLimits:
    """What the checks need of one signal of one asset, precomputed (rates per microsecond)."""

    __slots__ = (
        "expected_max",
        "expected_min",
        "kind",
        "noise_allowance",
        "period_us",
        "physical_max",
        "physical_min",
        "rate_per_us",
        "stale_us",
    )

    def __init__(self, signal: Signal, settings: ValidateSettings) -> None:
        self.kind = _KINDS[signal.kind]
        self.physical_min = signal.physical.min
        self.physical_max = signal.physical.max
        self.expected_min = signal.expected.min
        self.expected_max = signal.expected.max
        self.rate_per_us = signal.max_rate / 1e6
        self.noise_allowance = settings.noise_sigmas * math.sqrt(2) * signal.measurement_noise
        self.period_us = signal.sampling_period // _US
        stale = max(signal.sampling_period * settings.stale_periods, settings.stale_min)
        noisy_gauge = self.kind == GAUGE and signal.measurement_noise > 0
        self.stale_us = stale // _US if noisy_gauge else 0
        """0: the signal is never STALE (counters, states and exact gauges may hold a value)."""


class SignalState:
    """The latest accepted reading of a signal, and since when its value has not changed."""

    __slots__ = ("since", "ts", "value")

    def __init__(self, ts: int, value: float, since: int) -> None:
        self.ts = ts
        self.value = value
        self.since = since


class SeqWindow:
    """The recent frame sequence numbers of one source (for one asset), bounded in size."""

    __slots__ = ("highest", "order", "seen")

    def __init__(self, highest: int, recent: list[int]) -> None:
        self.highest = highest
        self.order: deque[int] = deque(recent)
        self.seen = set(recent)

    def add(self, seq: int, capacity: int) -> None:
        if len(self.order) >= capacity:
            self.seen.discard(self.order.popleft())
        self.order.append(seq)
        self.seen.add(seq)
        if seq > self.highest:
            self.highest = seq


class AssetState:
    """Everything the validator remembers about one asset."""

    __slots__ = ("signals", "sources")

    def __init__(self) -> None:
        self.signals: dict[str, SignalState] = {}
        self.sources: dict[str, SeqWindow] = {}

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "signals": {n: [s.ts, s.value, s.since] for n, s in self.signals.items()},
            "sources": {
                n: {"highest": w.highest, "recent": list(w.order)} for n, w in self.sources.items()
            },
        }

    @classmethod
    def restore(cls, asset_id: str, data: dict[str, Any]) -> AssetState:
        state = cls()
        try:
            if data["version"] != SNAPSHOT_VERSION:
                raise ValueError(f"snapshot version {data['version']!r}")
            for name, (ts, value, since) in data["signals"].items():
                state.signals[name] = SignalState(int(ts), float(value), int(since))
            for name, window in data["sources"].items():
                recent = [int(seq) for seq in window["recent"]]
                state.sources[name] = SeqWindow(int(window["highest"]), recent)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StageStateError(
                f"validate: cannot restore the state of asset {asset_id}: {exc!r}"
            ) from exc
        return state
