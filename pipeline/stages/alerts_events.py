"""alert_event records and their human-readable messages."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from pipeline.site import AlertRule, Asset
from pipeline.stages.common import from_micros

RAISED, UPDATED, CLEARED = "RAISED", "UPDATED", "CLEARED"

KIND_SYMBOLS = {
    "threshold": "THRESHOLD",
    "stale": "STALE",
    "anomaly": "ANOMALY",
    "kpi_floor": "KPI_FLOOR",
}
"""Site rule kind -> AlertKind symbol of the alert_event schema."""


def alert_id(asset_id: str, rule_id: str) -> str:
    """The alert's stable id: the same for every event of one (asset, rule)."""
    return f"{asset_id}:{rule_id}"


def base_context(asset: Asset, rule: AlertRule) -> dict[str, str]:
    context = {"line_id": asset.line.id, "asset_type": asset.type.id}
    if rule.description:
        context["rule"] = rule.description
    return context


def alert_event(
    *,
    asset: Asset,
    rule_id: str,
    kind: str,
    event: str,
    severity: str,
    t_us: int,
    raised_us: int,
    now: datetime,
    message: str,
    signal: str | None = None,
    value: float | None = None,
    threshold: float | None = None,
    context: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One alert_event record (`kind` and `severity` as the site writes them, lower case)."""
    return {
        "alert_id": alert_id(asset.id, rule_id),
        "asset_id": asset.id,
        "rule_id": rule_id,
        "kind": KIND_SYMBOLS[kind],
        "event": event,
        "severity": severity.upper(),
        "ts": from_micros(t_us),
        "raised_ts": from_micros(raised_us),
        "emitted_ts": now,
        "message": message,
        "signal": signal,
        "value": _finite(value),
        "threshold": _finite(threshold),
        "context": context or {},
    }


def number(value: float) -> str:
    """A reading for people: a few significant digits, no trailing zeros."""
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    if "." in text and "e" not in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def with_unit(value: float, unit: str) -> str:
    if unit == "%":
        return f"{number(value)}%"
    return f"{number(value)} {unit}" if unit else number(value)


def percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def seconds(us: int) -> str:
    """A duration for people, e.g. 12.5s, 3m20s."""
    td = timedelta(microseconds=us)
    total = td.total_seconds()
    if total < 60:
        return f"{number(total)}s"
    minutes, rest = divmod(round(total), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
