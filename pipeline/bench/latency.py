"""Latency at a fixed offered load: paced frames in, state records and alerts out.

A producer thread replays the workload's frames in their order at `rate` readings/s, each
re-stamped as if read now: `ingest_ts` = the moment it is produced, reading times shifted by
the same amount (so they keep their spacing within the frame), `seq` continuing the source's
sequence. It uses the connectors' producer settings (lz4, linger 20 ms). Meanwhile the
output watcher (a separate consumer) records when each state record and alert arrives.

- state latency: arrival of the state record on twin.state minus its frame's `ingest_ts`;
- pickup: the frame's `validated_ts` (when the worker began its batch) minus its `ingest_ts`,
  i.e. the part of the state latency spent before processing (producer linger, broker,
  fetch, batching, waiting for the worker);
- alert latency: arrival of the alert on twin.alerts minus the alert's `ts` (the event time
  of the reading that changed it; with paced frames that reading was taken at most one frame
  interval before its frame's ingest). None when no alert came (no alert stage yet).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipeline.bench.pipeline import RunningPipeline
from pipeline.bench.watch import Arrival
from pipeline.bench.workload import Workload
from pipeline.kafka.clients import producer
from pipeline.serde import AvroSerde

Progress = Callable[[str], None]

TICK_S = 0.005
DRAIN_S = 10.0
"""After the last paced frame, how long state records may still arrive to count."""


@dataclass
class LatencyFigures:
    rate: float
    seconds: float
    frames_sent: int = 0
    readings_sent: int = 0
    achieved_rate: float = 0.0
    state_p50_ms: float | None = None
    state_p99_ms: float | None = None
    state_max_ms: float | None = None
    state_samples: int = 0
    pickup_p50_ms: float | None = None
    pickup_p99_ms: float | None = None
    alert_p50_ms: float | None = None
    alert_p99_ms: float | None = None
    alert_samples: int = 0

    @property
    def kept_up(self) -> bool:
        """Every paced frame's state record came back within the drain time. When not,
        the pipeline was slower than the offered load and the percentiles, taken over the
        records that did come back, understate the latency."""
        return self.state_samples >= self.frames_sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "offered_readings_per_s": self.rate,
            "seconds": self.seconds,
            "frames_sent": self.frames_sent,
            "readings_sent": self.readings_sent,
            "achieved_readings_per_s": round(self.achieved_rate),
            "state_p50_ms": self.state_p50_ms,
            "state_p99_ms": self.state_p99_ms,
            "state_max_ms": self.state_max_ms,
            "state_samples": self.state_samples,
            "kept_up": self.kept_up,
            "pickup_p50_ms": self.pickup_p50_ms,
            "pickup_p99_ms": self.pickup_p99_ms,
            "alert_p50_ms": self.alert_p50_ms,
            "alert_p99_ms": self.alert_p99_ms,
            "alert_samples": self.alert_samples,
            "measure": "state: twin.state arrival (consumer receive time) - frame ingest_ts; "
            "pickup: validated_ts (worker began the batch) - ingest_ts; "
            "alert: twin.alerts arrival - alert ts",
        }


class PacedProducer(threading.Thread):
    def __init__(self, pipeline: RunningPipeline, workload: Workload, rate: float, seconds: float):
        super().__init__(name="bench-paced-producer", daemon=True)
        self.settings = pipeline.run.settings
        self.topic = pipeline.run.site.topic("telemetry.raw")
        self.workload = workload
        self.per_frame = workload.readings / workload.frames
        self.frames_per_s = rate / self.per_frame
        self.seconds = seconds
        self.sent = self.readings = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the caller, the thread must not die silently
            self.error = exc

    def _run(self) -> None:
        serde = AvroSerde.from_settings(self.settings)
        out = producer(self.settings)
        frames, keys = self.workload.encoded, self.workload.keys
        seq = self.workload.frames
        started = time.monotonic()
        while not self.stopping.is_set():
            elapsed = time.monotonic() - started
            if elapsed >= self.seconds:
                break
            due = int(elapsed * self.frames_per_s) + 1
            while self.sent < due:
                i = self.sent % len(frames)
                record = serde.decode(frames[i]).record
                now = datetime.now(UTC)
                shift = now - record["ingest_ts"]
                for reading in record["readings"]:
                    reading["ts"] += shift
                record["ingest_ts"] = now
                record["seq"] = seq
                seq += 1
                out.produce(
                    self.topic, serde.encode("telemetry_frame", record, self.topic), keys[i]
                )
                self.sent += 1
                self.readings += len(record["readings"])
            out.poll(0)
            time.sleep(TICK_S)
        out.flush(30)


def measure_latency(
    pipeline: RunningPipeline, workload: Workload, rate: float, seconds: float, progress: Progress
) -> LatencyFigures:
    watcher = pipeline.watcher
    watcher.poll(0.5)  # whatever is left of the rate phase is not a latency sample
    watcher.latency_since = time.time()
    figures = LatencyFigures(rate, seconds)
    paced = PacedProducer(pipeline, workload, rate, seconds)
    progress(f"[{pipeline.run.name}] latency: {rate:,.0f} readings/s offered for {seconds:.0f}s")
    started = time.monotonic()
    paced.start()
    next_line = started + 10
    try:
        while paced.is_alive():
            pipeline.check_alive()
            watcher.poll(0.05)
            if time.monotonic() >= next_line:
                next_line += 10
                progress(
                    f"  [{pipeline.run.name}] latency: {paced.sent:,} frames sent, "
                    f"{len(watcher.counts.state_latency):,} state records back"
                )
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and len(watcher.counts.state_latency) < paced.sent:
            watcher.poll(0.05)
    finally:
        paced.stopping.set()
        paced.join(35)
        watcher.latency_since = None
    if paced.error is not None:
        raise paced.error
    figures.frames_sent, figures.readings_sent = paced.sent, paced.readings
    figures.achieved_rate = paced.readings / seconds
    state = _percentiles(watcher.counts.state_latency)
    figures.state_p50_ms, figures.state_p99_ms, figures.state_max_ms, figures.state_samples = state
    figures.pickup_p50_ms, figures.pickup_p99_ms, _, _ = _percentiles(
        watcher.counts.pickup_latency
    )
    alert = _percentiles(watcher.counts.alert_latency)
    figures.alert_p50_ms, figures.alert_p99_ms, _, figures.alert_samples = alert
    return figures


def _percentiles(
    arrivals: list[Arrival],
) -> tuple[float | None, float | None, float | None, int]:
    if not arrivals:
        return None, None, None, 0
    delays = np.array([(a.received - a.since) * 1000 for a in arrivals])
    p50, p99 = np.percentile(delays, [50, 99])
    return round(float(p50), 1), round(float(p99), 1), round(float(delays.max()), 1), len(delays)
