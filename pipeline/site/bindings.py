"""Resolved bindings: where each signal of an asset is read, with every template filled in.

The simulator serves and the connectors read exactly these addresses, so both sides agree
without knowing the templates. Register and payload coding live here for the same reason:
one implementation for the side that writes and the side that reads.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pipeline.site.sources import ModbusSource, MqttSource, OpcUaSource, SourceKind
from pipeline.site.templates import (
    Deadband,
    RegisterTable,
    RegisterType,
    TimestampFormat,
    WordOrder,
)

MAX_REGISTERS_PER_READ = 125  # Modbus limit for one read of holding/input registers

_STRUCT = {
    RegisterType.INT16: ">h",
    RegisterType.UINT16: ">H",
    RegisterType.INT32: ">i",
    RegisterType.UINT32: ">I",
    RegisterType.FLOAT32: ">f",
}
_LIMITS = {
    RegisterType.INT16: (-(2**15), 2**15 - 1),
    RegisterType.UINT16: (0, 2**16 - 1),
    RegisterType.INT32: (-(2**31), 2**31 - 1),
    RegisterType.UINT32: (0, 2**32 - 1),
}


@dataclass(frozen=True, slots=True)
class OpcUaSignalBinding:
    source_id: str
    node_id_pattern: str
    """The node id, with `{ns}` left for the namespace index found on the server."""
    sampling_interval: timedelta
    deadband: Deadband | None
    kind: ClassVar[SourceKind] = SourceKind.OPCUA

    def node_id(self, namespace_index: int) -> str:
        """The node id string (e.g. "ns=2;s=line-1/cnc-01/spindle_speed")."""
        return self.node_id_pattern.replace("{ns}", str(namespace_index))


@dataclass(frozen=True, slots=True)
class ModbusSignalBinding:
    source_id: str
    unit_id: int
    table: RegisterTable
    address: int
    """Zero-based address, the asset's register offset included."""
    data_type: RegisterType
    word_order: WordOrder
    scale: float
    offset: float
    kind: ClassVar[SourceKind] = SourceKind.MODBUS

    @property
    def count(self) -> int:
        """Number of 16-bit registers the value takes."""
        return self.data_type.words

    def decode(self, words: Sequence[int]) -> float:
        """The engineering value of the raw registers (`count` words, in address order)."""
        if len(words) != self.count:
            raise ValueError(f"{self.data_type} needs {self.count} registers, got {len(words)}")
        ordered = words if self.word_order is WordOrder.BIG else list(reversed(words))
        data = b"".join(int(w).to_bytes(2, "big") for w in ordered)
        (raw,) = struct.unpack(_STRUCT[self.data_type], data)
        return float(raw) * self.scale + self.offset

    def encode(self, value: float) -> tuple[int, ...]:
        """The registers (in address order) holding `value`; integers saturate like a sensor."""
        raw = (value - self.offset) / self.scale
        if self.data_type is RegisterType.FLOAT32:
            data = struct.pack(">f", raw)
        else:
            if not math.isfinite(raw):
                raise ValueError(f"{self.data_type} cannot hold {value!r}")
            low, high = _LIMITS[self.data_type]
            data = struct.pack(_STRUCT[self.data_type], min(max(round(raw), low), high))
        words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
        return tuple(words if self.word_order is WordOrder.BIG else reversed(words))


@dataclass(frozen=True, slots=True)
class MqttSignalBinding:
    source_id: str
    topic: str
    json_field: str
    """Field of the JSON payload; dots separate the names of nested objects."""
    kind: ClassVar[SourceKind] = SourceKind.MQTT

    def extract(self, payload: Mapping[str, Any]) -> Any:
        """The field's value in a decoded payload, or None when it is absent."""
        return _get(payload, self.json_field)


SignalBinding = OpcUaSignalBinding | ModbusSignalBinding | MqttSignalBinding


@dataclass(frozen=True, eq=False)
class OpcUaAssetBinding:
    source_id: str
    source: OpcUaSource
    publishing_interval: timedelta
    signals: Mapping[str, OpcUaSignalBinding]
    kind: ClassVar[SourceKind] = SourceKind.OPCUA


@dataclass(frozen=True, eq=False)
class ModbusAssetBinding:
    source_id: str
    source: ModbusSource
    unit_id: int
    register_offset: int
    signals: Mapping[str, ModbusSignalBinding]
    kind: ClassVar[SourceKind] = SourceKind.MODBUS

    def read_spans(self, max_gap: int = 8) -> list[tuple[RegisterTable, int, int]]:
        """(table, first address, count) blocks that read every signal in few requests.

        Registers closer than `max_gap` are read together; no block exceeds the protocol's
        125 registers.
        """
        spans: list[tuple[RegisterTable, int, int]] = []
        for table in RegisterTable:
            regs = sorted(
                (b.address, b.address + b.count) for b in self.signals.values() if b.table is table
            )
            start = end = -1
            for first, stop in regs:
                if start >= 0 and first - end <= max_gap and stop - start <= MAX_REGISTERS_PER_READ:
                    end = max(end, stop)
                    continue
                if start >= 0:
                    spans.append((table, start, end - start))
                start, end = first, stop
            if start >= 0:
                spans.append((table, start, end - start))
        return spans


@dataclass(frozen=True, eq=False)
class MqttAssetBinding:
    source_id: str
    source: MqttSource
    topic: str
    qos: int
    timestamp_field: str
    timestamp_format: TimestampFormat
    signals: Mapping[str, MqttSignalBinding]
    kind: ClassVar[SourceKind] = SourceKind.MQTT

    def payload(self, ts: datetime, values: Mapping[str, float]) -> dict[str, Any]:
        """The JSON object (before encoding) that carries `values` sampled at `ts`."""
        body: dict[str, Any] = {}
        _put(body, self.timestamp_field, format_timestamp(self.timestamp_format, ts))
        for signal, value in values.items():
            _put(body, self.signals[signal].json_field, value)
        return body

    def timestamp(self, payload: Mapping[str, Any]) -> datetime | None:
        """The payload's sample time (UTC), None when absent; ValueError when unreadable."""
        raw = _get(payload, self.timestamp_field)
        return None if raw is None else parse_timestamp(self.timestamp_format, raw)


AssetBinding = OpcUaAssetBinding | ModbusAssetBinding | MqttAssetBinding


def _get(payload: Mapping[str, Any], dotted: str) -> Any:
    node: Any = payload
    for name in dotted.split("."):
        if not isinstance(node, Mapping) or name not in node:
            return None
        node = node[name]
    return node


def _put(body: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        body = body.setdefault(name, {})
    body[leaf] = value


_EPOCH_UNITS = {
    TimestampFormat.EPOCH_S: timedelta(seconds=1),
    TimestampFormat.EPOCH_MS: timedelta(milliseconds=1),
    TimestampFormat.EPOCH_US: timedelta(microseconds=1),
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_timestamp(fmt: TimestampFormat, ts: datetime) -> str | int | float:
    if ts.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    if fmt is TimestampFormat.ISO8601:
        return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if fmt is TimestampFormat.EPOCH_S:
        return (ts - _EPOCH).total_seconds()
    return (ts - _EPOCH) // _EPOCH_UNITS[fmt]


def parse_timestamp(fmt: TimestampFormat, raw: object) -> datetime:
    if fmt is TimestampFormat.ISO8601:
        if not isinstance(raw, str):
            raise ValueError(f"expected an ISO 8601 string, got {raw!r}")
        parsed = datetime.fromisoformat(raw)
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp {raw!r} has no time zone")
        return parsed.astimezone(UTC)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ValueError(f"expected a number ({fmt}), got {raw!r}")
    return _EPOCH + raw * _EPOCH_UNITS[fmt]
