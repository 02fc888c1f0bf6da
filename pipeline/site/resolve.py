"""From the validated file to the resolved plant: overrides applied, templates filled in.

These functions assume the cross-checks in `checks.py` passed (`load_site` runs them first).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.site.alerts import AlertRule
from pipeline.site.bindings import (
    AssetBinding,
    ModbusAssetBinding,
    ModbusSignalBinding,
    MqttAssetBinding,
    MqttSignalBinding,
    OpcUaAssetBinding,
    OpcUaSignalBinding,
)
from pipeline.site.models import AssetSpec, AssetTypeSpec, SiteSpec
from pipeline.site.plant import Asset, AssetType, Line, Signal, Site
from pipeline.site.signals import SignalSpec
from pipeline.site.sources import ModbusSource, MqttSource, OpcUaSource, Source
from pipeline.site.templates import (
    ModbusAssetSpec,
    ModbusTypeSpec,
    MqttTypeSpec,
    OpcUaSignalSpec,
    OpcUaTypeSpec,
)

NODE_ID_FIELDS = ("ns", "site", "line", "asset", "type", "signal")
"""Placeholders of OPC UA node id templates ({ns} is filled in by the client)."""
TOPIC_FIELDS = ("site", "line", "asset", "type")
"""Placeholders of MQTT topic templates."""


def template_problem(template: str, allowed: Sequence[str]) -> str | None:
    """Why `template` cannot be filled with the `allowed` placeholders, or None if it can."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"bad template {template!r}: {exc} (write a literal brace as {{{{ or }}}})"
    for name in fields:
        if name not in allowed:
            return (
                f"unknown placeholder {{{name}}} in {template!r} "
                f"(allowed: {', '.join('{' + a + '}' for a in allowed)})"
            )
    return None


def merged_signal_fields(
    asset: AssetSpec, type_spec: AssetTypeSpec
) -> dict[str, dict[str, object]]:
    """Per signal of the type, its fields with the asset's overrides applied (unvalidated)."""
    merged = {}
    for name, spec in type_spec.signals.items():
        override = asset.signals.get(name)
        merged[name] = override.apply(spec) if override else dict(spec)
    return merged


def asset_signals(asset: AssetSpec, type_spec: AssetTypeSpec) -> dict[str, SignalSpec]:
    """The asset's signals: the type's, with the asset's overrides applied."""
    return {
        name: SignalSpec.model_validate(fields)
        for name, fields in merged_signal_fields(asset, type_spec).items()
    }


def resolve_binding(
    *,
    site_name: str,
    asset: AssetSpec,
    type_spec: AssetTypeSpec,
    signals: Mapping[str, SignalSpec],
    source_id: str,
    source: Source,
) -> AssetBinding:
    """The bindings of every signal of `asset`."""
    values = {"site": site_name, "line": asset.line, "asset": asset.id, "type": asset.type}
    if isinstance(source, OpcUaSource):
        return _opcua(values, asset, type_spec, signals, source_id, source)
    if isinstance(source, ModbusSource):
        if type_spec.modbus is None or asset.modbus is None:
            raise ValueError(f"{asset.id}: a modbus binding needs a register map and a unit id")
        return _modbus(asset.modbus, type_spec.modbus, signals, source_id, source)
    return _mqtt(values, asset, type_spec, signals, source_id, source)


def _opcua(
    values: dict[str, str],
    asset: AssetSpec,
    type_spec: AssetTypeSpec,
    signals: Mapping[str, SignalSpec],
    source_id: str,
    source: OpcUaSource,
) -> OpcUaAssetBinding:
    tmpl = type_spec.opcua or OpcUaTypeSpec()
    explicit = asset.opcua.node_ids if asset.opcua else {}
    bound: dict[str, OpcUaSignalBinding] = {}
    for name, signal in signals.items():
        own = tmpl.signals.get(name) or OpcUaSignalSpec()
        # Most specific wins: the asset's own node id, the type's per-signal one, the type's
        # template, the source's template.
        pattern = explicit.get(name) or own.node_id or tmpl.node_id or source.node_id
        bound[name] = OpcUaSignalBinding(
            source_id=source_id,
            node_id_pattern=pattern.format(**values, signal=name, ns="{ns}"),
            sampling_interval=own.sampling_interval or signal.sampling_period,
            deadband=own.deadband or tmpl.deadband,
        )
    interval = tmpl.publishing_interval or source.publishing_interval
    return OpcUaAssetBinding(source_id, source, interval, bound)


def _modbus(
    values: ModbusAssetSpec,
    tmpl: ModbusTypeSpec,
    signals: Mapping[str, SignalSpec],
    source_id: str,
    source: ModbusSource,
) -> ModbusAssetBinding:
    bound: dict[str, ModbusSignalBinding] = {}
    for name in signals:
        reg = tmpl.registers[name]
        bound[name] = ModbusSignalBinding(
            source_id=source_id,
            unit_id=values.unit_id,
            table=reg.table,
            address=reg.address + values.register_offset,
            data_type=reg.data_type,
            word_order=reg.word_order or tmpl.word_order,
            scale=reg.scale,
            offset=reg.offset,
        )
    return ModbusAssetBinding(source_id, source, values.unit_id, values.register_offset, bound)


def _mqtt(
    values: dict[str, str],
    asset: AssetSpec,
    type_spec: AssetTypeSpec,
    signals: Mapping[str, SignalSpec],
    source_id: str,
    source: MqttSource,
) -> MqttAssetBinding:
    tmpl = type_spec.mqtt or MqttTypeSpec()
    template = (asset.mqtt.topic if asset.mqtt else None) or tmpl.topic or source.topic
    topic = template.format(**values)
    bound = {
        name: MqttSignalBinding(source_id, topic, tmpl.fields.get(name, name)) for name in signals
    }
    return MqttAssetBinding(
        source_id=source_id,
        source=source,
        topic=topic,
        qos=source.qos,
        timestamp_field=tmpl.timestamp_field,
        timestamp_format=tmpl.timestamp_format,
        signals=bound,
    )


def rule_targets(rule: AlertRule, assets: Sequence[AssetSpec]) -> tuple[str, ...]:
    """Ids of the assets a rule covers."""
    if rule.assets is not None:
        return rule.assets
    return tuple(a.id for a in assets if a.type == rule.asset_type)


def build_site(spec: SiteSpec, path: Path | None = None) -> Site:
    """The resolved plant of a checked site description."""
    types = {
        type_id: AssetType(type_id, t.description, t.signals, t.kpi)
        for type_id, t in spec.asset_types.items()
    }
    lines = {
        line_id: Line(
            id=line_id,
            name=line.name or line_id,
            description=line.description,
            asset_ids=tuple(a.id for a in spec.assets if a.line == line_id),
        )
        for line_id, line in spec.lines.items()
    }
    assets = tuple(_asset(spec, a, types, lines) for a in spec.assets)
    rule_assets = {r.id: rule_targets(r, spec.assets) for r in spec.alerts}
    return Site(
        spec=spec,
        path=path,
        lines=tuple(lines.values()),
        asset_types=types,
        assets=assets,
        _assets={a.id: a for a in assets},
        _rule_assets=rule_assets,
        _asset_rules={
            a.id: tuple(r for r in spec.alerts if a.id in rule_assets[r.id]) for a in assets
        },
    )


def _asset(
    spec: SiteSpec, asset: AssetSpec, types: Mapping[str, AssetType], lines: Mapping[str, Line]
) -> Asset:
    type_spec = spec.asset_types[asset.type]
    specs = asset_signals(asset, type_spec)
    binding = resolve_binding(
        site_name=spec.name,
        asset=asset,
        type_spec=type_spec,
        signals=specs,
        source_id=asset.source,
        source=spec.sources[asset.source],
    )
    signals = {
        name: Signal(
            name=name,
            kind=s.kind,
            unit=s.unit,
            description=s.description,
            physical=s.physical,
            expected=s.expected,
            max_rate=s.max_rate,
            sampling_period=s.sampling_period,
            measurement_noise=s.measurement_noise,
            process_noise=s.resolved_process_noise(),
            binding=binding.signals[name],
        )
        for name, s in specs.items()
    }
    return Asset(
        id=asset.id,
        name=asset.name or asset.id,
        type=types[asset.type],
        line=lines[asset.line],
        source_id=asset.source,
        binding=binding,
        signals=signals,
    )
