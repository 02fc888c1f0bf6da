"""The estimate stage: validated frames in, one state estimate per frame out (twin.state).

Per asset and signal a constant-velocity Kalman filter (`pipeline.stages.kalman`) tracks the
level and its rate, with the process and measurement noise of the site file and the time step
taken from the readings' own timestamps.

What the stage does with readings:

- **Usable** readings update the filter: finite value, device quality not BAD, and none of the
  `EstimateSettings.unusable_flags` (by default: broken, untimely, duplicated, stale or
  device-doubted readings; UNCERTAIN quality counts as DEVICE_UNCERTAIN). Range and
  rate-of-change flags do not make a reading unusable: judging a surprising value is the
  innovation gate's job. Other readings leave the filter predicting only (`measured` false),
  and its variance grows with the time since the last update.
- **Gating**: a reading whose normalised innovation squared (NIS = y²/S) exceeds
  `EstimateSettings.gate` is an outlier: reported, not absorbed. Unless the truth could have
  got there: a surprising reading within the signal's `max_rate` of the last estimate is a
  manoeuvre (a machine starting a ramp changes its rate far faster than the random-walk model
  expects); it is absorbed with the rate's uncertainty raised just enough to pass the gate.
  Without this, ramp starts would be rejected and the estimate would lag far behind the
  readings. A real level shift (faster than `max_rate`) must not be rejected forever, so after
  `reinit_after` consecutive outliers on the same side of the prediction the filter restarts
  at the reading with rate 0 (`outlier` false, `measured` true, the large NIS reported).
  Spikes come alone or on both sides of the truth, and do not restart it.
- **Counters** are exact: their measurement variance is floored at
  `min_measurement_variance` and they are not gated (a count that jumps did jump).
- **State codes** (kind "state") are not filtered at all: the reading passes through with rate
  0, zero variances and no innovation or NIS (a code has no noise to filter and its changes are
  not motion).
- Several readings of one signal in a frame are absorbed in time order, in rounds (the k-th
  reading of every signal in round k), each round one set of array operations.

The output carries every signal of the asset that has been initialised by a usable reading at
some time (in the site's signal order), predicted to the frame's time `ts`: the latest reading
time of the frame whose timestamp is trusted (not FUTURE_TIMESTAMP or TOO_OLD), and never
earlier than the asset's last update. Signals that never had a usable reading are left out:
there is nothing to report about them. The prediction to `ts` is not stored, so a slower
signal's reading sampled a little before `ts` is still absorbed by the next frame.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import TwinError
from pipeline.site import Asset, SignalKind, Site
from pipeline.stages.common import from_micros, to_micros
from pipeline.stages.kalman import SignalFilters

CHI2_999_1DOF = 10.827566170662733
"""The 0.999 quantile of the chi-square distribution with one degree of freedom."""

DEFAULT_UNUSABLE_FLAGS = frozenset(
    {
        "NOT_FINITE",
        "OUT_OF_PHYSICAL_RANGE",
        "STALE",
        "FUTURE_TIMESTAMP",
        "TOO_OLD",
        "OUT_OF_ORDER",
        "DUPLICATE",
        "UNKNOWN_SIGNAL",
        "DEVICE_BAD",
        "DEVICE_UNCERTAIN",
    }
)
_UNTRUSTED_TIME = frozenset({"FUTURE_TIMESTAMP", "TOO_OLD"})


class EstimateError(TwinError):
    """A frame or a state the estimate stage cannot work with (e.g. an asset the site lacks)."""


class EstimateSettings(BaseModel):
    """How the estimate stage filters; unknown keys are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gate: float = Field(default=CHI2_999_1DOF, gt=0)
    """NIS above which a reading is an outlier (default: chi-square 0.999 quantile, 1 dof)."""
    reinit_after: int = Field(default=3, ge=1)
    """Consecutive same-side outliers after which the filter restarts at the reading."""
    unusable_flags: frozenset[str] = DEFAULT_UNUSABLE_FLAGS
    """Validator flags that keep a reading out of the filter."""
    min_measurement_variance: float = Field(default=1e-9, gt=0)
    """Floor of R (signal unit²) for exact signals whose site measurement noise is 0."""


class Estimator:
    """Kalman state estimation per asset; state per asset via `snapshot`/`restore`."""

    def __init__(self, site: Site, settings: EstimateSettings | None = None) -> None:
        self.site = site
        self.settings = settings if settings is not None else EstimateSettings()
        self._filters: dict[str, SignalFilters] = {}
        self._unusable = self.settings.unusable_flags
        self._skip_uncertain = "DEVICE_UNCERTAIN" in self._unusable

    def assets(self) -> list[str]:
        return list(self._filters)

    def snapshot(self, asset_id: str) -> dict[str, Any] | None:
        filters = self._filters.get(asset_id)
        return None if filters is None else filters.snapshot()

    def restore(self, asset_id: str, state: dict[str, Any]) -> None:
        filters = self._new_filters(self._asset(asset_id))
        try:
            filters.restore(state)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise EstimateError(
                f"estimate: cannot restore state of asset {asset_id}: {exc}"
            ) from exc
        self._filters[asset_id] = filters

    def estimate(self, frame: dict[str, Any]) -> dict[str, Any]:
        """The state_estimate record for one validated_frame record."""
        asset_id: str = frame["asset_id"]
        filters = self._filters.get(asset_id)
        if filters is None:
            filters = self._filters[asset_id] = self._new_filters(self._asset(asset_id))
        latest, rows, times, values = self._usable(filters, frame["readings"])

        n = len(filters.names)
        innovation = np.full(n, np.nan)
        nis = np.full(n, np.nan)
        outlier = np.zeros(n, dtype=np.bool_)
        measured = np.zeros(n, dtype=np.bool_)
        for sel in _rounds(rows, times):
            result = filters.step(rows[sel], times[sel], values[sel])
            innovation[result.rows] = result.innovation
            nis[result.rows] = result.nis
            outlier[result.rows] |= result.outlier
            measured[result.rows] |= ~result.outlier

        ready = np.flatnonzero(filters.ready)
        if ready.size:
            latest = max(latest, int(filters.t_us[ready].max()))
        if latest < 0:
            latest = to_micros(frame["ingest_ts"])
        pred = filters.predict(ready, latest)
        signals = [
            {
                "signal": filters.names[row],
                "value": value,
                "rate": rate,
                "variance": p_ll,
                "rate_variance": p_rr,
                "innovation": None if math.isnan(inn) else inn,
                "nis": None if math.isnan(ni) else ni,
                "outlier": out,
                "measured": meas,
            }
            for row, value, rate, p_ll, p_rr, inn, ni, out, meas in zip(
                ready.tolist(),
                pred.level.tolist(),
                pred.rate.tolist(),
                pred.p_ll.tolist(),
                pred.p_rr.tolist(),
                innovation[ready].tolist(),
                nis[ready].tolist(),
                outlier[ready].tolist(),
                measured[ready].tolist(),
                strict=True,
            )
        ]
        return {
            "asset_id": asset_id,
            "source_id": frame["source_id"],
            "seq": frame["seq"],
            "ts": from_micros(latest),
            "ingest_ts": frame["ingest_ts"],
            "signals": signals,
        }

    def _usable(
        self, filters: SignalFilters, readings: list[dict[str, Any]]
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """The frame's latest trusted time (-1 if none) and its usable readings as arrays."""
        index, unusable, skip_uncertain = filters.index, self._unusable, self._skip_uncertain
        latest = -1
        rows: list[int] = []
        times: list[int] = []
        values: list[float] = []
        for reading in readings:
            row = index.get(reading["signal"])
            if row is None:
                continue
            flags = reading["flags"]
            t_us = to_micros(reading["ts"])
            if _UNTRUSTED_TIME.isdisjoint(flags) and t_us > latest:
                latest = t_us
            quality = reading["quality"]
            if (
                quality == "BAD"
                or (skip_uncertain and quality == "UNCERTAIN")
                or not unusable.isdisjoint(flags)
            ):
                continue
            rows.append(row)
            times.append(t_us)
            values.append(reading["value"])
        z = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(z)
        return (
            latest,
            np.asarray(rows, dtype=np.intp)[finite],
            np.asarray(times, dtype=np.int64)[finite],
            z[finite],
        )

    def _asset(self, asset_id: str) -> Asset:
        asset = self.site.get_asset(asset_id)
        if asset is None:
            raise EstimateError(f"estimate: asset {asset_id!r} is not in site {self.site.name}")
        return asset

    def _new_filters(self, asset: Asset) -> SignalFilters:
        signals = list(asset.signals.values())
        floor = self.settings.min_measurement_variance
        kinds = [s.kind for s in signals]
        return SignalFilters(
            names=tuple(s.name for s in signals),
            q=np.array(
                [
                    0.0 if k is SignalKind.STATE else s.process_noise_density
                    for s, k in zip(signals, kinds, strict=True)
                ]
            ),
            r=np.array([max(s.measurement_noise**2, floor) for s in signals]),
            rate_variance0=np.array([s.max_rate**2 for s in signals]),
            max_rate=np.array([s.max_rate for s in signals]),
            gate=np.array(
                [self.settings.gate if k is SignalKind.GAUGE else math.inf for k in kinds]
            ),
            passthrough=np.array([k is SignalKind.STATE for k in kinds], dtype=np.bool_),
            reinit_after=self.settings.reinit_after,
        )


def _rounds(rows: np.ndarray, times: np.ndarray) -> list[np.ndarray]:
    """Index arrays, one per round: the k-th reading (in time) of every signal in round k."""
    if rows.size == 0:
        return []
    order = np.lexsort((times, rows))
    sorted_rows = rows[order]
    first = np.ones(rows.size, dtype=np.bool_)
    first[1:] = sorted_rows[1:] != sorted_rows[:-1]
    positions = np.arange(rows.size)
    rank = positions - np.maximum.accumulate(np.where(first, positions, 0))
    last = int(rank.max())
    if last == 0:
        return [order]
    return [order[rank == k] for k in range(last + 1)]
