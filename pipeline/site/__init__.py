"""The site description: a plant's lines, assets, signals, device bindings and rules.

`load_site(path)` reads a YAML site file (e.g. `topologies/sites/demo-plant.yaml`), checks it
and returns a resolved `Site`::

    site = load_site("topologies/sites/demo-plant.yaml")
    asset = site.asset("cnc-01")
    asset.signal("spindle_speed").expected          # Range(min=0.0, max=18000.0)
    asset.signal_binding("spindle_speed").node_id(2)  # 'ns=2;s=line-1/cnc-01/spindle_speed'
    site.topic("telemetry.raw")                     # topic prefix + logical name

A file with problems raises `ConfigError`; its `problems` has one line per problem.
"""

from __future__ import annotations

from pipeline.site.alerts import (
    ALL_SIGNALS,
    AlertKind,
    AlertRule,
    AnomalyRule,
    KpiFloorRule,
    KpiName,
    Severity,
    StaleRule,
    ThresholdRule,
)
from pipeline.site.bindings import (
    AssetBinding,
    ModbusAssetBinding,
    ModbusSignalBinding,
    MqttAssetBinding,
    MqttSignalBinding,
    OpcUaAssetBinding,
    OpcUaSignalBinding,
    SignalBinding,
    format_timestamp,
    parse_timestamp,
)
from pipeline.site.common import Range
from pipeline.site.durations import DurationError, format_duration, parse_duration
from pipeline.site.kpi import KpiRules, KpiSettings, MachineState, PartCounters, StateRule
from pipeline.site.load import load_site, parse_site
from pipeline.site.models import KafkaSpec, SiteSpec
from pipeline.site.plant import Asset, AssetType, Line, Signal, Site
from pipeline.site.signals import SignalKind, SignalSpec
from pipeline.site.sources import ModbusSource, MqttSource, OpcUaSource, Source, SourceKind
from pipeline.site.templates import (
    Deadband,
    DeadbandType,
    RegisterTable,
    RegisterType,
    TimestampFormat,
    WordOrder,
)

__all__ = [
    "ALL_SIGNALS",
    "AlertKind",
    "AlertRule",
    "AnomalyRule",
    "Asset",
    "AssetBinding",
    "AssetType",
    "Deadband",
    "DeadbandType",
    "DurationError",
    "KafkaSpec",
    "KpiFloorRule",
    "KpiName",
    "KpiRules",
    "KpiSettings",
    "Line",
    "MachineState",
    "ModbusAssetBinding",
    "ModbusSignalBinding",
    "ModbusSource",
    "MqttAssetBinding",
    "MqttSignalBinding",
    "MqttSource",
    "OpcUaAssetBinding",
    "OpcUaSignalBinding",
    "OpcUaSource",
    "PartCounters",
    "Range",
    "RegisterTable",
    "RegisterType",
    "Severity",
    "Signal",
    "SignalBinding",
    "SignalKind",
    "SignalSpec",
    "Site",
    "SiteSpec",
    "Source",
    "SourceKind",
    "StaleRule",
    "StateRule",
    "ThresholdRule",
    "TimestampFormat",
    "WordOrder",
    "format_duration",
    "format_timestamp",
    "load_site",
    "parse_duration",
    "parse_site",
    "parse_timestamp",
]
