"""`twin site check` and `twin site show`: validate the site file, print the resolved plant."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from pipeline.commands import add_json_option, add_site_option, print_json
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.site import (
    Asset,
    ModbusAssetBinding,
    ModbusSignalBinding,
    MqttAssetBinding,
    MqttSignalBinding,
    OpcUaAssetBinding,
    Site,
    Source,
    format_duration,
    load_site,
)
from pipeline.site.sources import ModbusSource, MqttSource


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "site",
        help="check or show the site description",
        description="The site file describes the plant: lines, assets, signals, bindings, rules.",
    )
    actions = parser.add_subparsers(dest="site_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="validate the site file",
        description="Validate the site file: exit 2 with one line per problem, or print a summary.",
    )
    add_site_option(check)
    add_json_option(check)
    check.set_defaults(handler=run_check)
    show = actions.add_parser(
        "show",
        help="print the resolved plant",
        description="Print lines, assets, their sources and signals, with bindings resolved.",
    )
    add_site_option(show)
    add_json_option(show)
    show.set_defaults(handler=run_show)


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    try:
        site = load_site(settings.site)
    except ConfigError as exc:
        if args.json:
            print_json({"site": str(settings.site), "ok": False, "problems": exc.lines()})
        raise
    counts = summary(site)
    if args.json:
        print_json({"site": str(settings.site), "name": site.name, "ok": True, **counts})
    else:
        print(
            f"{site.name}: {counts['lines']} lines, {counts['assets']} assets, "
            f"{counts['asset_types']} types, {counts['signals']} signals, "
            f"{counts['alert_rules']} alert rules; OK"
        )
    return 0


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    site = load_site(settings.site)
    if args.json:
        print_json(describe(site))
        return 0
    prefix = site.topic_prefix or "(none)"
    print(f"{site.name}: {site.description}" if site.description else site.name)
    print(
        f"kafka: topic prefix {prefix}, {site.kafka.partitions} partitions, "
        f"replication factor {site.kafka.replication_factor}"
    )
    print("sources:")
    for source_id, source in site.sources.items():
        fed = len(site.assets_fed_by(source_id))
        print(f"  {source_id:<16} {source.kind:<7} {_address(source):<40} {fed} assets")
    for line in site.lines:
        print(f"{line.id}: {line.name}")
        for asset in site.assets_on_line(line.id):
            print(
                f"  {asset.id:<12} {asset.type.id:<12} {asset.source_id} ({asset.source_kind}) "
                f"{_where(asset)}, {len(asset.signals)} signals"
            )
    kinds = Counter(str(rule.kind) for rule in site.alert_rules)
    detail = ", ".join(f"{kind} {count}" for kind, count in kinds.items())
    print(f"alert rules: {len(site.alert_rules)}" + (f" ({detail})" if detail else ""))
    return 0


def summary(site: Site) -> dict[str, int]:
    return {
        "lines": len(site.lines),
        "assets": len(site.assets),
        "asset_types": len(site.asset_types),
        "signals": site.signal_count,
        "alert_rules": len(site.alert_rules),
    }


def describe(site: Site) -> dict[str, Any]:
    """The resolved plant as one JSON-ready object."""
    return {
        "name": site.name,
        "description": site.description,
        "path": str(site.path) if site.path else None,
        "kafka": site.kafka.model_dump(),
        "counts": summary(site),
        "sources": {
            sid: {"kind": str(s.kind), "address": _address(s)} for sid, s in site.sources.items()
        },
        "lines": [
            {"id": ln.id, "name": ln.name, "assets": list(ln.asset_ids)} for ln in site.lines
        ],
        "assets": [_asset(asset) for asset in site.assets],
        "alert_rules": [
            {
                "id": rule.id,
                "kind": str(rule.kind),
                "severity": str(rule.severity),
                "assets": [a.id for a in site.rule_assets(rule.id)],
            }
            for rule in site.alert_rules
        ],
    }


def _asset(asset: Asset) -> dict[str, Any]:
    return {
        "id": asset.id,
        "name": asset.name,
        "type": asset.type.id,
        "line": asset.line.id,
        "source": asset.source_id,
        "source_kind": str(asset.source_kind),
        "binding": _where(asset),
        "signal_count": len(asset.signals),
        "signals": [
            {
                "name": s.name,
                "kind": str(s.kind),
                "unit": s.unit,
                "sampling_period": format_duration(s.sampling_period),
                "address": _signal_address(s.binding),
            }
            for s in asset.signals.values()
        ],
    }


def _address(source: Source) -> str:
    if isinstance(source, ModbusSource):
        return f"{source.host}:{source.port}"
    if isinstance(source, MqttSource):
        return source.broker
    return source.endpoint


def _where(asset: Asset) -> str:
    binding = asset.binding
    if isinstance(binding, ModbusAssetBinding):
        return f"unit {binding.unit_id}, register offset {binding.register_offset}"
    if isinstance(binding, MqttAssetBinding):
        return f"topic {binding.topic}"
    if isinstance(binding, OpcUaAssetBinding):
        return f"publishing every {format_duration(binding.publishing_interval)}"
    return ""


def _signal_address(binding: object) -> str:
    if isinstance(binding, ModbusSignalBinding):
        return f"{binding.table} {binding.address} {binding.data_type}"
    if isinstance(binding, MqttSignalBinding):
        return binding.json_field
    return str(getattr(binding, "node_id_pattern", ""))
