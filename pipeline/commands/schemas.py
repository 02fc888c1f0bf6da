"""`twin schemas`: check, record, list and push the Avro topic contracts in `schemas/avro/`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.commands import add_json_option, print_json
from pipeline.errors import ConfigError
from pipeline.serde.catalog import (
    DEFAULT_ROOT,
    SchemaCatalog,
    SchemaVersion,
    audit,
    record_new_versions,
)
from pipeline.serde.registry import COMPATIBILITY_LEVELS, RegistryIds, push_catalog
from pipeline.settings import Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "schemas",
        help="check, record, list and push the Avro topic contracts",
        description="The Avro topic contracts in schemas/avro/ and their schema ids.",
    )
    sub = parser.add_subparsers(dest="schemas_command", metavar="SUBCOMMAND", required=True)

    check = sub.add_parser(
        "check",
        help="verify catalog.json, docs and BACKWARD_TRANSITIVE compatibility",
        description="Exit 0 when every schema file is recorded unchanged in catalog.json, "
        "documented, and compatible with all earlier versions; exit 1 listing every problem.",
    )
    record = sub.add_parser(
        "record",
        help="give new schema versions their ids in catalog.json",
        description="Record every schema file not yet in catalog.json with the next free "
        "schema id. Refused while `twin schemas check` reports any other problem.",
    )
    listing = sub.add_parser("list", help="record types, versions, schema ids and topics")
    push = sub.add_parser(
        "push",
        help="register every version in the schema registry (TWIN_SCHEMA_REGISTRY_URL)",
        description="Register every record type's versions, oldest first, under the "
        "subject <prefix><topic>-value.",
    )
    push.add_argument(
        "--prefix", default="", help="topic prefix of the site (e.g. plant1.); default none"
    )
    push.add_argument(
        "--compatibility",
        metavar="LEVEL",
        type=str.upper,
        choices=COMPATIBILITY_LEVELS,
        help="set each subject's compatibility level first (e.g. BACKWARD_TRANSITIVE)",
    )
    for sub_parser, handler in (
        (check, run_check),
        (record, run_record),
        (listing, run_list),
        (push, run_push),
    ):
        sub_parser.add_argument(
            "--schemas-dir",
            metavar="DIR",
            type=Path,
            default=DEFAULT_ROOT,
            help="the schema catalog directory (default: schemas/avro)",
        )
        add_json_option(sub_parser)
        sub_parser.set_defaults(handler=handler)


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    result = audit(args.schemas_dir)
    if args.json:
        print_json(
            {
                "ok": result.ok,
                "record_types": result.record_types,
                "versions": result.versions,
                "problems": result.problems,
            }
        )
    elif result.ok:
        print(
            f"schemas ok: {result.record_types} record types, {result.versions} versions, "
            "all recorded in catalog.json, documented, BACKWARD_TRANSITIVE compatible"
        )
    else:
        print(f"schemas: {len(result.problems)} problem(s):")
        for problem in result.problems:
            print(f"  - {problem}")
    return 0 if result.ok else 1


def run_record(args: argparse.Namespace, settings: Settings) -> int:
    recorded = record_new_versions(args.schemas_dir)
    if args.json:
        print_json({"recorded": [_version_json(v) for v in recorded]})
    elif not recorded:
        print("nothing to record: every schema file is in catalog.json")
    else:
        for v in recorded:
            print(
                f"recorded {v.record_type} v{v.version} as schema id {v.schema_id} "
                f"({v.display_path})"
            )
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    catalog = SchemaCatalog.load(args.schemas_dir)
    if args.json:
        print_json(
            {
                "record_types": [
                    {
                        "record_type": rt,
                        "topic": catalog.topic(rt),
                        "name": catalog.latest(rt).fullname,
                        "versions": [_version_json(v) for v in catalog.versions(rt)],
                    }
                    for rt in catalog.record_types
                ]
            }
        )
        return 0
    width = max(len(rt) for rt in catalog.record_types) if len(catalog) else 0
    print(f"{'RECORD TYPE':<{width}}  {'TOPIC':<22}  VERSIONS (id)")
    for rt in catalog.record_types:
        versions = ", ".join(f"v{v.version} ({v.schema_id})" for v in catalog.versions(rt))
        print(f"{rt:<{width}}  {catalog.topic(rt):<22}  {versions}")
    return 0


def run_push(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.schema_registry_url:
        raise ConfigError("TWIN_SCHEMA_REGISTRY_URL is not set")
    catalog = SchemaCatalog.load(args.schemas_dir)
    registry = RegistryIds.connect(settings.schema_registry_url)
    pushed = push_catalog(catalog, registry, args.prefix, args.compatibility or "")
    if args.json:
        print_json(
            {
                "registry": registry.url,
                "compatibility": args.compatibility,
                "pushed": [
                    {
                        "subject": p.subject,
                        "record_type": p.record_type,
                        "version": p.version,
                        "local_id": p.local_id,
                        "registry_id": p.registry_id,
                    }
                    for p in pushed
                ],
            }
        )
        return 0
    for p in pushed:
        print(
            f"{p.subject}: {p.record_type} v{p.version} -> registry id {p.registry_id} "
            f"(local id {p.local_id})"
        )
    level = f", compatibility {args.compatibility}" if args.compatibility else ""
    print(f"pushed {len(pushed)} schema version(s) to {registry.url}{level}")
    return 0


def _version_json(v: SchemaVersion) -> dict[str, Any]:
    return {
        "record_type": v.record_type,
        "version": v.version,
        "id": v.schema_id,
        "file": v.display_path,
        "fingerprint": v.fingerprint,
    }
