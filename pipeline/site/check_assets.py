"""Cross-checks of each asset: unique ids, references to lines, types and sources, signal
overrides, and binding values that fit the kind of the asset's source."""

from __future__ import annotations

from pydantic import ValidationError

from pipeline.site.check_types import signal_problems
from pipeline.site.checks import Parts, template_problems, topic_problems
from pipeline.site.common import unknown
from pipeline.site.models import AssetSpec, AssetTypeSpec
from pipeline.site.problems import Loc, Problem, from_validation_error
from pipeline.site.resolve import NODE_ID_FIELDS, merged_signal_fields
from pipeline.site.signals import SignalSpec
from pipeline.site.sources import ModbusSource, Source


def check_assets(parts: Parts) -> list[Problem]:
    found = []
    first_seen: dict[str, int] = {}
    for index, asset in parts.assets:
        loc: Loc = ("assets", index)
        if asset.id in first_seen:
            found.append(
                Problem(
                    (*loc, "id"), f"duplicate id {asset.id!r} (also assets[{first_seen[asset.id]}])"
                )
            )
        first_seen.setdefault(asset.id, index)
        found += _reference(parts, "lines", "line", asset.line, (*loc, "line"))
        found += _reference(parts, "sources", "source", asset.source, (*loc, "source"))
        found += _reference(parts, "asset_types", "asset type", asset.type, (*loc, "type"))
        type_spec = parts.asset_types.get(asset.type)
        source = parts.sources.get(asset.source)
        if source is not None:
            found += _source_sections(loc, asset, source)
        if type_spec is not None:
            found += _overrides(loc, asset, type_spec)
            found += _asset_binding(loc, asset, type_spec, source)
    return found


def _reference(parts: Parts, section: str, what: str, name: str, loc: Loc) -> list[Problem]:
    valid = getattr(parts, section)
    if name in valid or parts.is_broken(section, name):
        return []
    return [Problem(loc, unknown(what, name, {*valid, *parts.broken.get(section, ())}))]


def _overrides(loc: Loc, asset: AssetSpec, type_spec: AssetTypeSpec) -> list[Problem]:
    found = []
    for name in asset.signals:
        if name not in type_spec.signals:
            why = unknown("signal", name, type_spec.signals, f"of asset type {asset.type}")
            found.append(Problem((*loc, "signals", name), why))
    merged = merged_signal_fields(asset, type_spec)
    for name in asset.signals.keys() & type_spec.signals.keys():
        sig_loc: Loc = (*loc, "signals", name)
        try:
            spec = SignalSpec.model_validate(merged[name])
        except ValidationError as exc:
            found += from_validation_error(exc, sig_loc)
            continue
        found += signal_problems(sig_loc, spec)
    return found


def _source_sections(loc: Loc, asset: AssetSpec, source: Source) -> list[Problem]:
    """The asset's binding values are for the kind of its source, and present if needed."""
    found = [
        Problem(
            (*loc, kind),
            f"{asset.id} is fed by {asset.source} ({source.kind}); a {kind} section does not apply",
        )
        for kind in ("opcua", "modbus", "mqtt")
        if getattr(asset, kind) is not None and kind != source.kind
    ]
    if isinstance(source, ModbusSource) and asset.modbus is None:
        why = f"required: {asset.source} is a modbus source (give unit_id)"
        found.append(Problem((*loc, "modbus"), why))
    return found


def _asset_binding(
    loc: Loc, asset: AssetSpec, type_spec: AssetTypeSpec, source: Source | None
) -> list[Problem]:
    found = []
    if isinstance(source, ModbusSource) and type_spec.modbus is None:
        why = (
            f"{asset.source} is a modbus source, but asset type {asset.type} "
            "has no modbus register map"
        )
        found.append(Problem((*loc, "source"), why))
    if asset.opcua is not None:
        for name, node_id in asset.opcua.node_ids.items():
            nloc: Loc = (*loc, "opcua", "node_ids", name)
            if name not in type_spec.signals:
                found.append(Problem(nloc, unknown("signal", name, type_spec.signals)))
            found += template_problems(node_id, NODE_ID_FIELDS, nloc)
    if asset.mqtt is not None and asset.mqtt.topic is not None:
        found += topic_problems(asset.mqtt.topic, (*loc, "mqtt", "topic"))
    return found
