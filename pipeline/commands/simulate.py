"""`twin simulate`: run the plant simulator (OPC UA and Modbus TCP servers, MQTT gateway)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any, TextIO

from pipeline.commands import Subparsers, add_json_option, add_site_option, print_json
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.site import load_site

log = logging.getLogger("twin.simulate")

SCENARIO_HELP = (
    "faults to inject: none (default), faults (alias demo: every fault below), or one of "
    "bearing-wear, stuck-sensor, spikes, drift, breakdown, comm-loss"
)


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "simulate",
        help="run the plant simulator",
        description="Simulate the site's assets with physical models and serve them as the "
        "plant would: an OPC UA server and a Modbus TCP server at the addresses of the site's "
        "sources, and (with --mqtt) an edge gateway publishing JSON to an MQTT broker. Runs "
        "until SIGTERM or Ctrl-C, or for --duration seconds, then prints a summary. With "
        "--speed X the plant (and the scenario's fault times) run X times faster while the "
        "readings keep wall-clock timestamps.",
    )
    add_site_option(parser)
    parser.add_argument("--opcua-port", type=int, metavar="P", help="OPC UA port (site's)")
    parser.add_argument("--modbus-port", type=int, metavar="P", help="Modbus TCP port (site's)")
    parser.add_argument(
        "--mqtt", metavar="URL", help="publish MQTT assets to this broker (mqtt://HOST:PORT)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (0)")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="run the plant X times faster than the clock (1)",
    )
    parser.add_argument("--scenario", default="none", metavar="NAME", help=SCENARIO_HELP)
    parser.add_argument(
        "--truth",
        action="store_true",
        help="also publish the noise-free values to the sim.truth topic (needs Kafka)",
    )
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    add_json_option(parser)
    parser.set_defaults(handler=run)


def _check(args: argparse.Namespace) -> None:
    if not args.speed > 0:
        raise ConfigError("--speed must be positive")
    if args.duration is not None and not args.duration > 0:
        raise ConfigError("--duration must be positive")
    for name in ("opcua_port", "modbus_port"):
        port = getattr(args, name)
        if port is not None and not 1 <= port <= 65535:
            raise ConfigError(f"--{name.replace('_', '-')} must be a port number (1..65535)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: asyncua and pymodbus take a while to import, other commands need neither.
    from connectors.sim.errors import SimulatorError
    from connectors.sim.runner import Simulator
    from connectors.sim.scenarios import build_scenario
    from connectors.sim.truth import TruthPublisher

    _check(args)
    site = load_site(settings.site)
    scenario = build_scenario(args.scenario, site)
    truth = None
    if args.truth:
        try:
            truth = TruthPublisher.connect(settings, site)
        except SimulatorError as exc:
            print(f"twin simulate: warning: no ground truth published: {exc}", file=sys.stderr)
    simulator = Simulator(
        site,
        seed=args.seed,
        speed=args.speed,
        scenario=scenario,
        opcua_port=args.opcua_port,
        modbus_port=args.modbus_port,
        mqtt_url=args.mqtt,
        truth=truth,
    )
    summary = asyncio.run(_serve(simulator, args))
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary)
    return 0


async def _serve(simulator: Any, args: argparse.Namespace) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.set_exception_handler(_quiet_socket_errors)
    task = asyncio.create_task(simulator.run(stop, duration=args.duration))
    ready = asyncio.create_task(simulator.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if simulator.ready.is_set():
        _print_start(simulator, sys.stderr if args.json else sys.stdout)
    ready.cancel()
    return await task


def _quiet_socket_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # The MQTT client schedules socket callbacks that can run after a dropped connection
    # closed the socket; the gateway already reconnects, so these are noise.
    if isinstance(context.get("exception"), OSError):
        log.debug("socket callback after close: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


def _print_start(simulator: Any, out: TextIO) -> None:
    site = simulator.site
    print(
        f"Simulating {site.name}: {len(site.assets)} assets, seed {simulator.seed}, "
        f"speed {simulator.speed:g}x, tick {simulator.tick_s * 1000:.0f} ms",
        file=out,
    )
    for server in simulator.servers():
        assets = ", ".join(server["assets"])
        print(f"  {server['kind']:<7} {server['endpoint']:<40} {assets}", file=out)
    plant = simulator.plant
    if plant is not None and plant.events:
        print(f"Scenario {plant.scenario.name}:", file=out)
        for event in plant.events_dicts():
            what = event["asset_id"] + (f" {event['signal']}" if event["signal"] else "")
            window = f"{event['start'][11:19]}-{event['end'][11:19]} UTC"
            print(f"  {window}  {event['kind']:<13} {what}", file=out)
    print("Running; Ctrl-C or SIGTERM stops.", file=out, flush=True)


def _print_summary(summary: dict[str, Any]) -> None:
    work = summary["tick_work_ms"]
    print(
        f"Stopped after {summary['duration_s']:.1f} s ({summary['simulated_s']:.1f} s simulated): "
        f"{summary['ticks']} ticks ({summary['ticks_per_s']} /s, work mean {work['mean']} ms, "
        f"max {work['max']} ms), {summary['samples']} samples, {summary['readings']} readings"
    )
    truth = summary.get("truth")
    if truth:
        print(f"Truth: {truth['frames']} frames to {truth['topic']} ({truth['errors']} errors)")
