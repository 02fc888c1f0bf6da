"""Which assets a processing-time tick has work for.

The KPI and alert stages act on a tick (about once a second) only for assets whose data
stopped: windows close by idle timeout, stale alerts fire. Looking at every asset on every
tick costs time in proportion to the number of assets, whether anything happens or not.
Instead each stage keeps, per asset, the earliest processing time at which a tick can change
anything for it (the asset's *due* time) in a heap, and a tick takes only the assets due by
then, so its cost follows the work it does.

A due time may be early (the asset's data moved it later since it was set): the tick then
looks at the asset, finds nothing to emit, and the stage sets the next one. It must never be
late, so a stage sets it again whenever an asset's state changes in a way that can bring it
forward (`due` keeps the earlier of the old and the new).

A tick that skips an asset may still have changed its state in a way that matters later (a
watermark moving on with processing time, the time the stage last looked at the asset).
Ticks are regular when each comes after the one before, within `max_gap_us` when set: then
the effect of the ticks an asset skipped is that of the latest one alone (the stage knows it
had nothing to do in any of them), and a stage applies it (`skipped`) before it looks at,
reads or snapshots the asset's state. An irregular tick (the first, one that goes back in
time, or one after a longer pause) takes every asset, so it does exactly what looking at
every asset on every tick would have done. A tick at the same time as the one before
takes no asset (unless a limited tick left some, below).

A regular tick may be limited to a number of assets (`limit`), so that a stage's work after
a jump of processing time (a worker back from a pause, log time catching up) comes in steps
between batches rather than in one long call. It takes the assets due earliest; the others
due by then stay due and count as having skipped the tick, so whatever reaches them first
applies it (`skipped`, as for any skipped tick: here it may have work), and `waiting` says
that the next tick has them. Only regular ticks are limited: an irregular one takes every
asset, as it must to do what looking at every asset would do.
"""

from __future__ import annotations

import heapq

DUE_NOW = -(2**63)
"""A due time earlier than any tick: the asset is looked at by the next tick."""


class TickSchedule:
    """Due times per asset (processing time, µs) and the ticks each asset has seen."""

    def __init__(self, max_gap_us: int | None = None) -> None:
        self.max_gap_us = max_gap_us
        self.ticks = 0
        self.last_us: int | None = None
        """Processing time of the latest tick."""
        self._heap: list[tuple[int, int, str]] = []
        self._due: dict[str, int] = {}
        self._rank: dict[str, int] = {}
        """asset_id -> order of first sight: ticks report assets in this order."""
        self._seen: dict[str, int] = {}
        """asset_id -> the number of ticks the asset's state reflects."""

    def __len__(self) -> int:
        return len(self._rank)

    def add(self, asset_id: str) -> None:
        """A new or restored asset, up to date with every tick so far."""
        if asset_id not in self._rank:
            self._rank[asset_id] = len(self._rank)
        self._seen[asset_id] = self.ticks

    def due(self, asset_id: str, due_us: int | None) -> None:
        """The asset has work for a tick at or after `due_us` (None: not by time alone)."""
        if due_us is None:
            return
        current = self._due.get(asset_id)
        if current is None or due_us < current:
            self._due[asset_id] = due_us
            heapq.heappush(self._heap, (due_us, self._rank[asset_id], asset_id))

    def due_at(self, asset_id: str) -> int | None:
        """The asset's due time, if one is set (for tests and logs)."""
        return self._due.get(asset_id)

    def skipped(self, asset_id: str) -> int | None:
        """Processing time of the latest tick that left the asset alone since its state last
        caught up, or None; the caller applies that tick and then calls `caught_up`."""
        seen = self._seen.get(asset_id)
        if seen is None or seen >= self.ticks:
            return None
        return self.last_us

    def caught_up(self, asset_id: str) -> None:
        self._seen[asset_id] = self.ticks

    def waiting(self) -> bool:
        """Assets were due by the latest tick and left for the next (a limited tick)."""
        return self.last_us is not None and self._next_due(self.last_us)

    def tick(self, now_us: int, limit: int | None = None) -> list[tuple[str, int | None]]:
        """Start a tick: the assets to look at now, in order of first sight, each with the
        processing time of the latest tick it skipped, to apply first (see `skipped`), or
        None. Every asset returned counts as up to date with this tick and has no due time
        until the caller sets one. A regular tick takes at most `limit` assets, the ones due
        earliest (see the module doc)."""
        last = self.last_us
        if now_us == last and not self._next_due(now_us):
            return []  # time stood still (a log clock, see `log_time`): nothing can be due
        regular = (
            last is not None
            and last <= now_us
            and (self.max_gap_us is None or now_us - last <= self.max_gap_us)
        )
        if regular:
            ranked: list[tuple[int, str]] = []
            heap, due = self._heap, self._due
            while self._next_due(now_us) and (limit is None or len(ranked) < limit):
                _, rank, asset_id = heapq.heappop(heap)
                del due[asset_id]
                ranked.append((rank, asset_id))
            ranked.sort()
            keys: list[str] = [asset_id for _, asset_id in ranked]
        else:
            keys = list(self._rank)
            self._heap.clear()
            self._due.clear()
        seen = self._seen
        out = [(asset_id, last if seen[asset_id] < self.ticks else None) for asset_id in keys]
        self.ticks += 1
        self.last_us = now_us
        for asset_id, _ in out:
            self._seen[asset_id] = self.ticks
        return out

    def _next_due(self, now_us: int) -> bool:
        """Is an asset due by `now_us`? (Drops the heap's superseded entries on top.)"""
        heap, due = self._heap, self._due
        while heap and due.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # superseded by an earlier due time
        return bool(heap) and heap[0][0] <= now_us
