"""`twin worker` (the stream agents) and `twin run` (agents plus the ClickHouse sink)."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from pipeline.commands import Subparsers, add_site_option
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.site import load_site


def register(sub: Subparsers) -> None:
    worker = sub.add_parser(
        "worker",
        help="run the stream agents (validate, estimate, KPI) as a Faust worker",
        description="Run the stream agents against TWIN_KAFKA_BOOTSTRAP until SIGTERM. "
        "Several workers in one consumer group share the partitions.",
    )
    worker.add_argument(
        "--web-port", type=int, default=None, help="Faust's web port (off by default)"
    )
    worker.add_argument(
        "--metrics-port", type=int, metavar="P", help="serve Prometheus /metrics on 127.0.0.1:P"
    )
    add_site_option(worker)
    worker.set_defaults(handler=run_worker)
    run = sub.add_parser(
        "run",
        help="run the pipeline: stream agents and the ClickHouse sink, until SIGTERM",
        description="Start `twin worker` and `twin sink` as child processes against "
        "TWIN_KAFKA_BOOTSTRAP and TWIN_CLICKHOUSE_DSN; stop both on SIGTERM/Ctrl-C.",
    )
    add_site_option(run)
    run.set_defaults(handler=run_pipeline)


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from faust.worker import Worker

    from topologies.agents import build_app

    site = load_site(settings.site)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        try:
            start_http_server(args.metrics_port, addr="127.0.0.1")
        except OSError as exc:
            raise ConfigError(f"--metrics-port {args.metrics_port}: {exc}") from exc
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = build_app(settings, site, web_port=args.web_port)
    # Faust narrates every service start and stop at INFO; our own lines say what matters.
    level = "debug" if settings.log_level.upper() == "DEBUG" else "warn"
    worker = Worker(app, loglevel=level, quiet=True, redirect_stdouts=False)
    # Faust's progress spinner sets the root logger to DEBUG so that it turns on every log
    # record: every send then builds a debug record (2.5% of a busy worker's time).
    worker.spinner = None
    worker.execute_from_commandline()  # runs until SIGTERM/SIGINT, then exits the process
    return 0


def run_pipeline(args: argparse.Namespace, settings: Settings) -> int:
    site_args = ["--site", str(settings.site)]
    names = ("worker", "sink")
    children = [
        subprocess.Popen([sys.executable, "-m", "pipeline.cli", name, *site_args]) for name in names
    ]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
    failed = [
        name
        for name, child in zip(names, children, strict=True)
        if child.returncode not in (0, -signal.SIGTERM)
    ]
    if failed and not stopping:
        print(f"twin run: {', '.join(failed)} stopped unexpectedly", file=sys.stderr)
        return 1
    return 0
