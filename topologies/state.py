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

import math
import time
from collections.abc import Callable, Iterable
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

    Due when `max_events` events are held or the oldest change is `max_age_s` old, so at
    low load the state is written within `max_age_s`. While the worker works through a
    backlog (the caller says so with each batch), the age does not count: the state is then
    written once per `max_events` frames, each asset once however many of its frames they
    hold, instead of every `max_age_s` (measured in `twin bench`: at ~600 frames/s, writes
    by age alone took ~12% of the worker). The age counts again with the first batch after
    the backlog, or `max_age_s` after the backlog's last batch if no batch follows."""

    def __init__(
        self, max_events: int, max_age_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_events = max_events
        self.max_age_s = max_age_s
        self._clock = clock
        self.assets: set[str] = set()
        self.events: list[Any] = []
        self._since: float | None = None
        self._backlog_until = -math.inf
        """Until when the age does not count: `max_age_s` after the latest backlog batch."""

    def add(
        self, assets: Iterable[str], events: Iterable[Any] = (), backlog: bool | None = None
    ) -> None:
        """Gather changed assets and held events; `backlog` (if given) says whether the batch
        they came from was taken from a backlog."""
        self.assets.update(assets)
        self.events.extend(events)
        if backlog is not None:
            self._backlog_until = self._clock() + self.max_age_s if backlog else -math.inf
        if self._since is None and (self.assets or self.events):
            self._since = self._clock()

    def due(self) -> bool:
        if self._since is None:
            return False
        if len(self.events) >= self.max_events:
            return True
        now = self._clock()
        return now - self._since >= self.max_age_s and now >= self._backlog_until

    def take(self) -> tuple[set[str], list[Any]]:
        """The assets and events gathered so far; they are no longer pending."""
        assets, events = self.assets, self.events
        self.assets, self.events, self._since = set(), [], None
        return assets, events
