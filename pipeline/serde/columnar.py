"""Telemetry batches to and from the wire as columns (`pipeline.stages.frames`).

Decoding: the telemetry_frame bodies of a batch written with the newest telemetry_frame
version are read as columns by `pipeline.serde.batch_read` (one polars read of an in-memory
Avro container file, every frame kept only if encoding it again gives back its body byte for
byte). The messages it leaves out (read failures alone after halving, frames that do not give
back their body, every message that is not the newest telemetry_frame version) go through
`AvroSerde.decode` one by one, which resolves older versions and names the reason a message
cannot be read. A batch of at most `QUICK_MAX` messages is read message by message with
fastavro instead (`pipeline.serde.quick_read`): a polars read costs ~2 ms however few frames
it holds, fastavro ~0.3 ms a frame.

Encoding: telemetry frames (status codes as null), validated frames and state estimates are
written with numpy for all readings at once (`pipeline.serde.varint`), byte-identical to
`AvroSerde.encode` of each record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import SerdeError
from pipeline.serde.avro import AvroSerde
from pipeline.serde.batch_read import QUALITY_PIECES, BatchRead, read_columns
from pipeline.serde.quick_read import QuickFrames
from pipeline.serde.varint import (
    Bodies,
    Booleans,
    Column,
    Doubles,
    Longs,
    OptionalDoubles,
    OptionalLongs,
    Pieces,
    strings,
    write_bodies,
    zigzag,
)
from pipeline.stages.frames import FLAGS, QUALITIES, Frames, States, concat_frames, flag_names

FRAME_TYPE = "telemetry_frame"
#: Batches of at most this many messages are read by `QuickFrames`. In memory, frames of ~80
#: readings, best of five: 1 frame 0.33 ms against 1.36 ms read by polars, 5 frames 1.0 against
#: 1.4 ms, 8 frames 2.8 against 2.4 ms.
QUICK_MAX = 5


@dataclass(slots=True)
class DecodedFrames:
    """A decoded batch of telemetry.raw message values."""

    frames: Frames
    """The telemetry_frame messages that decoded, in message order."""
    rows: list[int]
    """frames row i came from values[rows[i]]."""
    errors: dict[int, str]
    """Message index -> why it is not in `frames`, for every other message."""


class FrameDecoder:
    """Decodes batches of telemetry.raw message values into `Frames` (see the module doc)."""

    def __init__(self, serde: AvroSerde, quick_max: int = QUICK_MAX) -> None:
        self.serde = serde
        self.quick_max = quick_max
        self._batch = BatchRead(serde, FRAME_TYPE, _columns, Frames.take, concat_frames)
        self._quick = QuickFrames(self._batch)
        self.batch_reads = self._batch.problem is None
        """False when polars cannot read this schema's frames (then every message is decoded
        one by one), so that a batch is not read in halves down to single messages."""

    def decode(self, values: list[bytes | None]) -> DecodedFrames:
        """The frames of a batch of message values, and why each other message is none."""
        if len(values) <= self.quick_max:
            parts, slow = self._quick.read(values)
        else:
            parts, slow = self._batch.read(values, self.batch_reads)
        errors: dict[int, str] = {}
        records: list[dict[str, Any]] = []
        decoded_rows: list[int] = []
        for i in slow:
            try:
                decoded = self.serde.decode(values[i])
            except SerdeError as exc:
                errors[i] = str(exc)
                continue
            if decoded.record_type != FRAME_TYPE:
                errors[i] = f"expected a telemetry_frame, got a {decoded.record_type}"
                continue
            records.append(decoded.record)
            decoded_rows.append(i)
        if records or not parts:
            parts.append((decoded_rows, Frames.from_records(records)))
        frames, rows = self._batch.merge(parts)
        return DecodedFrames(frames, rows, errors)


def _columns(data: bytes, count: int) -> tuple[Frames, Bodies, npt.NDArray[np.bool_]]:
    """The telemetry frames of a container file (`pipeline.serde.batch_read.Columns`)."""
    read = read_columns(data, count)
    status = read.items.get_column("status_code")
    present = status.is_not_null().to_numpy()
    status_codes = OptionalLongs(status.fill_null(0).to_numpy(), present)
    again = write_bodies(read.head, read.frames.bounds, [*read.readings, status_codes])
    unreadable = read.unreadable
    unreadable[read.frames.frame_of_reading()[read.unreadable_reading]] = True
    return read.frames, again, unreadable


def encode_validated(serde: AvroSerde, frames: Frames, topic: str | None = None) -> list[bytes]:
    """Message values of validated frames, byte-identical to
    `serde.encode("validated_frame", frames.record(i), topic=topic)` for every i."""
    if not len(frames):
        return []
    if frames.flags is None or frames.validated_us is None:
        raise SerdeError("cannot encode validated_frame: the frames carry no validation flags")
    header = serde.header("validated_frame", topic)
    masks, mask_codes = np.unique(frames.flags, return_inverse=True)
    items = [
        strings(frames.signal),
        Longs(frames.ts_us),
        Doubles(frames.value),
        _qualities(frames.quality, "validated_frame"),
        Pieces(mask_codes.ravel(), [flags_piece(int(m)) for m in masks.tolist()]),
    ]
    head = [*_frame_head(header, frames), Longs(frames.validated_us)]
    return write_bodies(head, frames.bounds, items).split()


def _frame_head(header: bytes, frames: Frames) -> list[Column]:
    """The fields every frame record starts with, after the wire format's header."""
    return [
        Pieces(np.zeros(len(frames), dtype=np.int64), [header]),
        strings(frames.asset_id),
        strings(frames.source_id),
        Longs(frames.seq),
        Longs(frames.ingest_us),
    ]


def encode_frames(serde: AvroSerde, frames: Frames, topic: str | None = None) -> list[bytes]:
    """Message values of telemetry frames, byte-identical to
    `serde.encode("telemetry_frame", frames.record(i), topic=topic)` for every i of a batch
    without validation columns.

    `Frames` has no status column and `Frames.record` leaves `status_code` out, which the
    writer fills with its default: every reading's status_code is written as null (readings
    decoded into `Frames` lose theirs). `flags` and `validated_us` are not telemetry_frame
    fields and are not written."""
    if not len(frames):
        return []
    head = _frame_head(serde.header(FRAME_TYPE, topic), frames)
    readings = frames.readings
    items = [
        strings(frames.signal),
        Longs(frames.ts_us),
        Doubles(frames.value),
        _qualities(frames.quality, FRAME_TYPE),
        OptionalLongs(np.zeros(readings, dtype=np.int64), np.zeros(readings, dtype=np.bool_)),
    ]
    return write_bodies(head, frames.bounds, items).split()


def encode_states(serde: AvroSerde, states: States, topic: str | None = None) -> list[bytes]:
    """Message values of state estimates, byte-identical to
    `serde.encode("state_estimate", states.record(i), topic=topic)` for every i."""
    header = serde.header("state_estimate", topic)
    head, items = state_columns(states)
    head.insert(0, Pieces(np.zeros(len(states), dtype=np.int64), [header]))
    return write_bodies(head, states.bounds, items).split()


def state_columns(
    states: States, signal: Column | None = None
) -> tuple[list[Column], list[Column]]:
    """The fields of state_estimate bodies: those before the signals array, and those of its
    items (`signal`: the signal names already as a column, else made from `states.signal`).
    A NaN innovation or nis is written as null."""
    head: list[Column] = [
        strings(states.asset_id),
        strings(states.source_id),
        Longs(states.seq),
        Longs(states.ts_us),
        Longs(states.ingest_us),
    ]
    items: list[Column] = [
        strings(states.signal) if signal is None else signal,
        Doubles(states.value),
        Doubles(states.rate),
        Doubles(states.variance),
        Doubles(states.rate_variance),
        OptionalDoubles(states.innovation),
        OptionalDoubles(states.nis),
        Booleans(states.outlier),
        Booleans(states.measured),
    ]
    return head, items


def _qualities(codes: Any, record_type: str) -> Pieces:
    codes = np.asarray(codes, dtype=np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= len(QUALITIES)):
        raise SerdeError(
            f"cannot encode {record_type}: quality code {int(codes.max())} or "
            f"{int(codes.min())} is none of {', '.join(QUALITIES)} (0..{len(QUALITIES) - 1})"
        )
    return Pieces(codes, QUALITY_PIECES)


def flags_piece(mask: int) -> bytes:
    """A reading's flags array for a flags mask, as the record lists them."""
    names = flag_names(mask)
    if not names:
        return zigzag(0)
    return zigzag(len(names)) + b"".join(zigzag(FLAGS.index(n)) for n in names) + zigzag(0)
