"""A real OPC UA server (asyncua) whose address space mirrors the site.

    async with OpcUaSimServer(site, host="127.0.0.1", port=4840) as server:
        server.endpoint                    # "opc.tcp://127.0.0.1:4840/twinline"
        await server.update(plant.step(now))

Address space: Objects / <site> / <line> / <asset> (an object named after the asset, its
name as description), and under each asset one variable per signal with the node id of the
site's binding (`ns` = the index of the source's namespace URI on this server). Gauges are
AnalogItemType variables with the EngineeringUnits, EURange (expected range) and
InstrumentRange (physical range) properties; counters and state codes are plain variables
with EngineeringUnits. Each new reading (a sensor reads once per sampling period) is written
as a DataValue with the reading's time as SourceTimestamp and a StatusCode: Good,
UncertainLastUsableValue for a sensor the scenario has stuck, BadCommunicationError while
the asset's communication is lost (written once, then left alone until the link is back;
as the specification asks, a bad value is null).

Starting costs about two seconds (asyncua loads the standard address space); `stop()` and
`start()` restart the listener on the same port without rebuilding it, as a restarted device
would, dropping every session and subscription.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from contextlib import suppress
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

from asyncua import Node, Server, ua

from connectors.sim.errors import SimulatorError
from connectors.sim.plant import BAD, UNCERTAIN, AssetSample
from connectors.sim.units import unece_unit_id
from pipeline.kafka.broker import port_is_free
from pipeline.site import (
    Asset,
    OpcUaSignalBinding,
    OpcUaSource,
    Signal,
    SignalKind,
    Site,
    SourceKind,
)

log = logging.getLogger(__name__)

UNITS_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"
STATUS_GOOD = ua.StatusCodes.Good
STATUS_STUCK = ua.StatusCodes.UncertainLastUsableValue
STATUS_SENSOR_BAD = ua.StatusCodes.BadSensorFailure
STATUS_COMM_LOST = ua.StatusCodes.BadCommunicationError
STATUS_NO_DATA = ua.StatusCodes.BadWaitingForInitialData

# asyncua logs every session and every unsupported security setting at INFO/WARNING.
for _name in ("asyncua.server", "asyncua.uaprotocol", "asyncua.common"):
    logging.getLogger(_name).setLevel(logging.ERROR)


class OpcUaSimServer:
    """The site's OPC UA assets served over OPC UA (see the module docstring).

    `source_id` limits the server to one OPC UA source of the site (default: every OPC UA
    source, each with its own namespace). `host`/`port` override the source's endpoint.
    """

    def __init__(
        self,
        site: Site,
        host: str | None = None,
        port: int | None = None,
        source_id: str | None = None,
    ) -> None:
        self.site = site
        sources = {
            sid: src
            for sid, src in site.sources.items()
            if isinstance(src, OpcUaSource) and (source_id is None or sid == source_id)
        }
        if not sources:
            raise SimulatorError(
                f"site {site.name} has no OPC UA source" + (f" {source_id!r}" if source_id else "")
            )
        self.sources: dict[str, OpcUaSource] = sources
        self.assets: tuple[Asset, ...] = tuple(
            a for a in site.assets if a.source_kind is SourceKind.OPCUA and a.source_id in sources
        )
        first = urlsplit(next(iter(sources.values())).endpoint)
        self.host = host or first.hostname or "127.0.0.1"
        self.port = port if port is not None else (first.port or 4840)
        self.path = first.path or "/"
        self.namespaces: dict[str, int] = {}
        """Namespace index by source id, once started."""
        self._server: Server | None = None
        self._nodes: dict[str, dict[str, _Variable]] = {}
        self._marked_lost: set[str] = set()
        self._listening = False

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.path}"

    @property
    def listening(self) -> bool:
        return self._listening

    def node_id(self, asset_id: str, signal: str) -> str:
        """The node id string a client reads for one signal (known once started)."""
        return self._nodes[asset_id][signal].node_id.to_string()

    async def __aenter__(self) -> OpcUaSimServer:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Build the address space and start listening."""
        if not port_is_free(self.port, self.host):  # before spending two seconds on init
            raise SimulatorError(f"OPC UA server cannot listen on {self.endpoint}: port in use")
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"Twinline plant simulator ({self.site.name})")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        await server.set_application_uri(f"urn:twinline:simulator:{self.site.name}")
        self._server = server
        for source_id, source in self.sources.items():
            self.namespaces[source_id] = await server.register_namespace(source.namespace_uri)
        await self._build(server)
        await self.start()

    async def start(self) -> None:
        """Listen (again) on the endpoint; the address space and values are kept."""
        if self._server is None:
            raise SimulatorError("OPC UA server: call open() (or use `async with`) first")
        if self._listening:
            return
        # asyncua logs a traceback when it cannot bind; a busy port is a plain user error.
        if not port_is_free(self.port, self.host):
            raise SimulatorError(f"OPC UA server cannot listen on {self.endpoint}: port in use")
        try:
            await self._server.start()
        except OSError as exc:
            raise SimulatorError(f"OPC UA server cannot listen on {self.endpoint}: {exc}") from exc
        self._listening = True
        log.info("OPC UA server listening on %s", self.endpoint)

    async def stop(self) -> None:
        """Stop listening and drop every session, keeping the address space (a restart)."""
        if self._server is None or not self._listening:
            return
        self._listening = False
        # The internal clock task sleeps a second between updates; stop waits for it.
        # Cancelling it makes a stop take milliseconds instead.
        iserver = self._server.iserver
        task = getattr(iserver, "time_task", None)
        if isinstance(task, asyncio.Task):
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            iserver.time_task = None
        await self._server.stop()

    async def close(self) -> None:
        await self.stop()
        self._server = None

    async def _build(self, server: Server) -> None:
        root = await server.nodes.objects.add_folder(
            next(iter(self.namespaces.values())), self.site.name
        )
        lines: dict[str, Node] = {}
        for asset in self.assets:
            ns = self.namespaces[asset.source_id]
            if asset.line.id not in lines:
                lines[asset.line.id] = await root.add_folder(ns, asset.line.id)
            holder = await lines[asset.line.id].add_object(ns, asset.id)
            await holder.write_attribute(
                ua.AttributeIds.Description,
                ua.DataValue(ua.Variant(ua.LocalizedText(asset.name or asset.id))),
            )
            self._nodes[asset.id] = {}
            for signal in asset.signals.values():
                binding = signal.binding
                if not isinstance(binding, OpcUaSignalBinding):
                    continue
                variable = _Variable(ua.NodeId.from_string(binding.node_id(ns)), signal)
                await _add_signal(holder, variable, ns, signal)
                self._nodes[asset.id][signal.name] = variable

    async def update(self, samples: Iterable[AssetSample]) -> int:
        """Write the samples of the served assets; returns the number of values written."""
        server = self._server
        if server is None:
            raise SimulatorError("OPC UA server is not open")
        now = datetime.now(UTC)
        written = 0
        for sample in samples:
            nodes = self._nodes.get(sample.asset_id)
            if nodes is None:
                continue
            if sample.comm_lost:
                # The device link is down: the server marks the values bad once, then nothing
                # changes until the link is back.
                if sample.asset_id in self._marked_lost:
                    continue
                self._marked_lost.add(sample.asset_id)
                for variable in nodes.values():
                    await server.write_attribute_value(
                        variable.node_id, variable.bad(STATUS_COMM_LOST, sample.ts, now)
                    )
                    variable.written = None
                    written += 1
                continue
            self._marked_lost.discard(sample.asset_id)
            for signal, variable in nodes.items():
                # A sensor holds its reading between samples: write only a new reading (or
                # a new status), so that subscriptions see each reading once.
                key = (sample.sampled_at(signal), _status(sample.quality.get(signal, "GOOD")))
                if key == variable.written:
                    continue
                variable.written = key
                await server.write_attribute_value(
                    variable.node_id,
                    variable.data_value(sample.measured[signal], key[1], key[0], now),
                )
                written += 1
        return written


def _status(quality: str) -> int:
    if quality == UNCERTAIN:
        return STATUS_STUCK
    if quality == BAD:
        return STATUS_SENSOR_BAD
    return STATUS_GOOD


class _Variable:
    """One signal's variable: its node id and the variant type its values are written as."""

    __slots__ = ("kind", "node_id", "written")

    def __init__(self, node_id: ua.NodeId, signal: Signal) -> None:
        self.node_id = node_id
        self.written: tuple[datetime, int] | None = None
        """Source timestamp and status of the last value written."""
        self.kind = (
            ua.VariantType.Int32 if signal.kind is SignalKind.STATE else ua.VariantType.Double
        )

    def variant(self, value: float) -> ua.Variant:
        if self.kind is ua.VariantType.Int32:
            return ua.Variant(round(value), self.kind)
        return ua.Variant(float(value), self.kind)

    def bad(self, status: int, ts: datetime, now: datetime) -> ua.DataValue:
        """A bad value: null, as OPC UA requires for a bad status."""
        return ua.DataValue(
            Value=ua.Variant(),
            StatusCode=ua.StatusCode(ua.UInt32(status)),
            SourceTimestamp=cast(Any, ts),
            ServerTimestamp=cast(Any, now),
        )

    def data_value(self, value: float, status: int, ts: datetime, now: datetime) -> ua.DataValue:
        # asyncua annotates timestamps with its own datetime subclass; plain aware
        # datetimes are what it encodes.
        return ua.DataValue(
            Value=self.variant(value),
            StatusCode=ua.StatusCode(ua.UInt32(status)),
            SourceTimestamp=cast(Any, ts),
            ServerTimestamp=cast(Any, now),
        )


async def _add_signal(parent: Node, variable: _Variable, ns: int, signal: Signal) -> None:
    is_state = variable.kind is ua.VariantType.Int32
    node_id = variable.node_id
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = node_id
    item.BrowseName = ua.QualifiedName(signal.name, ns)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent.nodeid
    item.ReferenceTypeId = _standard(ua.ObjectIds.HasComponent)
    analog = signal.kind is SignalKind.GAUGE
    item.TypeDefinition = _standard(
        ua.ObjectIds.AnalogItemType if analog else ua.ObjectIds.BaseDataVariableType
    )
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(signal.name)
    attrs.Description = ua.LocalizedText(signal.description or signal.name)
    attrs.DataType = _standard(ua.ObjectIds.Int32 if is_state else ua.ObjectIds.Double)
    attrs.Value = variable.variant(0.0)
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.MinimumSamplingInterval = signal.sampling_period.total_seconds() * 1000.0
    item.NodeAttributes = attrs
    results = await parent.session.add_nodes([item])
    results[0].StatusCode.check()
    node = Node(parent.session, node_id)
    await node.write_attribute(
        ua.AttributeIds.Value,
        ua.DataValue(variable.variant(0.0), StatusCode=ua.StatusCode(ua.UInt32(STATUS_NO_DATA))),
    )
    await _property(node, ns, "EngineeringUnits", _eu_information(signal.unit))
    if analog:
        await _property(node, ns, "EURange", ua.Range(signal.expected.min, signal.expected.max))
        await _property(
            node, ns, "InstrumentRange", ua.Range(signal.physical.min, signal.physical.max)
        )


def _standard(object_id: int) -> ua.NodeId:
    """A node id of the standard namespace (0)."""
    return ua.NodeId(ua.Int32(object_id))


async def _property(node: Node, ns: int, name: str, value: Any) -> None:
    await node.add_property(
        ua.NodeId(NamespaceIndex=ua.Int16(ns)),
        ua.QualifiedName(name, 0),
        ua.Variant(value, ua.VariantType.ExtensionObject),
    )


def _eu_information(unit: str) -> ua.EUInformation:
    return ua.EUInformation(
        NamespaceUri=UNITS_NAMESPACE,
        UnitId=unece_unit_id(unit),
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(unit),
    )
