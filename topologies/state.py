"""The worker's per-asset state record, and the bookkeeping that writes it once per several
batches.

One table keyed by `asset_id` holds, per asset, the snapshots of every stage that keeps
state for it, as one value: one changelog message per asset per write instead of one per
stage. The value is msgpack of `{"format": 1, "stages": {stage: snapshot}}`. Snapshots are
JSON-able (the stage contract) and msgpack encodes the same values faster than JSON (a
1,000-asset bench record of ~95 KB: ~35 µs, against ~430 µs for the json module), keeping
every float as its 8 bytes, NaN and infinities included (orjson, faster still, writes those
as null, which would not restore).

`PendingState` gathers the assets whose state changed and the consumed events that wait for
that state to be written before their offsets may be committed (see `topologies/agents.py`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import msgpack

from pipeline.stages.common import StageStateError

STATE_FORMAT = 1

StageStates = dict[str, dict[str, Any]]


def encode_state(states: StageStates) -> bytes:
    """The table value for one asset's `{stage: snapshot}`."""
    packed: bytes = msgpack.packb({"format": STATE_FORMAT, "stages": states})
    return packed


def decode_state(value: bytes, asset_id: str) -> StageStates:
    """`{stage: snapshot}` from a table value; StageStateError if it is not one."""
    try:
        record = msgpack.unpackb(value, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StageStateError(f"state of asset {asset_id} is not readable: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != STATE_FORMAT:
        raise StageStateError(f"state of asset {asset_id} is not a format {STATE_FORMAT} record")
    stages = record.get("stages")
    if not isinstance(stages, dict):
        raise StageStateError(f"state of asset {asset_id} has no stage snapshots")
    return stages


class PendingState:
    """Assets whose state changed since the last write, and the consumed events held back
    (not acknowledged) until that state is written.

    Due when `max_events` events are held or the oldest change is `max_age_s` old, so under
    a backlog an asset's state is written once per several of its frames, while at low load
    it is still written within `max_age_s`."""

    def __init__(self, max_events: int, max_age_s: float) -> None:
        self.max_events = max_events
        self.max_age_s = max_age_s
        self.assets: set[str] = set()
        self.events: list[Any] = []
        self._since: float | None = None

    def add(self, assets: Iterable[str], events: Iterable[Any] = ()) -> None:
        self.assets.update(assets)
        self.events.extend(events)
        if self._since is None and (self.assets or self.events):
            self._since = time.monotonic()

    def due(self) -> bool:
        if self._since is None:
            return False
        return (
            len(self.events) >= self.max_events or time.monotonic() - self._since >= self.max_age_s
        )

    def take(self) -> tuple[set[str], list[Any]]:
        """The assets and events gathered so far; they are no longer pending."""
        assets, events = self.assets, self.events
        self.assets, self.events, self._since = set(), [], None
        return assets, events
