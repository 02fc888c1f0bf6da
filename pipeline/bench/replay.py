"""Replaying the workload's frames as if read now, at a small fixed cost per frame.

The latency phase sends the workload's frames again with fresh timestamps (`restamped`).
Encoding them from columns on every send would take CPU from the pipeline being measured,
so `FrameReplay` encodes every frame once up front and then only writes the new times into a
copy of the bytes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline.errors import TwinError
from pipeline.serde import AvroSerde
from pipeline.serde.columnar import FrameDecoder, encode_frames
from pipeline.serde.varint import Longs, strings, zigzag
from pipeline.stages.frames import Frames


def replay_frames(serde: AvroSerde, values: list[bytes]) -> Frames:
    """The workload's frame messages as columns, in their order."""
    if values:
        # A registry id is known to the serde once it has decoded a message written with it;
        # until then the decoder would read every message one by one.
        serde.decode(values[0])
    decoded = FrameDecoder(serde).decode(list(values))
    if decoded.errors:
        index, reason = next(iter(sorted(decoded.errors.items())))
        raise TwinError(
            f"workload frame {index} of {len(values)} does not decode ({len(decoded.errors)} "
            f"such frames): {reason}"
        )
    return decoded.frames


Seq = int | npt.NDArray[np.int64]
"""Sequence numbers for frames sent: the first of a run, or one per frame."""


def numbered(seq: Seq, count: int) -> npt.NDArray[np.int64]:
    """`count` sequence numbers: from `seq` on, or `seq` itself (one per frame)."""
    if isinstance(seq, int):
        return np.arange(seq, seq + count, dtype=np.int64)
    if len(seq) != count:
        raise ValueError(f"{len(seq)} sequence numbers for {count} frames")
    return np.asarray(seq, dtype=np.int64)


def restamped(frames: Frames, rows: npt.NDArray[np.int64], now_us: int, seq: Seq) -> Frames:
    """frames[rows] as if produced at `now_us`: ingest time now, every reading of a frame
    shifted by as much as its frame's ingest time, numbered by `seq` (`numbered`)."""
    batch = frames.take(rows)
    shift = now_us - batch.ingest_us
    batch.ts_us += np.repeat(shift, batch.counts())
    batch.ingest_us = np.full(len(batch), now_us, dtype=np.int64)
    batch.seq = numbered(seq, len(batch))
    return batch


class FrameReplay:
    """Frames re-stamped and encoded as `encode_frames(serde, restamped(frames, ...), topic)`
    gives them, at a small fixed cost per call: every frame is encoded once up front, and a
    call copies the bytes that follow each chosen frame's ingest_ts and writes the new reading
    times over the old. The bytes after ingest_ts differ only in those times, and a time keeps
    its varint's length when shifted within an era (every time from 1978 to 3111 is 8 bytes),
    so the new times take the old ones' places; when one does not, the frames are encoded
    from the columns instead.

    `originals`, when given, are the messages the frames were decoded from: each must be
    what its frame encodes to, else the replay would not send that frame as it was (a
    reading's status_code, which `Frames` does not hold, is sent as null): TwinError."""

    def __init__(
        self, serde: AvroSerde, frames: Frames, topic: str, originals: list[bytes] | None = None
    ) -> None:
        self.serde, self.frames, self.topic = serde, frames, topic
        self.counts = frames.counts()
        values = encode_frames(serde, frames, topic)
        if originals is not None and values != originals:
            index = next(
                (i for i, (a, b) in enumerate(zip(values, originals, strict=False)) if a != b),
                min(len(values), len(originals)),
            )
            raise TwinError(
                f"workload frame {index} of {len(originals)} would not be replayed as it was "
                "produced (a reading with a status_code?)"
            )
        heads = len(serde.header("telemetry_frame", topic)) + (
            strings(frames.asset_id).lengths + strings(frames.source_id).lengths
        )
        self._prefixes = [v[:h] for v, h in zip(values, heads.tolist(), strict=True)]
        """Per frame: the bytes before seq (header, asset_id, source_id)."""
        tails = heads + Longs(frames.seq).lengths + Longs(frames.ingest_us).lengths
        rests = [v[t:] for v, t in zip(values, tails.tolist(), strict=True)]
        self._rest_starts = np.zeros(len(frames) + 1, dtype=np.int64)
        np.cumsum([len(rest) for rest in rests], out=self._rest_starts[1:])
        self._rests = np.frombuffer(b"".join(rests), dtype=np.uint8)
        """Every frame's bytes after ingest_ts (its readings), one after the other."""
        self._time_lengths = Longs(frames.ts_us).lengths
        signals = strings(frames.signal).lengths
        # A reading: signal, ts, value (8 bytes), quality (1 byte), status_code null (1 byte).
        sizes = signals + self._time_lengths + 10
        before = np.zeros(frames.readings + 1, dtype=np.int64)
        np.cumsum(sizes, out=before[1:])
        block = np.where(self.counts > 0, Longs(self.counts).lengths, 0)
        frame_of = frames.frame_of_reading()
        first = frames.bounds[:-1]
        self._time_offsets = block[frame_of] + before[:-1] - before[first][frame_of] + signals
        """Per reading: where its time starts in its frame's rest."""
        laid_out = block + before[frames.bounds[1:]] - before[first] + 1  # + the array's end
        self._patches = bool(np.array_equal(laid_out, np.diff(self._rest_starts)))
        """The rests are laid out as the offsets assume (else every call encodes)."""

    def encode(self, rows: npt.NDArray[np.int64], now_us: int, seq: Seq) -> list[bytes]:
        """Message values of frames[rows] re-stamped as `restamped` does."""
        if not rows.size:
            return []
        counts = self.counts[rows]
        ends = np.cumsum(counts)
        picks = np.arange(int(ends[-1]), dtype=np.int64) + np.repeat(
            self.frames.bounds[rows] - (ends - counts), counts
        )
        times = Longs(
            self.frames.ts_us[picks] + np.repeat(now_us - self.frames.ingest_us[rows], counts)
        )
        if not self._patches or not np.array_equal(times.lengths, self._time_lengths[picks]):
            batch = restamped(self.frames, rows, now_us, seq)
            return encode_frames(self.serde, batch, self.topic)
        starts, stops = self._rest_starts[rows].tolist(), self._rest_starts[rows + 1].tolist()
        out = np.concatenate([self._rests[a:b] for a, b in zip(starts, stops, strict=True)])
        placed = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(self._rest_starts[rows + 1] - self._rest_starts[rows], out=placed[1:])
        times.write(out, np.repeat(placed[:-1], counts) + self._time_offsets[picks])
        data, stamp = out.tobytes(), zigzag(now_us)
        return [
            self._prefixes[i] + zigzag(n) + stamp + data[a:b]
            for n, i, a, b in zip(
                numbered(seq, rows.size).tolist(),
                rows.tolist(),
                placed[:-1].tolist(),
                placed[1:].tolist(),
                strict=True,
            )
        ]
