"""Replaying benchmark files in memory through validate -> estimate -> anomaly (no Kafka).

This is the fast way to see what the detector makes of a dataset, and what the unit tests use;
`twin evaluate` replays the same files through the broker and the worker instead. Each row of
a file becomes one telemetry frame of its asset (one reading per non-empty cell, stamped with
the row's time), so the stages see exactly what a connector would have published.

    .venv/bin/python -m pipeline.evaluate.offline --format skab DIR_OR_CSV... [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from pipeline.errors import ConfigError
from pipeline.evaluate.datasets import Series, read, site_for, telemetry_frames
from pipeline.evaluate.report import render_text
from pipeline.evaluate.scoring import score_nab, score_skab
from pipeline.site import Site, parse_site
from pipeline.stages.anomaly import AnomalyDetector, AnomalySettings
from pipeline.stages.common import Origin
from pipeline.stages.estimate import Estimator
from pipeline.stages.validate import Validator


@dataclass(frozen=True, eq=False)
class Replayed:
    """What the detector said about every row of one file."""

    series: Series
    flags: npt.NDArray[np.bool_]
    """Per row: the anomaly_score record's is_anomaly (false for a row that made no frame)."""
    scores: npt.NDArray[np.float64]
    """Per row: the score (NaN for a row that made no frame)."""
    thresholds: npt.NDArray[np.float64]
    warming_up: npt.NDArray[np.bool_]


def load_replay_site(data: dict[str, Any]) -> Site:
    """The site of `site_for`'s dict."""
    return parse_site(yaml.safe_dump(data, sort_keys=False), origin="<replay site>")


def replay(
    series: list[Series],
    train_rows: int = 400,
    settings: AnomalySettings | None = None,
    now: datetime | None = None,
) -> list[Replayed]:
    """Every file through fresh validate, estimate and anomaly stages, one asset per file."""
    site = load_replay_site(site_for(series, train_rows))
    validator = Validator(site)  # the site's validation section accepts old recordings
    estimator = Estimator(site)
    detector = AnomalyDetector(site, settings if settings is not None else AnomalySettings())
    clock = now if now is not None else datetime.now(UTC)
    results: list[Replayed] = []
    for one in series:
        flags = np.zeros(one.rows, dtype=np.bool_)
        scores = np.full(one.rows, np.nan)
        thresholds = np.full(one.rows, np.nan)
        warming = np.ones(one.rows, dtype=np.bool_)
        for row, frame in enumerate(telemetry_frames(one, clock)):
            checked = validator.validate(frame, Origin("telemetry.raw", 0, row), clock)
            if checked.frame is None:
                continue
            state = estimator.estimate(checked.frame)
            record = detector.score(state)
            flags[row] = record["is_anomaly"]
            scores[row] = record["score"]
            thresholds[row] = record["threshold"]
            warming[row] = record["warming_up"]
        results.append(Replayed(one, flags, scores, thresholds, warming))
    return results


def evaluate(paths: list[Path], fmt: str = "skab", train_rows: int = 400) -> dict[str, Any]:
    """Replay and score: the report `twin evaluate` prints, from the in-memory replay."""
    series = read(paths, fmt)
    started = time.perf_counter()
    replayed = replay(series, train_rows)
    elapsed = time.perf_counter() - started
    if fmt == "skab":
        report = score_skab(
            [(r.series.key, r.series.labels, r.flags) for r in replayed], train_rows
        )
    else:
        report = score_nab([(r.series, r.flags) for r in replayed])
    report["format"] = fmt
    report["rows"] = sum(r.series.rows for r in replayed)
    report["seconds"] = round(elapsed, 3)
    report["model"] = AnomalyDetector.model_id + "/" + AnomalyDetector.model_version
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.evaluate.offline",
        description="Replay labelled files in memory through validate, estimate and anomaly "
        "and score the flags against the labels.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--format", choices=("skab", "nab"), default="skab")
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        report = evaluate(args.paths, args.format, args.train_rows)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(render_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
