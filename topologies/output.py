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

Two producers, when the caller names its urgent topics: those (the state estimates and the
alerts, which consumers act on as they come) go out after LINGER_MS; every other output
(validated frames, anomaly scores, KPI windows, dead letters, state snapshots, which
ClickHouse takes once a second) from a second producer after LAG_LINGER_MS, in fewer, larger
record batches. Each topic always goes through the same producer, so its order is kept. On
the embedded broker fewer batches matter twice: every produce request costs, and its reads
cost more with every batch a partition holds (docs/performance.md). `twin bench`, 60 s
latency phases at 20,000 readings/s, alternating: the broker's CPU in the last 10 s 57-60% of
a core against 71-81%, state p99 234-378 ms against 265-402 ms (5 runs each). A send that
must be confirmed at once (`lag=False`: after a backlog's batch the worker waits for its
outputs) makes the lagging producer send what it holds without waiting for its linger.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Collection, Sequence
from typing import Any

from confluent_kafka import Producer

from pipeline.errors import TwinError
from pipeline.kafka.clients import producer
from pipeline.settings import Settings
from topologies.processor import Output

#: Long enough to gather a whole batch's outputs into few requests, short against the
#: latency budget (a batch is sent at once and then awaited as a whole).
LINGER_MS = 5
#: The linger of outputs no one acts on the moment they arrive (see the module doc).
LAG_LINGER_MS = 100
#: How long a send to be confirmed at once lets the lagging producer send without its linger
#: (flush returns as soon as the broker has confirmed everything).
FLUSH_WAIT_S = 10.0
BATCH_BYTES = 1024 * 1024
POLL_S = 0.05
QUEUE_FULL_WAIT_S = 0.005


class OutputError(TwinError):
    """The broker did not take an output (after librdkafka's own retries)."""


class OutputSender:
    """Produce outputs and await the broker's acknowledgement of each batch of them."""

    def __init__(
        self,
        settings: Settings,
        urgent: Collection[str] | None = None,
        lag_linger_ms: int = LAG_LINGER_MS,
        **overrides: Any,
    ) -> None:
        """`urgent`: the topics sent after LINGER_MS when the others lag (None: one producer
        for every topic, all after LINGER_MS)."""
        conf: dict[str, Any] = {"linger.ms": LINGER_MS, "batch.size": BATCH_BYTES}
        conf.update(overrides)
        self._producer = producer(settings, **conf)
        self._urgent = frozenset(urgent or ())
        self._lagging = (
            producer(settings, **{**conf, "linger.ms": lag_linger_ms})
            if urgent is not None
            else None
        )
        self._closing = threading.Event()
        self._pollers = [
            threading.Thread(target=self._serve_reports, args=(p,), name=name, daemon=True)
            for p, name in ((self._producer, "twin-output-reports"),
                            (self._lagging, "twin-output-reports-lagging"))
            if p is not None
        ]  # fmt: skip
        for poller in self._pollers:
            poller.start()

    def _serve_reports(self, source: Producer) -> None:
        while not self._closing.is_set():
            source.poll(POLL_S)

    def _producer_of(self, topic: str) -> Producer:
        lagging = self._lagging
        if lagging is None or topic in self._urgent:
            return self._producer
        return lagging

    async def send(self, outputs: Sequence[Output], lag: bool = True) -> None:
        """Produce every output; return once the broker has acknowledged all of them.
        `lag=False`: have the lagging producer send at once what it holds.
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

        for output in outputs:
            produce = self._producer_of(output.topic).produce
            while True:
                try:
                    produce(output.topic, output.value, output.key, on_delivery=report)
                    break
                except BufferError:  # librdkafka's queue is full: let it drain
                    await asyncio.sleep(QUEUE_FULL_WAIT_S)
        if not lag and self._lagging is not None and len(self._lagging):
            # flush() sends without waiting for the linger, but only while it runs: it must
            # run until the broker has confirmed (a new producer first gets its producer id).
            await loop.run_in_executor(None, self._lagging.flush, FLUSH_WAIT_S)
        await done

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop serving reports and flush; the number of messages still undelivered."""
        self._closing.set()
        for poller in self._pollers:
            poller.join(timeout=POLL_S * 4)
        undelivered: int = self._producer.flush(timeout_s)
        if self._lagging is not None:
            undelivered += self._lagging.flush(timeout_s)
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
