"""Constant-velocity Kalman filters for many signals at once: one array row per (asset, signal).

Each signal's state is its level and rate (units, units per second). The rate is a random walk
with density q (the site's `Signal.process_noise_density`), so over a step of dt seconds

    F = [[1, dt], [0, 1]]        Q = q · [[dt³/3, dt²/2], [dt²/2, dt]]

and a reading measures the level with variance r. The covariance is kept as its three distinct
entries (p_ll, p_lr, p_rr), which keeps it exactly symmetric and the update cheap.

`FilterStore` holds the filters of every asset the estimate stage has seen, each asset's
signals in consecutive rows, with the per-signal constants in the same layout. Every operation
works on a vector of rows, whatever assets they belong to, so a batch costs a few numpy calls per
round of readings rather than Python work per reading or per frame. A step never runs
backwards: a reading that is not later than its signal's last update carries no new information
for a forward filter and is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Rows = npt.NDArray[np.intp]
Mask = npt.NDArray[np.bool_]

_STATE_FIELDS = ("level", "rate", "p_ll", "p_lr", "p_rr", "run_sign")
"""Float state columns, in the snapshot's key order (then t_us, ready, run)."""
_CONSTANTS = ("q", "r", "rate_variance0", "max_rate", "gate", "passthrough")


@dataclass(frozen=True, slots=True)
class SignalConstants:
    """Per-signal constants of some rows, from the site file and the stage settings."""

    q: Floats
    r: Floats
    """Measurement variance (floored above zero)."""
    rate_variance0: Floats
    """Rate variance of a freshly (re)initialised filter: the rate is not known yet."""
    max_rate: Floats
    """Largest physically possible rate of change (units per second)."""
    gate: Floats
    """NIS above which a reading is an outlier; inf where readings are exact (no gate)."""
    passthrough: Mask
    """Signals whose readings are taken as they are (state codes): no filtering."""

    def take(self, rows: Rows) -> SignalConstants:
        return SignalConstants(*(getattr(self, name)[rows] for name in _CONSTANTS))


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


class FilterStore:
    """The filters of many signals: constants and state in arrays, one row per signal.

    Rows are handed out by `allocate` and never move; the arrays grow (by doubling) as needed,
    so read them through the attributes, not through references kept across an `allocate`.
    """

    def __init__(self, reinit_after: int, capacity: int = 64) -> None:
        self.reinit_after = reinit_after
        """Consecutive same-side outliers after which a filter restarts at the reading."""
        self.rows = 0
        """Rows in use."""
        self.signal = np.empty(capacity, dtype=object)
        """Signal name of each row."""
        self.q = np.zeros(capacity)
        self.r = np.zeros(capacity)
        self.rate_variance0 = np.zeros(capacity)
        self.max_rate = np.zeros(capacity)
        self.gate = np.zeros(capacity)
        self.passthrough = np.zeros(capacity, dtype=np.bool_)
        self.level = np.zeros(capacity)
        self.rate = np.zeros(capacity)
        self.p_ll = np.zeros(capacity)
        self.p_lr = np.zeros(capacity)
        self.p_rr = np.zeros(capacity)
        self.t_us = np.zeros(capacity, dtype=np.int64)
        """Time of the last update."""
        self.ready = np.zeros(capacity, dtype=np.bool_)
        """Initialised by a first usable reading."""
        self.run = np.zeros(capacity, dtype=np.int64)
        """Consecutive outliers on the same side of the prediction."""
        self.run_sign = np.zeros(capacity)

    @property
    def capacity(self) -> int:
        return int(self.level.size)

    def allocate(self, signals: npt.NDArray[np.object_], constants: SignalConstants) -> int:
        """New uninitialised rows for these signals (names) and constants; the first new row."""
        first, n = self.rows, int(signals.size)
        if first + n > self.capacity:
            self._grow(max(2 * self.capacity, first + n))
        new = slice(first, first + n)
        self.signal[new] = signals
        for name in _CONSTANTS:
            getattr(self, name)[new] = getattr(constants, name)
        self.rows = first + n
        return first

    def reset(self, rows: slice) -> None:
        """Forget the state of `rows` (back to uninitialised)."""
        for name in (*_STATE_FIELDS, "t_us", "ready", "run"):
            getattr(self, name)[rows] = 0

    def _grow(self, capacity: int) -> None:
        for name in ("signal", *_CONSTANTS, *_STATE_FIELDS, "t_us", "ready", "run"):
            old = getattr(self, name)
            new = np.empty(capacity, dtype=old.dtype)
            new[: old.size] = old
            new[old.size :] = None if old.dtype == object else 0
            setattr(self, name, new)

    def predict(self, rows: Rows, t_us: Ints | int) -> Prediction:
        """The state of `rows` at `t_us` (not stored); never predicts backwards."""
        dt = np.maximum(t_us - self.t_us[rows], 0) / 1e6
        q = self.q[rows]
        p_lr, p_rr = self.p_lr[rows], self.p_rr[rows]
        dt2 = dt * dt
        return Prediction(
            level=self.level[rows] + dt * self.rate[rows],
            rate=self.rate[rows],
            p_ll=self.p_ll[rows] + 2 * dt * p_lr + dt2 * p_rr + q * dt2 * dt / 3,
            p_lr=p_lr + dt * p_rr + q * dt2 / 2,
            p_rr=p_rr + q * dt,
        )

    def step(self, rows: Rows, t_us: Ints, z: Floats) -> StepResult:
        """Absorb one reading per row (rows unique) taken at `t_us`, gating outliers."""
        fresh = ~self.ready[rows] | (t_us > self.t_us[rows])
        if not fresh.all():
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
        # The common case (every row initialised, no outlier, no state code) ends here; the
        # other branch leaves such rows exactly as they are (x * 1.0 and where(False) are exact).
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

    def snapshot(self, rows: slice) -> dict[str, Any]:
        """JSON-able state of `rows`: their signal names, then per field a list in row order."""
        state: dict[str, Any] = {"signals": self.signal[rows].tolist()}
        for name in _STATE_FIELDS:
            state[name] = getattr(self, name)[rows].tolist()
        state["t_us"] = self.t_us[rows].tolist()
        state["ready"] = self.ready[rows].tolist()
        state["run"] = self.run[rows].tolist()
        return state

    def restore(self, first: int, index: dict[str, int], state: dict[str, Any]) -> None:
        """Load a `snapshot` into the rows from `first` on, where `index` maps a signal name to
        its row offset; signals the state does not know start uninitialised, unknown ones drop.
        Raises KeyError, TypeError, ValueError or IndexError, before changing anything, when the
        state is not a snapshot."""
        names: list[str] = state["signals"]
        src = np.array([i for i, name in enumerate(names) if name in index], dtype=np.intp)
        dst = np.array([index[name] for name in names if name in index], dtype=np.intp)
        loaded: dict[str, npt.NDArray[Any]] = {
            name: np.asarray(state[name], dtype=np.float64)[src] for name in _STATE_FIELDS
        }
        loaded["t_us"] = np.asarray(state["t_us"], dtype=np.int64)[src]
        loaded["ready"] = np.asarray(state["ready"], dtype=np.bool_)[src]
        loaded["run"] = np.asarray(state["run"], dtype=np.int64)[src]
        self.reset(slice(first, first + len(index)))
        for name, values in loaded.items():
            getattr(self, name)[first + dst] = values
