"""Prometheus metrics of the connector processes, labelled by `source_id`.

`twin connect ... --metrics-port P` serves them on http://HOST:P/metrics (HOST from
`--metrics-host`, 127.0.0.1 unless told otherwise). Connectors observe their device read
latency with `READ_LATENCY.labels(source_id=...).observe(seconds)`.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

FRAMES_PUBLISHED = Counter(
    "twin_connector_frames_published",
    "Telemetry frames whose delivery Kafka confirmed",
    ["source_id"],
)
READINGS_PUBLISHED = Counter(
    "twin_connector_readings_published",
    "Readings in telemetry frames whose delivery Kafka confirmed",
    ["source_id"],
)
FRAMES_READ = Counter(
    "twin_connector_frames_read",
    "Telemetry frames the connector read from its devices (before Kafka)",
    ["source_id"],
)
DEAD_LETTERS = Counter(
    "twin_connector_dead_letters",
    "Payloads the connector could not turn into readings, sent to the dead-letter topic",
    ["source_id"],
)
SPOOL_DEPTH = Gauge(
    "twin_connector_spool_depth",
    "Messages in the durable spool waiting for Kafka's confirmation",
    ["source_id"],
)
SPOOL_BYTES = Gauge(
    "twin_connector_spool_bytes",
    "Message bytes in the durable spool (bounded by --spool-max-mb)",
    ["source_id"],
)
SPOOL_DROPPED = Counter(
    "twin_connector_spool_dropped",
    "Oldest spooled messages dropped because the spool reached its bound",
    ["source_id"],
)
PUBLISH_ERRORS = Counter(
    "twin_connector_publish_errors",
    "Kafka delivery failures (the message stays in the spool and is sent again)",
    ["source_id"],
)
PRODUCER_RESTARTS = Counter(
    "twin_connector_producer_restarts",
    "Kafka producers re-created after a fatal error or a delivery stall",
    ["source_id"],
)
RECONNECTS = Counter(
    "twin_connector_reconnects",
    "Reconnections of the connector to its device, server or broker",
    ["source_id"],
)
DEVICE_ERRORS = Counter(
    "twin_connector_device_errors",
    "Failed device reads, timeouts and connection errors",
    ["source_id"],
)
READ_LATENCY = Histogram(
    "twin_connector_read_latency_seconds",
    "Time of one device read (a Modbus block read, an OPC UA read or notification batch)",
    ["source_id"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def register_source(source_id: str) -> None:
    """Create every metric's series for `source_id` at zero, so they show before they move."""
    for metric in (
        FRAMES_PUBLISHED,
        READINGS_PUBLISHED,
        FRAMES_READ,
        DEAD_LETTERS,
        SPOOL_DEPTH,
        SPOOL_BYTES,
        SPOOL_DROPPED,
        PUBLISH_ERRORS,
        PRODUCER_RESTARTS,
        RECONNECTS,
        DEVICE_ERRORS,
        READ_LATENCY,
    ):
        metric.labels(source_id=source_id)


def serve_metrics(port: int, host: str = "127.0.0.1") -> Any:
    """Serve /metrics on host:port in a background thread; the server (call `shutdown()`)."""
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc}") from exc
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
