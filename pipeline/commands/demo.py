"""`twin demo`: the whole stack on this machine, with a summary at the end."""

from __future__ import annotations

import argparse
import sys

from pipeline.commands import Subparsers, add_json_option, add_site_option, print_json
from pipeline.demo import DemoReport, run_demo
from pipeline.settings import Settings
from pipeline.site import load_site


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the stack on this machine (embedded broker and ClickHouse) and summarise",
        description="Start the embedded stack (its own Kafka broker unless "
        "TWIN_KAFKA_BOOTSTRAP is set; ClickHouse at TWIN_CLICKHOUSE_DSN, by default the "
        "embedded engine in the data dir), create topics and tables, pass a frame per asset "
        "through Kafka, and print what is there.",
    )
    parser.add_argument(
        "--hold", action="store_true", help="keep the embedded broker running until Ctrl-C"
    )
    add_site_option(parser)
    add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    site = load_site(settings.site)

    def progress(message: str) -> None:
        print(f"[demo] {message}", file=sys.stderr, flush=True)

    report = run_demo(settings, site, progress, hold=args.hold)
    if args.json:
        print_json(report.as_dict())
    else:
        print_summary(report, site.name)
    ok = report.frames_read_back == report.frames_published
    return 0 if ok else 1


def print_summary(report: DemoReport, site_name: str) -> None:
    broker = "embedded broker" if report.embedded_broker else "broker"
    print(f"Twinline demo — site {site_name}")
    print(f"  Kafka       {broker} at {report.bootstrap}")
    print(f"  ClickHouse  {report.clickhouse}")
    print(f"\nTopics ({len(report.topics)}):")
    for t in report.topics:
        policy = t.cleanup_policy or "?"
        print(f"  {t.name:<40} {t.partitions:>2} partitions  {policy:<8} {t.record_type or '-'}")
    print(f"\nClickHouse tables and views ({len(report.tables)}):")
    for table in report.tables:
        rows = "" if table.rows is None else f"{table.rows} rows"
        print(f"  {table.name:<28} {table.engine:<28} {rows}")
    print(
        f"\nRound trip: {report.frames_published} frames ({report.readings_published} readings) "
        f"published to telemetry.raw, {report.frames_read_back} read back and decoded "
        f"in {report.seconds:.1f}s"
    )
    if report.embedded_broker:
        print("The embedded broker keeps data in memory only and has stopped; run")
        print("`twin demo --hold` to keep it up and look with `twin tail telemetry.raw`.")
    else:
        print(f"Look at them: twin tail {report.topics[0].name if report.topics else ''}")
