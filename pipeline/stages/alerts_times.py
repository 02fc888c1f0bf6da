"""What the stale rules need of a batch of validated frames, computed over all its readings
at once: per frame its newest trusted event time and, per signal, the event time of its
newest reading that shows a live sensor (see `alerts_stale.usable_readings`, the per-frame
form of the same rules, which this must agree with)."""

from __future__ import annotations

import numpy as np

from pipeline.stages.alerts_stale import FRESHNESS_UNUSABLE, UNTRUSTED_TIME
from pipeline.stages.frames import BAD, Frames, flag_mask

_UNTRUSTED = flag_mask(sorted(UNTRUSTED_TIME))
_UNFRESH = flag_mask(sorted(FRESHNESS_UNUSABLE))
_NONE = np.iinfo(np.int64).min

FrameTimes = tuple[int | None, dict[str, int]]


def frame_times(frames: Frames) -> list[FrameTimes]:
    """(newest trusted event time or None, {signal: newest fresh event time}) per frame of
    a validated batch, in microseconds."""
    if frames.flags is None:
        raise ValueError("frame_times needs validated frames (flags)")
    n = len(frames)
    flags = frames.flags
    ts = frames.ts_us
    frame_of = frames.frame_of_reading()
    trusted = (flags & _UNTRUSTED) == 0
    newest = np.full(n, _NONE, dtype=np.int64)
    np.maximum.at(newest, frame_of[trusted], ts[trusted])
    fresh = ((flags & _UNFRESH) == 0) & (frames.quality != BAD) & np.isfinite(frames.value)
    rows = np.flatnonzero(fresh)
    # Fresh readings by frame, then time: a dict built in that order keeps each signal's
    # newest time (later keys overwrite earlier ones).
    order = rows[np.lexsort((ts[rows], frame_of[rows]))]
    bounds = np.searchsorted(frame_of[order], np.arange(n + 1))
    names = frames.signal[order].tolist()
    times = ts[order].tolist()
    cuts = bounds.tolist()
    return [
        (
            None if newest[i] == _NONE else int(newest[i]),
            dict(zip(names[cuts[i] : cuts[i + 1]], times[cuts[i] : cuts[i + 1]], strict=True)),
        )
        for i in range(n)
    ]
