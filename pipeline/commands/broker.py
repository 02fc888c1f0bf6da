"""`twin broker`: run the embedded Kafka broker in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from pipeline.commands import Subparsers
from pipeline.kafka.broker import DEFAULT_PORT, EmbeddedBroker
from pipeline.settings import Settings


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "broker",
        help="run the embedded Kafka broker (Tansu, in memory) on 127.0.0.1",
        description="Run the embedded Kafka broker on 127.0.0.1 until Ctrl-C or SIGTERM. "
        "Data lives in memory only and is gone when it stops.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 9092)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    broker = EmbeddedBroker(args.port, log_path=settings.data_dir / "broker.log")

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    broker.start()
    print(f"broker ready on {broker.bootstrap} (pid {broker.pid}); Ctrl-C stops it", flush=True)
    print(f"  export TWIN_KAFKA_BOOTSTRAP={broker.bootstrap}", flush=True)
    try:
        code = broker.wait()
        print(f"broker exited with code {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        broker.stop()
        print("broker stopped", flush=True)
        return 0
