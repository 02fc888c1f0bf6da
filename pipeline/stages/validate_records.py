"""Shape checks of incoming telemetry frames, and the dead-letter record the stages emit.

The serde guarantees the shape of decoded frames, so these checks matter for frames built by
hand (tests, tools, other producers of dicts); they name the first problem found.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.stages.common import Origin

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
QUALITIES = frozenset({"GOOD", "UNCERTAIN", "BAD"})


def describe(frame: dict[str, Any]) -> str:
    """E.g. "frame asset_id 'cnc-01', source_id 'opcua-line1', seq 12" (what is known)."""
    parts = [f"{k} {frame[k]!r}" for k in ("asset_id", "source_id", "seq") if k in frame]
    return "frame " + ", ".join(parts) if parts else "frame"


def frame_problem(frame: Any) -> str | None:
    """What is wrong with a frame's header, or None when it can be validated."""
    if not isinstance(frame, dict):
        return f"frame is a {type(frame).__name__}, not a record"
    for name, kind in (("asset_id", str), ("source_id", str), ("seq", int)):
        value = frame.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{describe(frame)}: {name} missing or not a {kind.__name__}"
    ingest = frame.get("ingest_ts")
    if not isinstance(ingest, datetime) or ingest.tzinfo is None:
        return f"{describe(frame)}: ingest_ts missing or not an aware datetime"
    readings = frame.get("readings")
    if not isinstance(readings, list) or not readings:
        return f"{describe(frame)}: no readings"
    return None


def reading_times(readings: list[Any]) -> tuple[list[int] | None, str | None]:
    """The readings' timestamps in microseconds, or the first reading that is malformed.

    Checking every reading before any state changes keeps a frame all-or-nothing.
    """
    times: list[int] = []
    append = times.append
    for index, reading in enumerate(readings):
        try:
            value = reading["value"]
            if (
                type(reading["signal"]) is not str
                or reading["quality"] not in QUALITIES
                or not isinstance(value, float | int)
                or isinstance(value, bool)
            ):
                raise TypeError
            append((reading["ts"] - _EPOCH) // _ONE_US)
        except (KeyError, TypeError):
            return None, (
                f"reading {index} lacks a signal name, an aware ts, a numeric value or a "
                f"quality of GOOD/UNCERTAIN/BAD: {reading!r:.200}"
            )
    return times, None


def dead_letter(
    stage: str,
    reason_code: str,
    reason: str,
    origin: Origin,
    now: datetime,
    payload: bytes,
    key: bytes | None,
    asset_id: str | None,
    source_id: str | None,
    seq: int | None,
) -> dict[str, Any]:
    """A dead_letter record (see schemas/avro/dead_letter)."""
    return {
        "reason": reason,
        "reason_code": reason_code,
        "stage": stage,
        "origin_topic": origin.topic,
        "origin_partition": origin.partition,
        "origin_offset": origin.offset,
        "origin_key": key,
        "payload": payload,
        "asset_id": asset_id,
        "source_id": source_id,
        "seq": seq,
        "detected_ts": now,
    }
