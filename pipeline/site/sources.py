"""Sources: the device connections that feed assets (an OPC UA server, a Modbus TCP device
or gateway, an MQTT broker). A source's id is the `source_id` of the frames read from it."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator

from pipeline.site.common import SiteModel
from pipeline.site.durations import PositiveDuration

DEFAULT_OPCUA_ENDPOINT = "opc.tcp://127.0.0.1:4840/twinline"
DEFAULT_NAMESPACE_URI = "urn:twinline:plant"
DEFAULT_NODE_ID = "ns={ns};s={line}/{asset}/{signal}"
DEFAULT_MODBUS_HOST = "127.0.0.1"
DEFAULT_MODBUS_PORT = 5020
DEFAULT_MQTT_BROKER = "mqtt://127.0.0.1:1883"
DEFAULT_MQTT_TOPIC = "plant/{line}/{asset}/telemetry"


class SourceKind(StrEnum):
    OPCUA = "opcua"
    MODBUS = "modbus"
    MQTT = "mqtt"


class SecurityMode(StrEnum):
    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class SecurityPolicy(StrEnum):
    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256_Sha256_RsaPss"


def _url_ok(value: str, schemes: tuple[str, ...]) -> bool:
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - reading it validates it
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.hostname)


def _none_word(value: object) -> object:
    # YAML `null` and the OPC UA word "None" mean the same here.
    return "None" if value is None else value


class OpcUaSecurity(SiteModel):
    """Client security; certificate paths are relative to the site file."""

    mode: Annotated[SecurityMode, BeforeValidator(_none_word)] = SecurityMode.NONE
    policy: Annotated[SecurityPolicy, BeforeValidator(_none_word)] = SecurityPolicy.NONE
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSecurity:
        if (self.mode is SecurityMode.NONE) != (self.policy is SecurityPolicy.NONE):
            raise ValueError("mode and policy must both be None or both be set")
        if self.mode is not SecurityMode.NONE and (
            self.certificate is None or self.private_key is None
        ):
            raise ValueError(f"mode {self.mode} needs certificate and private_key")
        return self

    def relative_to(self, base: Path) -> OpcUaSecurity:
        """The same settings with relative certificate paths made relative to `base`."""
        paths = {
            name: base / value
            for name in ("certificate", "private_key", "server_certificate")
            if (value := getattr(self, name)) is not None and not value.is_absolute()
        }
        return self.model_copy(update=paths) if paths else self


class OpcUaSource(SiteModel):
    """An OPC UA server; the connector subscribes to one monitored item per signal."""

    kind: Literal["opcua"]
    endpoint: str = DEFAULT_OPCUA_ENDPOINT
    namespace_uri: str = DEFAULT_NAMESPACE_URI
    """The namespace of the plant's nodes; its index (`{ns}`) is looked up on the server."""
    node_id: str = DEFAULT_NODE_ID
    """Default node id template; placeholders {ns} {site} {line} {asset} {type} {signal}."""
    publishing_interval: PositiveDuration = timedelta(milliseconds=500)
    """Default subscription publishing interval (how often the server sends a batch)."""
    security: OpcUaSecurity = OpcUaSecurity()

    @field_validator("endpoint")
    @classmethod
    def _opc_tcp(cls, value: str) -> str:
        if not _url_ok(value, ("opc.tcp",)):
            raise ValueError(f"expected opc.tcp://host:port/path, got {value!r}")
        return value


class ModbusSource(SiteModel):
    """A Modbus TCP device or gateway; the connector polls every asset each scan period."""

    kind: Literal["modbus"]
    host: str = DEFAULT_MODBUS_HOST
    port: int = Field(default=DEFAULT_MODBUS_PORT, ge=1, le=65535)
    scan_period: PositiveDuration = timedelta(seconds=1)
    timeout: PositiveDuration = timedelta(seconds=1)


class MqttSource(SiteModel):
    """An MQTT broker; each asset publishes one JSON message per sample on its topic."""

    kind: Literal["mqtt"]
    broker: str = DEFAULT_MQTT_BROKER
    qos: int = Field(default=1, ge=0, le=2)
    topic: str = DEFAULT_MQTT_TOPIC
    """Default topic template; placeholders {site} {line} {asset} {type}."""
    client_id: str | None = None
    keepalive: PositiveDuration = timedelta(seconds=60)

    @field_validator("broker")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        if not _url_ok(value, ("mqtt", "mqtts")):
            raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {value!r}")
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.broker).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.broker)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.broker).scheme == "mqtts"


Source = Annotated[OpcUaSource | ModbusSource | MqttSource, Field(discriminator="kind")]

SOURCE_MODELS: dict[str, type[OpcUaSource] | type[ModbusSource] | type[MqttSource]] = {
    SourceKind.OPCUA: OpcUaSource,
    SourceKind.MODBUS: ModbusSource,
    SourceKind.MQTT: MqttSource,
}
