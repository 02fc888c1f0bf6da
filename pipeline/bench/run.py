"""`twin bench` (the pipeline suite): every figure of one run, phase by phase.

1. workload: the bench plant's frames into telemetry.raw (pipeline.bench.workload);
2. raw limit: the same frames consumed and decoded by one plain client (pipeline.bench.raw);
3. pipeline rate: `twin worker` x N and `twin sink` over them (pipeline.bench.pipeline);
4. latency: paced frames through the same, still running processes (pipeline.bench.latency);
5. scale-out (optional): the same frames again on fresh topics with the other worker count;
6. naive baseline: per-reading events through a plain Faust agent (pipeline.bench.naive);
7. cost growth (optional): the rate with 100 and with 10,000 assets, each on its own topics.

Phases run one after another, never side by side, so each has the machine to itself.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.bench.latency import LatencyFigures, measure_latency
from pipeline.bench.naive import NaiveFigures, measure_naive
from pipeline.bench.pipeline import PipelineFigures, measure_rate, start_pipeline
from pipeline.bench.plant import BenchPlant
from pipeline.bench.raw import RawFigures, measure_raw
from pipeline.bench.stack import BenchStack, bench_run, bench_stack
from pipeline.bench.workload import Workload, generate, reproduce
from pipeline.settings import Settings

Progress = Callable[[str], None]

GROWTH_ASSETS = (100, 10_000)


@dataclass(frozen=True)
class BenchOptions:
    assets: int = 1_000
    signals: int = 16
    readings: int = 2_000_000
    workers: int = 1
    scale_out: bool = False
    rate: float = 20_000.0
    latency_s: float = 60.0
    naive_readings: int = 20_000
    growth: bool = True
    growth_readings: int | None = None
    """Readings of each growth run; default: three frames per asset at 10,000 assets."""
    partitions: int = 4
    keep: bool = False


@dataclass
class BenchResult:
    options: BenchOptions
    workload: dict[str, Any] = field(default_factory=dict)
    raw: RawFigures | None = None
    pipeline: PipelineFigures | None = None
    latency: LatencyFigures | None = None
    scale_out: list[PipelineFigures] = field(default_factory=list)
    naive: NaiveFigures | None = None
    growth: dict[int, PipelineFigures] = field(default_factory=dict)
    seconds: float = 0.0


def run_bench(settings: Settings, options: BenchOptions, progress: Progress) -> BenchResult:
    started = time.monotonic()
    result = BenchResult(options)
    with bench_stack(settings, progress, keep=options.keep) as stack:
        workload = _main_run(stack, options, result, progress)
        if options.scale_out:
            other = 2 if options.workers == 1 else 1
            result.scale_out.append(_again(stack, options, workload, other, progress))
        result.naive = measure_naive(stack, workload, progress)
        progress(f"[naive] {result.naive.readings_per_s:,.0f} readings/s")
        if options.growth:
            for assets in GROWTH_ASSETS:
                result.growth[assets] = _growth_run(stack, options, assets, progress)
    result.seconds = time.monotonic() - started
    return result


def _main_run(
    stack: BenchStack, options: BenchOptions, result: BenchResult, progress: Progress
) -> Workload:
    plant = BenchPlant(options.assets, options.signals, options.partitions, "")
    with bench_run(stack, "main", plant, progress) as run:
        progress(f"[main] producing {options.readings:,} readings into telemetry.raw")
        workload = generate(
            run.settings, run.site, plant, options.readings, options.naive_readings, progress
        )
        result.workload = workload.describe()
        progress(
            f"[main] {workload.frames:,} frames, {workload.readings:,} readings "
            f"in {workload.produce_s:.1f}s"
        )
        progress("[raw] consuming and decoding the same frames with one plain client")
        result.raw = measure_raw(run.settings, run.site.topic("telemetry.raw"), workload.frames)
        progress(f"[raw] {result.raw.readings_per_s:,.0f} readings/s")
        pipeline = start_pipeline(run, options.workers, progress)
        try:
            result.pipeline = measure_rate(pipeline, workload.readings, workload.frames, progress)
            progress(f"[main] pipeline {result.pipeline.readings_per_s:,.0f} readings/s")
            if options.latency_s > 0:
                result.latency = measure_latency(
                    pipeline, workload, options.rate, options.latency_s, progress
                )
        finally:
            pipeline.stop()
    return workload


def _again(
    stack: BenchStack, options: BenchOptions, workload: Workload, workers: int, progress: Progress
) -> PipelineFigures:
    """The same frames on fresh topics, with `workers` workers."""
    plant = BenchPlant(options.assets, options.signals, options.partitions, f"w{workers}.")
    with bench_run(stack, f"workers-{workers}", plant, progress) as run:
        reproduce(run.settings, run.site.topic("telemetry.raw"), workload)
        pipeline = start_pipeline(run, workers, progress)
        try:
            figures = measure_rate(pipeline, workload.readings, workload.frames, progress)
        finally:
            pipeline.stop()
    progress(f"[workers-{workers}] {figures.readings_per_s:,.0f} readings/s")
    return figures


def _growth_run(
    stack: BenchStack, options: BenchOptions, assets: int, progress: Progress
) -> PipelineFigures:
    plant = BenchPlant(assets, options.signals, options.partitions, f"g{assets}.")
    readings = options.growth_readings or 3 * max(GROWTH_ASSETS) * (options.signals * 5 + 3)
    with bench_run(stack, f"assets-{assets}", plant, progress) as run:
        progress(f"[assets-{assets}] producing {readings:,} readings")
        workload = generate(run.settings, run.site, plant, readings, 0, progress)
        pipeline = start_pipeline(run, options.workers, progress)
        try:
            figures = measure_rate(pipeline, workload.readings, workload.frames, progress)
        finally:
            pipeline.stop()
    progress(f"[assets-{assets}] {figures.readings_per_s:,.0f} readings/s")
    return figures


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }
