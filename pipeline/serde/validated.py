"""Batches of telemetry.valid message values to columns, for the sink.

The messages written with the newest validated_frame schema are read as columns by
`pipeline.serde.batch_read`, the same method as `pipeline.serde.columnar.FrameDecoder` uses
for telemetry.raw: one polars read of an in-memory Avro container file, with enums as ints
(quality codes, flag indices) and timestamps as plain longs. Each decoded frame is encoded
again from the columns, with the column writers `encode_validated` uses, and kept only if
that gives back its body byte for byte: then it is exactly what fastavro reads from that
body, flags in the order the body lists them. A flags list that a mask cannot say back
(flags out of the validator's order, twice the same flag) is such a body that does not come
back.

Nothing else is decoded here: every message left out (no value, another schema id or
version, another record type, a corrupt body) is named in `DecodedValidated.left` for the
caller to decode one by one with `AvroSerde.decode`, which resolves older versions and says
why a message cannot be read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from pipeline.errors import SerdeError
from pipeline.serde.avro import AvroSerde
from pipeline.serde.batch_read import BatchRead, no_datetime, read_columns
from pipeline.serde.columnar import flags_piece
from pipeline.serde.varint import Bodies, Longs, Pieces, write_bodies
from pipeline.stages.frames import FLAGS, Frames, concat_frames

VALIDATED_TYPE = "validated_frame"
_NO_MASK = 1 << len(FLAGS)  # stands for every sum of flag bits that is no mask


@dataclass(slots=True)
class DecodedValidated:
    """A decoded batch of message values: the validated frames read as columns."""

    frames: Frames
    """The frames read as columns (with `flags` and `validated_us`), in message order."""
    rows: list[int]
    """frames row i came from values[rows[i]]."""
    left: list[int]
    """Indices of the other values, in order: to be decoded one by one."""


class ValidatedDecoder:
    """Decodes batches of validated_frame message values into `Frames` (see the module doc)."""

    def __init__(self, serde: AvroSerde) -> None:
        self.serde = serde
        self._batch = BatchRead(serde, VALIDATED_TYPE, _columns, Frames.take, concat_frames)
        self.batch_reads = self._batch.problem is None
        """False when polars cannot read this schema's frames: then every message is left
        to be decoded one by one."""

    def decode(self, values: list[bytes | None]) -> DecodedValidated:
        """The validated frames of a batch of message values that read as columns."""
        parts, left = self._batch.read(values, self.batch_reads)
        if not parts:
            return DecodedValidated(_no_frames(), [], left)
        frames, rows = self._batch.merge(parts)
        return DecodedValidated(frames, rows, left)


def _columns(data: bytes, count: int) -> tuple[Frames, Bodies, npt.NDArray[np.bool_]]:
    """The validated frames of a container file (`pipeline.serde.batch_read.Columns`)."""
    read = read_columns(data, count)
    total = read.frames.readings
    flag_lists = read.items.get_column("flags")
    flag_counts = flag_lists.list.len().to_numpy().astype(np.int64)
    indices = flag_lists.explode(empty_as_null=False).to_numpy().astype(np.int64)
    if indices.size != int(flag_counts.sum()):
        raise SerdeError("the flags do not add up")
    bad_flag = (indices < 0) | (indices >= len(FLAGS))
    bits = np.left_shift(1, np.clip(indices, 0, len(FLAGS) - 1))
    owner = np.repeat(np.arange(total, dtype=np.int64), flag_counts)
    # A sum, not an or: a flag listed twice then gives another mask, which encodes to
    # other bytes, and the frame is left out.
    masks = np.bincount(owner, weights=bits, minlength=total).astype(np.int64)
    # Masks of known flags are below _NO_MASK; any other sum is from a body that cannot
    # come back (made unreadable below).
    masks = np.where(masks < _NO_MASK, masks, _NO_MASK)
    validated_us = read.table.get_column("validated_ts").to_numpy().astype(np.int64)
    frames = replace(
        read.frames, flags=(masks & (_NO_MASK - 1)).astype(np.uint16), validated_us=validated_us
    )
    # Distinct masks by counting, not sorting.
    mask_values = np.flatnonzero(np.bincount(masks, minlength=_NO_MASK + 1))
    mask_codes = np.zeros(_NO_MASK + 1, dtype=np.int64)
    mask_codes[mask_values] = np.arange(mask_values.size)
    flags = Pieces(mask_codes[masks], [flags_piece(m) for m in mask_values.tolist()])
    again = write_bodies([*read.head, Longs(validated_us)], frames.bounds, [*read.readings, flags])
    # What AvroSerde.decode cannot turn into a record, besides what `read_columns` finds: a
    # flag index that is no symbol, a flags list no mask says back, a validated_ts no
    # datetime can hold.
    unreadable_reading = read.unreadable_reading | (masks == _NO_MASK)
    if bad_flag.any():
        unreadable_reading[owner[bad_flag]] = True
    unreadable = read.unreadable | no_datetime(validated_us)
    unreadable[frames.frame_of_reading()[unreadable_reading]] = True
    return frames, again, unreadable


def _no_frames() -> Frames:
    ints = np.zeros(0, dtype=np.int64)
    return Frames(
        asset_id=[],
        source_id=[],
        seq=ints,
        ingest_us=ints,
        bounds=np.zeros(1, dtype=np.int64),
        signal=np.zeros(0, dtype=object),
        ts_us=ints,
        value=np.zeros(0, dtype=np.float64),
        quality=np.zeros(0, dtype=np.int8),
        flags=np.zeros(0, dtype=np.uint16),
        validated_us=ints,
    )
