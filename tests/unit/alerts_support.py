"""Records for the alert stage's tests: shaped like the Avro records, on the demo plant."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline import PROJECT_ROOT
from pipeline.serde.examples import example
from pipeline.site import Site, load_site

DEMO = PROJECT_ROOT / "topologies" / "sites" / "demo-plant.yaml"
T0 = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
NOW0 = datetime(2025, 3, 14, 9, 30, 1, tzinfo=UTC)
"""Processing time of data at T0: one second behind, as through a real pipeline."""


@functools.cache
def demo_site() -> Site:
    return load_site(DEMO)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def now_at(seconds: float) -> datetime:
    return NOW0 + timedelta(seconds=seconds)


def state(
    asset_id: str, t: float, measured: dict[str, float], unmeasured: dict[str, float] | None = None
) -> dict[str, Any]:
    """A state_estimate at T0 + t: `measured` signals updated by a reading, `unmeasured`
    ones predicted only (a gap or a BAD reading)."""
    record = example("state_estimate")
    template = record["signals"][0]
    signals = []
    for name, value in measured.items():
        signals.append(template | {"signal": name, "value": value, "measured": True})
    for name, value in (unmeasured or {}).items():
        signals.append(
            template
            | {"signal": name, "value": value, "measured": False, "innovation": None, "nis": None}
        )
    return record | {
        "asset_id": asset_id,
        "source_id": _source_id(asset_id),
        "seq": int(t * 10),
        "ts": at(t),
        "ingest_ts": at(t + 0.1),
        "signals": signals,
    }


def frame(
    asset_id: str, t: float, signals: Iterable[str], quality: str = "GOOD", flags: tuple = ()
) -> dict[str, Any]:
    """A validated_frame with one reading per signal at T0 + t."""
    record = example("validated_frame")
    readings = [
        {"signal": s, "ts": at(t), "value": 1.0, "quality": quality, "flags": list(flags)}
        for s in signals
    ]
    return record | {
        "asset_id": asset_id,
        "source_id": _source_id(asset_id),
        "seq": int(t * 10),
        "ingest_ts": at(t + 0.1),
        "validated_ts": at(t + 0.2),
        "readings": readings,
    }


def all_signals(asset_id: str, *but: str) -> list[str]:
    return [s for s in demo_site().asset(asset_id).signals if s not in but]


def score(
    asset_id: str,
    t: float,
    value: float,
    threshold: float = 0.74,
    warming_up: bool = False,
    model_version: str = "hst-1.2.0",
) -> dict[str, Any]:
    """An anomaly_score at T0 + t; is_anomaly as the detector decides it."""
    record = example("anomaly_score")
    return record | {
        "asset_id": asset_id,
        "ts": at(t),
        "ingest_ts": at(t + 0.1),
        "score": value,
        "threshold": threshold,
        "is_anomaly": value > threshold and not warming_up,
        "warming_up": warming_up,
        "model_version": model_version,
        "contributors": [
            {"signal": "spindle_load", "weight": 0.61},
            {"signal": "vibration_rms", "weight": 0.27},
        ],
    }


def window(
    asset_id: str,
    minute: int,
    oee: float | None,
    availability: float | None = 0.95,
    version: int = 1,
    kind: str = "TUMBLING",
) -> dict[str, Any]:
    """A kpi_window of the minute [T0 + minute, T0 + minute + 1)."""
    record = example("kpi_window")
    start = T0 + timedelta(minutes=minute)
    return record | {
        "asset_id": asset_id,
        "line_id": demo_site().asset(asset_id).line.id,
        "window_kind": kind,
        "window_start": start,
        "window_end": start + timedelta(minutes=1),
        "version": version,
        "availability": availability,
        "oee": oee,
        "emitted_ts": start + timedelta(minutes=1, seconds=3),
    }


def _source_id(asset_id: str) -> str:
    asset = demo_site().get_asset(asset_id)
    return asset.source_id if asset is not None else "opcua-line9"


def transitions(events: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(rule_id, event) of each alert_event, in order."""
    return [(e["rule_id"], e["event"]) for e in events]
