"""How the worker's background work shares the event loop with its batches.

Two kinds of work run between batches, in steps under the processing lock: state writes
(`topologies/state_writer.py`) and ticks that close many assets' windows at once (after a
jump of processing time). Releasing the lock between steps is not enough while the worker
keeps up: frames reach the agent through Faust's consumer on the same event loop, and a loop
busy with step after step hands them over a few at a time (measured with `twin bench`: while
a tick closed 1,000 assets' windows in steps, batches of 1-3 frames came 70-250 ms apart and
frames waited up to 2 s). So:

- while batches are small (the worker keeps up), a step takes at most `step_s` and is
  followed by a pause as long as the step: background work gets at most half of the loop;
- during a backlog (large batches), a step may take as long as the last batch and is
  followed by no pause, so that the work keeps up with batches that take that long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class Pacer:
    step_s: float
    """How long a step may hold the lock while batches are small."""
    last_batch_s: float = 0.0
    backlog: bool = False
    """The last batch was large: the worker is working through a backlog."""
    sleep: Sleep = field(default=asyncio.sleep, repr=False)

    def batch(self, seconds: float, backlog: bool) -> None:
        """The agent's last batch took `seconds`; it was a backlog's (large) or not."""
        self.last_batch_s, self.backlog = seconds, backlog

    @property
    def budget_s(self) -> float:
        """How long the next step may take."""
        return max(self.step_s, self.last_batch_s) if self.backlog else self.step_s

    async def pause(self, took_s: float) -> None:
        """After a step that took `took_s`: let the loop hand frames to the agent."""
        await self.sleep(0.0 if self.backlog else took_s)
