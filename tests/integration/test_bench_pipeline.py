"""`twin bench` (the pipeline suite) runs end to end on a tiny workload and reports every
figure. Nothing about speed is asserted: the figures must only be present and consistent."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from pipeline import PROJECT_ROOT
from pipeline.bench.report import FEW_SAMPLES, write_text

pytestmark = pytest.mark.integration

KEYS = (
    "readings_per_s",
    "raw_per_s",
    "ratio",
    "naive_per_s",
    "speedup_vs_naive",
    "latency_p50_ms",
    "latency_p99_ms",
    "alert_latency_p50_ms",
    "alert_latency_p99_ms",
    "rss_mb",
    "cost_growth",
    "workload",
    "machine",
)


def test_pipeline_bench_reports_every_figure_of_one_run() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    argv = [sys.executable, "-m", "pipeline.cli", "bench", "--assets", "20", "--readings",
            "20000", "--latency-s", "3", "--rate", "2000", "--naive-readings", "1000",
            "--no-growth", "--json"]  # fmt: skip
    done = subprocess.run(
        argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    for key in KEYS:
        assert key in report, key

    workload = report["workload"]
    assert workload["assets"] == 20
    assert workload["signals_per_asset"] == 19  # 16 gauges, the state code, two counters
    assert workload["readings"] >= 20_000
    assert workload["frames"] * workload["readings_per_frame"] == pytest.approx(
        workload["readings"], rel=0.01
    )
    assert workload["frame_bytes"] > 0 and workload["faults"]

    pipeline = report["pipeline"]
    assert pipeline["readings"] == workload["readings"]
    # Every reading of a frame the validator passed is stored once.
    assert pipeline["rows_stored"] == pipeline["rows_expected"]
    assert pipeline["state_records"] >= workload["frames"] - pipeline["dead_letters"]
    assert 0 < pipeline["worker_done_s"] <= pipeline["seconds"]

    for rate in ("readings_per_s", "raw_per_s", "naive_per_s"):
        assert report[rate] > 0, rate
    # Both figures are rounded in the report (ratio to 3 decimals, speedup to 1).
    ratio = report["readings_per_s"] / report["raw_per_s"]
    assert report["ratio"] == pytest.approx(ratio, rel=0.01, abs=0.0006)
    assert report["speedup_vs_naive"] == pytest.approx(
        report["readings_per_s"] / report["naive_per_s"], rel=0.01, abs=0.06
    )
    assert report["naive"]["readings"] >= 1000

    latency = report["latency"]
    assert latency["frames_sent"] > 0 and latency["state_samples"] > 0
    assert 0 < report["latency_p50_ms"] <= report["latency_p99_ms"]
    # Every tenth machine runs overloaded for a while (m-0001 and m-0011 of 20): each
    # raises its overload alert, matched to the frame that caused it.
    assert latency["overloaded_machines"] == 2
    assert latency["alert_samples"] >= 2
    assert 0 < report["alert_latency_p50_ms"] <= report["alert_latency_p99_ms"]
    # A 3 s phase is one 10 s slice: it holds every state sample.
    assert [s["start_s"] for s in latency["slices"]] == [0.0]
    assert latency["slices"][0]["samples"] == latency["state_samples"]
    assert latency["slices"][0]["p99_ms"] == pytest.approx(report["latency_p99_ms"], abs=0.11)
    assert report["rss_mb"] > 0
    assert report["cost_growth"] is None  # --no-growth

    lines = _human(report)
    slices = [line for line in lines if "by ingest time" in line]
    assert slices == [f"{' ' * 13}state p50 / p99 by ingest time: 0 s "
                      f"{latency['slices'][0]['p50_ms']:.0f} / "
                      f"{latency['slices'][0]['p99_ms']:.0f} ms"]  # fmt: skip
    # The human output says when the alert percentiles rest on too few alerts.
    for alerts, noted in ((0, False), (5, True), (FEW_SAMPLES - 1, True), (FEW_SAMPLES, False)):
        latency["alert_samples"] = alerts
        said = [line for line in _human(report) if "alert percentiles rest on" in line]
        assert said == ([f"  note: the alert percentiles rest on {alerts} alert event(s), so their "
                         "p99 is about the slowest of them, not a stable figure"]
                        if noted else []), alerts  # fmt: skip


def _human(report: dict[str, Any]) -> list[str]:
    text = io.StringIO()
    write_text(report, text)
    return text.getvalue().splitlines()
    assert report["machine"]["cpus"] >= 1
