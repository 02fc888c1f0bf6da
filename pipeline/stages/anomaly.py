"""The anomaly stage: state estimates in, one anomaly score per estimate out (twin.anomaly).

    detector = AnomalyDetector(site)
    record = detector.score(state)   # state_estimate record -> anomaly_score record

Per asset, the features are, for every gauge of the asset (counters and state codes are left
out: their jumps are by design), the Kalman-filtered level and the normalised innovation
sign(innovation)·√NIS of the estimate. An online Hotelling T² (`HotellingT2`) scores how far
the vector is from what the asset normally does; the score is that T² smoothed over a few
records (`smoothing`), so a persistent small shift adds up while a single noisy record does not.

- **Threshold**: the `quantile` of the scores of records learned as normal, estimated online
  (P²), times `threshold_margin`. Nothing is hand-set per asset or dataset.
- **Warm-up**: the first `warmup` records are learned, not judged (`warming_up` true,
  `is_anomaly` false); the threshold starts being estimated half-way through.
- **Hysteresis**: an alarm is raised when the score exceeds the threshold and held until it has
  stayed below `clear_ratio`·threshold for `clear_after` records, so the flag does not chatter.
- **Protection**: while an alarm is on, the covariance and the threshold learn nothing, and
  at any time a feature further than `protect_sigmas` standard deviations from its mean moves
  that mean only at `absorb_rate` of the normal rate. Slow drifts (a motor warming up) are
  followed; a sudden shift is not learned as normal, yet a permanent change of regime is
  absorbed after some multiple of mean_half_life / absorb_rate records instead of alarming
  forever.
- Everything is counted in records, never in seconds, so the same settings serve a 1 Hz pump
  and a machine sampled every five minutes.

A gauge missing from a record, or not measured in it (prediction only), contributes nothing
to the score and is not learned; a signal that appears later joins once it has `min_samples`
values. Memory per asset is fixed by its number of gauges (d = 2·gauges: d² floats), and a
record costs O(d²).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import TwinError
from pipeline.site import Asset, SignalKind, Site
from pipeline.stages.anomaly_model import HotellingT2, P2Quantile
from pipeline.stages.common import StageStateError

MODEL_ID = "hotelling-t2"
MODEL_VERSION = "1"
"""Bump when the features, the model or a default setting changes what a score means."""
SNAPSHOT_FORMAT = 2
"""2: the model's arrays as base64 of float64 bytes (1 had JSON lists)."""
TOP_CONTRIBUTORS = 3


class AnomalyError(TwinError):
    """A state estimate the anomaly stage cannot work with (e.g. an asset the site lacks)."""


class AnomalySettings(BaseModel):
    """How the anomaly stage scores and decides; unknown keys are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    warmup: int = Field(default=300, ge=10)
    """Records learned before any is judged."""
    mean_half_life: float = Field(default=150.0, gt=0)
    """Records after which an old value weighs half in a feature's mean."""
    cov_half_life: float = Field(default=1000.0, gt=0)
    """Records after which an old value weighs half in the covariance."""
    ridge: float = Field(default=0.01, ge=0)
    """Added to the covariance's diagonal, relative to it, before inverting."""
    refresh: int = Field(default=10, ge=1)
    """Learned records between refreshes of the covariance's inverse."""
    min_samples: int = Field(default=10, ge=2)
    """Values a feature needs before it counts in the score."""
    smoothing: float = Field(default=0.2, gt=0, le=1)
    """Weight of the newest T² in the score (1 = no smoothing)."""
    quantile: float = Field(default=0.99, gt=0.5, lt=1)
    """Quantile of normal scores the threshold is calibrated on."""
    threshold_margin: float = Field(default=1.1, ge=1)
    """Threshold = margin · quantile."""
    clear_ratio: float = Field(default=0.8, gt=0, le=1)
    """An alarm clears below clear_ratio · threshold ..."""
    clear_after: int = Field(default=5, ge=1)
    """... held for this many consecutive records."""
    protect_sigmas: float = Field(default=3.0, gt=0)
    """A feature this far from its mean (in standard deviations) is learned only slowly."""
    absorb_rate: float = Field(default=0.02, ge=0, le=1)
    """Learning rate, relative to normal, of protected features and of the covariance during
    an alarm (0: an alarm is never absorbed)."""


class AssetModel:
    """The detector of one asset: its model, threshold estimate and alarm state."""

    def __init__(self, signals: tuple[str, ...], settings: AnomalySettings) -> None:
        self.signals = signals
        self.index = {name: i for i, name in enumerate(signals)}
        features = tuple(f"{s}.level" for s in signals) + tuple(f"{s}.nu" for s in signals)
        self.model = HotellingT2(
            features,
            mean_half_life=settings.mean_half_life,
            cov_half_life=settings.cov_half_life,
            ridge=settings.ridge,
            refresh=settings.refresh,
            min_samples=settings.min_samples,
        )
        self.threshold = P2Quantile(settings.quantile)
        self.seen = 0
        self.score: float | None = None
        self.alarm = False
        self.below = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "model_version": MODEL_VERSION,
            "signals": list(self.signals),
            "model": self.model.snapshot(),
            "threshold": self.threshold.snapshot(),
            "seen": self.seen,
            "score": self.score,
            "alarm": self.alarm,
            "below": self.below,
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format {state.get('format')!r}")
        if tuple(state["signals"]) != self.signals:
            raise ValueError(f"signals {state['signals']} differ from the site's {self.signals}")
        self.model.restore(state["model"])
        self.threshold = P2Quantile.restore(state["threshold"])
        self.seen = int(state["seen"])
        self.score = None if state["score"] is None else float(state["score"])
        self.alarm = bool(state["alarm"])
        self.below = int(state["below"])


class AnomalyDetector:
    """Online anomaly scores per asset; state per asset via `snapshot`/`restore`."""

    model_id = MODEL_ID
    model_version = MODEL_VERSION

    def __init__(self, site: Site, settings: AnomalySettings | None = None) -> None:
        self.site = site
        self.settings = settings if settings is not None else AnomalySettings()
        self._models: dict[str, AssetModel] = {}

    def assets(self) -> list[str]:
        return list(self._models)

    def snapshot(self, asset_id: str) -> dict[str, Any] | None:
        model = self._models.get(asset_id)
        return None if model is None else model.snapshot()

    def restore(self, asset_id: str, state: dict[str, Any]) -> None:
        model = self._new_model(self._asset(asset_id))
        try:
            model.restore(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise StageStateError(
                f"anomaly: cannot restore the state of asset {asset_id}: {exc}"
            ) from exc
        self._models[asset_id] = model

    def score(self, state: dict[str, Any]) -> dict[str, Any]:
        """The anomaly_score record for one state_estimate record (and learn from it)."""
        asset_id: str = state["asset_id"]
        model = self._models.get(asset_id)
        if model is None:
            model = self._models[asset_id] = self._new_model(self._asset(asset_id))
        s = self.settings
        vector, present = self._features(model, state["signals"])
        t2 = model.model
        deviation = t2.deviation(vector, present)
        raw = t2.score_vector(deviation)
        score = raw if model.score is None else (1 - s.smoothing) * model.score + s.smoothing * raw
        model.score = score

        warming_up = model.seen < s.warmup
        estimate = model.threshold.get()
        threshold = s.threshold_margin * estimate if not math.isnan(estimate) else math.inf
        if not warming_up:
            if not model.alarm:
                if score > threshold:
                    model.alarm, model.below = True, 0
            else:
                model.below = model.below + 1 if score < s.clear_ratio * threshold else 0
                if model.below >= s.clear_after:
                    model.alarm = False
        is_anomaly = model.alarm and not warming_up
        contributors = self._contributors(model, deviation, raw) if is_anomaly else []

        # Learning: the threshold and the covariance from normal records only; each mean
        # from values within protect_sigmas of it (others at absorb_rate).
        if not model.alarm and model.seen >= s.warmup // 2:
            model.threshold.update(score)
        scale = present.astype(np.float64)
        if not warming_up:
            far = np.abs(deviation) > s.protect_sigmas * t2.std()
            scale[far] *= s.absorb_rate
        t2.learn_vector(vector, present, scale, s.absorb_rate if model.alarm else 1.0)
        model.seen += 1

        return {
            "asset_id": asset_id,
            "ts": state["ts"],
            "ingest_ts": state["ingest_ts"],
            "model_id": MODEL_ID,
            "model_version": MODEL_VERSION,
            "score": score,
            "threshold": threshold if math.isfinite(threshold) else 0.0,
            "is_anomaly": is_anomaly,
            "warming_up": warming_up,
            "contributors": contributors,
        }

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _features(model: AssetModel, signals: list[dict[str, Any]]) -> tuple[Any, Any]:
        n = len(model.signals)
        vector = np.full(2 * n, np.nan)
        index = model.index
        for entry in signals:
            row = index.get(entry["signal"])
            if row is None or not entry["measured"]:
                continue
            vector[row] = entry["value"]
            nis = entry["nis"]
            if nis is not None and entry["innovation"] is not None:
                vector[n + row] = math.copysign(math.sqrt(nis), entry["innovation"])
        return vector, np.isfinite(vector)

    @staticmethod
    def _contributors(model: AssetModel, deviation: Any, raw: float) -> list[dict[str, Any]]:
        if raw <= 0:
            return []
        parts = model.model.contributions(deviation)
        n = len(model.signals)
        per_signal = parts[:n] + parts[n:]
        total = float(per_signal.sum())
        if total <= 0:
            return []
        order = np.argsort(-per_signal, kind="stable")[:TOP_CONTRIBUTORS]
        return [
            {"signal": model.signals[i], "weight": float(per_signal[i]) / total}
            for i in order.tolist()
            if per_signal[i] > 0
        ]

    def _asset(self, asset_id: str) -> Asset:
        asset = self.site.get_asset(asset_id)
        if asset is None:
            raise AnomalyError(f"anomaly: asset {asset_id!r} is not in site {self.site.name}")
        return asset

    def _new_model(self, asset: Asset) -> AssetModel:
        gauges = tuple(s.name for s in asset.signals.values() if s.kind is SignalKind.GAUGE)
        return AssetModel(gauges, self.settings)
