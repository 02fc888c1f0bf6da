"""Batches of telemetry.valid message values to columns, for the sink.

The same method as `pipeline.serde.columnar.FrameDecoder` uses for telemetry.raw: the bodies
of the messages written with the newest validated_frame schema are wrapped into one
in-memory Avro container file and read by polars with a decoding schema in which enums are
ints (quality codes, flag indices) and timestamps plain longs. Each decoded frame is then
encoded again from the columns, with the column writers `encode_validated` uses, and kept
only if that gives back its body byte for byte: then it is exactly what fastavro reads from
that body, flags in the order the body lists them. A flags list that a mask cannot say back
(flags out of the validator's order, twice the same flag) is such a body that does not come
back. A failed read is split in halves until the failing messages are alone. Of the frames
that do not come back, the first is left out and the others are read again (they may only
have been read from a shifted place), a bounded number of times.

Nothing else is decoded here: every message left out (no value, another schema id or
version, another record type, a corrupt body) is named in `DecodedValidated.left` for the
caller to decode one by one with `AvroSerde.decode`, which resolves older versions and says
why a message cannot be read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO

import numpy as np
import numpy.typing as npt
import polars as pl
from fastavro import schemaless_writer
from polars.exceptions import PanicException

from pipeline.errors import SerdeError
from pipeline.serde.avro import HEADER_SIZE, MAGIC, AvroSerde
from pipeline.serde.container import container, container_header, decoding_schema
from pipeline.serde.examples import example
from pipeline.serde.varint import (
    Doubles,
    Longs,
    Pieces,
    string_piece,
    strings,
    write_bodies,
    zigzag,
)
from pipeline.stages.common import to_micros
from pipeline.stages.frames import FLAGS, QUALITIES, Frames, Ints, concat_frames, flag_names

log = logging.getLogger(__name__)

VALIDATED_TYPE = "validated_frame"
_QUALITY_PIECES = [zigzag(code) for code in range(len(QUALITIES))]
_FIRST_US = to_micros(datetime.min.replace(tzinfo=UTC))
_LAST_US = to_micros(datetime.max.replace(tzinfo=UTC))
_PATIENCE = 3  # reads in a row that keep no frame before the rest is left out
_MAX_ROUNDS = 16  # reads again of frames that did not give back their body, at most
_NO_MASK = 1 << len(FLAGS)  # stands for every sum of flag bits that is no mask
_READ_FAILURES = (Exception, PanicException)  # polars panics are BaseExceptions


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
        latest = serde.catalog.latest(VALIDATED_TYPE)
        self._version = latest.version
        self._container = container_header(json.dumps(decoding_schema(latest.schema)))
        self.batch_reads = self._reads(latest.parsed)
        """False when polars cannot read this schema's frames: then every message is left
        to be decoded one by one."""

    def _reads(self, writer: dict[str, object]) -> bool:
        body = BytesIO()
        try:
            schemaless_writer(body, writer, example(VALIDATED_TYPE))
            kept, _ = self._read_once([body.getvalue()], [0])
            problem = None if kept else "the frame polars reads is not the one written"
        except _READ_FAILURES as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            log.warning("validated frames decode one by one, not in batches: %s", problem)
        return problem is None

    def decode(self, values: list[bytes | None]) -> DecodedValidated:
        """The validated frames of a batch of message values that read as columns."""
        fast: list[int] = []
        left: list[int] = []
        newest: dict[bytes, bool] = {}
        for i, value in enumerate(values):
            if value is None or len(value) <= HEADER_SIZE or value[0] != MAGIC:
                left.append(i)
                continue
            header = value[:HEADER_SIZE]
            is_newest = newest.get(header)
            if is_newest is None:
                known = self.serde.known_schema(int.from_bytes(header[1:], "big"))
                is_newest = newest[header] = known == (VALIDATED_TYPE, self._version)
            (fast if is_newest and self.batch_reads else left).append(i)
        parts: list[tuple[list[int], Frames]] = []
        if fast:
            bodies = [values[i][HEADER_SIZE:] for i in fast]  # type: ignore[index]
            positions = list(range(len(fast)))
            for kept, frames in self._read(bodies, positions, left, fast):
                parts.append(([fast[p] for p in kept], frames))
        return _merge(parts, sorted(left))

    def _read(
        self, bodies: list[bytes], positions: list[int], left: list[int], fast: list[int]
    ) -> list[tuple[list[int], Frames]]:
        """Frames of bodies[positions] that polars reads and that give back their body; the
        message index of every other one is appended to `left`."""
        parts: list[tuple[list[int], Frames]] = []
        idle = rounds = 0
        while positions:
            kept, wrong = self._read_halves(bodies, positions, left, fast)
            parts += kept
            if not wrong:
                break
            # The first frame that does not give back its body was read from its own first
            # byte (every frame before it in its read did), so that body is at fault; the
            # later ones may only have been read from a shifted place. Bounded like
            # FrameDecoder: bodies that all differ would otherwise be read once per body.
            left.append(fast[wrong[0]])
            positions = wrong[1:]
            rounds += 1
            idle = 0 if kept else idle + 1
            if idle >= _PATIENCE or rounds >= _MAX_ROUNDS:
                left.extend(fast[p] for p in positions)
                break
        return parts

    def _read_halves(
        self, bodies: list[bytes], positions: list[int], left: list[int], fast: list[int]
    ) -> tuple[list[tuple[list[int], Frames]], list[int]]:
        """One read of bodies[positions], in halves where it fails."""
        try:
            kept, wrong = self._read_once(bodies, positions)
        except _READ_FAILURES:
            if len(positions) == 1:
                left.append(fast[positions[0]])
                return [], []
            half = len(positions) // 2
            first, first_wrong = self._read_halves(bodies, positions[:half], left, fast)
            second, second_wrong = self._read_halves(bodies, positions[half:], left, fast)
            return first + second, first_wrong + second_wrong
        return kept, wrong

    def _read_once(
        self, bodies: list[bytes], positions: list[int]
    ) -> tuple[list[tuple[list[int], Frames]], list[int]]:
        """One polars read of bodies[positions]: the frames that give back their body, and
        the positions of those that do not, in order. Raises when polars cannot read."""
        chosen = [bodies[p] for p in positions]
        data, blob = container(self._container, chosen)
        frames, again, unreadable = self._columns(data, len(chosen))
        exact = _gives_back(chosen, blob, again, unreadable)
        if exact.all():
            return [(positions, frames)], []
        kept = np.flatnonzero(exact)
        wrong = [positions[k] for k in np.flatnonzero(~exact).tolist()]
        if not kept.size:
            return [], wrong
        return [([positions[k] for k in kept.tolist()], frames.take(kept))], wrong

    def _columns(
        self, data: bytes, count: int
    ) -> tuple[Frames, tuple[npt.NDArray[np.uint8], Ints], npt.NDArray[np.bool_]]:
        """The frames of a container, their bodies encoded again (bytes, starts) and which
        frames no record can be built from."""
        table = pl.read_avro(BytesIO(data))
        readings = table.get_column("readings")
        counts = readings.list.len().to_numpy().astype(np.int64)
        items = readings.explode(empty_as_null=False).struct.unnest()
        total = int(counts.sum())
        if table.height != count or items.height != total:
            raise SerdeError("the readings do not add up")  # read again in halves
        bounds = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        flag_lists = items.get_column("flags")
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
        names = items.get_column("signal").to_arrow().dictionary_encode()
        codes = names.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        distinct = names.dictionary.to_pylist()
        quality = items.get_column("quality").to_numpy()
        validated_us = table.get_column("validated_ts").to_numpy().astype(np.int64)
        frames = Frames(
            asset_id=table.get_column("asset_id").to_list(),
            source_id=table.get_column("source_id").to_list(),
            seq=table.get_column("seq").to_numpy().astype(np.int64),
            ingest_us=table.get_column("ingest_ts").to_numpy().astype(np.int64),
            bounds=bounds,
            signal=np.array(distinct, dtype=object)[codes],
            ts_us=items.get_column("ts").to_numpy().astype(np.int64),
            value=items.get_column("value").to_numpy().astype(np.float64),
            # Out-of-range symbols are caught by `unreadable`; clip only to encode them.
            quality=np.clip(quality, 0, len(QUALITIES) - 1).astype(np.int8),
            flags=(masks & (_NO_MASK - 1)).astype(np.uint16),
            validated_us=validated_us,
        )
        # Distinct masks by counting, not sorting.
        mask_values = np.flatnonzero(np.bincount(masks, minlength=_NO_MASK + 1))
        mask_codes = np.zeros(_NO_MASK + 1, dtype=np.int64)
        mask_codes[mask_values] = np.arange(mask_values.size)
        again = write_bodies(
            [
                strings(frames.asset_id),
                strings(frames.source_id),
                Longs(frames.seq),
                Longs(frames.ingest_us),
                Longs(validated_us),
            ],
            bounds,
            [
                Pieces(codes, [string_piece(s) for s in distinct]),
                Longs(frames.ts_us),
                Doubles(frames.value),
                Pieces(frames.quality, _QUALITY_PIECES),
                Pieces(mask_codes[masks], [_flags_piece(m) for m in mask_values.tolist()]),
            ],
        )
        # What AvroSerde.decode cannot turn into a record: an index that is no symbol, a
        # timestamp no datetime can hold.
        unreadable_reading = (
            (quality < 0) | (quality >= len(QUALITIES)) | _no_datetime(frames.ts_us)
        )
        unreadable_reading |= masks == _NO_MASK
        if bad_flag.any():
            unreadable_reading[owner[bad_flag]] = True
        unreadable = _no_datetime(frames.ingest_us) | _no_datetime(validated_us)
        unreadable[frames.frame_of_reading()[unreadable_reading]] = True
        return frames, (again.data, again.starts), unreadable


def _gives_back(
    bodies: list[bytes],
    blob: bytes,
    again: tuple[npt.NDArray[np.uint8], Ints],
    unreadable: npt.NDArray[np.bool_],
) -> npt.NDArray[np.bool_]:
    """Per frame: does encoding it again give back its body?"""
    data, starts = again
    sizes = np.array([len(b) for b in bodies], dtype=np.int64)
    exact: npt.NDArray[np.bool_] = np.diff(starts) == sizes
    if exact.all():
        differ = np.flatnonzero(data != np.frombuffer(blob, np.uint8))
        exact[np.searchsorted(starts, differ, side="right") - 1] = False
    else:
        encoded = data.tobytes()
        edges = starts.tolist()
        exact = np.array(
            [encoded[edges[k] : edges[k + 1]] == body for k, body in enumerate(bodies)],
            dtype=np.bool_,
        )
    exact[unreadable] = False
    return exact


def _flags_piece(mask: int) -> bytes:
    """A reading's flags array for a mask, as the validator lists them (`flag_names`)."""
    names = flag_names(mask)
    if not names:
        return zigzag(0)
    return zigzag(len(names)) + b"".join(zigzag(FLAGS.index(n)) for n in names) + zigzag(0)


def _no_datetime(micros: Ints) -> npt.NDArray[np.bool_]:
    return (micros < _FIRST_US) | (micros > _LAST_US)


def _merge(parts: list[tuple[list[int], Frames]], left: list[int]) -> DecodedValidated:
    if not parts:
        return DecodedValidated(_no_frames(), [], left)
    rows = [row for part_rows, _ in parts for row in part_rows]
    frames = concat_frames([f for _, f in parts])
    if rows != sorted(rows):
        order = np.argsort(np.array(rows, dtype=np.int64), kind="stable")
        frames = frames.take(order)
        rows = [rows[k] for k in order.tolist()]
    return DecodedValidated(frames, rows, left)


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
