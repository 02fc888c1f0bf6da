"""Writing the worker's state in short steps between batches.

A state write snapshots every asset whose state changed (`topologies/state.py`
`PendingState`), and a snapshot costs tens of microseconds per asset: at 1,000 assets, a
write done in one go holds the worker up for tens of milliseconds, and every frame that
arrives meanwhile waits. `StateWriter.write_due` therefore takes the pending assets and
snapshots them in steps, each holding the processing lock for as long as its `Pacer` allows,
and pauses between steps as it says (`topologies/pacing.py`: short steps and pauses while
the worker keeps up; during a backlog, steps as long as the last batch, so that a busy
worker spends about as much time writing as processing and the write keeps up). Batches run
in between.

A step takes each snapshot under the lock (the agent holds it while a batch changes the
processor's state) and sends it only once every output send started before the step is
confirmed (`barrier`, see `topologies/output.py` `InFlight`): the state topic never runs
ahead of the outputs that follow from the same frames. A snapshot taken after a later batch
includes that batch too, which is as safe: the frames it holds are recognised as duplicates
when redelivered. The events held for the write are acknowledged only once every step's
state messages are confirmed.

`write_all` writes everything, queued or pending, in one go: for a rebalance and for a stop,
when the caller already holds the lock and the state must be out before it goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from topologies.pacing import Pacer
from topologies.processor import Output
from topologies.state import PendingState

Snapshot = Callable[[str], Output | None]
Send = Callable[[Sequence[Output]], Awaitable[None]]
Barrier = Callable[[], "list[asyncio.Future[None]]"]
"""The output sends started so far and not yet confirmed."""


def _no_barrier() -> list[asyncio.Future[None]]:
    return []


class StateWriter:
    """Snapshots pending assets in short steps under `busy`, then releases their events."""

    def __init__(
        self,
        pending: PendingState,
        snapshot: Snapshot,
        send: Send,
        busy: asyncio.Lock,
        pacer: Pacer,
        barrier: Barrier = _no_barrier,
    ) -> None:
        self.pending = pending
        self.snapshot = snapshot
        self.send = send
        self.busy = busy
        self.pacer = pacer
        self.barrier = barrier
        self.steps = 0
        self._queue: deque[str] = deque()
        self._events: list[Any] = []
        self._sends: list[asyncio.Future[None]] = []

    async def write_due(self, stopping: bool = False) -> bool:
        """If a write is due (or anything is pending while `stopping`): write it in steps
        and release its events. Returns whether it wrote."""
        pending = self.pending
        if not (pending.due() or (stopping and (pending.events or pending.assets))):
            return False
        async with self.busy:
            self._take()
        while self._queue:
            async with self.busy:
                took = self._step(self.pacer.budget_s)
            # (Even without a pause: an uncontended lock is taken at once, so a batch that
            # has become ready takes it first.)
            await self.pacer.pause(took)
        await self._finish()
        return True

    async def write_all(self) -> None:
        """Write everything queued or pending and release its events; the caller holds
        `busy`."""
        self._take()
        self._step(None)
        await self._finish()

    def _take(self) -> None:
        assets, events = self.pending.take()
        self._queue.extend(assets)
        self._events.extend(events)

    def _step(self, budget_s: float | None) -> float:
        """Snapshot queued assets for up to `budget_s` (None: all of them) and start
        sending their changelog messages; how long it took."""
        started = time.perf_counter()
        writes = []
        queue = self._queue
        while queue:
            output = self.snapshot(queue.popleft())
            if output is not None:
                writes.append(output)
            if budget_s is not None and time.perf_counter() - started >= budget_s:
                break
        self.steps += 1
        if writes:
            self._sends.append(asyncio.ensure_future(self._send_after(self.barrier(), writes)))
        return time.perf_counter() - started

    async def _send_after(self, barrier: list[asyncio.Future[None]], writes: list[Output]) -> None:
        if barrier:
            await asyncio.gather(*barrier)
        await self.send(writes)

    async def _finish(self) -> None:
        events, sends = self._events, self._sends
        self._events, self._sends = [], []
        if sends:
            await asyncio.gather(*sends)
        for event in events:
            event.ack()
