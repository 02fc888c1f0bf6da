"""The worker's state writer: pending assets written in steps under the processing lock,
batches in between, events released only once every changelog message is confirmed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from topologies.output import InFlight, OutputError
from topologies.pacing import Pacer
from topologies.processor import Output
from topologies.state import PendingState
from topologies.state_writer import StateWriter


class Event:
    def __init__(self) -> None:
        self.acks = 0

    def ack(self) -> None:
        self.acks += 1


class Broker:
    """Takes changelog messages; each send is confirmed when the test says so."""

    def __init__(self, confirm: bool = True) -> None:
        self.confirm = confirm
        self.sent: list[Output] = []
        self.waiting: list[asyncio.Future[None]] = []

    async def send(self, outputs: Sequence[Output]) -> None:
        self.sent.extend(outputs)
        if not self.confirm:
            future = asyncio.get_running_loop().create_future()
            self.waiting.append(future)
            await future


def make_writer(
    broker: Broker, log: list[str], pacer: Pacer | None = None
) -> tuple[StateWriter, PendingState, asyncio.Lock]:
    pending = PendingState(max_events=1, max_age_s=3600)
    busy = asyncio.Lock()

    def snapshot(asset_id: str) -> Output | None:
        log.append(f"snapshot {asset_id}")
        if asset_id == "gone":
            return None
        return Output("state-changelog", asset_id.encode(), b"state of " + asset_id.encode())

    pacer = pacer if pacer is not None else Pacer(step_s=0.0)  # one asset per step
    return StateWriter(pending, snapshot, broker.send, busy, pacer), pending, busy


def test_a_due_write_goes_in_steps_with_batches_in_between() -> None:
    async def scenario() -> tuple[list[str], list[Event], StateWriter, Broker]:
        broker, log = Broker(), []
        writer, pending, busy = make_writer(broker, log)
        events = [Event(), Event()]
        pending.add(["a1", "a2", "a3", "gone"], events)

        async def batches() -> None:
            for i in range(3):
                async with busy:
                    log.append(f"batch {i}")
                await asyncio.sleep(0)

        await asyncio.gather(writer.write_due(), batches())
        return log, events, writer, broker

    log, events, writer, broker = asyncio.run(scenario())
    snapshots = [entry for entry in log if entry.startswith("snapshot")]
    assert sorted(snapshots) == ["snapshot a1", "snapshot a2", "snapshot a3", "snapshot gone"]
    assert writer.steps == 4
    # The batches did not wait for the whole write: one ran between two snapshot steps.
    first, last = log.index(snapshots[0]), log.index(snapshots[-1])
    assert any(entry.startswith("batch") for entry in log[first:last])
    assert sorted(o.key for o in broker.sent) == [b"a1", b"a2", b"a3"]  # "gone" has no state
    assert [e.acks for e in events] == [1, 1]


class Sleeps:
    """A pacer's sleep that records how long it was asked to pause."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        await asyncio.sleep(0)


@pytest.mark.parametrize("backlog", [True, False])
def test_during_a_backlog_a_step_takes_as_long_as_the_last_batch(backlog: bool) -> None:
    """During a backlog a step may take as long as the last batch, without pauses; once
    batches are small again, a step is short and followed by a pause as long as it took."""

    async def scenario() -> tuple[StateWriter, Sleeps]:
        sleeps = Sleeps()
        pacer = Pacer(step_s=0.0, sleep=sleeps)
        writer, pending, _ = make_writer(Broker(), [], pacer)
        pacer.batch(3600.0, backlog=backlog)
        pending.add([f"a{i}" for i in range(50)], [Event()])
        await writer.write_due()
        return writer, sleeps

    writer, sleeps = asyncio.run(scenario())
    assert writer.steps == (1 if backlog else 50)
    assert len(sleeps.pauses) == writer.steps
    if backlog:
        assert sleeps.pauses == [0.0]
    else:
        assert all(0.0 < pause < 1.0 for pause in sleeps.pauses)


def test_a_pacer_budgets_steps_by_the_last_batch_only_during_a_backlog() -> None:
    pacer = Pacer(step_s=0.005)
    assert pacer.budget_s == 0.005
    pacer.batch(0.3, backlog=True)
    assert pacer.budget_s == 0.3
    pacer.batch(0.001, backlog=True)
    assert pacer.budget_s == 0.005
    pacer.batch(0.3, backlog=False)  # a slow batch of few frames: not a backlog
    assert pacer.budget_s == 0.005


def test_events_are_released_only_once_the_broker_confirms_every_step() -> None:
    async def scenario() -> None:
        broker = Broker(confirm=False)
        writer, pending, _ = make_writer(broker, [])
        events = [Event()]
        pending.add(["a1", "a2"], events)
        task = asyncio.ensure_future(writer.write_due())
        while len(broker.waiting) < 2:
            await asyncio.sleep(0)
        broker.waiting[0].set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)
        assert events[0].acks == 0  # one step's messages are still unconfirmed
        broker.waiting[1].set_result(None)
        assert await task is True
        assert events[0].acks == 1

    asyncio.run(scenario())


def test_nothing_is_written_before_it_is_due_unless_stopping() -> None:
    async def scenario() -> tuple[bool, bool, list[Output]]:
        broker = Broker()
        writer, _, _ = make_writer(broker, [])
        writer.pending = PendingState(max_events=100, max_age_s=3600)
        writer.pending.add(["a1"], [Event()])
        early = await writer.write_due()
        stopping = await writer.write_due(stopping=True)
        return early, stopping, broker.sent

    early, stopping, sent = asyncio.run(scenario())
    assert (early, stopping) == (False, True)
    assert [o.key for o in sent] == [b"a1"]


def test_a_write_without_state_to_write_still_releases_its_events() -> None:
    async def scenario() -> tuple[list[Output], list[Event]]:
        broker = Broker()
        writer, pending, _ = make_writer(broker, [])
        events = [Event()]
        pending.add(["gone"], events)  # an asset no stage holds state for
        await writer.write_due()
        return broker.sent, events

    sent, events = asyncio.run(scenario())
    assert sent == []
    assert [e.acks for e in events] == [1]


def test_write_all_in_the_middle_of_a_stepped_write_writes_and_releases_everything_once() -> None:
    async def scenario() -> tuple[list[str], list[Event], Broker]:
        broker, log = Broker(), []
        writer, pending, busy = make_writer(broker, log)
        first = [Event(), Event()]
        pending.add([f"a{i}" for i in range(6)], first)
        stepped = asyncio.ensure_future(writer.write_due())
        while not any(entry.startswith("snapshot") for entry in log):
            await asyncio.sleep(0)
        later = [Event()]
        pending.add(["b1"], later)
        async with busy:  # as a rebalance does: everything out before the state is reset
            await writer.write_all()
            log.append("reset")
        await stepped
        return log, first + later, broker

    log, events, broker = asyncio.run(scenario())
    keys = [o.key.decode() for o in broker.sent]
    assert sorted(keys) == ["a0", "a1", "a2", "a3", "a4", "a5", "b1"]  # each once
    assert not any(entry.startswith("snapshot") for entry in log[log.index("reset") :])
    assert [e.acks for e in events] == [1, 1, 1]


def test_a_failed_send_releases_no_event() -> None:
    async def failing(outputs: Sequence[Output]) -> None:
        raise OutputError("1 of 1 outputs not delivered: broker down")

    async def scenario() -> list[Event]:
        writer, pending, _ = make_writer(Broker(), [])
        writer.send = failing
        events = [Event()]
        pending.add(["a1"], events)
        with pytest.raises(OutputError, match="broker down"):
            await writer.write_due()
        return events

    assert [e.acks for e in asyncio.run(scenario())] == [0]


def test_state_is_sent_only_after_the_outputs_started_before_it_are_confirmed() -> None:
    async def scenario() -> None:
        outputs, state = Broker(confirm=False), Broker()
        writer, pending, _ = make_writer(state, [])
        in_flight = InFlight()
        writer.barrier = in_flight.barrier
        in_flight.start(outputs.send([Output("twin.state", b"a1", b"out 1")]))
        in_flight.start(outputs.send([Output("twin.state", b"a1", b"out 2")]))
        events = [Event()]
        pending.add(["a1"], events)
        write = asyncio.ensure_future(writer.write_due())
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(outputs.waiting) == 2 and state.sent == []  # snapshot taken, held back
        outputs.waiting[0].set_result(None)
        for _ in range(10):
            await asyncio.sleep(0)
        assert state.sent == [] and events[0].acks == 0  # the second output is not out yet
        outputs.waiting[1].set_result(None)
        assert await write is True
        assert [o.key for o in state.sent] == [b"a1"] and events[0].acks == 1
        assert len(in_flight) == 2
        await in_flight.settle()
        assert len(in_flight) == 0

    asyncio.run(scenario())


def test_in_flight_settles_down_to_a_limit_and_raises_a_failed_send() -> None:
    async def failing() -> None:
        raise OutputError("1 of 1 outputs not delivered: broker down")

    async def scenario() -> None:
        broker = Broker(confirm=False)
        in_flight = InFlight()
        for i in range(3):
            in_flight.start(broker.send([Output("t", b"k", bytes([i]))]))
        settled = asyncio.ensure_future(in_flight.settle(at_most=1))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not settled.done()
        broker.waiting[1].set_result(None)  # a later send first: still two outstanding
        for _ in range(5):
            await asyncio.sleep(0)
        assert not settled.done()
        broker.waiting[0].set_result(None)
        await settled
        assert len(in_flight) == 1
        in_flight.start(failing())
        with pytest.raises(OutputError, match="broker down"):
            await in_flight.settle()
        with pytest.raises(OutputError, match="broker down"):
            in_flight.barrier()

    asyncio.run(scenario())
