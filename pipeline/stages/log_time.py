"""Log time: processing time as far as a worker has read its partitions.

Rules on processing time (a stale alert for an asset that stopped sending) judge silence:
"nothing arrived from the asset for 10 s". That holds only for a worker reading the head of
the log. A worker catching up on a backlog (after an outage, a restart, a burst) gets an
asset's frames late and far apart, though the asset never stopped: judged by the wall clock,
every asset would seem silent, and thousands of stale alerts would be raised and cleared.

So those rules measure time as the worker has read it. A partition is *behind* when the
newest frame read from it (its head: the newest `ingest_ts`, the connector's wall clock) was
ingested `behind_us` or more before it was read. The worker's log time is the wall clock
when no partition is behind; else the head of the partition furthest behind: it moves on
only as the worker reads newer frames, so a replay judges silence as it would have been
judged live, and an asset whose data sits in the backlog is not silent. A behind partition
that delivered nothing for `settle_us` has been read to its end: log time then takes the
wall clock again (else a worker that read a backlog up to where its connectors died would
never see them go silent). That jump is more than the alert stage's unwatched gap, so the
silence of assets that stopped before it counts from the jump on: their stale alerts come
`after` plus `settle_us` after the worker read the backlog's last frame. Log time never
goes back: a worker that falls behind holds it where it was until the frames it reads are
newer; one whose frames are again read as they come takes it forward to the wall clock.

Before it has read a frame, the clock is the wall clock, and that does not bind it: its
first frames may take it back to where the log is. A clock that has gone back (a stage that
looked at an asset at a later time) only delays processing-time rules, never raises one
early. The clock of a worker starts afresh after a rebalance, as its partitions change.
"""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime

from pipeline.stages.common import to_micros

SETTLE_US = 10_000_000
"""A behind partition that delivered nothing for this long (10 s) has been read to its end."""

BEHIND_US = 5_000_000
"""A partition whose newest frame was read this long (5 s) or more after its ingest is
behind; less is the latency of a worker at the head of the log."""


class LogClock:
    """Log time of one worker, from the ingest times of the frames it reads (µs)."""

    def __init__(self, behind_us: int = BEHIND_US, settle_us: int = SETTLE_US) -> None:
        self.behind_us = behind_us
        self.settle_us = settle_us
        self._heads: dict[Hashable, tuple[int, int]] = {}
        """partition -> (head: the newest ingest time read, wall clock of its last frame)."""
        self._last: int | None = None
        self._memo: tuple[int, int] | None = None

    def heard(self, partition: Hashable, ingest_us: int, now_us: int) -> None:
        """A frame ingested at `ingest_us` was read from `partition` at wall clock `now_us`.
        An ingest time later than `now_us` (a connector's clock ahead) counts as `now_us`."""
        head = self._heads.get(partition)
        newest = min(ingest_us, now_us)
        self._heads[partition] = (newest if head is None else max(head[0], newest), now_us)
        self._memo = None

    def at(self, now_us: int) -> int:
        """Log time at wall clock `now_us`."""
        memo = self._memo
        if memo is not None and memo[0] == now_us:
            return memo[1]
        log_us = now_us
        for head_us, read_us in self._heads.values():
            if read_us - head_us >= self.behind_us and now_us - read_us < self.settle_us:
                log_us = min(log_us, head_us)
        if self._heads:
            if self._last is not None and log_us < self._last:
                log_us = self._last
            self._last = log_us
        self._memo = (now_us, log_us)
        return log_us

    def behind(self, now_us: int) -> int:
        """How far log time is behind the wall clock, µs (0 at the head of the log)."""
        return now_us - self.at(now_us)


def stage_time(log: LogClock | None, now: datetime) -> int:
    """A stage's processing time at wall clock `now`, µs: log time if it has a log clock."""
    now_us = to_micros(now)
    return now_us if log is None else log.at(now_us)
