"""Latency at a fixed offered load: paced frames in, state records and alerts out.

A producer thread replays the workload's frames in their order at `rate` readings/s, each
re-stamped as if read now: `ingest_ts` = the moment it is produced, reading times shifted by
the same amount (so they keep their spacing within the frame), `seq` continuing the source's
sequence. It uses the connectors' producer settings (lz4, linger 20 ms). So that it takes
little CPU from the pipeline it measures, the frames are decoded into columns and encoded
again once, before the phase, and each tick only writes the new times into a copy of its
frames' bytes (`pipeline.bench.replay`). Some machines run overloaded for a while, so that
alerts are raised on purpose (`pipeline.bench.overload`). Meanwhile the output watcher (a
separate consumer) records when each state record and alert arrives.

- state latency: arrival of the state record on twin.state minus its frame's `ingest_ts`;
- pickup: the frame's `validated_ts` (when the worker began its batch) minus its `ingest_ts`,
  i.e. the part of the state latency spent before processing (producer linger, broker,
  fetch, batching, waiting for the worker);
- alert latency: arrival of the alert event on twin.alerts minus the `ingest_ts` of the
  frame that caused it (found from the alert's `ts`, see `pipeline.bench.overload`). None
  when no alert came.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.bench.overload import OverloadPlan, SentFrames, alert_arrivals
from pipeline.bench.pipeline import RunningPipeline
from pipeline.bench.replay import FrameReplay, replay_frames
from pipeline.bench.watch import Arrival
from pipeline.bench.workload import Workload
from pipeline.kafka.clients import producer
from pipeline.serde import AvroSerde

Progress = Callable[[str], None]

TICK_S = 0.005
DRAIN_S = 10.0
"""After the last paced frame, how long state records may still arrive to count."""
SLICE_S = 10.0
"""The state latency is also given per slice of this many seconds of ingest time, so that a
drift within the phase shows (e.g. a broker whose fetches cost more as its log grows)."""


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
    alerts_unmatched: int = 0
    """Alert events of the phase that no paced frame caused (e.g. raised by a tick)."""
    overloaded_machines: int = 0
    slices: list[dict[str, Any]] | None = None
    """State latency per SLICE_S of ingest time: start_s, p50_ms, p99_ms, samples."""

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
            "slices": self.slices,
            "alerts_unmatched": self.alerts_unmatched,
            "overloaded_machines": self.overloaded_machines,
            "measure": "state: twin.state arrival (consumer receive time) - frame ingest_ts; "
            "pickup: validated_ts (worker began the batch) - ingest_ts; "
            "alert: twin.alerts arrival - ingest_ts of the frame that caused it",
        }


class PacedProducer(threading.Thread):
    """Replays the workload's frames at `rate` readings/s for `seconds` (see the module doc).
    Constructing it decodes and encodes the frames (`prepare_s` says how long that took): do
    it before the phase's clock starts."""

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
        started = time.perf_counter()
        serde = AvroSerde.from_settings(self.settings)
        frames = replay_frames(serde, workload.encoded)
        self.replay = FrameReplay(serde, frames, self.topic, workload.encoded)
        self.overloads = OverloadPlan.build(serde, frames, self.topic, seconds)
        self.sent_frames = SentFrames(frames.asset_id)
        # A new producer's first message waits for its connection and producer id (~0.5 s
        # measured on the embedded broker): that is start-up, not latency, so it is done now.
        self.out = producer(self.settings)
        self.out.list_topics(self.topic, timeout=15)
        self.prepare_s = time.perf_counter() - started

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the caller, the thread must not die silently
            self.error = exc

    def _run(self) -> None:
        out = self.out
        keys = self.workload.keys
        seq = self.workload.frames
        started = time.monotonic()
        while not self.stopping.is_set():
            elapsed = time.monotonic() - started
            if elapsed >= self.seconds:
                break
            due = int(elapsed * self.frames_per_s) + 1
            if self.sent < due:
                rows = np.arange(self.sent, due, dtype=np.int64) % len(self.replay.frames)
                now_us = time.time_ns() // 1000
                if self.overloads is None:
                    values = self.replay.encode(rows, now_us, seq)
                else:
                    values = self.overloads.encode(self.replay, rows, elapsed, now_us, seq)
                self.sent_frames.add(rows, now_us)
                for i, value in zip(rows.tolist(), values, strict=True):
                    out.produce(self.topic, value, keys[i])
                seq += len(values)
                self.sent = due
                self.readings += int(self.replay.counts[rows].sum())
            out.poll(0)
            time.sleep(TICK_S)
        out.flush(30)


def measure_latency(
    pipeline: RunningPipeline, workload: Workload, rate: float, seconds: float, progress: Progress
) -> LatencyFigures:
    watcher = pipeline.watcher
    paced = PacedProducer(pipeline, workload, rate, seconds)
    watcher.poll(0.5)  # whatever is left of the rate phase is not a latency sample
    watcher.latency_since = time.time()
    figures = LatencyFigures(rate, seconds)
    progress(
        f"[{pipeline.run.name}] latency: {rate:,.0f} readings/s offered for {seconds:.0f}s "
        f"({len(paced.replay.frames):,} frames decoded for replay in {paced.prepare_s:.1f}s)"
    )
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
    figures.slices = latency_slices(watcher.counts.state_latency, SLICE_S)
    figures.pickup_p50_ms, figures.pickup_p99_ms, _, _ = _percentiles(watcher.counts.pickup_latency)
    alerts, figures.alerts_unmatched = alert_arrivals(
        watcher.counts.alerts_seen, paced.sent_frames.by_asset()
    )
    figures.alert_p50_ms, figures.alert_p99_ms, _, figures.alert_samples = _percentiles(alerts)
    figures.overloaded_machines = len(paced.overloads.machines) if paced.overloads else 0
    return figures


def latency_slices(arrivals: list[Arrival], slice_s: float) -> list[dict[str, Any]]:
    """p50 and p99 of the latencies of the arrivals in each `slice_s` of their `since`
    times, counted from the earliest (slices without an arrival are left out)."""
    if not arrivals:
        return []
    since = np.array([a.since for a in arrivals])
    index = ((since - since.min()) // slice_s).astype(np.int64).tolist()
    groups: dict[int, list[Arrival]] = {}
    for k, arrival in zip(index, arrivals, strict=True):
        groups.setdefault(k, []).append(arrival)
    slices = []
    for k in sorted(groups):
        p50, p99, _, samples = _percentiles(groups[k])
        slices.append(
            {"start_s": round(k * slice_s, 3), "p50_ms": p50, "p99_ms": p99, "samples": samples}
        )
    return slices


def _percentiles(
    arrivals: list[Arrival],
) -> tuple[float | None, float | None, float | None, int]:
    if not arrivals:
        return None, None, None, 0
    delays = np.array([(a.received - a.since) * 1000 for a in arrivals])
    p50, p99 = np.percentile(delays, [50, 99])
    return round(float(p50), 1), round(float(p99), 1), round(float(delays.max()), 1), len(delays)
