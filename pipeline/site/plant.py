"""The resolved plant: what the simulator, the connectors and the stages work with.

Everything here is final: per-asset signal overrides are applied, process noise is derived
where the file leaves it out, and every binding template is filled in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from pipeline.site.alerts import AlertRule
from pipeline.site.bindings import AssetBinding, SignalBinding
from pipeline.site.common import Range
from pipeline.site.kpi import KpiRules, KpiSettings
from pipeline.site.models import KafkaSpec, SiteSpec
from pipeline.site.signals import SignalKind, SignalSpec
from pipeline.site.sources import Source, SourceKind
from pipeline.site.validation import ValidationSpec


@dataclass(frozen=True, slots=True)
class Signal:
    """One signal of one asset."""

    name: str
    kind: SignalKind
    unit: str
    description: str
    physical: Range
    expected: Range
    max_rate: float
    """Units per second."""
    sampling_period: timedelta
    measurement_noise: float
    """Standard deviation, in the signal's unit (the estimator's R = measurement_noise²)."""
    process_noise: float
    """Rate random-walk standard deviation per √s (see `SignalSpec.process_noise`)."""
    binding: SignalBinding

    @property
    def process_noise_density(self) -> float:
        """q of the level+rate model: Q = q · [[dt³/3, dt²/2], [dt²/2, dt]]."""
        return self.process_noise**2


@dataclass(frozen=True, eq=False)
class AssetType:
    id: str
    description: str
    signals: Mapping[str, SignalSpec]
    """The type's signals as the file defines them (assets may override some values)."""
    kpi: KpiRules | None


@dataclass(frozen=True, eq=False)
class Line:
    id: str
    name: str
    description: str
    asset_ids: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Asset:
    id: str
    name: str
    type: AssetType
    line: Line
    source_id: str
    """Id of the source that feeds the asset: the `source_id` of its frames."""
    binding: AssetBinding
    signals: Mapping[str, Signal]
    """Every signal of the asset's type, in the type's order."""

    @property
    def source(self) -> Source:
        return self.binding.source

    @property
    def source_kind(self) -> SourceKind:
        return self.binding.kind

    @property
    def kpi(self) -> KpiRules | None:
        return self.type.kpi

    def signal(self, name: str) -> Signal:
        try:
            return self.signals[name]
        except KeyError:
            raise KeyError(f"asset {self.id} has no signal {name!r}") from None

    def signal_binding(self, name: str) -> SignalBinding:
        return self.signal(name).binding


@dataclass(frozen=True, eq=False)
class Site:
    """A loaded, checked and resolved site description (build it with `load_site`)."""

    spec: SiteSpec
    """The file as validated (before resolution), e.g. for `model_dump`."""
    path: Path | None
    lines: tuple[Line, ...]
    asset_types: Mapping[str, AssetType]
    assets: tuple[Asset, ...]
    """Every asset, in file order."""
    _assets: Mapping[str, Asset] = field(repr=False)
    _rule_assets: Mapping[str, tuple[str, ...]] = field(repr=False)
    _asset_rules: Mapping[str, tuple[AlertRule, ...]] = field(repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def kafka(self) -> KafkaSpec:
        return self.spec.kafka

    @property
    def topic_prefix(self) -> str:
        return self.spec.kafka.topic_prefix

    def topic(self, logical_name: str) -> str:
        """The Kafka topic of a logical name (e.g. "telemetry.raw"): prefix + name."""
        return self.spec.kafka.topic_prefix + logical_name

    @property
    def kpi(self) -> KpiSettings:
        return self.spec.kpi

    @property
    def validation(self) -> ValidationSpec:
        return self.spec.validation

    @property
    def sources(self) -> Mapping[str, Source]:
        return self.spec.sources

    @property
    def alert_rules(self) -> tuple[AlertRule, ...]:
        return self.spec.alerts

    @property
    def signal_count(self) -> int:
        return sum(len(asset.signals) for asset in self.assets)

    def asset(self, asset_id: str) -> Asset:
        try:
            return self._assets[asset_id]
        except KeyError:
            raise KeyError(f"site {self.name} has no asset {asset_id!r}") from None

    def get_asset(self, asset_id: str) -> Asset | None:
        """The asset, or None for an id the site does not know (e.g. from a stray frame)."""
        return self._assets.get(asset_id)

    def line(self, line_id: str) -> Line:
        for line in self.lines:
            if line.id == line_id:
                return line
        raise KeyError(f"site {self.name} has no line {line_id!r}")

    def source(self, source_id: str) -> Source:
        try:
            return self.spec.sources[source_id]
        except KeyError:
            raise KeyError(f"site {self.name} has no source {source_id!r}") from None

    def assets_fed_by(self, source_id: str) -> tuple[Asset, ...]:
        return tuple(a for a in self.assets if a.source_id == source_id)

    def assets_of_type(self, type_id: str) -> tuple[Asset, ...]:
        return tuple(a for a in self.assets if a.type.id == type_id)

    def assets_on_line(self, line_id: str) -> tuple[Asset, ...]:
        return tuple(self._assets[a] for a in self.line(line_id).asset_ids)

    def alert_rule(self, rule_id: str) -> AlertRule:
        for rule in self.spec.alerts:
            if rule.id == rule_id:
                return rule
        raise KeyError(f"site {self.name} has no alert rule {rule_id!r}")

    def rule_assets(self, rule_id: str) -> tuple[Asset, ...]:
        """The assets an alert rule covers."""
        self.alert_rule(rule_id)
        return tuple(self._assets[a] for a in self._rule_assets[rule_id])

    def rules_for(self, asset_id: str) -> tuple[AlertRule, ...]:
        """The alert rules that cover an asset, in file order."""
        return self._asset_rules.get(asset_id, ())
