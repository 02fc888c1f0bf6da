"""The pipeline's sustained rate: the real `twin worker` and `twin sink` on a produced workload.

The workload is in telemetry.raw before the processes start. The clock starts at the first
frame the worker consumed (the earliest `validated_ts` on telemetry.valid: the time the worker
began its first batch), so process start-up and the consumer group's JoinGroup are not
counted. It stops at the later of
- the arrival of the last state record on twin.state (every frame has come out of the worker
  as a validated frame or a dead letter, and there is a state record for every valid one), and
- the moment ClickHouse holds every reading of the valid frames (`SELECT count() FROM
  readings`, asked through the sink's query endpoint every 0.2 s, so this end is known to
  within 0.2 s).
readings_per_s = workload readings / (stop - start).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.bench.stack import BenchRun
from pipeline.bench.watch import OutputWatcher
from pipeline.demo_processes import Child
from pipeline.errors import ClickHouseError, TwinError
from pipeline.sink.query_server import query_endpoint, read_endpoint

Progress = Callable[[str], None]

START_TIMEOUT_S = 120.0
"""Longest wait for the first processed frame (a 10,000-asset site takes ~20 s to load)."""
STALL_TIMEOUT_S = 120.0
"""Longest time without progress before the run is declared stuck."""
CLICKHOUSE_POLL_S = 0.2
SETTLE_S = 30.0
"""When ClickHouse stays short of the expected count this long after the worker finished,
the run ends with a note instead of waiting forever."""


@dataclass
class PipelineFigures:
    workers: int
    readings: int
    frames: int
    seconds: float = 0.0
    readings_per_s: float = 0.0
    frames_per_s: float = 0.0
    worker_done_s: float = 0.0
    """From the clock's start to the last state record."""
    clickhouse_done_s: float = 0.0
    """From the clock's start to ClickHouse holding every valid reading."""
    rows_expected: int = 0
    rows_stored: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    states: int = 0
    alerts: int = 0
    rss_mb: float | None = None
    worker_rss_mb: list[float | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "readings": self.readings,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "readings_per_s": round(self.readings_per_s),
            "frames_per_s": round(self.frames_per_s),
            "worker_done_s": round(self.worker_done_s, 3),
            "clickhouse_done_s": round(self.clickhouse_done_s, 3),
            "rows_expected": self.rows_expected,
            "rows_stored": self.rows_stored,
            "dead_letters": self.dead_letters,
            "dead_letter_reasons": self.dead_letter_reasons,
            "state_records": self.states,
            "alerts": self.alerts,
            "rss_mb": self.rss_mb,
            "worker_rss_mb": self.worker_rss_mb,
            "notes": self.notes,
        }


@dataclass
class RunningPipeline:
    run: BenchRun
    workers: list[Child]
    sink: Child
    watcher: OutputWatcher

    def check_alive(self) -> None:
        for child in (*self.workers, self.sink):
            if not child.running():
                raise TwinError(
                    f"{child.name} stopped unexpectedly (exit {child.process.returncode}); "
                    f"its log ends:\n{child.log_tail()}"
                )

    def stored_readings(self) -> int | None:
        """Rows in ClickHouse's readings table (None until the sink answers queries)."""
        endpoint = read_endpoint(self.run.clickhouse_path)
        if endpoint is None:
            return None
        try:
            text = query_endpoint(endpoint, "SELECT count() FROM readings", "csv")
        except ClickHouseError:
            return None
        digits = text.strip().splitlines()[-1].strip().strip('"') if text.strip() else ""
        return int(digits) if digits.isdigit() else None

    def peak_rss_mb(self) -> list[float | None]:
        return [peak_rss_mb(w.process.pid) for w in self.workers]

    def stop(self) -> None:
        self.watcher.close()
        for child in (*self.workers, self.sink):
            self.run.children.stop(child, timeout=60)


def start_pipeline(run: BenchRun, workers: int, progress: Progress) -> RunningPipeline:
    progress(f"[{run.name}] starting {workers} x `twin worker` and `twin sink`")
    started = [run.children.twin(f"worker-{i + 1}", "worker") for i in range(workers)]
    sink = run.children.twin("sink", "sink", "--assign", "--json")
    return RunningPipeline(run, started, sink, OutputWatcher(run.settings, run.site))


def measure_rate(
    pipeline: RunningPipeline, readings: int, frames: int, progress: Progress
) -> PipelineFigures:
    figures = PipelineFigures(len(pipeline.workers), readings, frames)
    watcher = pipeline.watcher
    last_change, last_seen = time.monotonic(), -1
    next_line = time.monotonic() + 5
    worker_done: float | None = None
    ch_done: float | None = None
    next_ch = 0.0
    stored: int | None = None
    stored_changed = time.time()
    while True:
        pipeline.check_alive()
        counts = watcher.poll(0.1)
        seen = counts.valid + counts.dead_letters + counts.states
        if seen != last_seen:
            last_seen, last_change = seen, time.monotonic()
        limit = START_TIMEOUT_S if counts.first_validated is None else STALL_TIMEOUT_S
        if time.monotonic() - last_change > limit:
            raise TwinError(
                f"[{pipeline.run.name}] no progress for {limit:.0f}s: "
                f"{counts.valid} valid frames, {counts.dead_letters} dead letters of {frames}; "
                f"worker log ends:\n{pipeline.workers[0].log_tail()}"
            )
        out = counts.valid + counts.dead_letters
        if worker_done is None and out >= frames and counts.states >= counts.valid:
            worker_done = counts.last_state_received
        expected = readings - counts.dead_readings
        if ch_done is None and time.monotonic() >= next_ch:
            # Poll ClickHouse often only near the end; its queries wait for inserts.
            near = out >= frames * 0.98
            next_ch = time.monotonic() + (CLICKHOUSE_POLL_S if near else 2.0)
            now = time.time()
            count = pipeline.stored_readings()
            if count is not None and count != stored:
                stored, stored_changed = count, now
            if stored is not None and stored >= expected and out >= frames:
                ch_done = now
            elif worker_done is not None and stored is None and now - worker_done > START_TIMEOUT_S:
                raise TwinError(
                    f"[{pipeline.run.name}] the sink did not answer queries within "
                    f"{START_TIMEOUT_S:.0f}s of the last state record; sink log ends:\n"
                    f"{pipeline.sink.log_tail()}"
                )
            elif worker_done is not None and stored is not None and now - stored_changed > SETTLE_S:
                ch_done = stored_changed
                figures.notes.append(
                    f"ClickHouse holds {stored} readings, {expected} expected; "
                    f"the clock stopped at the last change of the count"
                )
        if time.monotonic() >= next_line:
            next_line += 5
            progress(
                f"  [{pipeline.run.name}] frames out {out:,}/{frames:,}, "
                f"state records {counts.states:,}, readings in ClickHouse "
                f"{'?' if stored is None else f'{stored:,}'}"
            )
        if worker_done is not None and ch_done is not None:
            break
    start = counts.first_validated
    if start is None:  # pragma: no cover - worker_done implies a valid frame or dead letters
        raise TwinError(f"[{pipeline.run.name}] the worker passed no frame")
    end = max(worker_done, ch_done)
    figures.seconds = end - start
    figures.readings_per_s = readings / figures.seconds
    figures.frames_per_s = frames / figures.seconds
    figures.worker_done_s = worker_done - start
    figures.clickhouse_done_s = ch_done - start
    figures.rows_expected = expected
    figures.rows_stored = stored or 0
    figures.dead_letters = counts.dead_letters
    figures.dead_letter_reasons = dict(counts.dead_reasons)
    figures.states = counts.states
    figures.alerts = counts.alerts
    figures.worker_rss_mb = pipeline.peak_rss_mb()
    known = [r for r in figures.worker_rss_mb if r is not None]
    figures.rss_mb = max(known) if known else None
    return figures


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set size (VmHWM), in MB; None if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None
