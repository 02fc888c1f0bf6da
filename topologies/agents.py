"""The stream agents as a Faust app: telemetry.raw -> stages -> output topics.

Thin on purpose: the work is `FrameProcessor` (pure); this module only moves batches of
messages in, outputs out, and keeps each asset's stage state in changelog-backed tables.

- Batches come from `stream.take_events` (Faust's per-event overhead is the bottleneck, and a
  message is a whole frame of readings).
- Tables use `use_partitioner=True` with raw `asset_id` keys, so one write per asset per batch
  lands in the same partition number as the asset's telemetry (murmur2, as every producer
  here uses), and the changelog topics are the compacted `<app id>-<stage>-state-changelog`
  topics that `twin topics create` makes.
- At-least-once: a batch's outputs are confirmed by the broker before the stage state that
  follows from them is written, and offsets are acked after both.
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
from topologies.metrics import StageMetrics, update_consumer_lag
from topologies.processor import STAGES, BatchResult, FrameProcessor, RawMessage

log = logging.getLogger(__name__)

APP_ID = "twinline"
BATCH_MAX = 500
BATCH_WITHIN_S = 0.1
TICK_S = 1.0
#: The embedded broker holds a first JoinGroup for half the session timeout (measured: 30 s
#: with Faust's default of 60 s, 3 s with 6 s); 10 s keeps start-up near 5 s while leaving a
#: busy 2-core worker room for heartbeats.
SESSION_TIMEOUT_S = 10.0


def app_id(site: Site) -> str:
    """The consumer group and the prefix of the changelog topics."""
    return site.topic(APP_ID)


def build_app(settings: Settings, site: Site, web_port: int | None = None) -> faust.App:
    app = faust.App(
        app_id(site),
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        store="memory://",
        topic_partitions=site.kafka.partitions,
        topic_replication_factor=site.kafka.replication_factor,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_compression_type="lz4",
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
    out_topics: dict[str, Any] = {}
    tables = {
        stage: app.Table(
            f"{stage}-state",
            default=None,
            key_type=bytes,
            partitions=site.kafka.partitions,
            use_partitioner=True,
            help=f"{stage} stage state per asset",
        )
        for stage in STAGES
    }

    def load_state(stage: str, asset_id: str) -> dict[str, Any] | None:
        value = tables[stage].get(asset_id.encode())
        return value if isinstance(value, dict) else None

    processor = FrameProcessor(site, AvroSerde.from_settings(settings), load_state)
    stage_metrics = StageMetrics()

    async def publish(result: BatchResult) -> None:
        # Outputs are sent now (force: not attached to the source event, which Faust would
        # send only when that event is acked) and confirmed before the state that follows
        # from them is written. Otherwise a worker stopped in between can leave the tables
        # ahead of the topics: the restored validator then takes the redelivered frame for a
        # duplicate, and its outputs are lost.
        pending = []
        for output in result.outputs:
            topic = out_topics.get(output.topic)
            if topic is None:
                topic = out_topics[output.topic] = app.topic(
                    output.topic, key_type=bytes, value_type=bytes, value_serializer="raw"
                )
            pending.append(await topic.send(key=output.key, value=output.value, force=True))
        if pending:
            await asyncio.gather(*pending)
        for asset_id in result.touched:
            key = asset_id.encode()
            for stage in STAGES:
                state = processor.snapshot(stage, asset_id)
                if state is not None:
                    tables[stage][key] = state

    @app.agent(raw_topic, name="frames")
    async def frames(stream: Any) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            batch = [
                RawMessage(e.message.topic, e.message.partition, e.message.offset, e.key, e.value)
                for e in events
            ]
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
            log.debug(
                "batch: %d messages, %d frames, %d readings, %d dead letters",
                len(batch),
                result.frames,
                result.readings,
                result.dead_letters,
            )

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        # Another worker may own these assets now: reload from the tables when they return.
        processor.reset()

    @app.timer(TICK_S)
    async def tick() -> None:
        result = processor.tick()
        stage_metrics.observe(processor, result)
        await publish(result)
        try:
            update_consumer_lag(app.consumer, raw_topic.get_topic_name())
        except Exception:  # a metric must never stop the agents
            log.debug("consumer lag not available", exc_info=True)

    app.twin_processor = processor  # type: ignore[attr-defined]
    return app
