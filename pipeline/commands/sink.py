"""`twin sink`: store the pipeline's topics in ClickHouse (the sink process on its own)."""

from __future__ import annotations

import argparse
import signal
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server

from pipeline.clickhouse import migrate, open_client
from pipeline.commands import add_json_option, add_site_option, print_json
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.sink.consumer import GROUP_ID, SINK_TOPICS, SinkOptions, SinkProcess, run_sink
from pipeline.sink.query_server import serve_queries
from pipeline.site import load_site

if TYPE_CHECKING:
    from pipeline.commands import Subparsers


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "sink",
        help="store validated readings, state, KPI windows, alerts and dead letters in ClickHouse",
        description=(
            "Consume the site's telemetry.valid, twin.state, twin.anomaly, twin.kpi, "
            "twin.alerts and telemetry.deadletter topics (consumer group "
            f"{GROUP_ID}) and insert them into ClickHouse at TWIN_CLICKHOUSE_DSN in "
            "batches, committing offsets only after the rows are stored. Runs until "
            "SIGTERM/Ctrl-C or --duration, then flushes, commits and prints a summary."
        ),
    )
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument(
        "--idle-exit", type=float, metavar="S", help="stop once nothing arrived for S seconds"
    )
    parser.add_argument(
        "--assign",
        action="store_true",
        help="read every partition in this process (no group rebalancing; offsets are "
        "still committed to the group)",
    )
    parser.add_argument(
        "--max-rows", type=int, default=50_000, metavar="N", help="rows per batch (50000)"
    )
    parser.add_argument(
        "--max-delay", type=float, default=1.0, metavar="S", help="seconds per batch (1.0)"
    )
    parser.add_argument("--metrics-port", type=int, metavar="P", help="serve /metrics on P")
    parser.add_argument(
        "--no-migrate", action="store_true", help="do not apply pending schema migrations"
    )
    add_site_option(parser)
    add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    for name in ("duration", "idle_exit", "max_delay"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    if args.max_rows < 1:
        raise ConfigError("--max-rows must be at least 1")
    site = load_site(settings.site)
    options = SinkOptions(
        topics=tuple(site.topic(name) for name in SINK_TOPICS),
        mode="assign" if args.assign else "subscribe",
        max_rows=args.max_rows,
        max_delay_s=args.max_delay,
        duration_s=args.duration,
        idle_exit_s=args.idle_exit,
    )
    if args.metrics_port is not None:
        try:
            start_http_server(args.metrics_port, addr="127.0.0.1")
        except OSError as exc:
            raise ConfigError(f"--metrics-port {args.metrics_port}: {exc}") from exc
    client = open_client(settings.clickhouse_url(), create_database=not args.no_migrate)
    try:
        if not args.no_migrate:
            migrate(client)
        # While this process holds the embedded engine, `twin sql` asks it instead.
        with serve_queries(client, settings.clickhouse_url()):
            summary = run_sink(settings, client, options, on_start=_stop_on_signals)
    finally:
        client.close()
    if args.json:
        print_json(summary.as_dict())
        return 0
    report = summary.as_dict()
    rows = ", ".join(f"{table} {n}" for table, n in sorted(report["rows"].items())) or "none"
    print(f"sink ({report['mode']}): {report['records']} records in {report['elapsed_s']} s")
    print(f"  rows stored: {rows}")
    print(
        f"  flushes {report['flushes']}, retries {report['retries']}, "
        f"commits {report['commits']}, lag {report['lag']}"
    )
    if report["undecodable"]:
        print(f"  skipped (undecodable): {report['undecodable']}")
    return 0


def _stop_on_signals(process: SinkProcess) -> None:
    def stop(signum: int, frame: Any) -> None:
        process.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
