"""The bench workload: telemetry frames of the simulated bench plant, produced up front.

The plant simulator (`connectors.sim.PlantModel`, the generic model for the bench's machine
type) is stepped every 100 ms over a span that ends now. Every asset publishes one frame per
500 ms, as a gateway would: the readings its sensors took in that interval (gauges every
100 ms, so five per gauge; the state code and the counters every 500 ms), each with its own
source timestamp and quality. Frames go out in time order (interval k of every asset before
interval k+1), keyed by asset_id, lz4-compressed, the way the connectors publish them.
A few sensor and machine faults are placed on the first assets (see `FAULTS`).

Frames are produced until `readings` readings are out; `ingest_ts` of a frame is the end of
its interval. The encoded frames are kept (a few tens of MB) so the latency phase can replay
them with fresh timestamps; the first readings also become the naive baseline's input.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.sim.plant import AssetSample, PlantModel
from connectors.sim.scenarios import FaultEvent, FaultKind, Scenario
from pipeline.bench.plant import GAUGE_PERIOD, SLOW_PERIOD, BenchPlant, gauge_names
from pipeline.errors import TwinError
from pipeline.kafka.clients import producer
from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.site import Site

Progress = Callable[[str], None]

FRAME_INTERVAL = SLOW_PERIOD
STEPS_PER_FRAME = round(FRAME_INTERVAL / GAUGE_PERIOD)
#: (asset index, fault, gauge index or None, start, end as fractions of the simulated span)
FAULTS: tuple[tuple[int, FaultKind, int | None, float, float], ...] = (
    (0, FaultKind.STUCK_SENSOR, 2, 0.2, 0.6),
    (1, FaultKind.SPIKES, 4, 0.1, 0.9),
    (2, FaultKind.DRIFT, 7, 0.0, 1.0),
    (3, FaultKind.BEARING_WEAR, 3, 0.0, 1.0),
    (4, FaultKind.BREAKDOWN, None, 0.3, 0.7),
    (5, FaultKind.COMM_LOSS, None, 0.5, 0.6),
)
#: Produce settings for speed: big batches; the frames are all there before the clock.
PRODUCE_OVERRIDES = {
    "linger.ms": 50,
    "batch.num.messages": 10000,
    "queue.buffering.max.kbytes": 1048576,
}


@dataclass
class Workload:
    plant: BenchPlant
    source_id: str
    frames: int = 0
    readings: int = 0
    frame_bytes: int = 0
    span_s: float = 0.0
    faults: list[dict[str, Any]] = field(default_factory=list)
    encoded: list[bytes] = field(default_factory=list)
    """Every produced frame's message value, in production order."""
    keys: list[bytes] = field(default_factory=list)
    per_reading: list[bytes] = field(default_factory=list)
    """The first readings as one JSON message each (the naive baseline's input)."""
    per_reading_keys: list[bytes] = field(default_factory=list)
    produce_s: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "assets": self.plant.assets,
            "signals_per_asset": self.plant.signals,
            "gauges_per_asset": self.plant.gauges,
            "sampling": f"gauges every {GAUGE_PERIOD.total_seconds() * 1000:.0f} ms; state "
            f"code and 2 counters every {SLOW_PERIOD.total_seconds() * 1000:.0f} ms",
            "frame_interval_ms": round(FRAME_INTERVAL.total_seconds() * 1000),
            "frames": self.frames,
            "readings": self.readings,
            "readings_per_frame": round(self.readings / self.frames, 1) if self.frames else 0,
            "frame_bytes": round(self.frame_bytes / self.frames) if self.frames else 0,
            "simulated_span_s": round(self.span_s, 1),
            "partitions": self.plant.partitions,
            "compression": "lz4",
            "faults": self.faults,
            "generator": "connectors.sim PlantModel (generic model), seed 7",
        }


def _scenario(plant: BenchPlant, span: timedelta) -> Scenario:
    ids, names = plant.asset_ids(), gauge_names(plant.gauges)
    events = [
        FaultEvent(
            ids[index], kind, span * start, span * end,
            names[gauge] if gauge is not None and gauge < len(names) else None,
        )
        for index, kind, gauge, start, end in FAULTS
        if index < len(ids)
    ]  # fmt: skip
    return Scenario("bench", tuple(events))


def _frame_readings(sample: AssetSample, since: datetime) -> list[dict[str, Any]]:
    """The readings of `sample` taken after `since` (fresh in this step)."""
    return [r for r in sample.readings() if r["ts"] > since]


def generate(
    settings: Settings,
    site: Site,
    plant: BenchPlant,
    readings: int,
    naive_readings: int,
    progress: Progress,
) -> Workload:
    """Simulate, encode and produce `readings` readings into the site's telemetry.raw."""
    per_frame = plant.gauges * STEPS_PER_FRAME + plant.signals - plant.gauges
    frames_per_asset = max(1, math.ceil(readings / (plant.assets * per_frame)))
    span = FRAME_INTERVAL * frames_per_asset
    now = datetime.now(UTC)
    start = now - span - timedelta(seconds=1)
    scenario = _scenario(plant, span)
    model = PlantModel(site, seed=7, scenario=scenario, start=start)
    serde = AvroSerde.from_settings(settings)
    topic = site.topic("telemetry.raw")
    workload = Workload(plant, "bench-gateway", span_s=span.total_seconds())
    workload.faults = [
        {"asset_id": e.asset_id, "kind": str(e.kind), "signal": e.signal,
         "from_s": round(e.start.total_seconds(), 1), "to_s": round(e.end.total_seconds(), 1)}
        for e in scenario.events
    ]  # fmt: skip
    out = producer(settings, **PRODUCE_OVERRIDES)
    started = time.perf_counter()
    pending: dict[str, list[dict[str, Any]]] = {a.id: [] for a in site.assets}
    step_ts = start
    step = 0
    last_report = time.monotonic()
    while workload.readings < readings:
        step += 1
        previous, step_ts = step_ts, start + GAUGE_PERIOD * step
        for sample in model.step(step_ts):
            pending[sample.asset_id].extend(_frame_readings(sample, previous))
        if step % STEPS_PER_FRAME:
            continue
        for asset_id, frame_readings in pending.items():
            if workload.readings >= readings:
                break
            if not frame_readings:
                continue
            _produce(out, topic, serde, workload, asset_id, frame_readings, step_ts, naive_readings)
            frame_readings.clear()  # the same list object stays in `pending`
        out.poll(0)
        if time.monotonic() - last_report >= 5:
            last_report = time.monotonic()
            progress(f"  workload: {workload.readings:,} of {readings:,} readings produced")
    remaining = out.flush(120)
    if remaining:
        raise TwinError(f"{remaining} workload frames were not delivered to {topic} within 120 s")
    workload.produce_s = time.perf_counter() - started
    return workload


def _produce(
    out: Any,
    topic: str,
    serde: AvroSerde,
    workload: Workload,
    asset_id: str,
    readings: list[dict[str, Any]],
    ingest_ts: datetime,
    naive_readings: int,
) -> None:
    frame = {
        "asset_id": asset_id,
        "source_id": workload.source_id,
        "seq": workload.frames,
        "ingest_ts": ingest_ts,
        "readings": list(readings),
    }
    value = serde.encode("telemetry_frame", frame, topic=topic)
    key = asset_id.encode()
    while True:
        try:
            out.produce(topic, value, key)
            break
        except BufferError:
            out.poll(0.1)  # the local queue is full: let deliveries drain it
    workload.frames += 1
    workload.readings += len(readings)
    workload.frame_bytes += len(value)
    workload.encoded.append(value)
    workload.keys.append(key)
    if len(workload.per_reading) < naive_readings:
        for reading in readings:
            workload.per_reading.append(per_reading_message(asset_id, reading))
            workload.per_reading_keys.append(key)


def per_reading_message(asset_id: str, reading: dict[str, Any]) -> bytes:
    """One reading as the JSON event a per-event stream processor would read."""
    return json.dumps(
        {
            "asset_id": asset_id,
            "signal": reading["signal"],
            "ts": int(reading["ts"].timestamp() * 1_000_000),
            "value": reading["value"],
            "quality": reading["quality"],
        }
    ).encode()


def reproduce(settings: Settings, topic: str, workload: Workload) -> None:
    """Produce the workload's frames again, unchanged, into `topic` (another run's)."""
    out = producer(settings, **PRODUCE_OVERRIDES)
    for key, value in zip(workload.keys, workload.encoded, strict=True):
        while True:
            try:
                out.produce(topic, value, key)
                break
            except BufferError:
                out.poll(0.1)
    remaining = out.flush(120)
    if remaining:
        raise TwinError(f"{remaining} workload frames were not delivered to {topic} within 120 s")
