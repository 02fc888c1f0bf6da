"""Reading a site file: YAML, then the models entry by entry, then the cross-checks.

Every problem found is collected and reported at once, one line each:
`<file>: <path.of.field>: <why>` (or `<file>:<line>: <why>` for YAML syntax).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.errors import ConfigError
from pipeline.site.alerts import RULE_MODELS
from pipeline.site.check_assets import check_assets
from pipeline.site.check_bindings import check_bindings
from pipeline.site.check_rules import check_rules
from pipeline.site.check_types import check_asset_types
from pipeline.site.checks import Parts, check_sources
from pipeline.site.common import check_id
from pipeline.site.models import SECTIONS, AssetSpec, AssetTypeSpec, LineSpec, SiteHeader, SiteSpec
from pipeline.site.plant import Site
from pipeline.site.problems import Loc, Problem, from_validation_error
from pipeline.site.resolve import build_site
from pipeline.site.sources import SOURCE_MODELS, OpcUaSource

_REQUIRED = ("sources", "lines", "asset_types", "assets")


def load_site(path: str | Path) -> Site:
    """Read, check and resolve a site file; ConfigError lists every problem found."""
    path = Path(path)
    origin = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read the site file: {exc.strerror or exc}") from exc
    return parse_site(text, origin=origin, path=path)


def parse_site(text: str, origin: str = "<site>", path: Path | None = None) -> Site:
    """Check and resolve a site description given as YAML text (`origin` names it in errors).

    Relative certificate paths are taken relative to `path`'s directory when it is given.
    """
    data, duplicates = _read_yaml(text, origin)
    parts, problems = _validate(data)
    problems += check_sources(parts)
    problems += check_asset_types(parts)
    problems += check_assets(parts)
    problems += check_bindings(parts)
    problems += check_rules(parts)
    lines = duplicates + [p.line(origin) for p in problems]
    if lines:
        count = f"{len(lines)} problem{'s' if len(lines) > 1 else ''}"
        raise ConfigError(f"{origin}: {count} in the site description", lines)
    sources = {
        sid: s.model_copy(update={"security": s.security.relative_to(path.parent)})
        if path is not None and isinstance(s, OpcUaSource)
        else s
        for sid, s in parts.sources.items()
    }
    whole = {
        **dict(parts.header or {}),
        "sources": sources,
        "lines": parts.lines,
        "asset_types": parts.asset_types,
        "assets": [asset for _, asset in parts.assets],
        "alerts": [rule for _, rule in parts.alerts],
    }
    try:
        spec = SiteSpec.model_validate(whole)
    except ValidationError as exc:  # the parts passed, so the whole should; say so if not
        lines = [p.line(origin) for p in from_validation_error(exc, (), SiteSpec)]
        raise ConfigError(lines[0], lines) from exc
    return build_site(spec, path)


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys (YAML would keep the last silently)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, object]] = []


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool):
            continue  # an unhashable key; construct_mapping reports it
        if key in seen:
            loader.duplicates.append((key_node.start_mark.line + 1, key))
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _read_yaml(text: str, origin: str) -> tuple[object, list[str]]:
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{origin}:{mark.line + 1}" if mark else origin
        column = f" (column {mark.column + 1})" if mark else ""
        reason = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: {reason}{column}", [f"{where}: {reason}{column}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: invalid YAML: {exc}") from exc
    finally:
        loader.dispose()
    duplicates = [f"{origin}:{line}: duplicate key {key!r}" for line, key in loader.duplicates]
    return data, duplicates


def _validate(data: object) -> tuple[Parts, list[Problem]]:
    """Validate the header and each entry of each section on its own."""
    parts = Parts()
    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        return parts, [Problem((), f"expected a mapping with {', '.join(_REQUIRED)}; got {got}")]
    problems: list[Problem] = []
    for key in data:
        if key not in SiteSpec.model_fields:
            allowed = ", ".join(SiteSpec.model_fields)
            problems.append(Problem((str(key),), f"unknown key (allowed: {allowed})"))
    header = {k: v for k, v in data.items() if k in SiteHeader.model_fields}
    parts.header = _model(SiteHeader, header, (), problems)
    for section in SECTIONS:
        if section in data:
            _section(parts, section, data[section], problems)
        elif section in _REQUIRED:
            problems.append(Problem((section,), "required"))
    return parts, problems


def _model(model: type[BaseModel], value: object, loc: Loc, problems: list[Problem]) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems.extend(from_validation_error(exc, loc, model))
        return None


def _by_kind(
    models: Mapping[str, type[BaseModel]], what: str
) -> Callable[[object, Loc, list[Problem]], Any]:
    """Validate an entry with the model its `kind` names (so paths carry no union branch)."""

    def validate(value: object, loc: Loc, problems: list[Problem]) -> Any:
        kind = value.get("kind") if isinstance(value, Mapping) else None
        if not isinstance(kind, str) or kind not in models:
            known = ", ".join(models)
            why = "required" if kind is None else f"unknown {what} kind {kind!r}"
            problems.append(Problem((*loc, "kind"), f"{why} (one of {known})"))
            return None
        return _model(models[kind], value, loc, problems)

    return validate


_ENTRY: dict[str, Callable[[object, Loc, list[Problem]], Any]] = {
    "sources": _by_kind({str(k): m for k, m in SOURCE_MODELS.items()}, "source"),
    "lines": lambda v, loc, problems: _model(LineSpec, v, loc, problems),
    "asset_types": lambda v, loc, problems: _model(AssetTypeSpec, v, loc, problems),
    "assets": lambda v, loc, problems: _model(AssetSpec, v, loc, problems),
    "alerts": _by_kind({str(k): m for k, m in RULE_MODELS.items()}, "alert rule"),
}
_KEYED = {"sources", "lines", "asset_types"}


def _section(parts: Parts, section: str, value: object, problems: list[Problem]) -> None:
    validate = _ENTRY[section]
    broken = parts.broken.setdefault(section, set())
    if section in _REQUIRED and not value:
        problems.append(Problem((section,), "needs at least one entry"))
        return
    if section in _KEYED:
        if not isinstance(value, Mapping):
            problems.append(Problem((section,), "expected a mapping of id -> entry"))
            return
        entries: dict[str, Any] = getattr(parts, section)
        for key, entry in value.items():
            loc: Loc = (section, str(key))
            try:
                check_id(str(key))
            except ValueError as exc:
                problems.append(Problem(loc, str(exc)))
            model = validate(entry, loc, problems)
            if model is None:
                broken.add(str(key))
            else:
                entries[str(key)] = model
        return
    if not isinstance(value, list):
        problems.append(Problem((section,), "expected a list"))
        return
    items: list[tuple[int, Any]] = getattr(parts, section)
    for index, entry in enumerate(value):
        model = validate(entry, (section, index), problems)
        if model is not None:
            items.append((index, model))
        elif isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
            broken.add(entry["id"])
