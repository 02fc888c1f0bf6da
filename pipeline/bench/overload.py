"""Alerts on purpose in the latency phase, and their latency counted from ingest.

Left to the simulated plant, latency phases of the same length raised anywhere from 2 to 232
alerts, so the alert percentiles rested on a handful. The bench plant has a rule for this
phase, `machine-overload` (`plant.OVERLOAD_ABOVE`). While the phase runs, every
OVERLOAD_EVERY-th machine runs overloaded for a block of time: its replayed frames then carry
spindle-load readings at OVERLOAD_LEVEL with measurement noise (a value repeated exactly would
look like a frozen sensor to the validator). The blocks start spread over the first half of
the phase and last a quarter of it, at least MIN_BLOCK_S. So each of those machines raises its
alert once, and clears it once when the phase leaves the engine's clear hold (5 s) after its
block; the engine's re-raise hold-off (60 s) holds back any second raise.

An alert's `ts` is the event time of the reading that changed it, and a replayed frame holds
the readings of the interval before its ingest time. So the frame that caused an alert is the
first one sent for its asset with an ingest time at or after `ts`, and the alert's latency is
its arrival minus that ingest time, as for state records. That holds while an asset's frames
are sent further apart than a frame interval (at the default load, ~4 s apart). Alerts that no
paced frame caused within FRAME_SPAN_S (a stale alert raised by the worker's tick) are
counted apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipeline.bench.plant import OVERLOAD_ABOVE, OVERLOAD_SIGNAL
from pipeline.bench.replay import FrameReplay
from pipeline.bench.watch import AlertSeen, Arrival
from pipeline.serde import AvroSerde
from pipeline.stages.frames import Frames

Ints = npt.NDArray[np.int64]

OVERLOAD_EVERY = 10
OVERLOAD_LEVEL = OVERLOAD_ABOVE + 1.5
OVERLOAD_NOISE = 0.3
MIN_BLOCK_S = 2.0
FRAME_SPAN_S = 1.0
"""How long before its frame's ingest time an alert's reading may have been taken (a frame
holds 500 ms of readings; twice that, for slack)."""


def overloaded(frames: Frames, rows: Ints, seed: int = 0) -> Frames:
    """frames[rows] with their OVERLOAD_SIGNAL readings at OVERLOAD_LEVEL, with noise."""
    hot = frames.take(rows)
    chosen = hot.signal == OVERLOAD_SIGNAL
    noise = np.random.default_rng(seed).normal(0.0, OVERLOAD_NOISE, int(chosen.sum()))
    hot.value[chosen] = OVERLOAD_LEVEL + noise
    return hot


@dataclass
class OverloadPlan:
    """Which replayed frames go out overloaded, and when (see the module doc)."""

    replay: FrameReplay
    """The overloaded machines' frames, with their load raised (`overloaded`)."""
    index: Ints
    """Per frame of the workload: its row in `replay`, or -1 (a machine never overloaded)."""
    start_s: npt.NDArray[np.float64]
    """Per frame of the workload: when its machine's block starts, seconds into the phase."""
    end_s: npt.NDArray[np.float64]
    machines: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls, serde: AvroSerde, frames: Frames, topic: str, seconds: float
    ) -> OverloadPlan | None:
        """The plan for a phase of `seconds`; None when the frames hold no OVERLOAD_SIGNAL."""
        if not np.any(frames.signal == OVERLOAD_SIGNAL):
            return None
        machines = sorted(set(frames.asset_id))[::OVERLOAD_EVERY]
        length = max(seconds / 4, MIN_BLOCK_S)
        starts = {m: seconds / 2 * k / len(machines) for k, m in enumerate(machines)}
        rows = np.array([i for i, a in enumerate(frames.asset_id) if a in starts], dtype=np.int64)
        index = np.full(len(frames), -1, dtype=np.int64)
        index[rows] = np.arange(rows.size, dtype=np.int64)
        start_s = np.array([starts.get(a, np.inf) for a in frames.asset_id])
        hot = overloaded(frames, rows)
        return cls(FrameReplay(serde, hot, topic), index, start_s, start_s + length, machines)

    def hot(self, rows: Ints, elapsed_s: float) -> npt.NDArray[np.bool_]:
        """Which of the workload's frames `rows`, sent `elapsed_s` into the phase, go out
        overloaded."""
        return (self.start_s[rows] <= elapsed_s) & (elapsed_s < self.end_s[rows])

    def encode(
        self, plain: FrameReplay, rows: Ints, elapsed_s: float, now_us: int, seq: int
    ) -> list[bytes]:
        """`plain.encode(rows, now_us, seq)`, with the frames due to be overloaded taken from
        `replay` instead (in the same places, with the same sequence numbers)."""
        hot = self.hot(rows, elapsed_s)
        if not hot.any():
            return plain.encode(rows, now_us, seq)
        seqs = np.arange(seq, seq + rows.size, dtype=np.int64)
        values: list[bytes] = [b""] * rows.size
        for chosen, replay, picked in (
            (~hot, plain, rows[~hot]),
            (hot, self.replay, self.index[rows[hot]]),
        ):
            encoded = replay.encode(picked, now_us, seqs[chosen])
            for place, value in zip(np.flatnonzero(chosen).tolist(), encoded, strict=True):
                values[place] = value
        return values


class SentFrames:
    """The ingest time of every paced frame, by asset (`asset_ids`: the workload's frames')."""

    def __init__(self, asset_ids: list[str]) -> None:
        self._names = sorted(set(asset_ids))
        number = {name: k for k, name in enumerate(self._names)}
        self._asset_of = np.array([number[a] for a in asset_ids], dtype=np.int64)
        self._sent: list[tuple[Ints, int]] = []

    def add(self, rows: Ints, ingest_us: int) -> None:
        self._sent.append((rows, ingest_us))

    def by_asset(self) -> dict[str, Ints]:
        """Every asset's ingest times, sorted."""
        if not self._sent:
            return {}
        assets = np.concatenate([self._asset_of[rows] for rows, _ in self._sent])
        times = np.concatenate([np.full(rows.size, t, dtype=np.int64) for rows, t in self._sent])
        order = np.lexsort((times, assets))
        assets, times = assets[order], times[order]
        cuts = np.flatnonzero(np.diff(assets)) + 1
        return {
            self._names[int(part[0])]: times_part
            for part, times_part in zip(np.split(assets, cuts), np.split(times, cuts), strict=True)
        }


def alert_arrivals(alerts: list[AlertSeen], sent: dict[str, Ints]) -> tuple[list[Arrival], int]:
    """Each alert's arrival with the ingest time of the frame that caused it (the module doc),
    and how many alerts no sent frame caused."""
    matched: list[Arrival] = []
    for alert in alerts:
        times = sent.get(alert.asset_id)
        if times is None:
            continue
        k = int(np.searchsorted(times, alert.ts_us, side="left"))
        if k < times.size and times[k] - alert.ts_us <= FRAME_SPAN_S * 1e6:
            matched.append(Arrival(alert.received, int(times[k]) / 1e6))
    return matched, len(alerts) - len(matched)
