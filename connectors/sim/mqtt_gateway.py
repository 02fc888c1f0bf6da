"""An edge gateway that publishes the site's MQTT assets as JSON telemetry (aiomqtt).

    async with MqttGateway(site, "mqtt://127.0.0.1:1883") as gateway:
        await gateway.publish(plant.step(now))     # one message per MQTT asset

Each asset bound to an MQTT source gets one JSON message per call on its topic, built by the
site's binding (`MqttAssetBinding.payload`: the timestamp field plus one field per signal),
with the source's QoS. An asset whose communication is lost publishes nothing.

Entering fails with `SimulatorError` when the broker cannot be reached. If the broker goes
away later, messages are dropped (and counted) while a background task reconnects with
backoff, as a field gateway without local buffering does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import suppress
from types import TracebackType
from urllib.parse import urlsplit

import aiomqtt

from connectors.sim.errors import SimulatorError
from connectors.sim.plant import AssetSample
from pipeline.site import Asset, MqttAssetBinding, MqttSource, Site

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
PUBLISH_TIMEOUT_S = 2.0
BACKOFF_S = (0.2, 5.0)  # first and largest wait between reconnect attempts


class MqttGateway:
    """Publishes the samples of the site's MQTT assets (see the module docstring).

    `broker_url` (mqtt://host:port) overrides the brokers of the site's MQTT sources.
    """

    def __init__(self, site: Site, broker_url: str | None = None, client_id: str | None = None):
        sources = {sid: s for sid, s in site.sources.items() if isinstance(s, MqttSource)}
        if not sources:
            raise SimulatorError(f"site {site.name} has no MQTT source")
        url = broker_url or next(iter(sources.values())).broker
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise SimulatorError(f"expected an MQTT broker URL mqtt://host:port, got {url!r}")
        self.broker_url = url
        self.host = parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.tls = parts.scheme == "mqtts"
        self.client_id = client_id or f"twinline-sim-{site.name}"
        self.bindings: dict[str, MqttAssetBinding] = {
            a.id: a.binding for a in site.assets if isinstance(a.binding, MqttAssetBinding)
        }
        self.assets: tuple[Asset, ...] = tuple(a for a in site.assets if a.id in self.bindings)
        self.published = 0
        self.dropped = 0
        self.reconnects = 0
        self._client: aiomqtt.Client | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def __aenter__(self) -> MqttGateway:
        try:
            await self._connect()
        except aiomqtt.MqttError as exc:
            raise SimulatorError(f"MQTT broker {self.broker_url} is not reachable: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
            self._reconnecting = None
        await self._disconnect()
        for task in list(self._closers):
            task.cancel()
        await asyncio.gather(*self._closers, return_exceptions=True)

    async def _connect(self) -> None:
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            timeout=CONNECT_TIMEOUT_S,
            tls_params=aiomqtt.TLSParameters() if self.tls else None,
        )
        await client.__aenter__()
        self._client = client
        watcher = asyncio.get_running_loop().create_task(self._watch(client))
        self._closers.add(watcher)
        watcher.add_done_callback(self._closers.discard)
        log.info("MQTT gateway connected to %s", self.broker_url)

    async def _watch(self, client: aiomqtt.Client) -> None:
        # The gateway subscribes to nothing: iterating the (empty) message stream is the
        # client's public way to learn at once that the connection dropped.
        try:
            async for _ in client.messages:
                pass
        except aiomqtt.MqttError as exc:
            if client is self._client and not self._closing:
                self._lost(exc)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # An error here means the connection is already gone: nothing left to close.
            with suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def _reconnect(self) -> None:
        wait = BACKOFF_S[0]
        while not self._closing:
            await asyncio.sleep(wait)
            try:
                await self._connect()
            except aiomqtt.MqttError as exc:
                log.debug("MQTT reconnect to %s failed: %s", self.broker_url, exc)
                wait = min(wait * 2, BACKOFF_S[1])
                continue
            self.reconnects += 1
            log.info("MQTT gateway reconnected to %s", self.broker_url)
            return

    def _lost(self, exc: Exception) -> None:
        if self._client is None:
            return
        log.warning("MQTT broker %s lost (%s); reconnecting", self.broker_url, exc)
        client, self._client = self._client, None
        closer = asyncio.get_running_loop().create_task(_close_quietly(client))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def publish(self, samples: list[AssetSample]) -> int:
        """Publish one message per MQTT asset (skipping silent ones); returns messages sent."""
        messages: list[tuple[str, bytes, int]] = []
        for sample in samples:
            binding = self.bindings.get(sample.asset_id)
            if binding is None or sample.comm_lost:
                continue
            body = binding.payload(sample.ts, sample.measured)
            messages.append((binding.topic, json.dumps(body).encode("utf-8"), binding.qos))
        client = self._client
        if client is None:
            self.dropped += len(messages)
            return 0
        started = time.monotonic()
        results = await asyncio.gather(
            *(
                client.publish(topic, payload, qos=qos, timeout=PUBLISH_TIMEOUT_S)
                for topic, payload, qos in messages
            ),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, Exception)]
        sent = len(results) - len(failures)
        self.published += sent
        self.dropped += len(failures)
        if failures:
            self._lost(failures[0])
        log.debug("published %d messages in %.3fs", sent, time.monotonic() - started)
        return sent


async def _close_quietly(client: aiomqtt.Client) -> None:
    with suppress(aiomqtt.MqttError):  # the broker is gone; the socket is closed either way
        await client.__aexit__(None, None, None)
