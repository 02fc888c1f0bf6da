"""`twin evaluate` as a user runs it: labelled SKAB recordings replayed through a real broker and
a real `twin worker`, the flags read back from twin.anomaly and scored against the labels."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline import PROJECT_ROOT
from pipeline.kafka.broker import EmbeddedBroker
from tests.conftest import run_twin

SKAB = PROJECT_ROOT.parent / "shared" / "datasets" / "skab" / "data"

pytestmark = pytest.mark.skipif(not SKAB.is_dir(), reason=f"{SKAB} is not there")


def test_skab_slice_through_the_embedded_broker(tmp_path: Path) -> None:
    """Two SKAB experiments (about 2,200 rows) on Twinline's own embedded broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env["TWIN_DATA_DIR"] = str(tmp_path / "data")
    files = [str(SKAB / "valve1" / "3.csv"), str(SKAB / "valve2" / "1.csv")]
    done = run_twin("evaluate", "--json", *files, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["rows"] > 2000 and report["rows_unscored"] == 0
    assert [f["file"] for f in report["files"]] == ["valve1/3.csv", "valve2/1.csv"]
    # Rows after the 400 training rows of each file are scored, pooled and per file.
    assert sum(f["points"] for f in report["files"]) == report["rows"] - 2 * 400
    assert report["tp"] + report["fp"] + report["fn"] + report["tn"] == report["rows"] - 800
    assert report["f1"] > 0.7 and report["far"] < 0.25
    assert report["model"].startswith("hotelling-t2/")
    assert "scored" in done.stderr  # progress while it runs


def test_any_csv_in_the_skab_layout_on_a_given_cluster(
    broker: EmbeddedBroker, twin_env: dict[str, str], tmp_path: Path
) -> None:
    """A recording nobody here made: other columns, a level shift; TWIN_KAFKA_BOOTSTRAP set."""
    lines = ["datetime;flow in;motor temp;anomaly;changepoint"]
    for i in range(900):
        shift = 6.0 if 600 <= i < 750 else 0.0
        flow = 50.0 + ((i * 7919) % 13) / 13 - 0.5 + shift
        temp = 40.0 + ((i * 104729) % 17) / 17 - 0.5
        label = 1 if 600 <= i < 750 else 0
        lines.append(
            f"2021-05-01 {i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d};{flow};{temp};{label};0"
        )
    path = tmp_path / "line4-pump.csv"
    path.write_text("\n".join(lines) + "\n")
    done = run_twin("evaluate", "--json", "--train-rows", "300", str(path), env=twin_env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["files"][0]["points"] == 600
    assert report["tp"] > 100  # the shift is found
    assert report["far"] < 0.1


def test_bad_input_is_a_clear_error(twin_env: dict[str, str], tmp_path: Path) -> None:
    missing = run_twin("evaluate", str(tmp_path / "nope.csv"), env=twin_env)
    assert missing.returncode == 2 and "nope.csv" in missing.stderr
    headless = tmp_path / "no-time.csv"
    headless.write_text("a;b;anomaly\n1;2;0\n")
    done = run_twin("evaluate", str(headless), env=twin_env)
    assert done.returncode == 2, done.stderr
    assert "datetime" in done.stderr
