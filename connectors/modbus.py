"""The Modbus TCP connector: polls a device or gateway every scan period.

Each scan reads every selected asset with the block reads of
`ModbusAssetBinding.read_spans()` (holding registers with function 3, input registers with
function 4, addressed to the asset's unit id), decodes each signal with
`ModbusSignalBinding.decode`, and submits one frame per asset. A reading's `ts` is when the
response arrived (UTC).

A read that fails does not stop the connector; it gives BAD readings (value NaN) for the
signals of that block, with `status_code` saying why:

- 1..11: the Modbus exception code the device answered (e.g. 2 illegal data address,
  4 server device failure, 11 gateway target device failed to respond);
- `STATUS_NO_RESPONSE` (256): no answer within the source's `timeout`; the unit is not asked
  again in that scan, and the connection is closed and opened again (a late answer must not
  be taken for the next request's);
- `STATUS_NOT_CONNECTED` (257): no connection to the device (refused, lost, or waiting for
  the next reconnect attempt);
- `STATUS_BAD_RESPONSE` (258): an answer with fewer registers than asked.

Connection attempts back off (next scan, then 1 s, then every 2 s) while the device does not
answer, and start over after the next good read; `stats.reconnects` counts connections
established after a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from connectors.base import ConnectorStats, FrameSink
from connectors.metrics import READ_LATENCY
from connectors.sources import pick_assets
from pipeline.errors import ConfigError
from pipeline.site import ModbusAssetBinding, ModbusSignalBinding, ModbusSource, RegisterTable, Site

log = logging.getLogger(__name__)
# pymodbus logs every unanswered request as an error; the connector reports them itself
# (BAD readings with a status code, one warning per lost connection).
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

STATUS_NO_RESPONSE = 256
STATUS_NOT_CONNECTED = 257
STATUS_BAD_RESPONSE = 258
BACKOFF_MAX_S = 2.0


@dataclass(frozen=True)
class _Block:
    """One block read and the signals it carries."""

    table: RegisterTable
    address: int
    count: int
    signals: tuple[tuple[str, ModbusSignalBinding], ...]


@dataclass(frozen=True)
class _AssetPlan:
    asset_id: str
    unit_id: int
    blocks: tuple[_Block, ...]


def plan_reads(binding: ModbusAssetBinding, asset_id: str) -> _AssetPlan:
    """The block reads of one asset, each with the signals it carries."""
    blocks = []
    for table, first, count in binding.read_spans():
        signals = tuple(
            (name, b)
            for name, b in binding.signals.items()
            if b.table is table and first <= b.address and b.address + b.count <= first + count
        )
        blocks.append(_Block(table, first, count, signals))
    return _AssetPlan(asset_id, binding.unit_id, tuple(blocks))


class ModbusConnector:
    """Polls the assets of one Modbus source (see the module docstring)."""

    kind = "modbus"

    def __init__(
        self,
        site: Site,
        source_id: str,
        assets: list[str] | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        source = site.source(source_id)
        if not isinstance(source, ModbusSource):
            raise ConfigError(f"source {source_id} is a {source.kind} source, not modbus")
        self.source_id = source_id
        self.host = host or source.host
        self.port = port if port is not None else source.port
        self.scan_period_s = source.scan_period.total_seconds()
        self.timeout_s = source.timeout.total_seconds()
        self.stats = ConnectorStats()
        self.plans: list[_AssetPlan] = []
        for asset in pick_assets(site, source_id, assets):
            if not isinstance(asset.binding, ModbusAssetBinding):
                raise ConfigError(f"asset {asset.id} has no Modbus binding")
            self.plans.append(plan_reads(asset.binding, asset.id))
        # Poll unit by unit: a silent unit costs one timeout per scan, not one per block.
        self.plans.sort(key=lambda plan: plan.unit_id)
        self._client: AsyncModbusTcpClient | None = None
        self._ever_connected = False
        self._retry_at = 0.0
        self._backoff = 0.0
        self._latency = READ_LATENCY.labels(source_id=source_id)

    async def run(self, sink: FrameSink, stop: asyncio.Event) -> None:
        """Scan every `scan_period` until `stop` is set."""
        loop = asyncio.get_running_loop()
        next_scan = loop.time()
        try:
            while not stop.is_set():
                for asset_id, readings in await self.scan():
                    sink.submit(asset_id, readings)
                next_scan += self.scan_period_s
                now = loop.time()
                if next_scan < now:  # a slow scan (timeouts): start the next one right away
                    next_scan = now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=next_scan - now)
        finally:
            self._disconnect()

    async def scan(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Read every asset once; one (asset_id, readings) per asset, BAD where reads failed."""
        client = await self._connected()
        failed_units: dict[int, int] = {}
        frames = []
        for plan in self.plans:
            readings: list[dict[str, Any]] = []
            for block in plan.blocks:
                skipped = failed_units.get(plan.unit_id)
                if skipped is None and client is not None:
                    status, block_readings = await self._read(client, plan.unit_id, block)
                    readings += block_readings
                    if status == STATUS_NO_RESPONSE:
                        failed_units[plan.unit_id] = status
                    elif status == STATUS_NOT_CONNECTED:
                        client = None
                else:
                    readings += _bad(block, STATUS_NOT_CONNECTED if skipped is None else skipped)
            frames.append((plan.asset_id, readings))
        if STATUS_NO_RESPONSE in failed_units.values() or (
            client is None and self._client is not None
        ):
            self._lost("no response" if client is not None else "connection lost")
        return frames

    async def _read(
        self, client: AsyncModbusTcpClient, unit_id: int, block: _Block
    ) -> tuple[int | None, list[dict[str, Any]]]:
        read = (
            client.read_holding_registers
            if block.table is RegisterTable.HOLDING
            else client.read_input_registers
        )
        started = time.perf_counter()
        try:
            response = await read(block.address, count=block.count, device_id=unit_id)
        except ModbusIOException as exc:
            self.stats.errors += 1
            log.debug("%s unit %d: no response: %s", self.source_id, unit_id, exc)
            return STATUS_NO_RESPONSE, _bad(block, STATUS_NO_RESPONSE)
        except (ConnectionException, OSError) as exc:
            self.stats.errors += 1
            log.debug("%s unit %d: connection: %s", self.source_id, unit_id, exc)
            return STATUS_NOT_CONNECTED, _bad(block, STATUS_NOT_CONNECTED)
        except ModbusException as exc:  # anything else pymodbus rejects: a bad answer
            self.stats.errors += 1
            log.warning("%s unit %d: bad response: %s", self.source_id, unit_id, exc)
            return STATUS_BAD_RESPONSE, _bad(block, STATUS_BAD_RESPONSE)
        self._latency.observe(time.perf_counter() - started)
        if response.isError():
            self.stats.errors += 1
            code = int(response.exception_code)
            log.debug("%s unit %d: exception %d", self.source_id, unit_id, code)
            return code, _bad(block, code)
        words = list(response.registers)
        if len(words) < block.count:
            self.stats.errors += 1
            return STATUS_BAD_RESPONSE, _bad(block, STATUS_BAD_RESPONSE)
        self.stats.reads += 1
        self._backoff = 0.0
        ts = datetime.now(UTC)
        readings = []
        for name, binding in block.signals:
            start = binding.address - block.address
            readings.append(
                {
                    "signal": name,
                    "ts": ts,
                    "value": binding.decode(words[start : start + binding.count]),
                    "quality": "GOOD",
                    "status_code": None,
                }
            )
        return None, readings

    async def _connected(self) -> AsyncModbusTcpClient | None:
        """The open connection, or a new one when the backoff allows; None if there is none."""
        if self._client is not None and self._client.connected:
            return self._client
        if self._client is not None:
            self._lost("connection lost")
        if time.monotonic() < self._retry_at:
            return None
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,  # reconnection is ours, with our backoff and counting
            name=self.source_id,
        )
        try:
            connected = await client.connect()
        except (ModbusException, OSError):
            connected = False
        if not connected:
            client.close()
            self.stats.errors += 1
            self._schedule_retry()
            return None
        if self._ever_connected:
            self.stats.reconnects += 1
            log.info("%s: reconnected to %s:%d", self.source_id, self.host, self.port)
        else:
            log.info("%s: connected to %s:%d", self.source_id, self.host, self.port)
        self._ever_connected = True
        self._client = client
        return client

    def _lost(self, why: str) -> None:
        if self._client is not None:
            log.warning(
                "%s: %s from %s:%d; reconnecting", self.source_id, why, self.host, self.port
            )
        self._disconnect()
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(max(2 * self._backoff, 1.0), BACKOFF_MAX_S)

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _bad(block: _Block, status: int) -> list[dict[str, Any]]:
    ts = datetime.now(UTC)
    return [
        {"signal": name, "ts": ts, "value": math.nan, "quality": "BAD", "status_code": status}
        for name, _binding in block.signals
    ]
