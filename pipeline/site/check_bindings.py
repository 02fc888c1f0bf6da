"""Cross-checks between assets' resolved bindings: two signals must never share an address
(an OPC UA node, a Modbus register, an MQTT topic)."""

from __future__ import annotations

from collections import defaultdict

from pydantic import ValidationError

from pipeline.site.bindings import (
    AssetBinding,
    ModbusAssetBinding,
    MqttAssetBinding,
    OpcUaAssetBinding,
)
from pipeline.site.checks import Parts, Span, overlaps
from pipeline.site.problems import Loc, Problem
from pipeline.site.resolve import asset_signals, resolve_binding


def check_bindings(parts: Parts) -> list[Problem]:
    resolved: list[tuple[int, str, AssetBinding]] = []
    site_name = parts.header.name if parts.header else ""
    seen: set[str] = set()
    for index, asset in parts.assets:
        type_spec = parts.asset_types.get(asset.type)
        source = parts.sources.get(asset.source)
        if type_spec is None or source is None or asset.id in seen:
            continue  # a duplicate id is reported already, and would clash with itself here
        seen.add(asset.id)
        try:
            binding = resolve_binding(
                site_name=site_name,
                asset=asset,
                type_spec=type_spec,
                signals=asset_signals(asset, type_spec),
                source_id=asset.source,
                source=source,
            )
        except (KeyError, IndexError, ValueError, ValidationError):
            # A bad template, a missing register or a bad override: reported by the checks
            # of that part; this asset's addresses cannot be known.
            continue
        resolved.append((index, asset.id, binding))
    return _node_ids(resolved) + _registers(resolved) + _topics(resolved)


def _node_ids(resolved: list[tuple[int, str, AssetBinding]]) -> list[Problem]:
    found = []
    owner: dict[tuple[str, str], str] = {}
    for index, asset_id, binding in resolved:
        if not isinstance(binding, OpcUaAssetBinding):
            continue
        for signal, sb in binding.signals.items():
            key = (binding.source_id, sb.node_id_pattern)
            if key in owner:
                why = (
                    f"node id {sb.node_id_pattern!r} of {signal} is also the node id of "
                    f"{owner[key]} on {binding.source_id}"
                )
                found.append(Problem(("assets", index, "opcua", "node_ids", signal), why))
            owner.setdefault(key, f"{asset_id}'s {signal}")
    return found


def _registers(resolved: list[tuple[int, str, AssetBinding]]) -> list[Problem]:
    found = []
    units: dict[tuple[str, int], list[Span]] = defaultdict(list)
    for index, asset_id, binding in resolved:
        if not isinstance(binding, ModbusAssetBinding):
            continue
        loc: Loc = ("assets", index, "modbus", "register_offset")
        past = [n for n, sb in binding.signals.items() if sb.address + sb.count > 65536]
        if past:
            why = (
                f"register_offset {binding.register_offset} puts {', '.join(past)} "
                "past the last register 65535"
            )
            found.append(Problem(loc, why))
        for signal, sb in binding.signals.items():
            span = Span(str(sb.table), sb.address, sb.address + sb.count, index, signal, asset_id)
            units[(binding.source_id, binding.unit_id)].append(span)
    for (source_id, unit_id), spans in units.items():
        reported = set()
        for later, earlier in overlaps(spans, across_owners_only=True):
            if (later.owner, earlier.owner) in reported:
                continue
            reported.add((later.owner, earlier.owner))
            why = (
                f"{later.label}'s {later.signal} ({later}) overlaps {earlier.label}'s "
                f"{earlier.signal} ({earlier}) on {source_id} unit {unit_id}"
            )
            found.append(Problem(("assets", later.owner, "modbus", "register_offset"), why))
    return found


def _topics(resolved: list[tuple[int, str, AssetBinding]]) -> list[Problem]:
    found = []
    owner: dict[tuple[str, str], str] = {}
    for index, asset_id, binding in resolved:
        if not isinstance(binding, MqttAssetBinding):
            continue
        key = (binding.source.broker, binding.topic)
        if key in owner:
            why = f"topic {binding.topic!r} is also the topic of {owner[key]}"
            found.append(Problem(("assets", index, "mqtt", "topic"), why))
        owner.setdefault(key, asset_id)
    return found
