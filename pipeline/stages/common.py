"""Small pieces shared by the stream stages: where a record came from, and time conversions.

Stage state must be JSON-able (it is snapshotted into the worker's compacted state topic), so
timestamps in snapshots are integer microseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipeline.errors import TwinError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StageStateError(TwinError):
    """A stage was given a state snapshot it cannot restore (corrupt or of another shape)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """The Kafka position a record was read from (for dead letters and logs)."""

    topic: str
    partition: int
    offset: int


def to_micros(dt: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact, no float rounding)."""
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    """The aware UTC datetime for microseconds since the Unix epoch."""
    return _EPOCH + timedelta(microseconds=us)
