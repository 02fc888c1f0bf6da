"""Physical models of the demo plant's asset types: machining centre, pump, compressor and
conveyor, chosen by asset type id (`model_for`). Any other type gets the generic model.

The models are deliberately simple physics with the right couplings, not curve fitting:
power follows load, temperatures follow power through a thermal lag, vibration follows speed
and bearing wear, pressure and flow follow pump speed (affinity laws), counters advance at the
cycle time while the machine runs. Sizes (rated speed, flow, current) are taken from each
asset's expected ranges, so an asset with larger ranges behaves like a larger machine.
"""

from __future__ import annotations

import math

import numpy as np

from connectors.sim.generic import GenericModel
from connectors.sim.physics import AssetModel, Conditions, Wander, follow, lag, ramp
from pipeline.site import Asset, MachineState, Range

AMBIENT_C = 22.0


class CncModel(AssetModel):
    """A machining centre making parts in cycles: part change, cutting, retract.

    Each job (a batch of parts) has its own spindle speed, feed and cutting load. A part is
    counted at the end of every cycle; a worn spindle bearing makes more scrap.
    """

    def __init__(self, asset: Asset, rng: np.random.Generator) -> None:
        super().__init__(asset, rng)
        self.speed_max = self.expected("spindle_speed", Range(min=0, max=18000)).max
        self.feed_max = self.expected("feed_rate", Range(min=0, max=15000)).max
        self.ideal_cycle = self.cycle_time(45.0)
        self.speed_rate = self.max_rate("spindle_speed", 0.8, 4000.0)
        self.load_rate = self.max_rate("spindle_load", 0.8, 80.0)
        self.feed_rate = self.max_rate("feed_rate", 0.8, 10000.0)
        self.speed = self.load = self.feed = 0.0
        self.temperature = AMBIENT_C + 15.0
        self.parts = self.initial_count("parts_total", 1000, 5000)
        self.scrap = math.floor(self.parts * 0.02)
        self.cycle_pos = 0.0
        self.wear = 0.0
        self._new_job()

    def _new_job(self) -> None:
        self.job_speed = float(self.rng.uniform(0.45, 0.8)) * self.speed_max
        self.job_feed = float(self.rng.uniform(0.15, 0.4)) * self.feed_max
        self.job_load = float(self.rng.uniform(35.0, 65.0))
        self.job_cycle = self.ideal_cycle * float(self.rng.uniform(1.05, 1.25))

    def advance(self, dt: float, conditions: Conditions) -> None:
        was_running = self.operation.running
        self.operation.advance(dt, conditions.forced)
        if self.operation.running and not was_running:
            self._new_job()
            self.cycle_pos = 0.0
        speed_target = load_target = feed_target = 0.0
        if self.operation.running:
            self.cycle_pos += dt
            if self.cycle_pos >= self.job_cycle:
                self.cycle_pos -= self.job_cycle
                self.parts += 1
                if self.rng.random() < 0.02 + 0.25 * conditions.wear:
                    self.scrap += 1
            phase = self.cycle_pos / self.job_cycle
            if phase >= 0.1:  # the first tenth is the part change, spindle stopped
                speed_target = self.job_speed
                engagement = 1.0 + 0.15 * math.sin(2 * math.pi * 3 * phase)
                load_target = self.job_load * engagement if phase < 0.95 else 5.0
                feed_target = self.job_feed if phase < 0.95 else 0.0
                load_target *= 1.0 + 0.2 * conditions.wear  # friction of a worn bearing
        # The drive accelerates the spindle in a few seconds; load and feed follow fast.
        self.speed = ramp(self.speed, speed_target, self.speed_rate, dt)
        self.load = follow(self.load, load_target, 0.5, self.load_rate, dt)
        self.feed = follow(self.feed, feed_target, 0.3, self.feed_rate, dt)
        heat = 0.45 * self.load + 6.0 * self.speed / self.speed_max + 15.0 * conditions.wear
        self.temperature = lag(self.temperature, AMBIENT_C + heat, 600.0, dt)
        self.wear = conditions.wear

    def values(self) -> dict[str, float]:
        speed_fraction = self.speed / self.speed_max
        vibration = 0.4 + 2.2 * speed_fraction + 0.02 * self.load
        vibration += 9.0 * self.wear * (0.1 + speed_fraction)
        values = {
            "spindle_speed": self.speed,
            "spindle_load": self.load,
            "feed_rate": self.feed,
            "spindle_temperature": self.temperature,
            "vibration_rms": vibration,
            "parts_total": float(self.parts),
            "parts_scrap": float(self.scrap),
        }
        code = self.state_code()
        if code is not None:
            values["machine_state"] = code
        return values


class PumpModel(AssetModel):
    """A centrifugal pump on a variable-speed drive feeding a system with static head.

    Speed follows a wandering demand; flow, head and power follow the affinity laws
    (flow ~ n, head ~ n², power ~ n³) against the system curve. The volume counter
    integrates the flow.
    """

    STATIC_HEAD = 0.2  # fraction of the rated head the pump must overcome before it delivers
    RUN_S = (300.0, 900.0)
    IDLE_S = (30.0, 90.0)

    def __init__(self, asset: Asset, rng: np.random.Generator) -> None:
        super().__init__(asset, rng)
        self.rated_speed = 0.9 * self.expected("speed", Range(min=0, max=3000)).max
        self.design_flow = 0.7 * self.expected("flow", Range(min=0, max=320)).max
        self.design_head = 0.55 * self.expected("discharge_pressure", Range(min=0, max=12)).max
        self.rated_current = 0.7 * self.expected("motor_current", Range(min=0, max=90)).max
        self.demand = Wander(rng, mean=0.82, sigma=0.06, tau=120.0, low=0.6, high=0.97)
        self.tank = Wander(rng, mean=1.6, sigma=0.1, tau=600.0, low=1.2, high=2.0)
        self.speed = self.rated_speed * self.demand.value
        self.drive_rate = min(self.rated_speed / 20.0, self.max_rate("speed", 0.5, 300.0))
        self.trip_rate = self.max_rate("speed", 0.9, 300.0)
        self.flow_rate = self.max_rate("flow", 0.8, 40.0)
        self.flow = self.pump_curve()
        self.temperature = AMBIENT_C + 30.0
        self.volume = self.initial_count("volume_total", 10_000, 200_000)
        self.wear = 0.0

    def advance(self, dt: float, conditions: Conditions) -> None:
        self.operation.advance(dt, conditions.forced)
        demand = self.demand.advance(dt)
        self.tank.advance(dt)
        target = self.rated_speed * demand if self.operation.running else 0.0
        # A trip (DOWN) coasts the pump down faster than the drive's normal ramp.
        rate = self.trip_rate if conditions.forced is MachineState.DOWN else self.drive_rate
        self.speed = ramp(self.speed, target, rate, dt)
        # The water column has inertia: flow settles within seconds of a speed change.
        self.flow = follow(self.flow, self.pump_curve(), 2.0, self.flow_rate, dt)
        self.volume += self.flow * dt / 3600.0
        self.temperature = lag(self.temperature, AMBIENT_C + 45.0 * self.load**2, 600.0, dt)
        self.wear = conditions.wear

    def pump_curve(self) -> float:
        """Steady flow at the current speed: pump curve against the system curve."""
        x = self.speed / self.rated_speed
        head = x * x
        if head <= self.STATIC_HEAD:
            return 0.0
        return self.design_flow * math.sqrt((head - self.STATIC_HEAD) / (1.0 - self.STATIC_HEAD))

    @property
    def load(self) -> float:
        """Shaft power relative to the design point (~ flow × head)."""
        x = self.speed / self.rated_speed
        return (self.flow / self.design_flow) * (0.3 + 0.7 * x * x) if x > 0 else 0.0

    def values(self) -> dict[str, float]:
        x = self.speed / self.rated_speed
        q = self.flow / self.design_flow
        suction = self.tank.value - 0.3 * q * q  # friction losses in the suction line
        head = self.design_head * max(0.0, 1.15 * x * x - 0.15 * q * q)
        current = (0.25 * x + 0.75 * self.load) * self.rated_current * (1 + 0.1 * self.wear)
        vibration = 0.05 + (0.8 + 1.2 * x + 7.0 * self.wear) * x
        return {
            "flow": self.flow,
            "discharge_pressure": suction + head,
            "suction_pressure": suction,
            "motor_current": current,
            "motor_temperature": self.temperature,
            "vibration_rms": vibration,
            "speed": self.speed,
            "volume_total": self.volume,
        }


class CompressorModel(AssetModel):
    """A screw compressor with load/unload control between a cut-in and a cut-out pressure.

    Loaded it delivers its rated air flow and the network pressure rises; unloaded it
    delivers nothing, draws about a third of the power, and the pressure falls with demand.
    """

    CUT_IN, CUT_OUT = 6.5, 7.5  # bar
    RUN_S = (3600.0, 7200.0)  # a base-load compressor rarely stops
    IDLE_S = (20.0, 40.0)

    def __init__(self, asset: Asset, rng: np.random.Generator) -> None:
        super().__init__(asset, rng)
        self.rated_flow = 0.85 * self.expected("air_flow", Range(min=0, max=22)).max
        self.rated_power = 0.7 * self.expected("power", Range(min=0, max=160)).max
        self.demand = Wander(rng, mean=0.6, sigma=0.1, tau=180.0, low=0.3, high=0.9)
        self.pressure = float(rng.uniform(self.CUT_IN, self.CUT_OUT))
        self.loaded = True
        self.flow = self.power = 0.0
        self.flow_rate = self.max_rate("air_flow", 0.8, 10.0)
        self.power_rate = self.max_rate("power", 0.8, 50.0)
        self.oil = AMBIENT_C + 45.0
        self.discharge = self.oil + 10.0
        self.hours = self.initial_count("run_hours", 10_000, 30_000)
        self.wear = 0.0

    def advance(self, dt: float, conditions: Conditions) -> None:
        self.operation.advance(dt, conditions.forced)
        demand = self.demand.advance(dt) * self.rated_flow
        running = self.operation.running
        if running and self.pressure <= self.CUT_IN:
            self.loaded = True
        elif not running or self.pressure >= self.CUT_OUT:
            self.loaded = False
        self.flow = follow(
            self.flow, self.rated_flow if self.loaded else 0.0, 1.0, self.flow_rate, dt
        )
        # Net volume (receiver + network) sized so that a load cycle takes about a minute.
        self.pressure += (self.flow - demand) / (12.0 * self.rated_flow) * dt
        self.pressure = min(max(self.pressure, 0.0), 15.0)
        full = self.rated_power * (0.9 + 0.1 * self.pressure / self.CUT_OUT)
        power_target = (full if self.loaded else 0.3 * full) if running else 0.0
        self.power = follow(
            self.power, power_target * (1 + 0.1 * conditions.wear), 1.5, self.power_rate, dt
        )
        relative = self.power / self.rated_power
        self.oil = lag(self.oil, AMBIENT_C + 8.0 + 50.0 * relative, 300.0, dt)
        self.discharge = lag(self.discharge, self.oil + 12.0 * relative, 60.0, dt)
        if running:
            self.hours += dt / 3600.0
        self.wear = conditions.wear

    def state_code(self) -> float | None:
        rule = self.asset.kpi.state if self.asset.kpi is not None else None
        state = self.operation.state
        if (
            rule is None
            or rule.codes is None
            or state not in (MachineState.RUNNING, MachineState.IDLE)
        ):
            return super().state_code()
        if state is MachineState.RUNNING and self.loaded:
            return super().state_code()
        # Stopped and unloaded are both idle codes: by convention the first one means
        # stopped and the last one unloaded (0 and 2 in the demo plant).
        idle = rule.codes.get(MachineState.IDLE) or rule.codes.get(MachineState.RUNNING) or (0,)
        return float(idle[-1] if state is MachineState.RUNNING else idle[0])

    def values(self) -> dict[str, float]:
        current = self.power * 1000.0 / (math.sqrt(3) * 400.0 * 0.88)
        values = {
            "discharge_pressure": self.pressure,
            "air_flow": self.flow,
            "motor_current": current,
            "oil_temperature": self.oil,
            "discharge_temperature": self.discharge,
            "power": self.power,
            "run_hours": self.hours,
        }
        code = self.state_code()
        if code is not None:
            values["machine_state"] = code
        return values


class ConveyorModel(AssetModel):
    """A belt conveyor carrying items past a counting light barrier and a reject gate.

    Items arrive at about the ideal cycle time while the belt runs; the load on the belt is
    the items on it (they stay on it when the belt stops); motor current follows speed and
    load, the motor and gearbox warm up with it.
    """

    BELT_LENGTH_M = 30.0
    ITEM_KG = 8.0

    def __init__(self, asset: Asset, rng: np.random.Generator) -> None:
        super().__init__(asset, rng)
        self.rated_speed = 0.6 * self.expected("belt_speed", Range(min=0, max=2.5)).max
        self.rated_current = 0.5 * self.expected("motor_current", Range(min=0, max=30)).max
        self.ideal_cycle = self.cycle_time(1.0)
        self.pace = Wander(rng, mean=1.15, sigma=0.08, tau=60.0, low=1.02, high=1.5)
        self.speed = self.rated_speed
        self.load = self._steady_load()
        self.motor = AMBIENT_C + 25.0
        self.gearbox = AMBIENT_C + 25.0
        self.items = self.initial_count("items_total", 50_000, 500_000)
        self.rejected = math.floor(self.items * 0.02)
        self.progress = 0.0
        self.wear = 0.0

    def _steady_load(self) -> float:
        transit_s = self.BELT_LENGTH_M / self.rated_speed
        return transit_s / (self.ideal_cycle * self.pace.value) * self.ITEM_KG

    def advance(self, dt: float, conditions: Conditions) -> None:
        self.operation.advance(dt, conditions.forced)
        pace = self.pace.advance(dt)
        running = self.operation.running
        self.speed = ramp(self.speed, self.rated_speed if running else 0.0, 0.5, dt)
        if running:
            self.progress += dt / (self.ideal_cycle * pace)
            arrived = math.floor(self.progress)
            self.progress -= arrived
            self.items += arrived
            self.rejected += int(self.rng.binomial(arrived, 0.02)) if arrived else 0
        if self.speed > 0.01:  # only a moving belt exchanges items
            self.load = lag(self.load, self._steady_load(), 5.0, dt)
        fraction = self.speed / self.rated_speed
        current = self.current
        self.motor = lag(
            self.motor, AMBIENT_C + 35.0 * (current / self.rated_current) ** 2, 900.0, dt
        )
        self.gearbox = lag(self.gearbox, AMBIENT_C + 30.0 * fraction + 0.02 * self.load, 1200.0, dt)
        self.wear = conditions.wear

    @property
    def current(self) -> float:
        fraction = self.speed / self.rated_speed
        return (0.2 + 0.55 * fraction + 0.0008 * self.load * fraction) * self.rated_current

    def values(self) -> dict[str, float]:
        fraction = self.speed / self.rated_speed
        return {
            "belt_speed": self.speed,
            "motor_current": self.current,
            "motor_temperature": self.motor,
            "gearbox_temperature": self.gearbox,
            "belt_load": self.load,
            "vibration_rms": 0.3 + (1.5 + 8.0 * self.wear) * fraction,
            "items_total": float(self.items),
            "items_rejected": float(self.rejected),
        }


MODELS: dict[str, type[AssetModel]] = {
    "cnc": CncModel,
    "pump": PumpModel,
    "compressor": CompressorModel,
    "conveyor": ConveyorModel,
}
"""Physical models by asset type id; other types are simulated by `GenericModel`."""


def model_for(asset: Asset, rng: np.random.Generator) -> AssetModel:
    """The asset's model, falling back to the generic one for a type this module lacks."""
    return MODELS.get(asset.type.id, GenericModel)(asset, rng)
