"""Cross-checks: what no single model can see (ranges against each other, references between
sections, one binding against another). Every check adds problems and carries on, so one
run reports everything that is wrong. This module holds what the checks share; the checks of
each area are in the `check_*` modules.

Entries that already failed validation are in `Parts.broken`; references to them are not
reported again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.site.alerts import AlertRule
from pipeline.site.common import unknown
from pipeline.site.models import AssetSpec, AssetTypeSpec, LineSpec, SiteHeader
from pipeline.site.problems import Loc, Problem
from pipeline.site.resolve import NODE_ID_FIELDS, TOPIC_FIELDS, template_problem
from pipeline.site.sources import MqttSource, OpcUaSource, Source


@dataclass
class Parts:
    """The entries of a site file that passed validation, and the ids of those that did not."""

    header: SiteHeader | None = None
    sources: dict[str, Source] = field(default_factory=dict)
    lines: dict[str, LineSpec] = field(default_factory=dict)
    asset_types: dict[str, AssetTypeSpec] = field(default_factory=dict)
    assets: list[tuple[int, AssetSpec]] = field(default_factory=list)
    alerts: list[tuple[int, AlertRule]] = field(default_factory=list)
    broken: dict[str, set[str]] = field(default_factory=dict)

    def is_broken(self, section: str, name: str) -> bool:
        return name in self.broken.get(section, set())


@dataclass(frozen=True)
class Span:
    """Registers [start, stop) of one signal, and who owns them."""

    table: str
    start: int
    stop: int
    owner: int
    """Index of the owning asset (0 within one register map)."""
    signal: str
    label: str

    def __str__(self) -> str:
        return f"{self.table} {self.start}..{self.stop - 1}"


def overlaps(spans: list[Span], across_owners_only: bool = False) -> list[tuple[Span, Span]]:
    """Pairs (later, earlier) of spans in the same table that share a register."""
    pairs = []
    ordered = sorted(spans, key=lambda s: (s.table, s.start, s.owner))
    active: list[Span] = []
    for span in ordered:
        active = [a for a in active if a.table == span.table and a.stop > span.start]
        for other in active:
            if across_owners_only and other.owner == span.owner:
                continue
            if (span.owner, span.start) >= (other.owner, other.start):
                pairs.append((span, other))
            else:
                pairs.append((other, span))
        active.append(span)
    return pairs


def check_sources(parts: Parts) -> list[Problem]:
    found = []
    for source_id, source in parts.sources.items():
        loc: Loc = ("sources", source_id)
        if isinstance(source, OpcUaSource):
            found += template_problems(source.node_id, NODE_ID_FIELDS, (*loc, "node_id"))
        elif isinstance(source, MqttSource):
            found += topic_problems(source.topic, (*loc, "topic"))
    return found


def template_problems(template: str, allowed: tuple[str, ...], loc: Loc) -> list[Problem]:
    """A problem if `template` uses placeholders other than `allowed`."""
    why = template_problem(template, allowed)
    return [Problem(loc, why)] if why else []


def topic_problems(template: str, loc: Loc) -> list[Problem]:
    """A problem if an MQTT topic template is not a plain topic to publish on."""
    if "+" in template or "#" in template:
        return [Problem(loc, f"a topic to publish on cannot have wildcards (+, #): {template!r}")]
    return template_problems(template, TOPIC_FIELDS, loc)


def signal_key_problems(
    loc: Loc, keys: Iterable[str], type_spec: AssetTypeSpec, type_id: str
) -> list[Problem]:
    """A problem for each key that is not a signal of the asset type."""
    return [
        Problem(
            (*loc, name), unknown("signal", name, type_spec.signals, f"of asset type {type_id}")
        )
        for name in keys
        if name not in type_spec.signals
    ]
