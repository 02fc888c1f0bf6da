"""The stream agents as a Faust app: telemetry.raw -> stages -> output topics.

Thin on purpose: the work is `FrameProcessor` (pure); this module only moves batches of
messages in, outputs out, and keeps each asset's stage state in a compacted state topic.

- Batches come from `stream.take_events` (Faust's per-event overhead is the bottleneck, and a
  message is a whole frame of readings).
- One message per asset holds every stage's snapshot of it as one msgpack value
  (`topologies/state.py`), keyed by `asset_id` in the compacted `<app id>-state-changelog`
  topic that `twin topics create` makes, in the same partition number as the asset's
  telemetry (murmur2, as every producer here uses). After each assignment the worker reads
  its partitions back (`topologies/state_store.py`) before it processes a frame.
- State is written once per several batches (`PendingState`): when `STATE_EVERY_EVENTS`
  frames wait for it or `STATE_MAX_AGE_S` has passed (the age counts only while batches are
  smaller than PIPELINE_BELOW frames, i.e. not during a backlog), each asset those frames
  touched is written once, however many of its frames they hold. A busy worker thus writes
  an asset's state once per several of its frames, not once per frame. The write goes in
  short steps between batches (`topologies/state_writer.py`), so frames do not wait for all
  of it.
- The processing-time tick (once a second) closes idle windows in steps of
  `TICK_KPI_ASSETS` assets: after a jump of processing time (log time catching up with the
  wall clock at the end of a backlog) every asset's windows may close at once. Steps of
  both kinds are paced (`topologies/pacing.py`) so that the frames keep coming in between.
- Outputs and state messages go out through confluent-kafka (`topologies/output.py`), not
  Faust's producer.
- A small batch's outputs are confirmed while the next batch is processed (`InFlight`, at
  most `MAX_IN_FLIGHT` batches); after a large one (a backlog) the agent waits for them.
- At-least-once: a batch's outputs are confirmed by the broker before the stage state that
  follows from them is written, and its events are acknowledged (their offsets may be
  committed) only after that state is written. A stop in between redelivers them: the
  outputs come again, or the validator recognises the frames as duplicates.
  The embedded broker has no transactions (DESIGN.md), so never exactly_once here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

import faust

from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.site import Site
from topologies.fetch import use_short_fetch_wait
from topologies.metrics import StageMetrics, update_consumer_lag
from topologies.output import InFlight, OutputSender
from topologies.pacing import Pacer
from topologies.processor import BatchResult, FrameProcessor, Output, RawMessage
from topologies.state import PendingState, decode_state, encode_state
from topologies.state_store import StateStore
from topologies.state_writer import StateWriter

log = logging.getLogger(__name__)

APP_ID = "twinline"
#: The state topic is `<app id>-<suffix>` (pipeline/topics.py: twinline-state-changelog).
STATE_TOPIC_SUFFIX = "state-changelog"
BATCH_MAX = 2000
#: A batch closes when full or after this long: short against the latency budget, and at
#: high load the buffer fills long before.
BATCH_WITHIN_S = 0.02
#: Batches whose outputs may be unconfirmed while the next is processed, when batches are
#: smaller than PIPELINE_BELOW frames: the worker keeps up, and every millisecond a frame
#: waits is latency. A larger batch means a backlog: then the agent waits for its outputs,
#: and the next batch fills meanwhile (fewer, larger batches; `twin bench` measured ~15%
#: more readings/s than with pipelining at that load, and lower latency with it below).
#: Small batches' lagging outputs take LAG_LINGER_MS (output.py) to be confirmed, so at a
#: batch every ~10-40 ms up to ~10 are unconfirmed at a time without the worker being behind.
MAX_IN_FLIGHT = 16
PIPELINE_BELOW = 200
#: During a backlog the state is written once per this many frames (each touched asset once).
#: With many assets nearly every frame's asset is in each write, so this sets how many frames
#: a snapshot is spread over: `twin bench --assets 10000` measured 48,839 readings/s at 5,000
#: and 59,101 at 10,000; `twin bench --assets 10000 --readings 2490000 --latency-s 5
#: --no-growth`, alternating, 51,397 and 46,206 at 10,000 against 58,223 and 52,214 at
#: 20,000 (worker RSS 795-823 MB in all four: the held events are not what fills it).
#: After a crash, at most this many frames are read again.
STATE_EVERY_EVENTS = 20_000
STATE_MAX_AGE_S = 1.0
#: A state write or tick step holds the processing lock for this long at a time while the
#: worker keeps up (see pacing.py).
STEP_S = 0.005
TICK_S = 1.0
#: A tick closes the windows of this many assets per step (under a millisecond each).
TICK_KPI_ASSETS = 8
#: The embedded broker holds a first JoinGroup for half the session timeout (measured: 30 s
#: with Faust's default of 60 s, 3 s with 6 s); 10 s keeps start-up near 5 s while leaving a
#: busy 2-core worker room for heartbeats.
SESSION_TIMEOUT_S = 10.0


def settle_garbage_collector() -> None:
    """Collect once, then exempt every object alive now from later full collections.

    What lives at this point (the site model, the libraries, Faust itself) lives as long as
    the worker; scanning it in each full collection held the event loop for up to ~240 ms
    at 1,000 assets (measured in the latency phase of `twin bench`), which every waiting
    frame paid. Done after each assignment, everything is unfrozen and collected first, so
    what a rebalance let go of is not kept."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def app_id(site: Site) -> str:
    """The consumer group and the prefix of the changelog topics."""
    return site.topic(APP_ID)


def build_app(settings: Settings, site: Site, web_port: int | None = None) -> faust.App:
    use_short_fetch_wait()
    app = faust.App(
        app_id(site),
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        store="memory://",
        topic_partitions=site.kafka.partitions,
        topic_replication_factor=site.kafka.replication_factor,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_host="127.0.0.1",
        datadir=str(settings.data_dir / "faust"),
        broker_commit_every=BATCH_MAX,
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=SESSION_TIMEOUT_S / 5,
    )
    raw_topic = app.topic(
        site.topic("telemetry.raw"), key_type=bytes, value_type=bytes, value_serializer="raw"
    )
    state_topic = f"{app_id(site)}-{STATE_TOPIC_SUFFIX}"
    store = StateStore(settings, state_topic)
    # Set once the assigned partitions' state is read back; frames wait for it.
    state_loaded = asyncio.Event()

    def load_state(asset_id: str) -> dict[str, dict[str, Any]] | None:
        value = store.take(asset_id.encode())
        return decode_state(value, asset_id) if value is not None else None

    processor = FrameProcessor(site, AvroSerde.from_settings(settings), load_state)
    # State estimates and alerts are acted on as they come; the rest may lag (output.py).
    outputs = OutputSender(settings, urgent={site.topic("twin.state"), site.topic("twin.alerts")})
    stage_metrics = StageMetrics()
    pending = PendingState(STATE_EVERY_EVENTS, STATE_MAX_AGE_S)
    # Held while the processor's state changes (a batch, a tick, a snapshot, a reset).
    busy = asyncio.Lock()
    in_flight = InFlight()

    def publish(result: BatchResult, backlog: bool) -> None:
        # Outputs are sent now (not attached to the source event, which Faust would send
        # only when that event is acked) and confirmed before the state that follows from
        # them is written (the writer waits for `in_flight.barrier()`). Otherwise a worker
        # stopped in between can leave the state topic ahead of the outputs: the restored
        # validator then takes the redelivered frame for a duplicate, and its outputs are
        # lost.
        if result.outputs:
            in_flight.start(outputs.send(result.outputs, lag=not backlog))

    def snapshot(asset_id: str) -> Output | None:
        states = processor.snapshot_asset(asset_id)
        if states is None:
            return None
        # Written with the outputs' producer, which costs far less than Faust's (the state
        # is most of what the worker writes). No copy is kept: the store is read only for
        # assets the processor does not hold, i.e. after an assignment, and it is read
        # back from the topic then, these writes included.
        return Output(state_topic, asset_id.encode(), encode_state(states))

    pacer = Pacer(STEP_S)
    writer = StateWriter(pending, snapshot, outputs.send, busy, pacer, in_flight.barrier)
    state_due = asyncio.Event()

    @app.agent(raw_topic, name="frames")
    async def frames(stream: Any) -> None:
        async for taken in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            await state_loaded.wait()
            # A batch taken before a rebalance may hold frames of partitions given up since:
            # their state is not loaded here, and their new owner reads them again.
            assigned = app.consumer.assignment()
            events = [e for e in taken if e.message.tp in assigned]
            if len(events) < len(taken):
                log.info("frames: %d frames of partitions given up left to their new owner",
                         len(taken) - len(events))  # fmt: skip
            if not events:
                continue
            batch = [
                RawMessage(e.message.topic, e.message.partition, e.message.offset, e.key, e.value)
                for e in events
            ]
            async with busy:
                started = time.perf_counter()
                try:
                    result = processor.process(batch)
                except Exception:
                    first, last = batch[0], batch[-1]
                    log.exception(
                        "frames: batch of %d messages failed: %s[%d]@%d .. %s[%d]@%d",
                        len(batch), first.topic, first.partition, first.offset,
                        last.topic, last.partition, last.offset,
                    )  # fmt: skip
                    raise
                took = time.perf_counter() - started
                backlog = len(batch) >= PIPELINE_BELOW
                pacer.batch(took, backlog=backlog)
                stage_metrics.observe(processor, result, took, len(batch))
                publish(result, backlog=backlog)
                # take_events acknowledges the batch when this iteration ends; one more
                # reference holds each event back until the writer has written its state.
                for event in events:
                    event.message.incref()
                pending.add(result.touched, events, backlog=backlog)
                if pending.due():
                    state_due.set()
            await in_flight.settle(0 if backlog else MAX_IN_FLIGHT)
            log.debug(
                "batch: %d messages, %d frames, %d readings, %d dead letters",
                len(batch),
                result.frames,
                result.readings,
                result.dead_letters,
            )

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        # Another worker may own these assets now: read their state back when they return.
        # (Faust has waited for every held event to be acknowledged before this signal;
        # anything still pending, e.g. from a tick, is written first.)
        state_loaded.clear()
        async with busy:
            await writer.write_all()
            processor.reset()
            store.clear()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def load_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        raw = raw_topic.get_topic_name()
        partitions = {tp.partition for tp in assigned if tp.topic == raw}
        state_loaded.clear()
        async with busy:
            await asyncio.get_running_loop().run_in_executor(None, store.load, partitions)
            settle_garbage_collector()
        state_loaded.set()

    @app.task
    async def write_state_when_due() -> None:
        # A plain loop, not an app timer: timers end as soon as the worker begins to stop,
        # while Faust then waits for the held events to be acknowledged (`wait_empty`). This
        # loop runs until the app's tasks are cancelled, after that wait, and writes
        # everything pending when stopping.
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state_due.wait(), STATE_MAX_AGE_S / 4)
            state_due.clear()
            await writer.write_due(stopping=app.should_stop)

    @app.timer(TICK_S)
    async def tick() -> None:
        ticking = True
        while ticking:
            async with busy:
                started = time.perf_counter()
                result = processor.tick(TICK_KPI_ASSETS)
                stage_metrics.observe(processor, result)
                publish(result, backlog=False)
                pending.add(result.touched)
                ticking = processor.ticking()
            if ticking:
                await pacer.pause(time.perf_counter() - started)
        try:
            update_consumer_lag(app.consumer, raw_topic.get_topic_name())
        except Exception:  # a metric must never stop the agents
            log.debug("consumer lag not available", exc_info=True)

    app.twin_processor = processor  # type: ignore[attr-defined]
    return app
