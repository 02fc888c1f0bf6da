"""The anomaly stage's model: an online Hotelling T² over one asset's feature vector.

`HotellingT2` follows river's anomaly-detector protocol (`learn_one(x)`, `score_one(x)` over a
dict of features; higher is more anomalous) and keeps its statistics in numpy arrays, because a
river `stats`/`covariance` object per feature pair costs far more than a record's budget at 16
signals (32 features, 528 pairs). Per feature it keeps an exponentially weighted mean, over the
features an exponentially weighted covariance, and it scores

    T² = (x - mean)ᵀ (cov + ridge·diag(cov))⁻¹ (x - mean)

with the inverse refreshed every `refresh` learned records (so a record costs O(d²), not O(d³)).
The first records are averaged evenly (rate 1/n) until the exponential rate takes over.

`P2Quantile` is the P² algorithm (Jain & Chlamtac, 1985; the one behind river's
`stats.Quantile`) with its five markers in plain lists, so its state is JSON.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Hashable
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from river.base import AnomalyDetector as RiverAnomalyDetector

Floats = npt.NDArray[np.float64]


class P2Quantile:
    """Running estimate of one quantile in O(1) memory (the P² algorithm)."""

    def __init__(self, q: float) -> None:
        self.q = q
        self.heights: list[float] = []
        self.positions = [1.0, 2.0, 3.0, 4.0, 5.0]
        self.desired = [1.0, 1.0 + 2 * q, 1.0 + 4 * q, 3.0 + 2 * q, 5.0]
        self.n = 0

    def update(self, x: float) -> None:
        self.n += 1
        h = self.heights
        if len(h) < 5:
            h.append(x)
            h.sort()
            return
        if x < h[0]:
            h[0] = x
            k = 0
        elif x >= h[4]:
            h[4] = x
            k = 3
        else:
            k = 0
            while x >= h[k + 1]:
                k += 1
        pos = self.positions
        for i in range(k + 1, 5):
            pos[i] += 1
        q = self.q
        for i, step in enumerate((0.0, q / 2, q, (1 + q) / 2, 1.0)):
            self.desired[i] += step
        for i in (1, 2, 3):
            gap = self.desired[i] - pos[i]
            if (gap >= 1 and pos[i + 1] - pos[i] > 1) or (gap <= -1 and pos[i - 1] - pos[i] < -1):
                d = 1 if gap > 0 else -1
                parabolic = h[i] + d / (pos[i + 1] - pos[i - 1]) * (
                    (pos[i] - pos[i - 1] + d) * (h[i + 1] - h[i]) / (pos[i + 1] - pos[i])
                    + (pos[i + 1] - pos[i] - d) * (h[i] - h[i - 1]) / (pos[i] - pos[i - 1])
                )
                if h[i - 1] < parabolic < h[i + 1]:
                    h[i] = parabolic
                else:
                    h[i] += d * (h[i + d] - h[i]) / (pos[i + d] - pos[i])
                pos[i] += d

    def get(self) -> float:
        """The estimate (NaN before any value)."""
        h = self.heights
        if not h:
            return math.nan
        if len(h) < 5:
            return h[min(int(self.q * len(h)), len(h) - 1)]
        return h[2]

    def snapshot(self) -> dict[str, Any]:
        return {
            "q": self.q,
            "heights": list(self.heights),
            "positions": list(self.positions),
            "desired": list(self.desired),
            "n": self.n,
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> P2Quantile:
        quantile = cls(float(state["q"]))
        quantile.heights = [float(v) for v in state["heights"]]
        quantile.positions = [float(v) for v in state["positions"]]
        quantile.desired = [float(v) for v in state["desired"]]
        quantile.n = int(state["n"])
        return quantile


class HotellingT2(RiverAnomalyDetector):
    """Online Hotelling T² with per-feature learning rates (see the module doc).

    `features` fixes the vector's order. `learn_one(x, rates)` takes an optional per-feature
    scale of the learning rate (0 learns nothing of that feature, as for a missing value);
    `score_one(x)` ignores features that are missing or have fewer than `min_samples`
    learned values.
    """

    def __init__(
        self,
        features: tuple[str, ...],
        mean_half_life: float = 150.0,
        cov_half_life: float = 1000.0,
        ridge: float = 0.01,
        refresh: int = 10,
        min_samples: int = 10,
    ) -> None:
        self.features = features
        self.mean_half_life = mean_half_life
        self.cov_half_life = cov_half_life
        self.ridge = ridge
        self.refresh = refresh
        self.min_samples = min_samples
        d = len(features)
        self._mean_rate = 1 - 0.5 ** (1 / mean_half_life)
        self._cov_rate = 1 - 0.5 ** (1 / cov_half_life)
        self.mean = np.zeros(d)
        self.cov = np.zeros((d, d))
        self.counts = np.zeros(d)
        """Values learned per feature."""
        self.precision = np.zeros((d, d))
        """The regularised inverse of `cov` as of the last refresh (zero before the first)."""
        self.learned = 0

    # -- river protocol -------------------------------------------------------------------

    def learn_one(self, x: dict[Hashable, Any], rates: dict[str, float] | None = None) -> None:
        vector, present = self.vector(x)
        scale = present.astype(np.float64)
        if rates is not None:
            scale *= np.array([rates.get(f, 1.0) for f in self.features])
        self.learn_vector(vector, present, scale)

    def score_one(self, x: dict[Hashable, Any]) -> float:
        vector, present = self.vector(x)
        return self.score_vector(self.deviation(vector, present))

    # -- vectors --------------------------------------------------------------------------

    def vector(self, x: dict[Hashable, Any]) -> tuple[Floats, npt.NDArray[np.bool_]]:
        vector = np.array([x.get(f, math.nan) for f in self.features], dtype=np.float64)
        return vector, np.isfinite(vector)

    def deviation(self, vector: Floats, present: npt.NDArray[np.bool_]) -> Floats:
        """x - mean where the feature is present and known; 0 elsewhere."""
        usable = present & (self.counts >= self.min_samples)
        return np.where(usable, vector - self.mean, 0.0)

    def score_vector(self, deviation: Floats) -> float:
        return float(deviation @ self.precision @ deviation)

    def contributions(self, deviation: Floats) -> Floats:
        """Each feature's part of T² (they sum to it; negative parts are clipped to 0)."""
        return np.maximum(deviation * (self.precision @ deviation), 0.0)

    def std(self) -> Floats:
        return np.sqrt(np.maximum(np.diag(self.cov), 0.0))

    def learn_vector(
        self, vector: Floats, present: npt.NDArray[np.bool_], scale: Floats, cov_scale: float = 1.0
    ) -> None:
        """One learning step; `scale` per feature (0 = not learned), `cov_scale` for the
        covariance (0 = not learned)."""
        learning = scale > 0
        counts = self.counts + learning
        first = learning & (self.counts == 0)
        # The first value of a feature sets its mean; after that, even weights 1/n until
        # the exponential rate is larger.
        rates = np.where(counts > 0, np.maximum(self._mean_rate, 1 / np.maximum(counts, 1)), 0.0)
        delta = np.where(present, vector - self.mean, 0.0)
        delta[first] = 0.0
        self.mean = np.where(first, vector, self.mean + rates * scale * delta)
        self.counts = counts
        if cov_scale > 0:
            self.learned += 1
            rate = max(self._cov_rate, 1 / self.learned) * cov_scale
            both = np.outer(present, present)
            update = (1 - rate) * (self.cov + rate * np.outer(delta, delta))
            self.cov = np.where(both, update, self.cov)
            if self.learned % self.refresh == 0:
                self._refresh()

    def _refresh(self) -> None:
        known = self.counts >= self.min_samples
        if not known.any():
            return
        diag = np.diag(self.cov)
        floor = 1e-12 * (1.0 + float(np.max(np.abs(diag))))
        regular = self.cov + np.diag(self.ridge * diag + floor)
        precision = np.zeros_like(self.cov)
        idx = np.flatnonzero(known)
        try:
            precision[np.ix_(idx, idx)] = np.linalg.inv(regular[np.ix_(idx, idx)])
        except np.linalg.LinAlgError:
            return
        self.precision = precision

    # -- state ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The model's arrays as base64 of their little-endian float64 bytes: exact, and a
        string per array is far cheaper to encode and store than JSON lists of 2·d² floats.
        The covariance is symmetric by construction, so only its upper triangle is kept."""
        return {
            "mean": pack_floats(self.mean),
            "cov_upper": pack_floats(self.cov.ravel()[upper_triangle(len(self.features)).flat]),
            "counts": pack_floats(self.counts),
            "precision": pack_floats(self.precision),
            "learned": self.learned,
        }

    def restore(self, state: dict[str, Any]) -> None:
        d = len(self.features)
        mean = unpack_floats(state["mean"], (d,))
        counts = unpack_floats(state["counts"], (d,))
        precision = unpack_floats(state["precision"], (d, d))
        upper = upper_triangle(d)
        cov = np.zeros((d, d))
        cov[upper.rows, upper.cols] = unpack_floats(state["cov_upper"], (upper.flat.size,))
        cov.T[upper.rows, upper.cols] = cov[upper.rows, upper.cols]
        self.mean, self.cov, self.counts, self.precision = mean, cov, counts, precision
        self.learned = int(state["learned"])


_FLOAT64_LE = np.dtype("<f8")


class UpperTriangle:
    """The upper triangle (diagonal included) of a d × d matrix, in `np.triu_indices` order:
    as row and column indices, and as indices into the row-major flattened matrix."""

    __slots__ = ("cols", "flat", "rows")

    def __init__(self, d: int) -> None:
        rows, cols = np.triu_indices(d)
        self.rows: npt.NDArray[np.intp] = rows
        self.cols: npt.NDArray[np.intp] = cols
        self.flat: npt.NDArray[np.intp] = rows * d + cols
        for index in (rows, cols, self.flat):
            index.flags.writeable = False  # shared by every model of that dimension


@lru_cache(maxsize=64)
def upper_triangle(d: int) -> UpperTriangle:
    """The (shared, read-only) upper triangle indices of dimension `d`: `np.triu_indices`
    costs more than the rest of a snapshot, and a site has few distinct dimensions."""
    return UpperTriangle(d)


def pack_floats(values: Floats) -> str:
    """`values` as base64 of their little-endian float64 bytes (exact, NaN and inf included)."""
    data = np.ascontiguousarray(values, dtype=_FLOAT64_LE).tobytes()
    # What base64.b64encode does, without its Python-level wrapper (a snapshot packs 4 arrays).
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def unpack_floats(text: str, shape: tuple[int, ...]) -> Floats:
    """The array `pack_floats` made, in the native byte order; ValueError if it does not
    hold exactly `shape`'s number of floats."""
    if not isinstance(text, str):
        raise TypeError(f"expected a base64 string, got {type(text).__name__}")
    data = base64.b64decode(text, validate=True)
    size = math.prod(shape)
    if len(data) != size * _FLOAT64_LE.itemsize:
        raise ValueError(f"{len(data)} bytes where {size} float64 values belong")
    return np.frombuffer(data, dtype=_FLOAT64_LE).astype(np.float64).reshape(shape)
