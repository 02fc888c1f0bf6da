"""The stream agents as a Faust app: telemetry.raw -> stages -> output topics.

Thin on purpose: the work is `FrameProcessor` (pure); this module only moves batches of
messages in, outputs out, and keeps each asset's stage state in a changelog-backed table.

- Batches come from `stream.take_events` (Faust's per-event overhead is the bottleneck, and a
  message is a whole frame of readings).
- One table, `state`, holds every stage's snapshot of an asset as one msgpack value
  (`topologies/state.py`), with `use_partitioner=True` and raw `asset_id` keys, so a write
  lands in the same partition number as the asset's telemetry (murmur2, as every producer
  here uses). Its changelog is the compacted `<app id>-state-changelog` topic that
  `twin topics create` makes.
- State is written once per several batches (`PendingState`): when `STATE_EVERY_EVENTS`
  frames wait for it or `STATE_MAX_AGE_S` has passed, each asset those frames touched is
  written once, however many of its frames they hold. A busy worker thus writes an asset's
  state once per several of its frames, not once per frame.
- Outputs and the table's changelog messages go out through confluent-kafka
  (`topologies/output.py`), not Faust's producer; the table's store is updated in place for
  this worker's own reads.
- At-least-once: a batch's outputs are confirmed by the broker before the stage state that
  follows from them is written, and its events are acknowledged (their offsets may be
  committed) only after that state is written. A stop in between redelivers them: the
  outputs come again, or the validator recognises the frames as duplicates.
  The embedded broker has no transactions (DESIGN.md), so never exactly_once here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust

from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.site import Site
from topologies.fetch import use_short_fetch_wait
from topologies.metrics import StageMetrics, update_consumer_lag
from topologies.output import OutputSender
from topologies.processor import BatchResult, FrameProcessor, Output, RawMessage
from topologies.state import PendingState, decode_state, encode_state

log = logging.getLogger(__name__)

APP_ID = "twinline"
STATE_TABLE = "state"
BATCH_MAX = 2000
#: A batch closes when full or after this long: short against the latency budget, and at
#: high load the buffer fills long before.
BATCH_WITHIN_S = 0.02
STATE_EVERY_EVENTS = 5000
STATE_MAX_AGE_S = 1.0
TICK_S = 1.0
#: The embedded broker holds a first JoinGroup for half the session timeout (measured: 30 s
#: with Faust's default of 60 s, 3 s with 6 s); 10 s keeps start-up near 5 s while leaving a
#: busy 2-core worker room for heartbeats.
SESSION_TIMEOUT_S = 10.0


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
    table = app.Table(
        STATE_TABLE,
        default=None,
        key_type=bytes,
        value_type=bytes,  # Faust then keeps and sends the values raw: the bytes we encode
        partitions=site.kafka.partitions,
        use_partitioner=True,
        help="every stage's state per asset",
    )

    def load_state(asset_id: str) -> dict[str, dict[str, Any]] | None:
        value = table.get(asset_id.encode())
        return decode_state(value, asset_id) if isinstance(value, bytes) else None

    processor = FrameProcessor(site, AvroSerde.from_settings(settings), load_state)
    outputs = OutputSender(settings)
    stage_metrics = StageMetrics()
    pending = PendingState(STATE_EVERY_EVENTS, STATE_MAX_AGE_S)
    # Held from a change of the processor's state until its outputs are confirmed, so a state
    # write never sees a change whose outputs are not out yet.
    busy = asyncio.Lock()

    async def publish(result: BatchResult) -> None:
        # Outputs are sent now (not attached to the source event, which Faust would send
        # only when that event is acked) and confirmed before the state that follows from
        # them is written. Otherwise a worker stopped in between can leave the table ahead
        # of the topics: the restored validator then takes the redelivered frame for a
        # duplicate, and its outputs are lost.
        await outputs.send(result.outputs)

    async def write_state() -> None:
        """Write the pending assets' state, wait for the broker to confirm it, then release
        their held events (from here on their offsets may be committed)."""
        assets, events = pending.take()
        changelog = table.changelog_topic.get_topic_name()
        writes = []
        for asset_id in assets:
            states = processor.snapshot_asset(asset_id)
            if states is not None:
                key, value = asset_id.encode(), encode_state(states)
                # The table's store serves this worker's own reads (`load_state`); the
                # changelog message goes out with the outputs' producer, which costs far
                # less than Faust's (the state is most of what the worker writes).
                table.data[key] = value
                writes.append(Output(changelog, key, value))
        await outputs.send(writes)
        for event in events:
            event.ack()

    @app.agent(raw_topic, name="frames")
    async def frames(stream: Any) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
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
                stage_metrics.observe(processor, result, time.perf_counter() - started, len(batch))
                await publish(result)
                # take_events acknowledges the batch when this iteration ends; one more
                # reference holds each event back until write_state has written its state.
                for event in events:
                    event.message.incref()
                pending.add(result.touched, events)
                if pending.due():
                    await write_state()
            log.debug(
                "batch: %d messages, %d frames, %d readings, %d dead letters",
                len(batch),
                result.frames,
                result.readings,
                result.dead_letters,
            )

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        # Another worker may own these assets now: reload from the table when they return.
        # (Faust has waited for every held event to be acknowledged before this signal;
        # anything still pending, e.g. from a tick, is written first.)
        async with busy:
            await write_state()
            processor.reset()

    @app.task
    async def write_state_when_due() -> None:
        # A plain loop, not an app timer: timers end as soon as the worker begins to stop,
        # while Faust then waits for the held events to be acknowledged (`wait_empty`). This
        # loop runs until the app's tasks are cancelled, after that wait, and writes
        # everything pending at once when stopping.
        while True:
            await asyncio.sleep(STATE_MAX_AGE_S / 4)
            if pending.due() or (app.should_stop and (pending.events or pending.assets)):
                async with busy:
                    await write_state()

    @app.timer(TICK_S)
    async def tick() -> None:
        async with busy:
            result = processor.tick()
            stage_metrics.observe(processor, result)
            await publish(result)
            pending.add(result.touched)
        try:
            update_consumer_lag(app.consumer, raw_topic.get_topic_name())
        except Exception:  # a metric must never stop the agents
            log.debug("consumer lag not available", exc_info=True)

    app.twin_processor = processor  # type: ignore[attr-defined]
    return app
