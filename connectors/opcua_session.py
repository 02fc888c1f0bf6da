"""One OPC UA session of the connector: connect, subscribe, read, watch, close.

A session is used once. `open()` builds everything from scratch on a fresh asyncua client;
`serve(stop)` delivers frames until `stop` is set (returns) or the connection is lost
(raises `SessionLost`); `drain()` submits what was received, `disconnect()` lets go of the
server; neither raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import (
    DataChangeEvent,
    OverflowPolicy,
    StatusChangeEvent,
    Subscription,
)
from asyncua.crypto import uacrypto
from asyncua.observer import Observer, SubscriptionEvent
from cryptography import x509

from connectors.base import ConnectorStats, FrameSink
from connectors.opcua_plan import MonitoredSignal, SecuritySettings, SubscriptionPlan
from connectors.opcua_readings import FrameBatcher, reading_from

log = logging.getLogger("connectors.opcua")

Frames = Sequence[tuple[str, list[dict[str, Any]]]]

READ_CHUNK = 500  # nodes per Read request; servers cap MaxNodesPerRead
EVENT_QUEUE = 100_000  # notifications waiting for the consumer before a forced reconnect
_FILTER_REJECTED = {
    ua.StatusCodes.BadFilterNotAllowed,
    ua.StatusCodes.BadMonitoredItemFilterInvalid,
    ua.StatusCodes.BadMonitoredItemFilterUnsupported,
    ua.StatusCodes.BadDeadbandFilterInvalid,
}
_CURRENT_TIME = ua.NodeId(ua.Int32(ua.ObjectIds.Server_ServerStatus_CurrentTime))


class _ExpectedAfterLoss(logging.Filter):
    """Drops asyncua's own reports of a connection that is already gone (a traceback of its
    publish loop, warnings while closing): the connector reports the loss once, itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ConnectionError):
            return False
        return "connection is closed" not in record.getMessage()


for _name in ("asyncua.client.ua_session.UaSession", "asyncua.client.ua_client.UaClient"):
    logging.getLogger(_name).addFilter(_ExpectedAfterLoss())


class SessionError(Exception):
    """The server could not be used as configured (e.g. it lacks the namespace)."""


class SessionLost(SessionError):
    """The connection broke while the session was serving."""

    def __init__(self, reason: str, detected: datetime) -> None:
        super().__init__(reason)
        self.detected = detected


class _LossObserver(Observer):
    """Hears asyncua's own findings: a transport state change, a subscription it re-created
    behind our back (its stale-subscription watchdog). Both mean values may have been
    missed, so both end the session."""

    def __init__(self, lose: Callable[[str], None]) -> None:
        self._lose = lose

    def on_state_change(self, state: UaClientState) -> None:
        if state in (UaClientState.DISCONNECTED, UaClientState.RECONNECTING):
            self._lose(f"client state {state.value}")

    def on_subscription_event(self, subscription_id: int | None, event: SubscriptionEvent) -> None:
        if event is SubscriptionEvent.RECREATED:
            self._lose(f"subscription {subscription_id} went stale and was re-created")


class OpcUaSession:
    def __init__(
        self,
        *,
        client: Client,
        endpoint: str,
        namespace_uri: str,
        plans: Sequence[SubscriptionPlan],
        security: SecuritySettings,
        sink: FrameSink,
        stats: ConnectorStats,
        on_frames: Callable[[Frames], None],
        connect_timeout: float,
        probe_interval: float,
        probe_timeout: float,
        close_timeout: float,
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.namespace_uri = namespace_uri
        self.plans = plans
        self.security = security
        self.sink = sink
        self.stats = stats
        self.on_frames = on_frames
        self.connect_timeout = connect_timeout
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.close_timeout = close_timeout
        self.namespace_index: int | None = None
        self.open_s: float | None = None
        """Seconds `open()` took: connect, subscribe, initial read."""
        self._subscriptions: list[tuple[SubscriptionPlan, Subscription, FrameBatcher]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._lost = asyncio.Event()
        self._loss: SessionLost | None = None
        self._serving = False
        self._connected = False
        self._subscribed_at = time.monotonic()

    # -- set-up ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create subscriptions and monitored items, read every signal once."""
        started = time.monotonic()
        async with asyncio.timeout(self.connect_timeout):
            if self.security.enabled:
                await self._secure()
            self.client.connection_lost_callback = self._connection_lost
            self.client.uaclient.observer = _LossObserver(self.lose)
            await self.client.connect()
            self._connected = True
            try:
                ns = await self.client.get_namespace_index(self.namespace_uri)
            except ValueError:
                raise SessionError(f"the server has no namespace {self.namespace_uri!r}") from None
            self.namespace_index = ns
            for plan in self.plans:
                sub = await self.client.create_subscription(
                    plan.parameters(),
                    handler=None,
                    queue_maxsize=EVENT_QUEUE,
                    overflow=OverflowPolicy.DISCONNECT,
                )
                self._subscriptions.append((plan, sub, FrameBatcher()))
                await self._monitor(sub, plan, ns)
            self._subscribed_at = time.monotonic()
            await self._read_all(ns)
        self.open_s = time.monotonic() - started
        items = sum(len(p.signals) for p in self.plans)
        log.info(
            "opcua %s: connected in %.2f s (%s), namespace %s = ns=%d, %d subscription(s), "
            "%d items",
            self.endpoint,
            self.open_s,
            self.security.describe(),
            self.namespace_uri,
            ns,
            len(self._subscriptions),
            items,
        )

    async def _secure(self) -> None:
        sec = self.security
        if sec.certificate is None or sec.private_key is None:
            raise SessionError(f"security {sec.describe()} needs certificate and private_key")
        cert = await uacrypto.load_certificate(str(sec.certificate))
        uri = _application_uri(cert)
        if uri is not None:
            # Servers check that the client's ApplicationUri is the one in its certificate.
            self.client.application_uri = uri
        await self.client.set_security(
            sec.policy_class,
            certificate=str(sec.certificate),
            private_key=str(sec.private_key),
            server_certificate=str(sec.server_certificate) if sec.server_certificate else None,
            mode=sec.message_mode,
        )

    async def _monitor(self, sub: Subscription, plan: SubscriptionPlan, ns: int) -> None:
        """Create the plan's monitored items; items whose filter the server rejects are
        created again without it (e.g. a percent deadband on a node without EURange)."""
        results = await sub.create_monitored_items(plan.item_requests(ns))
        failed = [(s, r) for s, r in zip(plan.signals, results, strict=True) if _failed(r)]
        unfiltered = [s for s, r in failed if _status(r) in _FILTER_REJECTED]
        if unfiltered:
            log.warning(
                "opcua %s: the server rejected the data change filter of %d item(s) "
                "(e.g. %s.%s); monitoring them without it",
                self.endpoint,
                len(unfiltered),
                unfiltered[0].asset_id,
                unfiltered[0].signal,
            )
            retry = await sub.create_monitored_items(
                plan.item_request(s, ns, with_filter=False) for s in unfiltered
            )
            again = {s.handle for s, r in zip(unfiltered, retry, strict=True) if _failed(r)}
            failed = [(s, r) for s, r in failed if s not in unfiltered or s.handle in again]
        for signal, result in failed:
            log.warning(
                "opcua %s: cannot monitor %s.%s (%s): %s",
                self.endpoint,
                signal.asset_id,
                signal.signal,
                signal.binding.node_id(ns),
                ua.StatusCode(ua.UInt32(_status(result))).name,
            )

    async def _read_all(self, ns: int) -> None:
        """Read every signal once, so a (re)connected asset starts from fresh values."""
        for plan, _, batcher in self._subscriptions:
            for start in range(0, len(plan.signals), READ_CHUNK):
                chunk = plan.signals[start : start + READ_CHUNK]
                values = await self._read(chunk, ns)
                received = datetime.now(UTC)
                for signal, value in zip(chunk, values, strict=True):
                    batcher.add(signal.asset_id, reading_from(signal.signal, value, received))
            if batcher.flush(self.sink):
                self.stats.reads += 1

    async def _read(self, signals: Sequence[MonitoredSignal], ns: int) -> list[ua.DataValue]:
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        for signal in signals:
            item = ua.ReadValueId()
            item.NodeId = signal.node_id(ns)
            item.AttributeId = ua.AttributeIds.Value
            params.NodesToRead.append(item)
        return await self.client.uaclient.read(params)

    # -- serving --------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        """Deliver frames until `stop` is set; raise `SessionLost` when the connection breaks."""
        self._serving = True
        for plan, sub, batcher in self._subscriptions:
            self._spawn(self._consume(plan, sub, batcher))
            self._spawn(self._flush_every(plan, batcher))
        self._spawn(self._watch())
        stopped = asyncio.ensure_future(stop.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait((stopped, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            lost.cancel()
        if stop.is_set():
            return
        if self._loss is not None:
            raise self._loss

    def lose(self, reason: str) -> None:
        """Note that the connection is lost (the first reason and time win)."""
        if not self._serving or self._loss is not None:
            return
        self._loss = SessionLost(reason, datetime.now(UTC))
        self._lost.set()

    async def _connection_lost(self, exc: Exception) -> None:
        self.lose(f"asyncua connection supervisor: {exc!r}")

    def _spawn(self, body: Any) -> None:
        self._tasks.append(asyncio.create_task(self._guarded(body)))

    async def _guarded(self, body: Any) -> None:
        try:
            await body
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("opcua %s: session task failed", self.endpoint)
            self.lose(f"session task failed: {exc!r}")

    async def _consume(
        self, plan: SubscriptionPlan, sub: Subscription, batcher: FrameBatcher
    ) -> None:
        signals = {s.handle: s for s in plan.signals}
        async for event in sub:
            if isinstance(event, DataChangeEvent):
                item = event.data.monitored_item
                signal = signals.get(item.ClientHandle)
                if signal is not None and item.Value is not None:
                    received = datetime.now(UTC)
                    batcher.add(signal.asset_id, reading_from(signal.signal, item.Value, received))
            elif isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                self.lose(f"subscription {sub.subscription_id} status changed to {status.name}")
                return
        self.lose(f"subscription {sub.subscription_id} ended")

    async def _flush_every(self, plan: SubscriptionPlan, batcher: FrameBatcher) -> None:
        # One frame per asset per publishing interval, on a fixed schedule (no drift).
        period = plan.publishing_interval.total_seconds()
        deadline = time.monotonic()
        while True:
            deadline += period
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            self._flush(batcher)

    def _flush(self, batcher: FrameBatcher) -> None:
        frames = batcher.flush(self.sink)
        if frames:
            self.stats.reads += 1
            self.on_frames(frames)

    async def _watch(self) -> None:
        """Probe the server's clock; check that every subscription still publishes."""
        while True:
            await asyncio.sleep(self.probe_interval)
            if self.client.state is not UaClientState.CONNECTED:
                self.lose(f"client state {self.client.state.value}")
                return
            try:
                node = self.client.get_node(_CURRENT_TIME)
                await asyncio.wait_for(node.read_value(), self.probe_timeout)
            except (TimeoutError, OSError, ua.UaError) as exc:
                self.lose(f"server time probe failed: {exc!r}")
                return
            now = time.monotonic()
            for plan, sub, _ in self._subscriptions:
                silent = now - (sub.last_publish_at or self._subscribed_at)
                allowed = 2 * plan.keepalive_period.total_seconds() + self.probe_timeout
                if silent > allowed:
                    self.lose(f"subscription {sub.subscription_id} silent for {silent:.1f} s")
                    return

    # -- tear-down ------------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop the session's tasks and submit what was received. Never raises."""
        self._serving = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for _, _, batcher in self._subscriptions:
            try:
                self._flush(batcher)
            except Exception:
                log.exception("opcua %s: could not submit the last readings", self.endpoint)

    async def disconnect(self) -> None:
        """Close session, channel and socket (bounded in time). Never raises."""
        await self.drain()
        self.client.connection_lost_callback = None
        if not self._connected:
            self.client.disconnect_socket()
            return
        self._connected = False
        try:
            await asyncio.wait_for(self.client.disconnect(), self.close_timeout)
        except Exception as exc:
            log.debug("opcua %s: disconnect did not complete: %r", self.endpoint, exc)
            self.client.disconnect_socket()


def _failed(result: int | ua.StatusCode) -> bool:
    return isinstance(result, ua.StatusCode)


def _status(result: int | ua.StatusCode) -> int:
    return int(result.value) if isinstance(result, ua.StatusCode) else 0


def _application_uri(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
