"""`twin demo` as a newcomer runs it: its own broker, the embedded ClickHouse, the simulator
with its faults, the connectors, the stream agents and the sink, and a summary that adds up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_twin

pytestmark = pytest.mark.integration


def test_demo_runs_the_whole_pipeline_and_accounts_for_every_reading(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env["TWIN_DATA_DIR"] = str(tmp_path / "data")
    # 75 s of telemetry: a minute boundary and the watermark's 2 s pass, so windows close.
    result = run_twin("demo", "--duration", "75", "--json", env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)

    assert report["embedded_broker"] is True
    assert report["clickhouse"].startswith(f"chdb://{tmp_path}")
    # Every source of the demo plant delivered, and the sum is what was published.
    assert set(report["connectors"]) == {"opcua-line1", "modbus-gw1", "mqtt-plant"}
    published = report["readings_published"]
    assert published == sum(c["delivered_readings"] for c in report["connectors"].values())
    assert published > 10_000

    # Every published reading is stored exactly once or sits in a dead letter with a reason.
    lettered = report["readings_dead_lettered"]
    assert report["readings_stored"] == published - lettered
    assert report["readings_unaccounted"] == 0
    assert report["readings_distinct"] == report["readings_stored"]
    assert sum(report["readings_dead_lettered_by_reason"].values()) == lettered
    assert all(reason for reason in report["dead_letters_by_reason"])
    assert sum(report["dead_letters_by_reason"].values()) == report["dead_letters"]
    assert report["consistent"] is True and report["problems"] == []

    # The agents ran: a state row per gauge/counter signal per frame, windows closed, and the
    # filter is closer to the simulator's truth than the sensors it reads.
    assert report["state_rows"] >= report["frames_published"]
    assert report["kpi_windows"] > 0
    assert report["kpi_windows_by_kind"].get("TUMBLING", 0) > 0
    # One anomaly score per state record; the fault scenario's stuck sensor (cnc-01 from 30 s)
    # raises its site rule's stale alert, stored in ClickHouse.
    assert report["anomaly_rows"] == report["latency_samples"]
    assert "cnc-01:cnc-stale" in report["alerts_raised"]
    assert report["estimate_points"] > 1000
    assert report["estimate_rmse_ratio"] < 1
    assert 0 < report["latency_p50_ms"] <= report["latency_p99_ms"]
    # The frames ingested once the worker was running, and when that began.
    assert 0 < report["latency_live_samples"] <= report["latency_samples"]
    assert 0 < report["latency_live_p50_ms"] <= report["latency_live_p99_ms"]
    assert report["worker_first_output_s"] > 0
    # One state record per frame that passed validation.
    assert report["latency_samples"] == report["frames_published"] - report["frames_dead_lettered"]
    assert report["sink"]["lag"] == 0
    assert "[demo] published " in result.stderr  # progress while it ran
