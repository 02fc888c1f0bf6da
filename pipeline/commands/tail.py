"""`twin tail TOPIC`: print a topic's decoded records from the earliest offset."""

from __future__ import annotations

import argparse
import sys

from pipeline.commands import Subparsers, add_site_option
from pipeline.errors import ConfigError
from pipeline.kafka.tail import tail
from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.site import load_site
from pipeline.topics import TOPICS


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "tail",
        help="print decoded records of a topic",
        description="Print a topic's records from the earliest offset, decoded from Avro. "
        "Stops after --limit records or once nothing new arrived for --idle seconds. "
        "A logical topic name (telemetry.raw) gets the site's topic prefix.",
    )
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N")
    parser.add_argument(
        "--idle", type=float, default=5.0, metavar="S", help="stop after S idle seconds (5)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per record")
    parser.add_argument(
        "--meta", action="store_true", help="with --json: add _kafka {partition, offset, key}"
    )
    add_site_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    if args.idle <= 0:
        raise ConfigError("--idle must be positive")
    topic = args.topic
    if topic in {spec.name for spec in TOPICS}:
        topic = load_site(settings.site).topic(topic)
    stats = tail(
        settings.librdkafka(),
        topic,
        AvroSerde.from_settings(settings),
        sys.stdout,
        limit=args.limit,
        idle_s=args.idle,
        as_json=args.json,
        with_meta=args.meta,
    )
    if not args.json:
        print(f"-- {stats.records} records, {stats.errors} undecodable", file=sys.stderr)
    return 0
