"""The bench plant: a generated site file of N machines of one asset type.

Every asset has `gauges` continuous signals sampled every 100 ms, plus a machine state code
and two part counters sampled every 500 ms, fed by one MQTT source (the source kind only
matters to the connectors, which the bench does not run). Gauge names come from a list of
typical machine measurements (temperatures, pressures, vibration, speeds, currents) so that
the simulator's fault scenarios and the alert rules find the signals they look for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

ASSET_TYPE = "machine"
LINE = "line-1"
SOURCE = "bench-gateway"
GAUGE_PERIOD = timedelta(milliseconds=100)
SLOW_PERIOD = timedelta(milliseconds=500)
STATE_SIGNAL = "machine_state"
COUNTERS = ("parts_total", "parts_scrap")
OVERLOAD_SIGNAL = "spindle_load"
OVERLOAD_ABOVE = 92.0
"""The `machine-overload` rule: the filtered spindle load above this (%; the simulated
machines stay below ~90 even with a worn bearing). The latency phase drives some machines
over it on purpose (`pipeline.bench.overload`)."""

#: name, unit, expected min, expected max, max rate (units/s), measurement noise
_GAUGES: tuple[tuple[str, str, float, float, float, float], ...] = (
    ("spindle_speed", "rpm", 0, 18000, 4000, 5),
    ("spindle_load", "%", 0, 95, 80, 0.5),
    ("bearing_temperature", "degC", 15, 70, 0.5, 0.2),
    ("vibration_rms", "mm/s", 0, 7.1, 20, 0.05),
    ("coolant_pressure", "bar", 2, 12, 5, 0.05),
    ("coolant_flow", "l/min", 5, 80, 20, 0.4),
    ("motor_current", "A", 0, 90, 50, 0.3),
    ("motor_temperature", "degC", 10, 95, 0.2, 0.3),
    ("feed_rate", "mm/min", 0, 15000, 10000, 10),
    ("hydraulic_pressure", "bar", 40, 160, 30, 0.5),
    ("axis_x_load", "%", 0, 90, 60, 0.5),
    ("axis_y_load", "%", 0, 90, 60, 0.5),
    ("axis_z_load", "%", 0, 90, 60, 0.5),
    ("ambient_temperature", "degC", 10, 40, 0.05, 0.1),
    ("air_pressure", "bar", 5.5, 9, 2, 0.02),
    ("power", "kW", 0, 60, 30, 0.2),
)


@dataclass(frozen=True)
class BenchPlant:
    """What the generated site looks like (for the report)."""

    assets: int
    gauges: int
    partitions: int
    topic_prefix: str

    @property
    def signals(self) -> int:
        return self.gauges + 1 + len(COUNTERS)

    def asset_ids(self) -> list[str]:
        width = max(4, len(str(self.assets)))
        return [f"m-{i:0{width}d}" for i in range(1, self.assets + 1)]


def gauge_names(count: int) -> list[str]:
    """`count` gauge names: the list above, then numbered repeats (`spindle_speed_2`, ...)."""
    names = []
    for i in range(count):
        base = _GAUGES[i % len(_GAUGES)][0]
        names.append(base if i < len(_GAUGES) else f"{base}_{i // len(_GAUGES) + 1}")
    return names


def _gauge_spec(i: int) -> dict[str, Any]:
    _, unit, low, high, rate, noise = _GAUGES[i % len(_GAUGES)]
    span = high - low
    return {
        "unit": unit,
        "physical": {"min": low - span, "max": high + span},
        "expected": {"min": low, "max": high},
        "max_rate": rate,
        "sampling_period": "100ms",
        "measurement_noise": noise,
    }


def _slow(kind: str, unit: str, high: float, rate: float) -> dict[str, Any]:
    return {
        "kind": kind,
        "unit": unit,
        "physical": {"min": 0, "max": high},
        "expected": {"min": 0, "max": high},
        "max_rate": rate,
        "sampling_period": "500ms",
        "measurement_noise": 0,
    }


def site_document(plant: BenchPlant) -> dict[str, Any]:
    """The site file (as a mapping) of the bench plant."""
    names = gauge_names(plant.gauges)
    signals: dict[str, Any] = {name: _gauge_spec(i) for i, name in enumerate(names)}
    signals[STATE_SIGNAL] = {
        **_slow("state", "code", 4, 4),
        "description": "0 ready, 1 cutting, 2 setup, 3 fault, 4 maintenance",
    }
    for counter in COUNTERS:
        signals[counter] = _slow("counter", "parts", 4294967295, 1)
    # The threshold sits a little above the middle of the expected range: the simulated
    # values oscillate around the middle, so a share of the machines cross it during a run
    # and the alert stage has lifecycle events to emit (the latency phase measures them).
    temperature = next((i for i, n in enumerate(names) if "temperature" in n), None)
    alerts: list[dict[str, Any]] = [
        {"id": "machine-stale", "kind": "stale", "asset_type": ASSET_TYPE, "signal": "all",
         "after": "10s", "severity": "warning"},
        {"id": "machine-anomaly", "kind": "anomaly", "asset_type": ASSET_TYPE,
         "min_duration": "5s", "severity": "warning"},
        {"id": "machine-availability-floor", "kind": "kpi_floor", "asset_type": ASSET_TYPE,
         "kpi": "availability", "floor": 0.5, "min_windows": 2, "severity": "info"},
    ]  # fmt: skip
    if temperature is not None:
        _, _, low, high, _, _ = _GAUGES[temperature % len(_GAUGES)]
        alerts.insert(
            0,
            {"id": "machine-hot", "kind": "threshold", "asset_type": ASSET_TYPE,
             "signal": names[temperature], "raise_above": low + 0.68 * (high - low),
             "clear_hysteresis": 0.05 * (high - low), "min_duration": "1s",
             "severity": "warning"},
        )  # fmt: skip
    if OVERLOAD_SIGNAL in names:
        # No minimum duration: the first overloaded frame raises it (see OVERLOAD_ABOVE).
        alerts.insert(
            0,
            {"id": "machine-overload", "kind": "threshold", "asset_type": ASSET_TYPE,
             "signal": OVERLOAD_SIGNAL, "raise_above": OVERLOAD_ABOVE, "clear_hysteresis": 4.0,
             "severity": "warning"},
        )  # fmt: skip
    return {
        "name": "bench-plant",
        "description": f"{plant.assets} generated machines for twin bench",
        "kafka": {
            "topic_prefix": plant.topic_prefix,
            "partitions": plant.partitions,
            "replication_factor": 1,
        },
        "kpi": {"window": "1m", "allowed_lateness": "30s"},
        "sources": {SOURCE: {"kind": "mqtt", "broker": "mqtt://127.0.0.1:1883", "qos": 1}},
        "lines": {LINE: {"name": "Bench line"}},
        "asset_types": {
            ASSET_TYPE: {
                "description": "Machining centre with a full sensor package",
                "signals": signals,
                "kpi": {
                    "state": {
                        "signal": STATE_SIGNAL,
                        "codes": {"running": 1, "idle": [0, 2], "down": 3, "maintenance": 4},
                    },
                    "counters": {"total": COUNTERS[0], "scrap": COUNTERS[1]},
                    "ideal_cycle_time": "45s",
                },
                "mqtt": {
                    "timestamp_field": "ts",
                    "timestamp_format": "epoch_ms",
                    "fields": {name: name for name in signals},
                },
            }
        },
        "assets": [
            {"id": asset_id, "type": ASSET_TYPE, "line": LINE, "source": SOURCE}
            for asset_id in plant.asset_ids()
        ],
        "alerts": alerts,
    }


def write_site(plant: BenchPlant, path: Path) -> Path:
    path.write_text(
        "# Generated by twin bench; see pipeline/bench/plant.py.\n"
        + yaml.safe_dump(site_document(plant), sort_keys=False),
        encoding="utf-8",
    )
    return path
