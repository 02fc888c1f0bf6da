"""Run one connector with its publisher until a signal or a deadline, then stop cleanly.

    summary = run_connector(connector, settings, site, duration_s=30, metrics_port=9108)

The connector reads its devices and submits frames; the publisher spools and delivers them.
On SIGTERM/SIGINT (or after `duration_s`) the connector is stopped first, then the publisher
delivers what it still holds for at most `drain_s` seconds; whatever Kafka has not confirmed
by then stays in the spool and is sent first by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from connectors import metrics
from connectors.base import Connector
from connectors.publisher import (
    DEFAULT_STALL_S,
    DEFAULT_WINDOW,
    LIBRDKAFKA_LOG,
    FramePublisher,
)
from connectors.spool import DEFAULT_MAX_MB, Spool
from pipeline.settings import Settings
from pipeline.site import Site

log = logging.getLogger(__name__)

DEFAULT_DRAIN_S = 5.0
_STOP_GRACE_S = 5.0


def spool_dir_for(settings: Settings, source_id: str) -> Path:
    """Where a source's spool lives: <data dir>/spool/<source id>."""
    return settings.data_dir / "spool" / source_id


def run_connector(
    connector: Connector,
    settings: Settings,
    site: Site,
    duration_s: float | None = None,
    spool_dir: Path | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    spool_max_mb: float = DEFAULT_MAX_MB,
    drain_s: float = DEFAULT_DRAIN_S,
    stall_s: float = DEFAULT_STALL_S,
    window: int = DEFAULT_WINDOW,
) -> dict[str, Any]:
    """Run `connector` until SIGTERM/SIGINT or `duration_s`; the run's summary.

    Summary keys: kind, source_id, duration_s, frames, readings, reads, delivered,
    delivered_readings, spooled, recovered, spool_depth, spool_dropped, dead_letters,
    errors, publish_errors, reconnects, producer_restarts, first_seq, last_seq.
    """
    spool = Spool(
        spool_dir or spool_dir_for(settings, connector.source_id),
        max_bytes=int(spool_max_mb * 1024 * 1024),
    )
    try:
        server = metrics.serve_metrics(metrics_port, metrics_host) if metrics_port else None
    except BaseException:
        spool.close()
        raise
    try:
        return asyncio.run(
            _main(connector, settings, site, spool, duration_s, drain_s, stall_s, window)
        )
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


async def run_with_publisher(
    connector: Connector,
    publisher: FramePublisher,
    stop: asyncio.Event,
    duration_s: float | None = None,
    drain_s: float = DEFAULT_DRAIN_S,
) -> dict[str, Any]:
    """Run the connector and the publisher in this event loop until `stop` or `duration_s`.

    Closes the publisher (and its spool) before returning the summary.
    """
    started = time.monotonic()
    reported = _Reported()
    publishing = asyncio.Event()
    connector_task = asyncio.create_task(connector.run(publisher, stop), name="connector")
    publisher_task = asyncio.create_task(publisher.run(publishing), name="publisher")
    try:
        deadline = None if duration_s is None else started + duration_s
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if connector_task.done():
                break  # it failed (reported below) or returned on its own
            reported.update(connector)
            wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
    finally:
        stop.set()
        await _finish(connector_task, "connector")
        publishing.set()
        await _finish(publisher_task, "publisher")
        reported.update(connector)
        try:
            if not await publisher.drain(drain_s):
                log.warning(
                    "%s: %d message(s) not confirmed by Kafka within %.0fs; they stay in the "
                    "spool for the next start",
                    connector.source_id,
                    publisher.spool.depth,
                    drain_s,
                )
        finally:
            publisher.close()
    failure = _failure(connector_task)
    stats = connector.stats
    return {
        "kind": connector.kind,
        "source_id": connector.source_id,
        "duration_s": round(time.monotonic() - started, 3),
        "frames": publisher.frames,
        "readings": publisher.readings,
        "reads": stats.reads,
        "delivered": publisher.delivered,
        "delivered_readings": publisher.delivered_readings,
        "spooled": publisher.spooled,
        "recovered": publisher.spool.recovered_frames,
        "spool_depth": publisher.spool.depth,
        "spool_dropped": publisher.spool.dropped,
        "dead_letters": publisher.dead_letters,
        "errors": stats.errors + publisher.publish_errors + (failure is not None),
        "publish_errors": publisher.publish_errors,
        "reconnects": stats.reconnects,
        "producer_restarts": publisher.producer_restarts,
        "first_seq": publisher.first_seq,
        "last_seq": publisher.last_seq,
        "failure": failure,
    }


async def _main(
    connector: Connector,
    settings: Settings,
    site: Site,
    spool: Spool,
    duration_s: float | None,
    drain_s: float,
    stall_s: float,
    window: int,
) -> dict[str, Any]:
    try:
        publisher = FramePublisher(
            settings,
            site,
            connector.source_id,
            connector.kind,
            spool,
            stall_s=stall_s,
            window=window,
        )
    except BaseException:
        spool.close()
        raise
    threading.Thread(
        target=check_topics,
        args=(settings, [publisher.raw_topic, publisher.deadletter_topic]),
        name="check-topics",
        daemon=True,  # never delays the exit
    ).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        return await run_with_publisher(connector, publisher, stop, duration_s, drain_s)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def check_topics(settings: Settings, topics: list[str], timeout_s: float = 10.0) -> bool:
    """Log an error naming any of `topics` missing on the cluster (frames for them wait in
    the spool until `twin topics create` makes them); True when all exist."""
    try:
        conf: dict[str, Any] = {**settings.librdkafka(), "logger": LIBRDKAFKA_LOG}
        admin = AdminClient(conf)
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        log.warning(
            "Kafka at %s did not answer (%s); frames wait in the spool until it does",
            settings.kafka_bootstrap,
            exc.args[0].str() if exc.args else exc,
        )
        return False
    missing = [t for t in topics if t not in metadata.topics]
    if missing:
        log.error(
            "topic(s) %s do not exist on %s; frames wait in the spool until "
            "`twin topics create` makes them",
            ", ".join(missing),
            settings.kafka_bootstrap,
        )
    return not missing


class _Reported:
    """Feeds the connector's own counters into the Prometheus counters (as increments)."""

    def __init__(self) -> None:
        self.reconnects = 0
        self.errors = 0

    def update(self, connector: Connector) -> None:
        stats = connector.stats
        labels = {"source_id": connector.source_id}
        if stats.reconnects > self.reconnects:
            metrics.RECONNECTS.labels(**labels).inc(stats.reconnects - self.reconnects)
            self.reconnects = stats.reconnects
        if stats.errors > self.errors:
            metrics.DEVICE_ERRORS.labels(**labels).inc(stats.errors - self.errors)
            self.errors = stats.errors


async def _finish(task: asyncio.Task[None], name: str) -> None:
    """Let a task return after `stop`; cancel it if it does not within the grace period."""
    if not task.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=_STOP_GRACE_S)
    if not task.done():
        log.warning("%s did not stop within %.0fs; cancelling it", name, _STOP_GRACE_S)
        task.cancel()
    with contextlib.suppress(BaseException):
        await task


def _failure(task: asyncio.Task[None]) -> str | None:
    if task.cancelled() or not task.done():
        return None
    exc = task.exception()
    if exc is None:
        return None
    log.error("connector failed: %s", exc, exc_info=exc)
    return f"{type(exc).__name__}: {exc}"
