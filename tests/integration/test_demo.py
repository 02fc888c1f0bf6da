"""`twin demo` as a newcomer runs it: its own broker, the embedded ClickHouse, a summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.topics import TOPICS
from tests.conftest import run_twin

pytestmark = pytest.mark.integration


def test_demo_brings_up_the_stack_and_round_trips_a_frame_per_asset(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env["TWIN_DATA_DIR"] = str(tmp_path / "data")
    result = run_twin("demo", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["embedded_broker"] is True
    assert report["clickhouse"].startswith(f"chdb://{tmp_path}")
    assert {t["name"] for t in report["topics"]} == {spec.name for spec in TOPICS}
    tables = {t["name"] for t in report["tables"]}
    assert {"readings", "states", "anomalies", "kpi_windows", "alerts", "dead_letters"} <= tables
    assert report["migrations_applied"] > 0
    assert report["frames_published"] == 10  # one per asset of the demo plant
    assert report["frames_read_back"] == report["frames_published"]
    assert "[demo] broker ready on 127.0.0.1:" in result.stderr

    again = run_twin("demo", env=env)  # same data dir: nothing to migrate, human summary
    assert again.returncode == 0, again.stderr
    assert "Round trip: 10 frames" in again.stdout
    assert "readings" in again.stdout
