"""OPC UA data values as readings, and the per-asset batches a subscription fills.

Pure parts of the OPC UA connector: no network here, so they are tested in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from connectors.base import FrameSink

GOOD, UNCERTAIN, BAD = "GOOD", "UNCERTAIN", "BAD"

GAP_STATUS = ua.StatusCodes.BadCommunicationError
"""Status of the readings that mark a lost connection: the spec's code for "a low level
communication error occurred", the one OPC UA clients report for values they can no longer
get (BadNoCommunication means a connection that was never established)."""

UNUSABLE_STATUS = ua.StatusCodes.BadTypeMismatch
"""Status of a reading whose device value is not a number (a string, an array)."""

# asyncua decodes an OPC UA DateTime of 0 ("no timestamp") as the FILETIME epoch.
_NO_TIMESTAMP = datetime(1601, 1, 1, tzinfo=UTC)


def quality_of(status: int) -> str:
    """GOOD, UNCERTAIN or BAD from the severity bits of an OPC UA StatusCode."""
    severity = status >> 30
    if severity == 0:
        return GOOD
    if severity == 1:
        return UNCERTAIN
    return BAD  # 10 = Bad; 11 is reserved and, per the spec, treated as Bad


def as_float(value: Any) -> float | None:
    """The device value as a float (booleans and integers converted); None for anything
    that is not a number. A missing value is NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


def _timestamp(value: datetime | None) -> datetime | None:
    if value is None or value <= _NO_TIMESTAMP:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def reading_from(signal: str, data: ua.DataValue, received: datetime) -> dict[str, Any]:
    """The reading of one OPC UA DataValue.

    Event time is the SourceTimestamp, else the ServerTimestamp, else `received`; the raw
    StatusCode is kept in `status_code`.
    """
    status = int(data.StatusCode.value) if data.StatusCode is not None else 0
    raw = data.Value.Value if data.Value is not None else None
    value = as_float(raw)
    if value is None:
        value, status = math.nan, int(UNUSABLE_STATUS)
    ts = _timestamp(data.SourceTimestamp) or _timestamp(data.ServerTimestamp) or received
    return {
        "signal": signal,
        "ts": ts,
        "value": value,
        "quality": quality_of(status),
        "status_code": status,
    }


def gap_reading(signal: str, detected: datetime) -> dict[str, Any]:
    """A reading saying the signal's value is not live since `detected`."""
    return {
        "signal": signal,
        "ts": detected,
        "value": math.nan,
        "quality": BAD,
        "status_code": int(GAP_STATUS),
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    # NaN != NaN, so compare values as "both NaN or equal".
    va, vb = a["value"], b["value"]
    return (
        a["ts"] == b["ts"]
        and a["status_code"] == b["status_code"]
        and (va == vb or (math.isnan(va) and math.isnan(vb)))
    )


@dataclass
class FrameBatcher:
    """Readings collected between two flushes, one pending frame per asset.

    A reading equal to the last one delivered for its signal (same timestamp, value and
    status) is dropped: the initial read and a subscription's first notification report the
    same sample, and so may a republished notification.
    """

    _pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _last: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0

    def add(self, asset_id: str, reading: dict[str, Any]) -> None:
        key = (asset_id, reading["signal"])
        last = self._last.get(key)
        if last is not None and _same(last, reading):
            self.duplicates += 1
            return
        self._last[key] = reading
        self._pending.setdefault(asset_id, []).append(reading)

    def add_all(self, asset_id: str, readings: Iterable[dict[str, Any]]) -> None:
        for reading in readings:
            self.add(asset_id, reading)

    @property
    def pending(self) -> int:
        """How many readings wait for the next flush."""
        return sum(len(r) for r in self._pending.values())

    def flush(self, sink: FrameSink) -> list[tuple[str, list[dict[str, Any]]]]:
        """Submit one frame per asset with pending readings; returns the frames submitted."""
        pending, self._pending = self._pending, {}
        for asset_id, readings in pending.items():
            sink.submit(asset_id, readings)
        return list(pending.items())
