"""The Simulator: ticks the plant and feeds every device server, the gateway and the truth.

    simulator = Simulator(site, seed=0, scenario="faults", mqtt_url="mqtt://127.0.0.1:1883")
    summary = await simulator.run(stop_event, duration=60)

It starts one OPC UA server per OPC UA source and one Modbus TCP server per Modbus source of
the site (addresses from the site; `opcua_port` / `modbus_port` override the port of the
first source of each kind, the next ones get the following ports), the MQTT gateway when a
broker URL is given, and the truth publisher when one is passed in. Every tick it steps the
plant to the current time and hands the samples to all of them.

The tick is the site's fastest sampling period divided by the speed, but never below
`MIN_TICK_S` of wall time: the demo plant (100 ms signals) ticks ten times a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from contextlib import AsyncExitStack, suppress
from datetime import UTC, datetime
from typing import Any

from connectors.sim.modbus_server import ModbusSimServer
from connectors.sim.mqtt_gateway import MqttGateway
from connectors.sim.opcua_server import OpcUaSimServer
from connectors.sim.plant import PlantModel
from connectors.sim.scenarios import Scenario
from connectors.sim.truth import TruthPublisher
from pipeline.site import ModbusSource, OpcUaSource, Site

log = logging.getLogger(__name__)

MIN_TICK_S = 0.1
RECENT_TICKS = 6000
"""Ticks kept for the p95 of the tick work (the last ten minutes at 10 ticks/s)."""


def tick_period(site: Site, speed: float = 1.0) -> float:
    """Wall-clock seconds between two plant steps."""
    fastest = min(
        signal.sampling_period.total_seconds()
        for asset in site.assets
        for signal in asset.signals.values()
    )
    return max(MIN_TICK_S, fastest / speed)


class Simulator:
    """Runs the plant simulation and its servers (see the module docstring)."""

    def __init__(
        self,
        site: Site,
        *,
        seed: int = 0,
        speed: float = 1.0,
        scenario: str | Scenario = "none",
        opcua_port: int | None = None,
        modbus_port: int | None = None,
        mqtt_url: str | None = None,
        truth: TruthPublisher | None = None,
    ) -> None:
        self.site = site
        self.seed = seed
        self.speed = speed
        self.scenario = scenario
        self.opcua_port = opcua_port
        self.modbus_port = modbus_port
        self.mqtt_url = mqtt_url
        self.truth = truth
        self.tick_s = tick_period(site, speed)
        self.plant: PlantModel | None = None
        self.opcua: list[OpcUaSimServer] = []
        self.modbus: list[ModbusSimServer] = []
        self.gateway: MqttGateway | None = None
        self.ticks = 0
        self.samples = 0
        self.readings = 0
        self.late_ticks = 0
        self._work_recent: deque[float] = deque(maxlen=RECENT_TICKS)
        self._work_total = 0.0
        self._work_max = 0.0
        self.started: datetime | None = None
        self.ready = asyncio.Event()
        """Set once every server listens (and the first values are served)."""

    async def _start_servers(self, stack: AsyncExitStack) -> None:
        opcua_sources = [sid for sid, s in self.site.sources.items() if isinstance(s, OpcUaSource)]
        modbus_sources = [
            sid for sid, s in self.site.sources.items() if isinstance(s, ModbusSource)
        ]
        for i, source_id in enumerate(opcua_sources):
            if not self.site.assets_fed_by(source_id):
                continue
            port = None if self.opcua_port is None else self.opcua_port + i
            server = OpcUaSimServer(self.site, port=port, source_id=source_id)
            self.opcua.append(await stack.enter_async_context(server))
        for i, source_id in enumerate(modbus_sources):
            if not self.site.assets_fed_by(source_id):
                continue
            port = None if self.modbus_port is None else self.modbus_port + i
            modbus = ModbusSimServer(self.site, port=port, source_id=source_id)
            self.modbus.append(await stack.enter_async_context(modbus))
        if self.mqtt_url is not None:
            self.gateway = await stack.enter_async_context(MqttGateway(self.site, self.mqtt_url))

    def servers(self) -> list[dict[str, Any]]:
        """Where each server listens, for the start-up lines and the summary."""
        out: list[dict[str, Any]] = []
        for opcua in self.opcua:
            out.append(
                {
                    "kind": "opcua",
                    "sources": list(opcua.sources),
                    "endpoint": opcua.endpoint,
                    "assets": [a.id for a in opcua.assets],
                }
            )
        for modbus in self.modbus:
            out.append(
                {
                    "kind": "modbus",
                    "sources": [modbus.source_id],
                    "endpoint": f"modbus://{modbus.address}",
                    "units": list(modbus.units),
                    "assets": [a.id for a in modbus.assets],
                }
            )
        if self.gateway is not None:
            out.append(
                {
                    "kind": "mqtt",
                    "endpoint": self.gateway.broker_url,
                    "assets": [a.id for a in self.gateway.assets],
                    "published": self.gateway.published,
                    "dropped": self.gateway.dropped,
                    "reconnects": self.gateway.reconnects,
                }
            )
        return out

    async def _tick(self, plant: PlantModel) -> None:
        began = time.perf_counter()
        samples = plant.step(datetime.now(UTC))
        for opcua in self.opcua:
            await opcua.update(samples)
        for modbus in self.modbus:
            modbus.update(samples)
        if self.gateway is not None:
            await self.gateway.publish(samples)
        if self.truth is not None:
            self.truth.publish(samples)
        self.ticks += 1
        self.samples += len(samples)
        self.readings += sum(len(s.measured) for s in samples)
        work = time.perf_counter() - began
        self._work_recent.append(work)
        self._work_total += work
        self._work_max = max(self._work_max, work)

    async def run(self, stop: asyncio.Event, duration: float | None = None) -> dict[str, Any]:
        """Serve until `stop` is set or `duration` seconds passed; returns the summary."""
        async with AsyncExitStack() as stack:
            await self._start_servers(stack)
            # The plant starts once the servers listen, so the scenario's offsets count from
            # the moment its values can be read.
            self.started = datetime.now(UTC)
            plant = PlantModel(
                self.site,
                seed=self.seed,
                scenario=self.scenario,
                start=self.started,
                speed=self.speed,
            )
            self.plant = plant
            await self._tick(plant)
            self.ready.set()
            loop = asyncio.get_running_loop()
            began = loop.time()
            deadline = None if duration is None else began + duration
            next_tick = began + self.tick_s
            while not stop.is_set():
                now = loop.time()
                if deadline is not None and now >= deadline:
                    break
                wake = next_tick if deadline is None else min(next_tick, deadline)
                if wake > now:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=wake - now)
                    continue
                await self._tick(plant)
                next_tick += self.tick_s
                if next_tick < loop.time():
                    # Overran: skip the missed ticks instead of bursting to catch up.
                    self.late_ticks += 1
                    next_tick = loop.time() + self.tick_s
            elapsed = loop.time() - began
            summary = self.summary(elapsed)
        if self.truth is not None:
            self.truth.close()
            summary["truth"] = self.truth.stats()
        return summary

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        recent = sorted(self._work_recent)
        plant = self.plant
        return {
            "site": self.site.name,
            "scenario": plant.scenario.name if plant is not None else str(self.scenario),
            "seed": self.seed,
            "speed": self.speed,
            "tick_s": self.tick_s,
            "started": self.started.isoformat() if self.started else None,
            "duration_s": round(elapsed_s, 3),
            "simulated_s": round(plant.offset.total_seconds(), 3) if plant else 0.0,
            "ticks": self.ticks,
            "ticks_per_s": round(self.ticks / elapsed_s, 2) if elapsed_s > 0 else None,
            "late_ticks": self.late_ticks,
            "tick_work_ms": {
                "mean": round(1000 * self._work_total / self.ticks, 3) if self.ticks else None,
                "p95": round(1000 * recent[int(0.95 * (len(recent) - 1))], 3) if recent else None,
                "max": round(1000 * self._work_max, 3) if self.ticks else None,
            },
            "samples": self.samples,
            "readings": self.readings,
            "servers": self.servers(),
            "truth": self.truth.stats() if self.truth is not None else None,
            "events": plant.events_dicts() if plant is not None else [],
        }
