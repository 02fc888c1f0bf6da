"""`twin demo`: the whole pipeline on this machine, with a summary at the end."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.commands import Subparsers, add_json_option, add_site_option, print_json
from pipeline.demo import DEFAULT_DURATION_S, run_demo
from pipeline.demo_report import DemoReport
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.site import load_site


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the whole pipeline on this machine (simulator to ClickHouse) and summarise",
        description="Start the embedded stack (its own Kafka broker unless "
        "TWIN_KAFKA_BOOTSTRAP is set; ClickHouse at TWIN_CLICKHOUSE_DSN, by default the "
        "embedded engine in the data dir), the plant simulator with its fault scenario, the "
        "connectors, the stream agents and the sink; after --duration seconds stop the "
        "sources, let the pipeline drain, and summarise what was published, stored and "
        "dead-lettered. Exit 1 when a published reading is unaccounted for.",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        metavar="S",
        help=f"seconds of telemetry ({DEFAULT_DURATION_S:.0f}; KPI windows of a minute "
        "close only after a minute and a bit)",
    )
    parser.add_argument(
        "--hold", action="store_true", help="keep the embedded broker running until Ctrl-C"
    )
    add_site_option(parser)
    add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not args.duration > 0:
        raise ConfigError("--duration must be positive")
    site = load_site(settings.site)

    def progress(message: str) -> None:
        print(f"[demo] {message}", file=sys.stderr, flush=True)

    report = run_demo(settings, site, progress, duration_s=args.duration, hold=args.hold)
    if args.json:
        print_json(report.as_dict())
    else:
        print_summary(report, site.name)
    if not report.consistent:
        for problem in report.problems or ["the readings do not add up"]:
            print(f"twin demo: {problem}", file=sys.stderr)
        return 1
    return 0


def _fmt(value: Any, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def print_summary(report: DemoReport, site_name: str) -> None:
    f = report.figures
    broker = "embedded broker" if report.embedded_broker else "broker"
    print(f"Twinline demo — site {site_name}, {report.seconds:.0f}s")
    print(f"  Kafka       {broker} at {report.bootstrap}")
    print(f"  ClickHouse  {report.clickhouse}")
    print(f"  logs        {report.run_dir}")
    for note in report.notes:
        print(f"  note: {note}")
    print("\nConnectors:")
    for name, c in report.connectors().items():
        print(
            f"  {name:<14} {c.get('delivered', 0):>6} frames  "
            f"{c.get('delivered_readings', 0):>7} readings  reconnects {c.get('reconnects', 0)}"
        )
    lettered = ", ".join(f"{k} {v}" for k, v in f["readings_dead_lettered_by_reason"].items())
    reasons = ", ".join(f"{k} {v}" for k, v in f["dead_letters_by_reason"].items())
    print("\nReadings:")
    print(f"  published     {f['readings_published']}  ({f['frames_published']} frames)")
    print(f"  stored        {f['readings_stored']}  (rows in readings, FINAL)")
    print(f"  dead-lettered {f['readings_dead_lettered']}  ({lettered or 'none'})")
    print(f"  unaccounted   {f['readings_unaccounted']}")
    print(f"\nDead letters  {f['dead_letters']}  ({reasons or 'none'})")
    print(f"State rows    {f['state_rows']}")
    kinds = ", ".join(f"{k} {v}" for k, v in f["kpi_windows_by_kind"].items())
    print(f"KPI windows   {f['kpi_windows']}  ({kinds or 'none closed'})")
    print(f"Anomaly rows  {f['anomaly_rows']}  ({f['anomalies_flagged']} flagged anomalous)")
    events = ", ".join(f"{k} {v}" for k, v in f["alert_events_by_kind"].items())
    print(f"Alert events  {sum(f['alert_events_by_kind'].values())}  ({events or 'none'})")
    if f["alerts_raised"]:
        print(f"  raised: {', '.join(f['alerts_raised'])}")
    print(
        f"Latency       p50 {_fmt(f['latency_live_p50_ms'], ' ms')}, "
        f"p99 {_fmt(f['latency_live_p99_ms'], ' ms')}  (connector ingest -> record on "
        "twin.state, once the worker was running)"
    )
    print(
        f"  start-up    the worker's first record {_fmt(f['worker_first_output_s'], ' s')} into "
        f"the run; over every frame p50 {_fmt(f['latency_p50_ms'], ' ms')}, "
        f"p99 {_fmt(f['latency_p99_ms'], ' ms')}"
    )
    print(
        f"Estimate      RMSE ratio {_fmt(f['estimate_rmse_ratio'])} vs truth "
        f"({f['estimate_points']} readings, {f['estimate_signals']} signals; < 1: the "
        "filter is closer to the truth than the sensor)"
    )
    print(
        "\nConsistent" if report.consistent else "\nNOT consistent: " + "; ".join(report.problems)
    )
    print('Query it: twin sql "SELECT asset_id, count() FROM readings GROUP BY asset_id"')
