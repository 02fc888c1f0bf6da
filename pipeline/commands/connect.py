"""`twin connect opcua|modbus|mqtt`: read a site source's devices into Kafka.

Frames go to the site's telemetry.raw topic, unreadable payloads to telemetry.deadletter.
Everything passes through the source's durable spool (<data dir>/spool/<source id>), so
frames read while Kafka is unreachable are delivered, in order, once it is back, even
across a restart of the connector.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.commands import Subparsers, add_json_option, add_site_option, print_json
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.site import Site, load_site

KINDS = ("opcua", "modbus", "mqtt")
DEFAULT_SPOOL_MAX_MB = 256


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "connect",
        help="read a source's devices (OPC UA, Modbus TCP, MQTT) into Kafka",
        description="Read the assets of one site source and publish their telemetry frames "
        "to Kafka (TWIN_KAFKA_BOOTSTRAP), spooling on local disk while Kafka is unreachable. "
        "Runs until SIGTERM/Ctrl-C, or for --duration seconds; then prints a summary.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    add_site_option(common)
    add_json_option(common)
    common.add_argument(
        "--source", metavar="ID", help="site source to read (default: the only one of KIND)"
    )
    common.add_argument(
        "--assets", metavar="A,B,...", help="only these assets of the source (default: all)"
    )
    common.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop after S seconds (default: run until SIGTERM)",
    )
    common.add_argument(
        "--spool-max-mb",
        type=float,
        default=DEFAULT_SPOOL_MAX_MB,
        metavar="N",
        help=f"bound of the durable spool in MB; when full, the oldest frames are dropped "
        f"({DEFAULT_SPOOL_MAX_MB})",
    )
    common.add_argument(
        "--metrics-port", type=int, metavar="P", help="serve Prometheus metrics on this port"
    )
    common.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address for --metrics-port (127.0.0.1; 0.0.0.0 for every interface)",
    )

    opcua = kinds.add_parser(
        "opcua", parents=[common], help="subscribe to an OPC UA server's variables"
    )
    opcua.add_argument("--endpoint", metavar="URL", help="opc.tcp://HOST:PORT/PATH (site's)")
    opcua.add_argument("--security-mode", metavar="MODE", help="None, Sign or SignAndEncrypt")
    opcua.add_argument(
        "--security-policy",
        metavar="POLICY",
        help="None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss",
    )
    opcua.add_argument("--certificate", metavar="FILE", help="client certificate (DER or PEM)")
    opcua.add_argument("--private-key", metavar="FILE", help="client private key (PEM)")
    opcua.add_argument("--server-certificate", metavar="FILE", help="expected server certificate")
    modbus = kinds.add_parser(
        "modbus", parents=[common], help="poll a Modbus TCP device or gateway"
    )
    modbus.add_argument("--host", metavar="HOST", help="device address (site's)")
    modbus.add_argument("--port", type=int, metavar="P", help="device port (site's)")
    mqtt = kinds.add_parser("mqtt", parents=[common], help="subscribe to an MQTT broker")
    mqtt.add_argument("--broker", metavar="URL", help="mqtt://HOST:PORT or mqtts://... (site's)")
    for kind in (opcua, modbus, mqtt):
        kind.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from connectors.runtime import run_connector
    from connectors.sources import pick_source

    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration must be positive")
    if args.spool_max_mb <= 0:
        raise ConfigError("--spool-max-mb must be positive")
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        raise ConfigError("--metrics-port must be a TCP port (1-65535)")
    site = load_site(settings.site)
    source_id = pick_source(site, args.kind, args.source)
    assets = [a.strip() for a in args.assets.split(",") if a.strip()] if args.assets else None
    connector = _connector(args, site, source_id, assets)
    summary = run_connector(
        connector,
        settings,
        site,
        duration_s=args.duration,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        spool_max_mb=args.spool_max_mb,
    )
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary)
    return 1 if summary.get("failure") else 0


def _connector(
    args: argparse.Namespace, site: Site, source_id: str, assets: list[str] | None
) -> Any:
    if args.kind == "modbus":
        from connectors.modbus import ModbusConnector

        if args.port is not None and not 0 < args.port < 65536:
            raise ConfigError("--port must be a TCP port (1-65535)")
        return ModbusConnector(site, source_id, assets, host=args.host, port=args.port)
    if args.kind == "mqtt":
        from connectors.mqtt import MqttConnector

        return MqttConnector(site, source_id, assets, broker=args.broker)
    from connectors.opcua import OpcUaConnector

    security = {
        key: value
        for key, value in (
            ("mode", args.security_mode),
            ("policy", args.security_policy),
            ("certificate", args.certificate),
            ("private_key", args.private_key),
            ("server_certificate", args.server_certificate),
        )
        if value is not None
    }
    return OpcUaConnector(site, source_id, assets, args.endpoint, security or None)


def _print_summary(summary: dict[str, Any]) -> None:
    out = sys.stdout
    out.write(
        f"{summary['kind']} {summary['source_id']}: {summary['frames']} frames "
        f"({summary['readings']} readings) in {summary['duration_s']:.1f}s; "
        f"{summary['delivered']} delivered, {summary['spooled']} spooled, "
        f"{summary['spool_depth']} left in the spool\n"
        f"  dead letters {summary['dead_letters']}, errors {summary['errors']}, "
        f"reconnects {summary['reconnects']}, producer restarts "
        f"{summary['producer_restarts']}, dropped {summary['spool_dropped']}\n"
    )
    if summary.get("failure"):
        out.write(f"  connector failed: {summary['failure']}\n")
    out.flush()
