"""The site file's top level: lines, asset types, assets and the Kafka section.

These models mirror the file. `load_site` validates them, runs the cross-checks a single model
cannot (references, ranges, register overlaps) and resolves them into a `Site`.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from pipeline.site.alerts import AlertRule
from pipeline.site.common import Id, SignalName, SiteModel
from pipeline.site.kpi import KpiRules, KpiSettings
from pipeline.site.signals import SignalOverride, SignalSpec
from pipeline.site.sources import Source
from pipeline.site.templates import (
    ModbusAssetSpec,
    ModbusTypeSpec,
    MqttAssetSpec,
    MqttTypeSpec,
    OpcUaAssetSpec,
    OpcUaTypeSpec,
)
from pipeline.site.validation import ValidationSpec

_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]*")


class LineSpec(SiteModel):
    name: str = ""
    description: str = ""


class AssetTypeSpec(SiteModel):
    """A kind of machine: the signals every asset of the type has, and how to read them."""

    description: str = ""
    signals: dict[SignalName, SignalSpec] = Field(min_length=1)
    kpi: KpiRules | None = None
    opcua: OpcUaTypeSpec | None = None
    modbus: ModbusTypeSpec | None = None
    mqtt: MqttTypeSpec | None = None


class AssetSpec(SiteModel):
    """One machine: its type, its line, the source that feeds it, and its own values."""

    id: Id
    name: str = ""
    type: str
    line: str
    source: str
    """Id of the source (in `sources`) that feeds every signal of this asset."""
    signals: dict[str, SignalOverride] = Field(default_factory=dict)
    opcua: OpcUaAssetSpec | None = None
    modbus: ModbusAssetSpec | None = None
    mqtt: MqttAssetSpec | None = None


class KafkaSpec(SiteModel):
    topic_prefix: str = ""
    """Put before every logical topic name (e.g. "plant1.")."""
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    @field_validator("topic_prefix")
    @classmethod
    def _legal(cls, value: str) -> str:
        if not _TOPIC_CHARS.fullmatch(value):
            raise ValueError(
                f"{value!r} has characters Kafka topic names cannot have "
                "(letters, digits, '.', '_' and '-' only)"
            )
        return value


class SiteHeader(SiteModel):
    """The scalar part of the site file (validated on its own so that a broken asset does
    not hide problems elsewhere)."""

    name: Id
    description: str = ""
    kafka: KafkaSpec = KafkaSpec()
    kpi: KpiSettings = KpiSettings()
    validation: ValidationSpec = ValidationSpec()


class SiteSpec(SiteHeader):
    """The whole site file."""

    sources: dict[Id, Source] = Field(min_length=1)
    lines: dict[Id, LineSpec] = Field(min_length=1)
    asset_types: dict[Id, AssetTypeSpec] = Field(min_length=1)
    assets: tuple[AssetSpec, ...] = Field(min_length=1)
    alerts: tuple[AlertRule, ...] = ()


SECTIONS = ("sources", "lines", "asset_types", "assets", "alerts")
"""The parts of the site file that are validated entry by entry."""
