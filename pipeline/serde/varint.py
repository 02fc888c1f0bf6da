"""Avro binary encoding of whole columns at once, with numpy.

A batch of records that share one shape (a few header fields, then one array of item records,
as telemetry frames, validated frames and state estimates are) is written into one zeroed
buffer: `write_bodies` adds up the sizes of every record's fields and array elements, places
records and elements with cumulative sums, and lets each column write its bytes at its places,
one numpy scatter per column (or per distinct size within a column). The arrays' 0
terminators are the zeros already there.

Avro's rules used here: longs and ints are zigzag varints; doubles are 8 bytes little-endian;
strings are a length (long) and the UTF-8 bytes; a union is the branch index (long) and the
branch's value; a non-empty array is a block count, the items and a 0; an empty array is a 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import numpy as np
import numpy.typing as npt
import pyarrow as pa

Ints = npt.NDArray[np.int64]
Bytes = npt.NDArray[np.uint8]

_VARINT_MAX = 10
_LIMITS = np.array([1 << (7 * k) for k in range(1, _VARINT_MAX)], dtype=np.uint64)


def zigzag(n: int) -> bytes:
    """One long as Avro writes it (zigzag varint)."""
    z = ((n << 1) ^ (n >> 63)) & 0xFFFF_FFFF_FFFF_FFFF
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def string_piece(text: str) -> bytes:
    """One string as Avro writes it (length, then UTF-8)."""
    data = text.encode("utf-8")
    return zigzag(len(data)) + data


class Column:
    """The bytes of one field for every record (or every item) of a batch."""

    lengths: Ints

    def write(self, out: Bytes, starts: Ints) -> None:
        """Write item i's bytes at out[starts[i]:starts[i] + lengths[i]]."""
        raise NotImplementedError


class Longs(Column):
    """Avro longs (zigzag varints)."""

    def __init__(self, values: npt.ArrayLike) -> None:
        signed = np.asarray(values, dtype=np.int64)
        self._zigzag = ((signed << 1) ^ (signed >> 63)).view(np.uint64)
        lengths = np.ones(signed.size, dtype=np.int64)
        for limit in _LIMITS:
            lengths += self._zigzag >= limit
        self.lengths = lengths

    def write(self, out: Bytes, starts: Ints) -> None:
        if not self.lengths.size:
            return
        # Items of one length are written as one block (columns of timestamps mostly share a
        # length): no per-item masks.
        for length, rows in _by_length(self.lengths):
            values = self._zigzag if rows is None else self._zigzag[rows]
            shifts = np.arange(0, 7 * length, 7, dtype=np.uint64)
            groups = ((values[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
            groups[:, :-1] |= 0x80  # every group but the last says "more follows"
            places = starts if rows is None else starts[rows]
            out[places[:, None] + np.arange(length)] = groups


class Doubles(Column):
    """Avro doubles (8 bytes, little-endian, every bit kept, NaN payloads too)."""

    def __init__(self, values: npt.ArrayLike) -> None:
        self._bytes = np.ascontiguousarray(values, dtype="<f8").view(np.uint8).reshape(-1, 8)
        self.lengths = np.full(len(self._bytes), 8, dtype=np.int64)

    def write(self, out: Bytes, starts: Ints) -> None:
        out[starts[:, None] + np.arange(8)] = self._bytes


class Booleans(Column):
    """Avro booleans (one byte, 0 or 1)."""

    def __init__(self, values: npt.ArrayLike) -> None:
        self._bytes = np.asarray(values, dtype=np.bool_).astype(np.uint8)
        self.lengths = np.ones(self._bytes.size, dtype=np.int64)

    def write(self, out: Bytes, starts: Ints) -> None:
        out[starts] = self._bytes


class Pieces(Column):
    """Items that take one of a few byte strings each (`pieces[codes[i]]`): strings, enum
    symbols, flag lists. Each distinct piece is built once; items copy its bytes."""

    def __init__(self, codes: npt.ArrayLike, pieces: Sequence[bytes]) -> None:
        self._codes = np.asarray(codes, dtype=np.int64)
        sizes, self._tables = _piece_tables(tuple(pieces))
        self.lengths = sizes[self._codes] if len(pieces) else np.zeros(0, dtype=np.int64)

    def write(self, out: Bytes, starts: Ints) -> None:
        for length, rows in _by_length(self.lengths):
            table, row_of = self._tables[length]
            codes = self._codes if rows is None else self._codes[rows]
            places = starts if rows is None else starts[rows]
            out[places[:, None] + np.arange(length)] = table[row_of[codes]]


@lru_cache(maxsize=256)
def _piece_tables(pieces: tuple[bytes, ...]) -> tuple[Ints, dict[int, tuple[Bytes, Ints]]]:
    """Each piece's size, and per size the pieces of that size as the rows of one matrix with
    every piece's row in it, so that items of one size are copied as one block. Kept for the
    pieces seen last (the signal names, flag lists and record headers recur batch after
    batch; building these costs ~0.1 ms, more than writing a small batch's items)."""
    sizes = np.array([len(p) for p in pieces], dtype=np.int64)
    tables: dict[int, tuple[Bytes, Ints]] = {}
    for size in set(sizes.tolist()):
        members = np.flatnonzero(sizes == size)
        joined = b"".join(pieces[m] for m in members.tolist())
        table = np.frombuffer(joined, dtype=np.uint8)
        row_of = np.zeros(len(pieces), dtype=np.int64)
        row_of[members] = np.arange(members.size)
        tables[size] = (table.reshape(members.size, size), row_of)
    sizes.flags.writeable = False
    return sizes, tables


class OptionalDoubles(Column):
    """The union ["null", "double"]: null where the value is NaN."""

    def __init__(self, values: npt.ArrayLike) -> None:
        values = np.asarray(values, dtype=np.float64)
        self._present = ~np.isnan(values)
        self._doubles = Doubles(values[self._present])
        self.lengths = np.where(self._present, 9, 1).astype(np.int64)

    def write(self, out: Bytes, starts: Ints) -> None:
        # Branch 0 (null) is the zero byte already there; branch 1 is zigzag 2.
        present = starts[self._present]
        out[present] = 2
        self._doubles.write(out, present + 1)


class OptionalLongs(Column):
    """The union ["null", "long"]: null where `present` is false."""

    def __init__(self, values: npt.ArrayLike, present: npt.ArrayLike) -> None:
        self._present = np.asarray(present, dtype=np.bool_)
        self._longs = Longs(np.asarray(values, dtype=np.int64)[self._present])
        self.lengths = np.ones(self._present.size, dtype=np.int64)
        self.lengths[self._present] += self._longs.lengths

    def write(self, out: Bytes, starts: Ints) -> None:
        present = starts[self._present]
        out[present] = 2
        self._longs.write(out, present + 1)


def strings(values: npt.ArrayLike | Sequence[str]) -> Pieces:
    """A string column; each distinct string is encoded once (arrow's dictionary encoding
    finds them without a Python loop)."""
    encoded = pa.array(values, type=pa.string()).dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    return Pieces(codes, _string_pieces(tuple(encoded.dictionary.to_pylist())))


@lru_cache(maxsize=256)
def _string_pieces(texts: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(string_piece(text) for text in texts)


def _by_length(lengths: Ints) -> list[tuple[int, Ints | None]]:
    """(length, rows of the items of that length) for every length but 0; rows is None when
    every item has that length."""
    if not lengths.size:
        return []
    low, high = int(lengths.min()), int(lengths.max())
    if low == high:
        return [(low, None)] if low else []
    return [
        (length, rows)
        for length in range(max(low, 1), high + 1)
        if (rows := np.flatnonzero(lengths == length)).size
    ]


@dataclass(frozen=True, slots=True)
class Bodies:
    """The encoded records of a batch: record i is data[starts[i]:starts[i + 1]]."""

    data: Bytes
    starts: Ints

    def split(self) -> list[bytes]:
        blob = self.data.tobytes()
        edges = self.starts.tolist()
        return [blob[a:b] for a, b in pairwise(edges)]


def write_bodies(header: Sequence[Column], bounds: Ints, items: Sequence[Column]) -> Bodies:
    """Encode records made of the `header` columns (one item per record) followed by one
    array whose items are the `items` columns (one item per array element); the elements of
    record i are rows bounds[i]:bounds[i + 1]."""
    counts = np.diff(bounds)
    # An empty array is its 0 terminator alone, a non-empty one a block count first.
    nonempty = counts > 0
    block_counts = Longs(counts[nonempty])
    head_sizes = np.zeros(counts.size, dtype=np.int64)
    for column in header:
        head_sizes += column.lengths
    head_sizes[nonempty] += block_counts.lengths
    element_sizes = np.zeros(int(bounds[-1]), dtype=np.int64)
    for column in items:
        element_sizes += column.lengths
    elements_before = np.zeros(element_sizes.size + 1, dtype=np.int64)
    np.cumsum(element_sizes, out=elements_before[1:])
    record_sizes = head_sizes + elements_before[bounds[1:]] - elements_before[bounds[:-1]] + 1
    record_starts = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(record_sizes, out=record_starts[1:])
    out = np.zeros(int(record_starts[-1]), dtype=np.uint8)
    place = record_starts[:-1].copy()
    for column in header:
        column.write(out, place)
        place += column.lengths
    block_counts.write(out, place[nonempty])
    place[nonempty] += block_counts.lengths
    # Element e of record i starts after the record's head and the record's earlier elements.
    shift = place - elements_before[bounds[:-1]]
    place = elements_before[:-1] + np.repeat(shift, counts)
    for column in items:
        column.write(out, place)
        place += column.lengths
    return Bodies(out, record_starts)
