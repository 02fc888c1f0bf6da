"""The MQTT connector: subscribes to the assets' topics and turns JSON payloads into frames.

Each asset's topic (from the site's bindings) is subscribed with the source's QoS. A message
is one asset's sample: a JSON object with a timestamp field (`MqttAssetBinding.timestamp`)
and one field per signal (`MqttSignalBinding.extract`, dotted paths read nested objects). It
becomes one frame; every reading carries the payload's timestamp and quality GOOD (JSON
booleans read as 0/1; a signal whose field is absent or null is left out).

A message that cannot be read goes to the dead-letter topic with the original bytes, the
reason and `origin_topic` "mqtt:<topic>", and the connector carries on:

- `unknown_asset`: no selected asset publishes on that topic;
- `malformed_payload`: not UTF-8 JSON, not an object, timestamp missing or unreadable, a
  signal value that is not a number, or no field of any of the asset's signals.

The session is persistent (clean_session false, client id from the source's `client_id`,
else "twinline-<site>-<source>"), so a QoS 1/2 message published while the connector was
disconnected is kept by the broker and delivered on reconnect. When the broker goes away the
connector reconnects with backoff (0.5 s doubling to 10 s) and counts `stats.reconnects`.
Two connectors must not share a client id: the broker would disconnect one for the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from connectors.base import ConnectorStats, FrameSink
from connectors.metrics import READ_LATENCY
from connectors.sources import pick_assets
from pipeline.errors import ConfigError
from pipeline.site import MqttAssetBinding, MqttSource, Site

log = logging.getLogger(__name__)

BACKOFF_MAX_S = 10.0


class MqttConnector:
    """Subscribes to the assets of one MQTT source (see the module docstring)."""

    kind = "mqtt"

    def __init__(
        self,
        site: Site,
        source_id: str,
        assets: list[str] | None = None,
        broker: str | None = None,
    ) -> None:
        source = site.source(source_id)
        if not isinstance(source, MqttSource):
            raise ConfigError(f"source {source_id} is a {source.kind} source, not mqtt")
        url = urlsplit(broker or source.broker)
        try:
            port = url.port
        except ValueError:
            port = None
            url = url._replace(scheme="")
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            raise ConfigError(f"--broker: expected mqtt://HOST:PORT or mqtts://HOST:PORT: {broker}")
        self.source_id = source_id
        self.host = url.hostname
        self.tls = url.scheme == "mqtts"
        self.port = port or (8883 if self.tls else 1883)
        self.client_id = source.client_id or f"twinline-{site.name}-{source_id}"
        self.keepalive_s = max(1, int(source.keepalive.total_seconds()))
        self.stats = ConnectorStats()
        self.bindings: dict[str, tuple[str, MqttAssetBinding]] = {}
        for asset in pick_assets(site, source_id, assets):
            if not isinstance(asset.binding, MqttAssetBinding):
                raise ConfigError(f"asset {asset.id} has no MQTT binding")
            self.bindings[asset.binding.topic] = (asset.id, asset.binding)
        self._latency = READ_LATENCY.labels(source_id=source_id)

    @property
    def broker_url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    async def run(self, sink: FrameSink, stop: asyncio.Event) -> None:
        """Receive until `stop` is set, reconnecting whenever the broker goes away."""
        backoff = 0.5
        connected_before = False
        while not stop.is_set():
            try:
                async with self._client() as client:
                    if connected_before:
                        self.stats.reconnects += 1
                        log.info("%s: reconnected to %s", self.source_id, self.broker_url)
                    else:
                        log.info("%s: connected to %s", self.source_id, self.broker_url)
                    connected_before = True
                    for topic, (_asset_id, binding) in self.bindings.items():
                        await client.subscribe(topic, qos=binding.qos)
                    backoff = 0.5
                    await self._receive(client, sink, stop)
            except aiomqtt.MqttError as exc:
                self.stats.errors += 1
                log.warning(
                    "%s: MQTT broker %s: %s; retrying in %.1fs",
                    self.source_id,
                    self.broker_url,
                    exc,
                    backoff,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            clean_session=False,
            keepalive=self.keepalive_s,
            tls_params=aiomqtt.TLSParameters() if self.tls else None,
            timeout=10,
        )

    async def _receive(self, client: aiomqtt.Client, sink: FrameSink, stop: asyncio.Event) -> None:
        async def messages() -> None:
            async for message in client.messages:
                self.handle(message.topic.value, _payload_bytes(message.payload), sink)

        receiving = asyncio.create_task(messages())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receiving, stopping):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
            # Cancelled on purpose when stopping; a broker failure surfaces as MqttError.
            with contextlib.suppress(asyncio.CancelledError):
                await receiving

    def handle(self, topic: str, payload: bytes, sink: FrameSink) -> None:
        """Turn one message into a frame, or into a dead letter saying why it cannot be."""
        origin = f"mqtt:{topic}"
        entry = self.bindings.get(topic)
        if entry is None:
            sink.dead_letter(
                f"no asset of source {self.source_id} publishes on MQTT topic {topic!r}",
                "unknown_asset",
                payload,
                origin,
            )
            return
        asset_id, binding = entry
        readings, problem = _readings(binding, payload)
        if problem is not None:
            sink.dead_letter(problem, "malformed_payload", payload, origin, asset_id)
            return
        self.stats.reads += 1
        age = (datetime.now(UTC) - readings[0]["ts"]).total_seconds()
        self._latency.observe(max(0.0, age))
        sink.submit(asset_id, readings)


def _readings(binding: MqttAssetBinding, payload: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """The readings of a payload, or the reason it has none (a dead letter's reason)."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return [], f"payload is not UTF-8 JSON: {exc}"
    if not isinstance(data, dict):
        return [], f"payload is JSON {type(data).__name__}, expected an object"
    try:
        ts = binding.timestamp(data)
    except (ValueError, OverflowError) as exc:  # unparseable, or beyond year 9999
        return [], f"timestamp field {binding.timestamp_field!r}: {exc}"
    if ts is None:
        return [], f"timestamp field {binding.timestamp_field!r} is missing"
    readings = []
    wrong = []
    for name, signal in binding.signals.items():
        raw = signal.extract(data)
        if raw is None:
            continue
        if isinstance(raw, bool | int | float):
            value = float(raw)
        else:
            wrong.append(f"{signal.json_field}={json.dumps(raw)[:40]}")
            continue
        readings.append(
            {"signal": name, "ts": ts, "value": value, "quality": "GOOD", "status_code": None}
        )
    if wrong:
        return [], f"not a number: {', '.join(wrong)}"
    if not readings:
        fields = ", ".join(s.json_field for s in binding.signals.values())
        return [], f"no signal field in the payload (expected some of: {fields})"
    return readings, None


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return b"" if payload is None else str(payload).encode("utf-8")
