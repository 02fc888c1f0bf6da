"""Sending the worker's outputs with librdkafka, and waiting until the broker has them.

Faust's own send path (Topic.send -> aiokafka's accumulator, record batches built and
compressed in Python) cost a busy worker about a fifth of its time. confluent-kafka batches,
compresses and sends in librdkafka's C threads; from Python a message costs one `produce`
call. The producer is configured as every Twinline producer (`pipeline.kafka.clients`:
murmur2 partitioner, so an asset's outputs land in the partition number of its telemetry;
acks=all; idempotent; lz4).

Delivery reports are served by a thread of our own that polls the producer; `send` awaits
the report of every message it produced, so the caller knows the broker holds them all before
it writes the state that follows from them (see `topologies/agents.py`). The worker does not
wait for that between batches: `InFlight` holds the sends it started, and a state write waits
for those started before it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any

from pipeline.errors import TwinError
from pipeline.kafka.clients import producer
from pipeline.settings import Settings
from topologies.processor import Output

#: Long enough to gather a whole batch's outputs into few requests, short against the
#: latency budget (a batch is sent at once and then awaited as a whole).
LINGER_MS = 5
BATCH_BYTES = 1024 * 1024
POLL_S = 0.05
QUEUE_FULL_WAIT_S = 0.005


class OutputError(TwinError):
    """The broker did not take an output (after librdkafka's own retries)."""


class OutputSender:
    """Produce outputs and await the broker's acknowledgement of each batch of them."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        conf: dict[str, Any] = {"linger.ms": LINGER_MS, "batch.size": BATCH_BYTES}
        conf.update(overrides)
        self._producer = producer(settings, **conf)
        self._closing = threading.Event()
        self._poller = threading.Thread(
            target=self._serve_reports, name="twin-output-reports", daemon=True
        )
        self._poller.start()

    def _serve_reports(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(POLL_S)

    async def send(self, outputs: Sequence[Output]) -> None:
        """Produce every output; return once the broker has acknowledged all of them.
        Raises OutputError naming the first failure if any message was not delivered."""
        if not outputs:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        lock = threading.Lock()
        remaining = len(outputs)
        errors: list[str] = []

        def finish() -> None:
            if done.done():
                return
            if errors:
                failed = f"{len(errors)} of {len(outputs)} outputs not delivered: {errors[0]}"
                done.set_exception(OutputError(failed))
            else:
                done.set_result(None)

        def report(err: Any, msg: Any) -> None:  # runs on the report thread
            nonlocal remaining
            with lock:
                if err is not None:
                    errors.append(f"{msg.topic()}: {err}")
                remaining -= 1
                last = remaining == 0
            if last:
                loop.call_soon_threadsafe(finish)

        produce = self._producer.produce
        for output in outputs:
            while True:
                try:
                    produce(output.topic, output.value, output.key, on_delivery=report)
                    break
                except BufferError:  # librdkafka's queue is full: let it drain
                    await asyncio.sleep(QUEUE_FULL_WAIT_S)
        await done

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop serving reports and flush; the number of messages still undelivered."""
        self._closing.set()
        self._poller.join(timeout=POLL_S * 4)
        undelivered: int = self._producer.flush(timeout_s)
        return undelivered


class InFlight:
    """Output sends started and not yet confirmed, in the order they were started.

    The worker starts a batch's sends and goes on with the next batch while the broker
    confirms them; what must follow from those outputs (the state written after them) waits
    for the `barrier` taken when it was decided. A failed send is raised by the next
    `barrier` or `settle`, or by whoever awaits it in a barrier."""

    def __init__(self) -> None:
        self._sends: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._sends)

    def start(self, send: Awaitable[None]) -> None:
        self._sends.append(asyncio.ensure_future(send))

    def barrier(self) -> list[asyncio.Future[None]]:
        """Every send started so far that is not yet confirmed."""
        self._forget_confirmed()
        return list(self._sends)

    async def settle(self, at_most: int = 0) -> None:
        """Wait until no more than `at_most` sends are unconfirmed; a send that fails
        meanwhile is raised at once."""
        self._forget_confirmed()
        while len(self._sends) > at_most:
            waiting = [send for send in self._sends if not send.done()]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            self._forget_confirmed()

    def _forget_confirmed(self) -> None:
        """Drop the confirmed sends at the front, or raise the first one that failed."""
        for send in self._sends:
            failure = send.exception() if send.done() else None  # (a cancelled send raises)
            if failure is not None:
                raise failure
        while self._sends and self._sends[0].done():
            self._sends.popleft()
