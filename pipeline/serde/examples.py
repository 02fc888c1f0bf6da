"""One valid, realistic example record per record type: for documentation, tests and demos.

The records use aware UTC datetimes for timestamps (as the serde returns them) and only
finite numbers, so a decoded record compares equal to its example.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

#: The scan time most examples revolve around.
T0 = datetime(2025, 3, 14, 9, 30, 0, tzinfo=UTC)


def _at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


_EXAMPLES: dict[str, dict[str, Any]] = {
    "telemetry_frame": {
        "asset_id": "press-01",
        "source_id": "opcua-line1",
        "seq": 48213,
        "ingest_ts": _at(120),
        "readings": [
            {
                "signal": "hydraulic_pressure",
                "ts": _at(0),
                "value": 182.4,
                "quality": "GOOD",
                "status_code": 0,
            },
            {
                "signal": "oil_temp",
                "ts": _at(0),
                "value": 47.9,
                "quality": "GOOD",
                "status_code": 0,
            },
            {
                "signal": "motor_current",
                "ts": _at(5),
                "value": 31.2,
                "quality": "UNCERTAIN",
                # OPC UA UncertainLastUsableValue
                "status_code": 0x40900000,
            },
        ],
    },
    "validated_frame": {
        "asset_id": "press-01",
        "source_id": "opcua-line1",
        "seq": 48213,
        "ingest_ts": _at(120),
        "validated_ts": _at(135),
        "readings": [
            {
                "signal": "hydraulic_pressure",
                "ts": _at(0),
                "value": 182.4,
                "quality": "GOOD",
                "flags": [],
            },
            {
                "signal": "oil_temp",
                "ts": _at(0),
                "value": 47.9,
                "quality": "GOOD",
                "flags": [],
            },
            {
                "signal": "motor_current",
                "ts": _at(5),
                "value": 31.2,
                "quality": "UNCERTAIN",
                "flags": ["DEVICE_UNCERTAIN"],
            },
        ],
    },
    "dead_letter": {
        "reason": "unknown schema id 42: not in the local catalog",
        "reason_code": "undecodable",
        "stage": "validate",
        "origin_topic": "telemetry.raw",
        "origin_partition": 2,
        "origin_offset": 918273,
        "origin_key": b"press-01",
        "payload": b"\x00\x00\x00\x00\x2a\x10press-01",
        "asset_id": "press-01",
        "source_id": None,
        "seq": None,
        "detected_ts": _at(140),
    },
    "state_estimate": {
        "asset_id": "press-01",
        "source_id": "opcua-line1",
        "seq": 48213,
        "ts": _at(5),
        "ingest_ts": _at(120),
        "signals": [
            {
                "signal": "hydraulic_pressure",
                "value": 182.1,
                "rate": -0.35,
                "variance": 0.04,
                "rate_variance": 0.0025,
                "innovation": 0.3,
                "nis": 1.8,
                "outlier": False,
                "measured": True,
            },
            {
                "signal": "oil_temp",
                "value": 47.85,
                "rate": 0.002,
                "variance": 0.01,
                "rate_variance": 0.0001,
                "innovation": None,
                "nis": None,
                "outlier": False,
                "measured": False,
            },
        ],
    },
    "anomaly_score": {
        "asset_id": "press-01",
        "ts": _at(5),
        "ingest_ts": _at(120),
        "model_id": "half-space-trees",
        "model_version": "hst-1.2.0",
        "score": 0.87,
        "threshold": 0.74,
        "is_anomaly": True,
        "warming_up": False,
        "contributors": [
            {"signal": "hydraulic_pressure", "weight": 0.61},
            {"signal": "motor_current", "weight": 0.27},
        ],
    },
    "kpi_window": {
        "asset_id": "press-01",
        "line_id": "line-1",
        "window_kind": "TUMBLING",
        "window_start": datetime(2025, 3, 14, 9, 0, tzinfo=UTC),
        "window_end": datetime(2025, 3, 14, 10, 0, tzinfo=UTC),
        "version": 1,
        "availability": 0.9,
        "performance": 0.85,
        "quality": 0.98,
        "oee": 0.7497,
        "run_s": 3240.0,
        "idle_s": 180.0,
        "down_s": 180.0,
        "parts_total": 1377,
        "parts_good": 1350,
        "failures": 1,
        "mtbf_s": 3240.0,
        "mttr_s": 180.0,
        "signals": [
            {
                "signal": "hydraulic_pressure",
                "count": 35800,
                "min": 171.2,
                "max": 195.6,
                "mean": 182.3,
                "p95": 190.1,
            },
        ],
        "emitted_ts": datetime(2025, 3, 14, 10, 0, 31, tzinfo=UTC),
    },
    "alert_event": {
        "alert_id": "press-01/oil-temp-high",
        "asset_id": "press-01",
        "rule_id": "oil-temp-high",
        "kind": "THRESHOLD",
        "event": "RAISED",
        "severity": "WARNING",
        "ts": _at(0),
        "raised_ts": _at(0),
        "emitted_ts": _at(150),
        "message": "oil_temp 71.3 °C above 70.0 °C",
        "signal": "oil_temp",
        "value": 71.3,
        "threshold": 70.0,
        "context": {"line_id": "line-1", "clear_below": "67.0"},
    },
}

RECORD_TYPES: tuple[str, ...] = tuple(_EXAMPLES)


def example(record_type: str) -> dict[str, Any]:
    """A fresh (deep) copy of the example record of `record_type`; KeyError if unknown."""
    return copy.deepcopy(_EXAMPLES[record_type])
