"""A few telemetry frames read message by message with fastavro, straight into columns.

A polars read of a batch (`pipeline.serde.batch_read`) costs ~2 ms however few frames it
holds (the read, its column set-up and the check that the frames encode back to their
bodies); fastavro's compiled reader takes ~0.25 ms for a frame of ~80 readings. A worker that
keeps up with a live load gets batches of a few frames, so those are read here.

Messages of the newest telemetry_frame version are read with the same schema polars reads
(`decoding_schema`: enums as ints, no logical types: the bytes mean the same), so timestamps
come as integer microseconds and quality as its symbol index, with nothing to convert. What
this reader does not take is left to `AvroSerde.decode`, which reads it or says why not:
other versions or record types, bodies fastavro cannot read or that have bytes left over,
timestamps no datetime can hold, and quality indices that are no symbol.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
from fastavro import parse_schema, schemaless_reader

from pipeline.serde.avro import HEADER_SIZE
from pipeline.serde.batch_read import BatchRead, Mask, Part, no_datetime, wire_header
from pipeline.serde.container import decoding_schema
from pipeline.stages.frames import QUALITIES, Frames


class QuickFrames:
    """Reads telemetry.raw message values one by one into `Frames` (see the module doc): the
    messages `batch` would read, the newest telemetry_frame version."""

    def __init__(self, batch: BatchRead[Frames]) -> None:
        self._batch = batch
        latest = batch.serde.catalog.latest(batch.record_type)
        self._schema = parse_schema(decoding_schema(latest.schema))

    def read(self, values: list[bytes | None]) -> tuple[list[Part[Frames]], list[int]]:
        """The frames read from `values` (one part), and the indices of the other values."""
        rows: list[int] = []
        records: list[dict[str, Any]] = []
        left: list[int] = []
        for i, value in enumerate(values):
            record = self._record(value)
            if record is None:
                left.append(i)
            else:
                rows.append(i)
                records.append(record)
        if not records:
            return [], left
        try:
            frames, bad = _frames(records)
        except (OverflowError, ValueError, TypeError):  # e.g. a varint longer than a long
            return [], list(range(len(values)))
        if bad.any():
            left = sorted(left + [rows[k] for k in np.flatnonzero(bad).tolist()])
            keep = np.flatnonzero(~bad)
            rows = [rows[k] for k in keep.tolist()]
            frames = frames.take(keep)
        return ([(rows, frames)] if rows else []), left

    def _record(self, value: bytes | None) -> dict[str, Any] | None:
        header = wire_header(value)
        if value is None or header is None or not self._batch.is_newest(header):
            return None
        body = BytesIO(value)
        body.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(body, self._schema, None)
        except Exception:  # EOFError, IndexError, UnicodeDecodeError, ...: decode says which
            return None
        return record if body.tell() == len(value) else None  # type: ignore[return-value]


def _frames(records: list[dict[str, Any]]) -> tuple[Frames, Mask]:
    """The frames of `records`, and per frame whether it holds a timestamp no datetime can
    hold or a quality index that is no symbol (its record cannot be built: such frames are
    left to `AvroSerde.decode`)."""
    readings = [r for record in records for r in record["readings"]]
    bounds = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum([len(record["readings"]) for record in records], out=bounds[1:])
    signal = np.empty(len(readings), dtype=object)
    signal[:] = [r["signal"] for r in readings]
    quality = np.array([r["quality"] for r in readings], dtype=np.int64)
    frames = Frames(
        asset_id=[record["asset_id"] for record in records],
        source_id=[record["source_id"] for record in records],
        seq=np.array([record["seq"] for record in records], dtype=np.int64),
        ingest_us=np.array([record["ingest_ts"] for record in records], dtype=np.int64),
        bounds=bounds,
        signal=signal,
        ts_us=np.array([r["ts"] for r in readings], dtype=np.int64),
        value=np.array([r["value"] for r in readings], dtype=np.float64),
        quality=np.clip(quality, 0, len(QUALITIES) - 1).astype(np.int8),
    )
    bad_reading = (quality < 0) | (quality >= len(QUALITIES)) | no_datetime(frames.ts_us)
    bad = no_datetime(frames.ingest_us)
    bad[frames.frame_of_reading()[bad_reading]] = True
    return frames, bad
