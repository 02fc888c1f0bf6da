"""The KPI stage's state for one asset, and its JSON-able snapshot.

Pane values are stored in the snapshot as base64 of little-endian float64 / int64 arrays: a
5-minute hopping window keeps thousands of values per signal, and a string per list is far
cheaper to encode and store in a changelog than a JSON list of numbers (and exact).
"""

from __future__ import annotations

import base64
import binascii
import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from pipeline.stages.common import StageStateError
from pipeline.stages.kpi_aggregate import Pane, Point, last_point
from pipeline.stages.kpi_windows import SourceClock

SNAPSHOT_FORMAT = 1


@dataclass(slots=True)
class EmittedWindow:
    version: int
    fingerprint: str


@dataclass(slots=True)
class AssetWindows:
    """Open and recently closed panes of one asset, its sources' clocks and what was emitted."""

    panes: dict[int, Pane] = field(default_factory=dict)
    """Pane start (µs) -> pane, kept until no window containing it accepts data."""
    clocks: dict[str, SourceClock] = field(default_factory=dict)
    """source_id -> clock of that source for this asset."""
    watermark: int | None = None
    """Event time (µs) up to which the asset's windows are complete; None before any data."""
    carried: dict[str, Point] = field(default_factory=dict)
    """Per state/counter signal, the latest reading of the panes already dropped: the state
    and counter value a window starts from."""
    emitted: dict[tuple[str, int, int], EmittedWindow] = field(default_factory=dict)
    """Windows emitted and still accepting late data."""

    def before(self, start: int, signals: frozenset[str]) -> dict[str, Point]:
        """Per timed signal, the latest reading before event time `start`."""
        found: dict[str, Point] = {}
        for pane_start in sorted((p for p in self.panes if p < start), reverse=True):
            pane = self.panes[pane_start]
            for signal in signals - found.keys():
                point = last_point(pane, signal)
                if point is not None:
                    found[signal] = point
            if len(found) == len(signals):
                return found
        for signal in signals - found.keys():
            if signal in self.carried:
                found[signal] = self.carried[signal]
        return found

    def drop_pane(self, pane_start: int, signals: frozenset[str]) -> None:
        """Forget a pane (panes are dropped oldest first), keeping its last state and
        counter readings as the starting point of later windows."""
        pane = self.panes.pop(pane_start)
        for signal in signals:
            point = last_point(pane, signal)
            if point is not None:
                self.carried[signal] = point

    def snapshot(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "watermark": self.watermark,
            "clocks": {s: [c.max_ts, c.last_arrival] for s, c in self.clocks.items()},
            "carried": {s: [ts, v] for s, (ts, v) in self.carried.items()},
            "emitted": [
                [kind, start, end, e.version, e.fingerprint]
                for (kind, start, end), e in self.emitted.items()
            ],
            "panes": [
                {
                    "start": start,
                    "values": {s: _pack(v, np.float64) for s, v in pane.values.items()},
                    "times": {s: _pack(t, np.int64) for s, t in pane.times.items()},
                }
                for start, pane in self.panes.items()
            ],
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> AssetWindows:
        """The state a `snapshot()` describes; StageStateError for anything else."""
        if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise StageStateError(f"kpi: unknown snapshot format {found!r}")
        try:
            return cls._restore(state)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise StageStateError(f"kpi: cannot restore the snapshot: {exc!r}") from exc

    @classmethod
    def _restore(cls, state: dict[str, Any]) -> AssetWindows:
        return cls(
            panes={
                int(p["start"]): Pane(
                    values={s: _unpack_floats(v) for s, v in p["values"].items()},
                    times={s: _unpack(t, np.int64) for s, t in p["times"].items()},
                )
                for p in state["panes"]
            },
            clocks={s: SourceClock(int(c[0]), int(c[1])) for s, c in state["clocks"].items()},
            watermark=None if state["watermark"] is None else int(state["watermark"]),
            carried={s: (int(p[0]), float(p[1])) for s, p in state["carried"].items()},
            emitted={
                (str(e[0]), int(e[1]), int(e[2])): EmittedWindow(int(e[3]), str(e[4]))
                for e in state["emitted"]
            },
        )


_LITTLE = sys.byteorder == "little"


def _pack(values: Sequence[Any], dtype: type[np.generic]) -> str:
    # A pane's C doubles are the bytes already (on a little-endian machine). struct packs a
    # short list of Python numbers several times faster than numpy builds an array of it,
    # to the same bytes; anything struct refuses (None, strings, floats among the times...)
    # goes through numpy, which converts it (or fails) as it always did.
    try:
        if _LITTLE and dtype is np.float64 and isinstance(values, array) and values.typecode == "d":
            data = values.tobytes()
        else:
            data = _PACKERS[dtype](len(values)).pack(*values)
    except struct.error:
        data = np.asarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    # What base64.b64encode does, without its Python-level wrapper.
    return binascii.b2a_base64(data, newline=False).decode("ascii")


@lru_cache(maxsize=1024)
def _float64s(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}d")


@lru_cache(maxsize=1024)
def _int64s(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}q")


_PACKERS: dict[type[np.generic], Callable[[int], struct.Struct]] = {
    np.float64: _float64s,
    np.int64: _int64s,
}
"""The little-endian struct layout of `count` values of each dtype a pane list is packed as."""


def _unpack_floats(text: str) -> array[float]:
    """A pane's values as `_pack` packed them, as C doubles (see `Pane.values`)."""
    values = array("d", base64.b64decode(text))
    if not _LITTLE:
        values.byteswap()
    return values


def _unpack(text: str, dtype: type[np.generic]) -> list[Any]:
    data = np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))
    values: list[Any] = data.tolist()
    return values
