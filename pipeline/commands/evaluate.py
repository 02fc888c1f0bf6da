"""`twin evaluate`: replay labelled recordings through the pipeline and score its anomaly flags."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.commands import Subparsers, add_json_option, print_json
from pipeline.errors import ConfigError
from pipeline.settings import Settings

FORMATS = ("skab", "nab")
DEFAULT_TRAIN_ROWS = 400


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="score the anomaly detection on labelled recordings (SKAB, NAB layouts)",
        description=(
            "Replay labelled csv recordings as telemetry (one asset per file, signals from the "
            "columns, event time from the file) through a broker (embedded unless "
            "TWIN_KAFKA_BOOTSTRAP is set) and a real `twin worker`, then score the anomaly "
            "flags against the labels. skab: ';'-separated csv with datetime, signal columns, "
            "anomaly, changepoint (a directory means all its csv files); point-wise F1, FAR "
            "and MAR after the first --train-rows rows of each file. nab: a NAB csv "
            "(timestamp,value) with labels/combined_windows.json above it; windows detected "
            "and false alarms per day."
        ),
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="csv files or dirs")
    parser.add_argument("--format", choices=FORMATS, default="skab", help="file layout (skab)")
    parser.add_argument(
        "--train-rows",
        type=int,
        default=DEFAULT_TRAIN_ROWS,
        metavar="N",
        help=f"rows of each file the detector learns from, not scored ({DEFAULT_TRAIN_ROWS})",
    )
    add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.train_rows < 0:
        raise ConfigError("--train-rows must be 0 or more")
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        raise ConfigError("no such file or directory", missing)
    from pipeline.evaluate.run import run_evaluation  # Kafka clients load only when needed

    result = run_evaluation(settings, args.paths, args.format, args.train_rows, _progress)
    if args.json:
        print_json(result)
    else:
        print(render(result))
    return 0


def _progress(line: str) -> None:
    print(f"evaluate: {line}", file=sys.stderr, flush=True)


def render(result: dict[str, Any]) -> str:
    from pipeline.evaluate.report import render_text

    return render_text(result)
