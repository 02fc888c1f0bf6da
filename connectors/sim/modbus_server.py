"""A real Modbus TCP server (pymodbus) with the site's register map.

    async with ModbusSimServer(site, host="127.0.0.1", port=5020) as server:
        server.update(plant.step(now))
        server.set_responding(False)       # the device hangs: requests time out
        server.set_responding(True)        # and answers again, on the same connection

One device (unit id) per unit id of the source's assets, with holding and input registers
where the site's bindings put them, encoded by `ModbusSignalBinding.encode` (data type, word
order, scale and offset). Addresses between the mapped ones read as 0, like a gateway's
register image. Registers are read-only; a write gets the ILLEGAL_FUNCTION exception.

While an asset's communication is lost (scenario comm-loss) a read that touches its
registers gets exception 0x0B (gateway target device failed to respond), which is what a
gateway answers for a device behind it that went silent; other assets on the same unit still
answer. `set_responding(False)` makes the whole device hang instead: the TCP connection stays
open, requests are received and never answered, so clients time out. `stop()`/`start()`
close and re-open the listener (a power cycle: connections drop).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from types import TracebackType

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from connectors.sim.errors import SimulatorError
from connectors.sim.plant import AssetSample
from pipeline.kafka.broker import port_is_free
from pipeline.site import (
    Asset,
    ModbusSignalBinding,
    ModbusSource,
    RegisterTable,
    Site,
    SourceKind,
)

log = logging.getLogger(__name__)

_HOLDING_CODES = frozenset({3, 6, 16, 22, 23})
_INPUT_CODES = frozenset({4})
_WRITE_CODES = frozenset({5, 6, 15, 16, 22, 23})

# pymodbus logs every refused or unanswered request; the simulator refuses them on purpose.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class _Unit:
    """The register image of one unit id, and which of its ranges belong to silent assets."""

    def __init__(self, unit_id: int, bindings: list[tuple[str, str, ModbusSignalBinding]]):
        self.unit_id = unit_id
        self.bindings = bindings
        self.registers: dict[RegisterTable, list[int]] = {}
        for table in RegisterTable:
            size = max((b.address + b.count for _, _, b in bindings if b.table is table), default=1)
            self.registers[table] = [0] * size
        self.silent: set[str] = set()
        """Assets whose communication is lost (reads of their registers get 0x0B)."""

    def touches_silent(self, table: RegisterTable, address: int, count: int) -> bool:
        for asset_id, _, binding in self.bindings:
            if (
                asset_id in self.silent
                and binding.table is table
                and binding.address < address + count
                and address < binding.address + binding.count
            ):
                return True
        return False


class ModbusSimServer:
    """The site's Modbus assets of one source on a Modbus TCP server (see module docstring).

    `source_id` picks the Modbus source (default: the site's first); `host`/`port` override
    the source's address.
    """

    def __init__(
        self,
        site: Site,
        host: str | None = None,
        port: int | None = None,
        source_id: str | None = None,
    ) -> None:
        sources = [
            (sid, src)
            for sid, src in site.sources.items()
            if isinstance(src, ModbusSource) and (source_id is None or sid == source_id)
        ]
        if not sources:
            raise SimulatorError(
                f"site {site.name} has no Modbus source" + (f" {source_id!r}" if source_id else "")
            )
        self.source_id, source = sources[0]
        self.site = site
        self.host = host or source.host
        self.port = port if port is not None else source.port
        self.assets: tuple[Asset, ...] = tuple(
            a
            for a in site.assets
            if a.source_kind is SourceKind.MODBUS and a.source_id == self.source_id
        )
        by_unit: dict[int, list[tuple[str, str, ModbusSignalBinding]]] = {}
        for asset in self.assets:
            for signal in asset.signals.values():
                binding = signal.binding
                if isinstance(binding, ModbusSignalBinding):
                    by_unit.setdefault(binding.unit_id, []).append((asset.id, signal.name, binding))
        self.units = {unit_id: _Unit(unit_id, b) for unit_id, b in sorted(by_unit.items())}
        self._asset_units = {
            asset_id: unit for unit in self.units.values() for asset_id, _, _ in unit.bindings
        }
        self.responding = True
        self.requests_ignored = 0
        self._server: ModbusTcpServer | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def __aenter__(self) -> ModbusSimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _device(self, unit: _Unit) -> SimDevice:
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        holding = unit.registers[RegisterTable.HOLDING]
        inputs = unit.registers[RegisterTable.INPUT]
        return SimDevice(
            id=unit.unit_id,
            simdata=(
                list(bits),
                list(bits),
                [SimData(0, count=len(holding), values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=len(inputs), values=0, datatype=DataType.REGISTERS)],
            ),
            action=functools.partial(self._on_request, unit),
        )

    async def start(self) -> None:
        """Listen on the source's address (again, after `stop`)."""
        if self._server is not None:
            return
        if not self.units:
            raise SimulatorError(f"Modbus source {self.source_id} feeds no asset")
        if not port_is_free(self.port, self.host):
            raise SimulatorError(f"Modbus server cannot listen on {self.address}: port in use")
        server = ModbusTcpServer(
            [self._device(unit) for unit in self.units.values()],
            address=(self.host, self.port),
            trace_packet=self._trace_packet,
        )
        try:
            await server.serve_forever(background=True)
        except (OSError, RuntimeError) as exc:
            raise SimulatorError(f"Modbus server cannot listen on {self.address}: {exc}") from exc
        self._server = server
        log.info("Modbus TCP server listening on %s (units %s)", self.address, list(self.units))

    async def stop(self) -> None:
        """Close the listener and every connection."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()

    def set_responding(self, responding: bool) -> None:
        """False: receive requests and never answer (clients time out); True: answer again."""
        self.responding = responding

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        # A hung device: requests still arrive, responses are never sent.
        if sending and not self.responding:
            self.requests_ignored += 1
            return b""
        return data

    async def _on_request(
        self,
        unit: _Unit,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code in _WRITE_CODES or set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION
        if function_code in _HOLDING_CODES:
            table = RegisterTable.HOLDING
        elif function_code in _INPUT_CODES:
            table = RegisterTable.INPUT
        else:
            return None
        if unit.touches_silent(table, address, count):
            return ExcCodes.GATEWAY_NO_RESPONSE
        image = unit.registers[table]
        for offset in range(count):
            index = address + offset
            if 0 <= index < len(image) and 0 <= index - start_address < len(registers):
                registers[index - start_address] = image[index]
        return None

    def update(self, samples: Iterable[AssetSample]) -> int:
        """Encode the samples of the served assets into the registers; returns values written."""
        written = 0
        for sample in samples:
            unit = self._asset_units.get(sample.asset_id)
            if unit is None:
                continue
            if sample.comm_lost:
                unit.silent.add(sample.asset_id)
                continue
            unit.silent.discard(sample.asset_id)
            for asset_id, signal, binding in unit.bindings:
                if asset_id != sample.asset_id:
                    continue
                words = binding.encode(sample.measured[signal])
                image = unit.registers[binding.table]
                image[binding.address : binding.address + binding.count] = words
                written += 1
        return written
