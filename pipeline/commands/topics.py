"""`twin topics create|list`: Twinline's topics on the cluster at TWIN_KAFKA_BOOTSTRAP."""

from __future__ import annotations

import argparse

from pipeline.commands import Subparsers, add_json_option, add_site_option, print_json
from pipeline.kafka.clients import admin_client
from pipeline.kafka.topics import TopicState, create_topics, describe_topics
from pipeline.settings import Settings
from pipeline.site import load_site


def register(sub: Subparsers) -> None:
    parser = sub.add_parser("topics", help="create or list Kafka topics")
    topics = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = topics.add_parser(
        "create",
        help="create every topic from the contracts and the site file (idempotent)",
    )
    listing = topics.add_parser("list", help="list the topics on the cluster")
    for p in (create, listing):
        add_site_option(p)
        add_json_option(p)
    create.set_defaults(handler=run_create)
    listing.set_defaults(handler=run_list)


def run_create(args: argparse.Namespace, settings: Settings) -> int:
    site = load_site(settings.site)
    states = create_topics(
        admin_client(settings),
        site.topic_prefix,
        site.kafka.partitions,
        site.kafka.replication_factor,
    )
    if args.json:
        print_json(
            {
                "bootstrap": settings.kafka_bootstrap,
                "created": sum(s.status == "created" for s in states),
                "topics": [s.as_dict() for s in states],
            }
        )
    else:
        print_table(states, with_status=True)
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    site = load_site(settings.site)
    states = describe_topics(admin_client(settings), site.topic_prefix)
    if args.json:
        print_json({"bootstrap": settings.kafka_bootstrap, "topics": [s.as_dict() for s in states]})
    else:
        print_table(states, with_status=False)
    return 0


def print_table(states: list[TopicState], with_status: bool) -> None:
    header = ["topic", "partitions", "cleanup", "retention", "record type"]
    if with_status:
        header.append("status")
    rows = []
    for s in states:
        retention = _human_ms(s.retention_ms) if s.cleanup_policy != "compact" else "-"
        row = [s.name, str(s.partitions), s.cleanup_policy or "?", retention, s.record_type or "-"]
        if with_status:
            row.append(s.status)
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if not rows:
        print("(no topics)")


def _human_ms(value: str | None) -> str:
    if value is None or not value.lstrip("-").isdigit():
        return "?"
    ms = int(value)
    if ms < 0:
        return "forever"
    days, rest = divmod(ms, 86_400_000)
    return f"{days}d" if not rest else f"{ms // 3_600_000}h"
