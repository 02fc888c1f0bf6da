"""The OPC UA connector: subscribes to a site's OPC UA source and hands frames to a sink.

One `run()` is a loop of sessions. Each session connects (security from the site), looks up
the namespace index of the source's `namespace_uri`, creates its subscriptions and monitored
items from scratch (never trusting one from an earlier session), reads every signal once,
and then submits one frame per asset per publishing interval until the connection is lost
or `stop` is set.

A lost connection is noticed by whichever comes first: the socket closing, asyncua's
connection supervisor (its server-state probe every 2 s), a Bad status change on a
subscription, our own probe of the server's CurrentTime every second (2 s timeout), or a
subscription silent for more than twice its keep-alive period (asyncua re-creating a stale
subscription counts as a loss too: values may have been missed). Then the connector
submits, per asset, a frame of BAD readings (status BadCommunicationError, at the detection
time) so downstream knows the values are no longer live, and reconnects with exponential
backoff and jitter. A device or network problem never escapes `run()`: it is counted in
`stats.errors`, logged with the endpoint, and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from asyncua import Client, ua

from connectors.base import ConnectorStats, FrameSink
from connectors.metrics import READ_LATENCY
from connectors.opcua_plan import (
    SecuritySettings,
    SubscriptionPlan,
    check_node_ids,
    plan_subscriptions,
    security_settings,
)
from connectors.opcua_readings import gap_reading
from connectors.opcua_session import OpcUaSession, SessionError, SessionLost
from pipeline.errors import ConfigError
from pipeline.site import Asset, OpcUaSource, Site

log = logging.getLogger(__name__)


class Backoff:
    """Exponential reconnect delays: `initial` doubling up to `maximum`, each with up to
    `jitter` (a fraction) added at random so many connectors do not retry in lockstep."""

    def __init__(self, initial: float = 0.5, maximum: float = 10.0, jitter: float = 0.2) -> None:
        if initial <= 0 or maximum < initial or jitter < 0:
            raise ValueError("backoff needs 0 < initial <= maximum and jitter >= 0")
        self.initial, self.maximum, self.jitter = initial, maximum, jitter
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay * (1 + random.uniform(0, self.jitter))

    def reset(self) -> None:
        self._next = self.initial


class OpcUaConnector:
    """Reads the assets of one OPC UA source of a site (see the module docstring).

    `assets` narrows the source's assets (default: all it feeds); `endpoint` overrides the
    site's endpoint; `security` overrides keys of the site's security settings (mode,
    policy, certificate, private_key, server_certificate).
    """

    kind = "opcua"

    connect_timeout = 5.0
    """Seconds for socket, secure channel, session and subscriptions to be set up."""
    request_timeout = 4.0
    """Seconds asyncua waits for the answer to one request."""
    probe_interval = 1.0
    """Seconds between two reads of the server's CurrentTime."""
    probe_timeout = 2.0
    session_timeout_ms = 30_000
    """Requested session timeout: a connector that vanished leaves no session behind for long."""
    close_timeout = 2.0

    def __init__(
        self,
        site: Site,
        source_id: str,
        assets: list[str] | None = None,
        endpoint: str | None = None,
        security: dict[str, Any] | None = None,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        try:
            source = site.source(source_id)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None
        if not isinstance(source, OpcUaSource):
            raise ConfigError(f"source {source_id!r} is a {source.kind} source, not OPC UA")
        self.source_id = source_id
        self.source = source
        self.endpoint = endpoint or source.endpoint
        parts = urlsplit(self.endpoint)
        if parts.scheme != "opc.tcp" or not parts.hostname:
            raise ConfigError(f"expected opc.tcp://host:port/path, got {self.endpoint!r}")
        self.assets: tuple[Asset, ...] = _select_assets(site, source_id, assets)
        self.plans: list[SubscriptionPlan] = plan_subscriptions(self.assets)
        problems = check_node_ids(self.plans)
        if problems:
            raise ConfigError(f"source {source_id}: invalid node ids", problems)
        self.security: SecuritySettings = security_settings(source.security, security)
        self.stats = ConnectorStats()
        self.backoff = backoff or Backoff()
        self.last_reconnect_s: float | None = None
        """Seconds from the detection of the last loss until the connector was subscribed
        again and had submitted the fresh initial values."""
        self._latency = READ_LATENCY.labels(source_id=source_id)
        self._outage_since: float | None = None  # monotonic; None while connected
        self._gap_marked = False

    def __repr__(self) -> str:
        return f"OpcUaConnector({self.source_id!r}, endpoint={self.endpoint!r})"

    async def run(self, sink: FrameSink, stop: asyncio.Event) -> None:
        """Connect, subscribe and submit frames until `stop` is set; reconnect on loss."""
        self.backoff.reset()
        self._outage_since = None
        self._gap_marked = False
        failed = False
        while not stop.is_set():
            session = self._session(sink)
            try:
                detected = await self._attempt(session, stop, reconnecting=failed)
                if detected is None:
                    return
                failed = True
                self.stats.errors += 1
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                if not self._gap_marked:
                    # Once per outage; after what the lost session received was submitted,
                    # before its (possibly slow) goodbye to the server.
                    self._mark_gap(sink, detected)
                    self._gap_marked = True
            finally:
                await session.disconnect()
            delay = self.backoff.next_delay()
            log.info("opcua %s: reconnecting in %.1f s", self.endpoint, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _attempt(
        self, session: OpcUaSession, stop: asyncio.Event, *, reconnecting: bool
    ) -> datetime | None:
        """One session until stopped (None) or failed (returns when it was detected)."""
        try:
            if not await _unless_stopped(session.open(), stop):
                return None
            if reconnecting:
                self.stats.reconnects += 1
            if self._outage_since is not None:
                self.last_reconnect_s = time.monotonic() - self._outage_since
                log.info(
                    "opcua %s: reconnected and resubscribed %.2f s after the loss",
                    self.endpoint,
                    self.last_reconnect_s,
                )
            self._outage_since = None
            self._gap_marked = False
            self.backoff.reset()
            await session.serve(stop)
            return None
        except SessionLost as exc:
            log.warning("opcua %s: connection lost: %s", self.endpoint, exc)
            return exc.detected
        except _DEVICE_ERRORS as exc:
            log.warning("opcua %s: %s", self.endpoint, _describe(exc))
        except Exception:
            # A failure asyncua raised that we did not foresee: still the device side.
            log.exception("opcua %s: unexpected failure", self.endpoint)
        finally:
            await session.drain()
        return datetime.now(UTC)

    def _session(self, sink: FrameSink) -> OpcUaSession:
        return OpcUaSession(
            client=self._client(),
            endpoint=self.endpoint,
            namespace_uri=self.source.namespace_uri,
            plans=self.plans,
            security=self.security,
            sink=sink,
            stats=self.stats,
            on_frames=self._observe_latency,
            connect_timeout=self.connect_timeout,
            probe_interval=self.probe_interval,
            probe_timeout=self.probe_timeout,
            close_timeout=self.close_timeout,
        )

    def _client(self) -> Client:
        client = Client(self.endpoint, timeout=self.request_timeout, watchdog_intervall=2.0)
        client.name = client.description = f"Twinline connector {self.source_id}"
        client.application_uri = f"urn:twinline:connector:{self.source_id}"
        client.session_timeout = self.session_timeout_ms
        return client

    def _mark_gap(self, sink: FrameSink, detected: datetime) -> None:
        """Submit a BAD reading per signal of every asset: its values are not live anymore."""
        for asset in self.assets:
            sink.submit(asset.id, [gap_reading(name, detected) for name in asset.signals])
        log.info(
            "opcua %s: marked %d assets BAD (BadCommunicationError) at %s",
            self.endpoint,
            len(self.assets),
            detected.isoformat(),
        )

    def _observe_latency(self, frames: Sequence[tuple[str, list[dict[str, Any]]]]) -> None:
        """Read latency of each reading a subscription delivered: from its source timestamp
        to the frame's submission (clamped at 0 when the server's clock runs ahead)."""
        now = datetime.now(UTC)
        for _, readings in frames:
            for reading in readings:
                self._latency.observe(max(0.0, (now - reading["ts"]).total_seconds()))


def _select_assets(site: Site, source_id: str, wanted: list[str] | None) -> tuple[Asset, ...]:
    fed = site.assets_fed_by(source_id)
    if not wanted:
        if not fed:
            raise ConfigError(f"source {source_id!r} feeds no assets")
        return fed
    by_id: Mapping[str, Asset] = {a.id: a for a in fed}
    problems = []
    for asset_id in wanted:
        if asset_id in by_id:
            continue
        known = site.get_asset(asset_id)
        problems.append(
            f"asset {asset_id!r} is fed by {known.source_id}, not {source_id}"
            if known is not None
            else f"site {site.name} has no asset {asset_id!r}"
        )
    if problems:
        raise ConfigError(f"cannot read the assets asked for from {source_id}", problems)
    return tuple(by_id[a] for a in dict.fromkeys(wanted))


_DEVICE_ERRORS = (OSError, TimeoutError, ua.UaError, SessionError)


async def _unless_stopped(opening: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Await `opening` unless `stop` is set first (then cancel it); True when it finished."""
    task = asyncio.ensure_future(opening)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        stopped.cancel()
    if task.done():
        task.result()  # raises the opening's failure
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
