"""The contract between a device connector and what carries its frames to Kafka.

A connector reads one site source (an OPC UA server, a Modbus TCP device, an MQTT broker)
and hands each asset's readings to a `FrameSink`. A reading is a plain dict matching the
Avro `Reading` record::

    {"signal": str, "ts": aware UTC datetime, "value": float (NaN if none),
     "quality": "GOOD" | "UNCERTAIN" | "BAD", "status_code": int | None}

The sink (in production `connectors.publisher.FramePublisher`) adds the frame header
(asset_id, source_id, seq, ingest_ts), encodes it and delivers it, spooling on local disk
while Kafka is unreachable. Payloads that cannot be turned into readings go to
`FrameSink.dead_letter` with the original bytes, never silently dropped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol


class FrameSink(Protocol):
    """Where a connector puts what it read: one frame per asset per scan or publish batch."""

    def submit(self, asset_id: str, readings: list[dict[str, Any]]) -> None:
        """Accept one asset's readings as one frame; must not block on the network."""
        ...

    def dead_letter(
        self,
        reason: str,
        reason_code: str,
        payload: bytes,
        origin_topic: str,
        asset_id: str | None = None,
    ) -> None:
        """Record a payload the connector could not turn into readings, with why."""
        ...


@dataclass
class ConnectorStats:
    """Counters a connector keeps about its own device side."""

    reconnects: int = 0
    errors: int = 0
    reads: int = 0  # successful device reads / notification batches


class Connector(Protocol):
    """One site source, read until `stop` is set.

    `run` connects, reads or subscribes, calls `sink.submit(...)` once per asset per scan
    (or per publish batch), reconnects with backoff on failure (counting
    `stats.reconnects`), and returns when `stop` is set.
    """

    kind: str  # "opcua" | "modbus" | "mqtt"
    source_id: str  # the site source id, e.g. "opcua-line1"; frames carry it
    stats: ConnectorStats

    async def run(self, sink: FrameSink, stop: asyncio.Event) -> None: ...


@dataclass
class CollectingSink:
    """A `FrameSink` that keeps everything in memory, for tests of the pure parts."""

    frames: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)

    def submit(self, asset_id: str, readings: list[dict[str, Any]]) -> None:
        self.frames.append((asset_id, list(readings)))

    def dead_letter(
        self,
        reason: str,
        reason_code: str,
        payload: bytes,
        origin_topic: str,
        asset_id: str | None = None,
    ) -> None:
        self.dead_letters.append(
            {
                "reason": reason,
                "reason_code": reason_code,
                "payload": payload,
                "origin_topic": origin_topic,
                "asset_id": asset_id,
                "detected_ts": datetime.now(UTC),
            }
        )
