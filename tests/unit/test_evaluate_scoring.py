"""Scoring flags against labels: small cases computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluate.datasets import Series
from pipeline.evaluate.scoring import score_nab, score_skab


def b(*bits: int) -> np.ndarray:
    return np.array(bits, dtype=np.bool_)


def test_skab_pooled_and_per_file_skip_the_training_rows() -> None:
    a = ("a", b(1, 1, 0, 0, 1, 1), b(1, 1, 1, 0, 1, 0))  # scored: labels 0 0 1 1, flags 1 0 1 0
    c = ("c", b(0, 0, 1, 1), b(0, 0, 1, 1))  # scored: 1 1 vs 1 1
    free = ("free", None, b(1, 1, 0, 1))  # scored: 0 1 -> one false alarm of two
    report = score_skab([a, c, free], train_rows=2)
    assert (report["tp"], report["fp"], report["fn"], report["tn"]) == (3, 2, 1, 2)
    assert report["f1"] == pytest.approx(6 / 9)
    assert report["far"] == pytest.approx(2 / 4)
    assert report["mar"] == pytest.approx(1 / 4)
    first = report["files"][0]
    assert (first["tp"], first["fp"], first["fn"], first["tn"]) == (1, 1, 1, 1)
    assert first["f1"] == pytest.approx(0.5) and first["points"] == 4
    assert report["files"][2]["far"] == pytest.approx(0.5)


def test_nothing_flagged_scores_zero_not_an_error() -> None:
    report = score_skab([("a", b(0, 1, 1), b(0, 0, 0))], train_rows=0)
    assert report["f1"] == 0.0 and report["mar"] == 1.0 and report["far"] == 0.0


def test_nab_windows_lead_and_false_alarm_onsets() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    times = tuple(t0 + timedelta(hours=i) for i in range(48))
    windows = ((times[10], times[20]), (times[30], times[35]))
    series = Series(
        path=Path("x.csv"),
        key="x.csv",
        asset_id="x",
        signals=("value",),
        columns=("value",),
        times=times,
        values=np.zeros((48, 1)),
        labels=None,
        windows=windows,
        points=(times[15], times[33]),
    )
    flags = np.zeros(48, dtype=np.bool_)
    flags[[2, 3, 4]] = True  # one false alarm, three points
    flags[[12, 13, 14, 22]] = True  # detects window 1 at 12; 22 is a second false alarm
    flags[40] = True  # third
    report = score_nab([(series, flags)])
    f = report["files"][0]
    assert report["detected"] == 1 and report["windows"] == 2
    assert f["windows"][0]["lead_hours"] == pytest.approx(3.0)
    assert f["windows"][0]["before_point"] and not f["windows"][1]["detected"]
    assert f["false_alarms"] == 3
    normal_days = (48 - 11 - 6) / 24
    assert f["false_alarms_per_day"] == pytest.approx(3 / normal_days)
