"""The earlier per-frame implementation of the estimate stage, kept as the reference the batch
implementation (`Estimator.estimate_frames`) is checked against.

It is the estimate stage and its Kalman filters as they were before the batch store: one
`SignalFilters` object per asset, each frame filtered on its own with a few rounds of array
operations over the asset's signals. See `pipeline.stages.estimate` and `pipeline.stages.kalman`
for what the filter does; this module must keep doing exactly that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.site import Asset, SignalKind, Site
from pipeline.stages.common import from_micros, to_micros
from pipeline.stages.estimate import EstimateError, EstimateSettings

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Rows = npt.NDArray[np.intp]
Mask = npt.NDArray[np.bool_]

_UNTRUSTED_TIME = frozenset({"FUTURE_TIMESTAMP", "TOO_OLD"})
_STATE_FIELDS = ("level", "rate", "p_ll", "p_lr", "p_rr", "run_sign")


@dataclass(frozen=True, slots=True)
class Prediction:
    level: Floats
    rate: Floats
    p_ll: Floats
    p_lr: Floats
    p_rr: Floats


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step did to each of its rows (only rows whose reading was new)."""

    rows: Rows
    innovation: Floats
    """Reading minus predicted level; NaN for a first reading and for pass-through signals."""
    nis: Floats
    """innovation² / S; NaN where the innovation is."""
    outlier: Mask
    """Failed the gate and was not absorbed."""


class SignalFilters:
    """The filters of one asset's signals; constants from the site, state in arrays."""

    def __init__(
        self,
        names: tuple[str, ...],
        q: Floats,
        r: Floats,
        rate_variance0: Floats,
        max_rate: Floats,
        gate: Floats,
        passthrough: Mask,
        reinit_after: int,
    ) -> None:
        n = len(names)
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}
        self.q = q
        self.r = r
        """Measurement variance (floored above zero)."""
        self.rate_variance0 = rate_variance0
        """Rate variance of a freshly (re)initialised filter: the rate is not known yet."""
        self.max_rate = max_rate
        """Largest physically possible rate of change (units per second)."""
        self.gate = gate
        """NIS above which a reading is an outlier; inf where readings are exact (no gate)."""
        self.passthrough = passthrough
        """Signals whose readings are taken as they are (state codes): no filtering."""
        self.reinit_after = reinit_after
        self.level = np.zeros(n)
        self.rate = np.zeros(n)
        self.p_ll = np.zeros(n)
        self.p_lr = np.zeros(n)
        self.p_rr = np.zeros(n)
        self.t_us = np.zeros(n, dtype=np.int64)
        self.ready = np.zeros(n, dtype=np.bool_)
        """Initialised by a first usable reading."""
        self.run = np.zeros(n, dtype=np.int64)
        """Consecutive outliers on the same side of the prediction."""
        self.run_sign = np.zeros(n)

    def predict(self, rows: Rows, t_us: Ints | int) -> Prediction:
        """The state of `rows` at `t_us` (not stored); never predicts backwards."""
        dt = np.maximum(t_us - self.t_us[rows], 0) / 1e6
        q = self.q[rows]
        p_lr, p_rr = self.p_lr[rows], self.p_rr[rows]
        dt2 = dt * dt
        return Prediction(
            level=self.level[rows] + dt * self.rate[rows],
            rate=self.rate[rows].copy(),
            p_ll=self.p_ll[rows] + 2 * dt * p_lr + dt2 * p_rr + q * dt2 * dt / 3,
            p_lr=p_lr + dt * p_rr + q * dt2 / 2,
            p_rr=p_rr + q * dt,
        )

    def step(self, rows: Rows, t_us: Ints, z: Floats) -> StepResult:
        """Absorb one reading per row (rows unique) taken at `t_us`, gating outliers."""
        fresh = ~self.ready[rows] | (t_us > self.t_us[rows])
        rows, t_us, z = rows[fresh], t_us[fresh], z[fresh]
        ready = self.ready[rows]
        dt = (t_us - self.t_us[rows]) / 1e6
        pred = self.predict(rows, t_us)
        r = self.r[rows]
        y = z - pred.level
        nis = y * y / (pred.p_ll + r)
        gate = self.gate[rows]
        surprise = ready & (nis > gate)
        # A surprising reading the truth could have reached from the last estimate at the
        # signal's max_rate is a manoeuvre (the rate changed), not an outlier: it is absorbed
        # after adding just enough uncertainty about a change of rate at the last update to
        # bring its NIS down to the gate, so a large jump resets the rate to about y/dt and a
        # marginal one barely changes the filter.
        reach = self.max_rate[rows] * dt + np.sqrt(gate * (self.p_ll[rows] + r))
        manoeuvre = surprise & (np.abs(z - self.level[rows]) <= reach)
        if manoeuvre.any():
            excess = np.where(manoeuvre, y * y / gate - (pred.p_ll + r), 0.0)
            safe_dt = np.where(manoeuvre, dt, 1.0)
            pred = Prediction(
                pred.level,
                pred.rate,
                pred.p_ll + excess,
                pred.p_lr + excess / safe_dt,
                pred.p_rr + excess / (safe_dt * safe_dt),
            )
        s = pred.p_ll + r
        k_l, k_r = pred.p_ll / s, pred.p_lr / s
        keep = r / s  # 1 - k_l, without cancellation when r is tiny
        level = pred.level + k_l * y
        rate = pred.rate + k_r * y
        p_ll = pred.p_ll * keep
        p_lr = pred.p_lr * keep
        p_rr = pred.p_rr - k_r * pred.p_lr
        outlier = np.zeros(rows.size, dtype=np.bool_)

        passthrough = self.passthrough[rows]
        gated = surprise & ~manoeuvre
        # The common case (every row initialised, no outlier, no state code) ends here.
        if gated.any() or passthrough.any() or not ready.all():
            sign = np.sign(y)
            run = np.where(self.run_sign[rows] == sign, self.run[rows] + 1, 1)
            reinit = (gated & (run >= self.reinit_after)) | ~ready
            outlier = gated & ~reinit & ~passthrough
            level = np.where(outlier, pred.level, level)
            rate = np.where(outlier, pred.rate, rate)
            p_ll = np.where(outlier, pred.p_ll, p_ll)
            p_lr = np.where(outlier, pred.p_lr, p_lr)
            p_rr = np.where(outlier, pred.p_rr, p_rr)
            level = np.where(reinit | passthrough, z, level)
            rate = np.where(reinit, 0.0, rate)
            p_ll = np.where(reinit, r, p_ll)
            p_lr = np.where(reinit, 0.0, p_lr)
            p_rr = np.where(reinit, self.rate_variance0[rows], p_rr)
            zero = np.where(passthrough, 0.0, 1.0)
            rate, p_ll, p_lr, p_rr = rate * zero, p_ll * zero, p_lr * zero, p_rr * zero
            self.run[rows] = np.where(outlier, run, 0)
            self.run_sign[rows] = np.where(outlier, sign, 0.0)
            hidden = ~ready | passthrough
            y = np.where(hidden, np.nan, y)
            nis = np.where(hidden, np.nan, nis)
        else:
            self.run[rows] = 0
            self.run_sign[rows] = 0.0

        self.level[rows], self.rate[rows] = level, rate
        self.p_ll[rows], self.p_lr[rows], self.p_rr[rows] = p_ll, p_lr, p_rr
        self.t_us[rows] = t_us
        self.ready[rows] = True
        return StepResult(rows, y, nis, outlier)

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: per signal name, lists in row order."""
        state: dict[str, Any] = {"signals": list(self.names)}
        for name in _STATE_FIELDS:
            state[name] = getattr(self, name).tolist()
        state["t_us"] = self.t_us.tolist()
        state["ready"] = self.ready.tolist()
        state["run"] = self.run.tolist()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Load a `snapshot`; signals it does not know start uninitialised, unknown ones drop."""
        names: list[str] = state["signals"]
        src = np.array([i for i, name in enumerate(names) if name in self.index], dtype=np.intp)
        dst = np.array([self.index[name] for name in names if name in self.index], dtype=np.intp)
        for name in _STATE_FIELDS:
            getattr(self, name)[dst] = np.asarray(state[name], dtype=np.float64)[src]
        self.t_us[dst] = np.asarray(state["t_us"], dtype=np.int64)[src]
        self.ready[dst] = np.asarray(state["ready"], dtype=np.bool_)[src]
        self.run[dst] = np.asarray(state["run"], dtype=np.int64)[src]


class ReferenceEstimator:
    """The per-frame estimator: one frame at a time, one `SignalFilters` per asset."""

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
