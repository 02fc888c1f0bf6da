"""How an asset type's signals are addressed on each kind of source (templates), and the few
values each asset adds (unit id, register offset, topic). `bindings.py` resolves them."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from pipeline.site.common import SiteModel
from pipeline.site.durations import PositiveDuration


class DeadbandType(StrEnum):
    ABSOLUTE = "absolute"
    PERCENT = "percent"


class Deadband(SiteModel):
    """OPC UA data change filter: report a change only when it exceeds this."""

    type: DeadbandType
    value: float = Field(ge=0)
    """In the signal's unit (absolute) or percent of the node's EURange (percent)."""

    @model_validator(mode="after")
    def _percent(self) -> Deadband:
        if self.type is DeadbandType.PERCENT and self.value > 100:
            raise ValueError(f"a percent deadband is at most 100 (got {self.value:g})")
        return self


class OpcUaSignalSpec(SiteModel):
    node_id: str | None = None
    """Explicit node id (template placeholders allowed) instead of the type's template."""
    sampling_interval: PositiveDuration | None = None
    """Monitored item sampling interval; default: the signal's sampling period."""
    deadband: Deadband | None = None


class OpcUaTypeSpec(SiteModel):
    """OPC UA addressing of an asset type; everything defaults to the source's settings."""

    node_id: str | None = None
    publishing_interval: PositiveDuration | None = None
    deadband: Deadband | None = None
    """Default deadband of every signal of the type."""
    signals: dict[str, OpcUaSignalSpec] = Field(default_factory=dict)


class OpcUaAssetSpec(SiteModel):
    node_ids: dict[str, str] = Field(default_factory=dict)
    """Explicit node ids of this asset's signals (for machines that do not follow the type)."""


class RegisterTable(StrEnum):
    HOLDING = "holding"
    INPUT = "input"


class RegisterType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"

    @property
    def words(self) -> int:
        """How many 16-bit registers a value takes."""
        return 1 if self in (RegisterType.INT16, RegisterType.UINT16) else 2

    @property
    def is_integer(self) -> bool:
        return self is not RegisterType.FLOAT32


class WordOrder(StrEnum):
    BIG = "big"
    """Most significant word first (the Modbus convention)."""
    LITTLE = "little"
    """Least significant word first (many PLCs)."""


class RegisterSpec(SiteModel):
    """Where a signal lives in a unit's register map; value = raw * scale + offset."""

    table: RegisterTable = RegisterTable.HOLDING
    address: int = Field(ge=0, le=65535)
    """Zero-based register address before the asset's `register_offset`."""
    data_type: RegisterType
    word_order: WordOrder | None = None
    """Word order of 32-bit values; default: the type's `word_order`."""
    scale: float = 1.0
    offset: float = 0.0

    @field_validator("scale")
    @classmethod
    def _non_zero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("scale must not be 0")
        return value


class ModbusTypeSpec(SiteModel):
    """The register map of an asset type (one entry per signal)."""

    word_order: WordOrder = WordOrder.BIG
    registers: dict[str, RegisterSpec]


class ModbusAssetSpec(SiteModel):
    unit_id: int = Field(ge=0, le=255)
    register_offset: int = Field(default=0, ge=0, le=65535)
    """Added to every register address of the type (several assets behind one unit id)."""


class TimestampFormat(StrEnum):
    ISO8601 = "iso8601"
    EPOCH_S = "epoch_s"
    EPOCH_MS = "epoch_ms"
    EPOCH_US = "epoch_us"


class MqttTypeSpec(SiteModel):
    """The JSON payload of an asset type: one object per message, one field per signal."""

    topic: str | None = None
    """Topic template; default: the source's."""
    timestamp_field: str = "ts"
    timestamp_format: TimestampFormat = TimestampFormat.EPOCH_MS
    fields: dict[str, str] = Field(default_factory=dict)
    """JSON field of a signal (a dotted path reads a nested field); default: its name."""


class MqttAssetSpec(SiteModel):
    topic: str | None = None
    """This asset's topic (template placeholders allowed) instead of the type's."""
