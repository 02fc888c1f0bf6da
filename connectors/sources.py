"""Which site source a connector reads, and which of its assets."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.errors import ConfigError
from pipeline.site import Asset, Site


def pick_source(site: Site, kind: str, source_id: str | None) -> str:
    """The id of the source to read: `source_id` if given (checked), else the site's only
    source of `kind`. ConfigError names the candidates when there is no single one."""
    candidates = sorted(sid for sid, src in site.sources.items() if src.kind == kind)
    if source_id is not None:
        if source_id not in site.sources:
            raise ConfigError(
                f"site {site.name} has no source {source_id!r} "
                f"({kind} sources: {', '.join(candidates) or 'none'})"
            )
        actual = site.sources[source_id].kind
        if actual != kind:
            raise ConfigError(f"source {source_id} is a {actual} source, not {kind}")
        return source_id
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConfigError(f"site {site.name} has no {kind} source")
    raise ConfigError(
        f"site {site.name} has {len(candidates)} {kind} sources; choose one with --source "
        f"({', '.join(candidates)})"
    )


def pick_assets(site: Site, source_id: str, asset_ids: Sequence[str] | None) -> list[Asset]:
    """The assets of `source_id` to read: all of them, or those named (each checked)."""
    fed = site.assets_fed_by(source_id)
    if not asset_ids:
        if not fed:
            raise ConfigError(f"source {source_id} feeds no asset of site {site.name}")
        return list(fed)
    known = {asset.id: asset for asset in fed}
    unknown = [a for a in asset_ids if a not in known]
    if unknown:
        raise ConfigError(
            f"source {source_id} does not feed {', '.join(unknown)} "
            f"(its assets: {', '.join(known) or 'none'})"
        )
    return [known[a] for a in dict.fromkeys(asset_ids)]
