"""Cross-checks of alert rules: unique ids, the assets they cover, the signals and KPIs they
watch exist for every one of those assets."""

from __future__ import annotations

from pipeline.site.alerts import (
    ALL_SIGNALS,
    AlertRule,
    KpiFloorRule,
    KpiName,
    StaleRule,
    ThresholdRule,
)
from pipeline.site.checks import Parts
from pipeline.site.common import unknown
from pipeline.site.models import AssetTypeSpec
from pipeline.site.problems import Loc, Problem
from pipeline.site.signals import SignalKind

_KPI_NEEDS = {
    KpiName.AVAILABILITY: ("state",),
    KpiName.PERFORMANCE: ("state", "counters", "ideal_cycle_time"),
    KpiName.QUALITY: ("counters",),
    KpiName.OEE: ("state", "counters", "ideal_cycle_time"),
}


def check_rules(parts: Parts) -> list[Problem]:
    found = []
    first_seen: dict[str, int] = {}
    asset_types = {asset.id: asset.type for _, asset in parts.assets}
    for index, rule in parts.alerts:
        loc: Loc = ("alerts", index)
        if rule.id in first_seen:
            why = f"duplicate rule id {rule.id!r} (also alerts[{first_seen[rule.id]}])"
            found.append(Problem((*loc, "id"), why))
        first_seen.setdefault(rule.id, index)
        type_ids: set[str] = set()
        if rule.asset_type is not None:
            if rule.asset_type in parts.asset_types:
                type_ids.add(rule.asset_type)
            elif not parts.is_broken("asset_types", rule.asset_type):
                known = {*parts.asset_types, *parts.broken.get("asset_types", ())}
                why = unknown("asset type", rule.asset_type, known)
                found.append(Problem((*loc, "asset_type"), why))
        for n, asset_id in enumerate(rule.assets or ()):
            if asset_id in asset_types:
                type_ids.add(asset_types[asset_id])
            elif not parts.is_broken("assets", asset_id):
                known = {*asset_types, *parts.broken.get("assets", ())}
                found.append(Problem((*loc, "assets", n), unknown("asset", asset_id, known)))
        for type_id in sorted(type_ids):
            spec = parts.asset_types.get(type_id)
            if spec is not None:
                found += _rule_on_type(loc, rule, type_id, spec)
    return found


def _rule_on_type(loc: Loc, rule: AlertRule, type_id: str, spec: AssetTypeSpec) -> list[Problem]:
    if isinstance(rule, ThresholdRule):
        signal = spec.signals.get(rule.signal)
        if signal is None:
            why = unknown("signal", rule.signal, spec.signals, f"of asset type {type_id}")
            return [Problem((*loc, "signal"), why)]
        if signal.kind is SignalKind.STATE:
            why = f"{rule.signal} is a state signal; thresholds need a gauge or a counter"
            return [Problem((*loc, "signal"), why)]
        found = []
        if rule.raise_above is not None and rule.raise_above >= signal.physical.max:
            why = (
                f"{rule.raise_above:g} is not below the physical max {signal.physical.max:g} "
                f"of {type_id}'s {rule.signal}: the rule could never raise"
            )
            found.append(Problem((*loc, "raise_above"), why))
        if rule.raise_below is not None and rule.raise_below <= signal.physical.min:
            why = (
                f"{rule.raise_below:g} is not above the physical min {signal.physical.min:g} "
                f"of {type_id}'s {rule.signal}: the rule could never raise"
            )
            found.append(Problem((*loc, "raise_below"), why))
        return found
    if isinstance(rule, StaleRule):
        if rule.signal != ALL_SIGNALS and rule.signal not in spec.signals:
            why = unknown("signal", rule.signal, spec.signals, f"of asset type {type_id}")
            return [Problem((*loc, "signal"), f"{why}; or 'all'")]
        return []
    if isinstance(rule, KpiFloorRule):
        kpi = spec.kpi
        missing = [
            need for need in _KPI_NEEDS[rule.kpi] if kpi is None or getattr(kpi, need) is None
        ]
        if missing:
            why = (
                f"asset type {type_id} has no kpi {', '.join(missing)}, "
                f"so its {rule.kpi} is never computed"
            )
            return [Problem((*loc, "kpi"), why)]
    return []
