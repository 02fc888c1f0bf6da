"""The demo's latency: over every frame, and over the frames ingested once the worker's first
state record was out (the first ones wait for the worker to join its group)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.demo_summary import latency_of

START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def test_frames_from_before_the_worker_ran_are_left_out_of_the_live_figures() -> None:
    # Frames ingested at 0-5 s wait for the worker, whose first record is out at 6 s; from
    # then on every frame's record is out 50 ms after its ingest.
    waiting = [(at(6.0 + k * 0.01), at(k)) for k in range(6)]
    live = [(at(t + 0.05), at(t)) for t in (6.0, 6.5, 7.0, 7.5)]
    latency = latency_of(waiting + live, START)
    assert latency.first_output_s == 6.0
    assert latency.samples == 10 and latency.live_samples == 4
    assert latency.live_p50_ms == pytest.approx(50.0) and latency.live_p99_ms == pytest.approx(50.0)
    assert latency.p99_ms is not None and latency.p99_ms > 5000  # the start-up wait, kept apart


def test_no_records_give_no_figures() -> None:
    latency = latency_of([], START)
    assert latency.samples == latency.live_samples == 0
    assert latency.p99_ms is None and latency.live_p99_ms is None and latency.first_output_s is None
