"""A batch of telemetry frames as columns: what the worker's hot path passes between stages.

One row per frame (header columns) and one row per reading (reading columns); the readings of
frame i are rows `bounds[i]:bounds[i + 1]`, in the order the frame holds them. Timestamps are
integer microseconds since the Unix epoch (UTC); qualities and flags are the Avro enum
indices of `telemetry_frame` / `validated_frame`, so columns encode to the wire as they are.

    frames = Frames.from_records([frame_record, ...])   # dict records, e.g. from tests
    frames.record(0)                                    # back to a dict record

`flags` and `validated_us` are set only on validated frames (the validate stage's output).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.stages.common import from_micros, to_micros

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

QUALITIES = ("GOOD", "UNCERTAIN", "BAD")
"""Quality by its code (the Avro enum order)."""
GOOD, UNCERTAIN, BAD = 0, 1, 2
QUALITY_CODE = {name: code for code, name in enumerate(QUALITIES)}

FLAGS = (
    "OUT_OF_PHYSICAL_RANGE",
    "OUT_OF_EXPECTED_RANGE",
    "RATE_OF_CHANGE",
    "NOT_FINITE",
    "STALE",
    "FUTURE_TIMESTAMP",
    "TOO_OLD",
    "OUT_OF_ORDER",
    "DUPLICATE",
    "UNKNOWN_SIGNAL",
    "DEVICE_BAD",
    "DEVICE_UNCERTAIN",
)
"""Flag by its bit (bit i of a flags mask is FLAGS[i], the Avro enum order)."""
FLAG_BIT = {name: 1 << i for i, name in enumerate(FLAGS)}
FLAG_ORDER = (
    "DEVICE_BAD",
    "DEVICE_UNCERTAIN",
    "FUTURE_TIMESTAMP",
    "TOO_OLD",
    "UNKNOWN_SIGNAL",
    "NOT_FINITE",
    "OUT_OF_PHYSICAL_RANGE",
    "OUT_OF_EXPECTED_RANGE",
    "OUT_OF_ORDER",
    "RATE_OF_CHANGE",
    "STALE",
    "DUPLICATE",
)
"""The order a reading lists its flags in (the order the validator checks them)."""


def flag_names(mask: int) -> list[str]:
    """The flags of a mask, in FLAG_ORDER."""
    return [name for name in FLAG_ORDER if mask & FLAG_BIT[name]] if mask else []


def flag_mask(names: list[str]) -> int:
    mask = 0
    for name in names:
        mask |= FLAG_BIT[name]
    return mask


@dataclass(slots=True)
class Frames:
    """Columns of a batch of frames (see the module doc)."""

    asset_id: list[str]
    source_id: list[str]
    seq: Ints
    ingest_us: Ints
    bounds: Ints
    """len(frames) + 1 offsets into the reading columns."""
    signal: npt.NDArray[np.object_]
    """Signal name (str) per reading."""
    ts_us: Ints
    value: Floats
    quality: npt.NDArray[np.int8]
    """QUALITIES code per reading."""
    flags: npt.NDArray[np.uint16] | None = None
    """Flag mask per reading (validated frames)."""
    validated_us: Ints | None = None
    """When each frame was validated (validated frames)."""

    def __len__(self) -> int:
        return len(self.asset_id)

    @property
    def readings(self) -> int:
        return int(self.bounds[-1])

    def counts(self) -> Ints:
        """Readings per frame."""
        return np.diff(self.bounds)

    def frame_of_reading(self) -> Ints:
        """The frame index of every reading."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.counts())

    def take(self, rows: Ints | list[int]) -> Frames:
        """The frames at `rows` (frame indices, in that order) as a new batch."""
        rows, bounds, picks = _picked(self.bounds, rows)
        return Frames(
            asset_id=[self.asset_id[i] for i in rows.tolist()],
            source_id=[self.source_id[i] for i in rows.tolist()],
            seq=self.seq[rows],
            ingest_us=self.ingest_us[rows],
            bounds=bounds,
            signal=self.signal[picks],
            ts_us=self.ts_us[picks],
            value=self.value[picks],
            quality=self.quality[picks],
            flags=None if self.flags is None else self.flags[picks],
            validated_us=None if self.validated_us is None else self.validated_us[rows],
        )

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> Frames:
        """Columns of well-formed telemetry_frame or validated_frame records (timestamps as
        aware datetimes or integer microseconds; see `validate_records.frame_problem`)."""
        readings = [r for record in records for r in record["readings"]]
        bounds = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum([len(record["readings"]) for record in records], out=bounds[1:])
        validated = bool(records) and all("validated_ts" in record for record in records)
        return cls(
            asset_id=[record["asset_id"] for record in records],
            source_id=[record["source_id"] for record in records],
            seq=np.array([record["seq"] for record in records], dtype=np.int64),
            ingest_us=np.array([micros(record["ingest_ts"]) for record in records], np.int64),
            bounds=bounds,
            signal=_objects([r["signal"] for r in readings]),
            ts_us=np.array([micros(r["ts"]) for r in readings], dtype=np.int64),
            value=np.array([r["value"] for r in readings], dtype=np.float64),
            quality=np.array([QUALITY_CODE[r["quality"]] for r in readings], dtype=np.int8),
            flags=(
                np.array([flag_mask(r["flags"]) for r in readings], dtype=np.uint16)
                if validated
                else None
            ),
            validated_us=(
                np.array([micros(record["validated_ts"]) for record in records], np.int64)
                if validated
                else None
            ),
        )

    def record(self, i: int, micros: bool = False) -> dict[str, Any]:
        """Frame i as a dict record (timestamps as aware datetimes): a validated_frame when
        the batch is validated, else a telemetry_frame. With `micros` the readings' `ts`
        stay integer microseconds (cheaper, for stages that accept them)."""
        lo, hi = int(self.bounds[i]), int(self.bounds[i + 1])
        names, times = self.signal[lo:hi].tolist(), self.ts_us[lo:hi].tolist()
        if not micros:
            times = [from_micros(t) for t in times]
        values, qualities = self.value[lo:hi].tolist(), self.quality[lo:hi].tolist()
        record: dict[str, Any] = {
            "asset_id": self.asset_id[i],
            "source_id": self.source_id[i],
            "seq": int(self.seq[i]),
            "ingest_ts": from_micros(int(self.ingest_us[i])),
        }
        if self.flags is None or self.validated_us is None:
            record["readings"] = [
                {"signal": n, "ts": t, "value": v, "quality": QUALITIES[q]}
                for n, t, v, q in zip(names, times, values, qualities, strict=True)
            ]
            return record
        record["validated_ts"] = from_micros(int(self.validated_us[i]))
        masks = self.flags[lo:hi].tolist()
        record["readings"] = [
            {
                "signal": n,
                "ts": t,
                "value": v,
                "quality": QUALITIES[q],
                "flags": flag_names(m),
            }
            for n, t, v, q, m in zip(names, times, values, qualities, masks, strict=True)
        ]
        return record


def _picked(old_bounds: Ints, rows: Ints | list[int]) -> tuple[Ints, Ints, Ints]:
    """For a batch whose item i has rows old_bounds[i]:old_bounds[i + 1] (readings of a
    frame, signals of an estimate), the items at `rows`: (rows as an array, the new batch's
    bounds, the old row of every row of the new batch)."""
    rows = np.asarray(rows, dtype=np.int64)
    counts = np.diff(old_bounds)[rows]
    bounds = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    # Each chosen item's start plus 0..count-1.
    within = np.arange(int(bounds[-1]), dtype=np.int64) - np.repeat(bounds[:-1], counts)
    picks = np.repeat(old_bounds[:-1][rows], counts) + within
    return rows, bounds, picks


def micros(when: datetime | int) -> int:
    """Microseconds since the epoch of an aware datetime, or an int taken as such."""
    return when if isinstance(when, int) else to_micros(when)


def _objects(items: list[str]) -> npt.NDArray[np.object_]:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


@dataclass(slots=True)
class States:
    """State estimates of a batch as columns: one row per frame (`state_estimate` header), one
    per reported signal; the signals of frame i are rows `bounds[i]:bounds[i + 1]`.
    `innovation` and `nis` are NaN where the record has null."""

    asset_id: list[str]
    source_id: list[str]
    seq: Ints
    ts_us: Ints
    ingest_us: Ints
    bounds: Ints
    signal: npt.NDArray[np.object_]
    value: Floats
    rate: Floats
    variance: Floats
    rate_variance: Floats
    innovation: Floats
    nis: Floats
    outlier: npt.NDArray[np.bool_]
    measured: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.asset_id)

    def take(self, rows: Ints | list[int]) -> States:
        """The estimates at `rows` (row indices, in that order) as a new batch."""
        rows, bounds, picks = _picked(self.bounds, rows)
        picked = rows.tolist()
        return States(
            asset_id=[self.asset_id[i] for i in picked],
            source_id=[self.source_id[i] for i in picked],
            seq=self.seq[rows],
            ts_us=self.ts_us[rows],
            ingest_us=self.ingest_us[rows],
            bounds=bounds,
            signal=self.signal[picks],
            value=self.value[picks],
            rate=self.rate[picks],
            variance=self.variance[picks],
            rate_variance=self.rate_variance[picks],
            innovation=self.innovation[picks],
            nis=self.nis[picks],
            outlier=self.outlier[picks],
            measured=self.measured[picks],
        )

    def record(self, i: int) -> dict[str, Any]:
        """Frame i's state_estimate as a dict record (timestamps as aware datetimes)."""
        lo, hi = int(self.bounds[i]), int(self.bounds[i + 1])
        columns = (
            self.signal[lo:hi].tolist(),
            self.value[lo:hi].tolist(),
            self.rate[lo:hi].tolist(),
            self.variance[lo:hi].tolist(),
            self.rate_variance[lo:hi].tolist(),
            self.innovation[lo:hi].tolist(),
            self.nis[lo:hi].tolist(),
            self.outlier[lo:hi].tolist(),
            self.measured[lo:hi].tolist(),
        )
        return {
            "asset_id": self.asset_id[i],
            "source_id": self.source_id[i],
            "seq": int(self.seq[i]),
            "ts": from_micros(int(self.ts_us[i])),
            "ingest_ts": from_micros(int(self.ingest_us[i])),
            "signals": [
                {
                    "signal": name,
                    "value": value,
                    "rate": rate,
                    "variance": p_ll,
                    "rate_variance": p_rr,
                    "innovation": None if inn != inn else inn,
                    "nis": None if nis != nis else nis,
                    "outlier": outlier,
                    "measured": measured,
                }
                for name, value, rate, p_ll, p_rr, inn, nis, outlier, measured in zip(
                    *columns, strict=True
                )
            ],
        }


def concat_states(parts: list[States]) -> States:
    """One `States` of several, in order (none: an empty one)."""
    if len(parts) == 1:
        return parts[0]
    sizes = [int(p.bounds[-1]) for p in parts]
    offsets = np.cumsum([0, *sizes])[:-1]
    bounds = np.concatenate(
        [np.zeros(1, np.int64)] + [p.bounds[1:] + o for p, o in zip(parts, offsets, strict=True)]
    )

    def cat(name: str) -> Any:
        return np.concatenate([getattr(p, name) for p in parts]) if parts else np.empty(0)

    return States(
        asset_id=[a for p in parts for a in p.asset_id],
        source_id=[s for p in parts for s in p.source_id],
        seq=cat("seq").astype(np.int64),
        ts_us=cat("ts_us").astype(np.int64),
        ingest_us=cat("ingest_us").astype(np.int64),
        bounds=bounds.astype(np.int64),
        signal=cat("signal").astype(object),
        value=cat("value"),
        rate=cat("rate"),
        variance=cat("variance"),
        rate_variance=cat("rate_variance"),
        innovation=cat("innovation"),
        nis=cat("nis"),
        outlier=cat("outlier").astype(np.bool_),
        measured=cat("measured").astype(np.bool_),
    )


def concat_frames(parts: list[Frames]) -> Frames:
    """One `Frames` of several non-empty ones, in order (all validated or none)."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0, *(p.readings for p in parts[:-1])])
    bounds = np.concatenate(
        [np.zeros(1, np.int64)] + [p.bounds[1:] + o for p, o in zip(parts, offsets, strict=True)]
    )
    validated = all(p.flags is not None and p.validated_us is not None for p in parts)
    return Frames(
        asset_id=[a for p in parts for a in p.asset_id],
        source_id=[s for p in parts for s in p.source_id],
        seq=np.concatenate([p.seq for p in parts]),
        ingest_us=np.concatenate([p.ingest_us for p in parts]),
        bounds=bounds.astype(np.int64),
        signal=np.concatenate([p.signal for p in parts]),
        ts_us=np.concatenate([p.ts_us for p in parts]),
        value=np.concatenate([p.value for p in parts]),
        quality=np.concatenate([p.quality for p in parts]),
        flags=(
            np.concatenate([p.flags for p in parts if p.flags is not None]) if validated else None
        ),
        validated_us=(
            np.concatenate([p.validated_us for p in parts if p.validated_us is not None])
            if validated
            else None
        ),
    )
