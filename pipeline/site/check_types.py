"""Cross-checks within each asset type: signal ranges, KPI rules, binding templates."""

from __future__ import annotations

from pipeline.site.checks import (
    Parts,
    Span,
    overlaps,
    signal_key_problems,
    template_problems,
    topic_problems,
)
from pipeline.site.common import unknown
from pipeline.site.models import AssetTypeSpec
from pipeline.site.problems import Loc, Problem
from pipeline.site.resolve import NODE_ID_FIELDS
from pipeline.site.signals import SignalKind, SignalSpec


def signal_problems(loc: Loc, spec: SignalSpec) -> list[Problem]:
    """Problems of one signal's values taken together."""
    found = []
    for name in ("physical", "expected"):
        rng = getattr(spec, name)
        if not rng.min < rng.max:
            found.append(Problem((*loc, name), f"min {rng.min:g} must be below max {rng.max:g}"))
    if not spec.physical.covers(spec.expected):
        found.append(
            Problem(
                (*loc, "expected"),
                f"expected range {spec.expected} is outside the physical range {spec.physical}",
            )
        )
    if spec.kind is SignalKind.GAUGE and spec.measurement_noise <= 0:
        found.append(
            Problem((*loc, "measurement_noise"), "a gauge needs a measurement noise above 0")
        )
    if spec.kind is not SignalKind.GAUGE:
        for name in ("physical", "expected"):
            rng = getattr(spec, name)
            if not (float(rng.min).is_integer() and float(rng.max).is_integer()):
                found.append(
                    Problem((*loc, name), f"a {spec.kind} signal needs whole-number bounds")
                )
    if spec.kind is SignalKind.COUNTER and spec.physical.min < 0:
        found.append(Problem((*loc, "physical", "min"), "a counter cannot go below 0"))
    return found


def check_asset_types(parts: Parts) -> list[Problem]:
    found = []
    for type_id, spec in parts.asset_types.items():
        loc: Loc = ("asset_types", type_id)
        for name, signal in spec.signals.items():
            found += signal_problems((*loc, "signals", name), signal)
        found += _kpi(loc, spec)
        found += _opcua_template(loc, spec)
        found += _mqtt_template(loc, spec)
        found += _modbus_template(loc, spec)
    return found


def _opcua_template(loc: Loc, spec: AssetTypeSpec) -> list[Problem]:
    if spec.opcua is None:
        return []
    oloc: Loc = (*loc, "opcua")
    found = signal_key_problems((*oloc, "signals"), spec.opcua.signals, spec, str(loc[-1]))
    if spec.opcua.node_id is not None:
        found += template_problems(spec.opcua.node_id, NODE_ID_FIELDS, (*oloc, "node_id"))
    for name, own in spec.opcua.signals.items():
        if own.node_id is not None:
            found += template_problems(
                own.node_id, NODE_ID_FIELDS, (*oloc, "signals", name, "node_id")
            )
    return found


def _mqtt_template(loc: Loc, spec: AssetTypeSpec) -> list[Problem]:
    if spec.mqtt is None:
        return []
    mloc: Loc = (*loc, "mqtt")
    found = signal_key_problems((*mloc, "fields"), spec.mqtt.fields, spec, str(loc[-1]))
    if spec.mqtt.topic is not None:
        found += topic_problems(spec.mqtt.topic, (*mloc, "topic"))
    owner = {spec.mqtt.timestamp_field: "the timestamp"}
    for name in spec.signals:
        json_field = spec.mqtt.fields.get(name, name)
        if json_field in owner:
            why = f"JSON field {json_field!r} of {name} is also the field of {owner[json_field]}"
            found.append(Problem((*mloc, "fields", name), why))
        owner.setdefault(json_field, name)
    return found


def _modbus_template(loc: Loc, spec: AssetTypeSpec) -> list[Problem]:
    if spec.modbus is None:
        return []
    rloc: Loc = (*loc, "modbus", "registers")
    found = signal_key_problems(rloc, spec.modbus.registers, spec, str(loc[-1]))
    missing = [name for name in spec.signals if name not in spec.modbus.registers]
    if missing:
        found.append(Problem(rloc, f"no register for signal(s) {', '.join(missing)}"))
    spans = []
    for name, reg in spec.modbus.registers.items():
        signal = spec.signals.get(name)
        if signal is not None and signal.kind is not SignalKind.GAUGE:
            if not reg.data_type.is_integer:
                found.append(
                    Problem(
                        (*rloc, name, "data_type"),
                        f"{name} is a {signal.kind} signal: it needs an integer type "
                        f"(int16, uint16, int32, uint32), not {reg.data_type}",
                    )
                )
            for attr in ("scale", "offset"):
                if not float(getattr(reg, attr)).is_integer():
                    why = f"{name} is a {signal.kind} signal: {attr} must be a whole number"
                    found.append(Problem((*rloc, name, attr), why))
        stop = reg.address + reg.data_type.words
        if stop > 65536:
            why = f"{reg.data_type} at {reg.address} runs past the last register 65535"
            found.append(Problem((*rloc, name, "address"), why))
        spans.append(Span(reg.table, reg.address, stop, 0, name, name))
    for later, earlier in overlaps(spans):
        found.append(
            Problem(
                (*rloc, later.signal, "address"), f"{later} overlaps {earlier.signal} ({earlier})"
            )
        )
    return found


def _kpi(loc: Loc, spec: AssetTypeSpec) -> list[Problem]:
    if spec.kpi is None:
        return []
    kloc: Loc = (*loc, "kpi")
    found = []
    state = spec.kpi.state
    if state is not None:
        signal = spec.signals.get(state.signal)
        if signal is None:
            found.append(
                Problem((*kloc, "state", "signal"), unknown("signal", state.signal, spec.signals))
            )
        elif state.codes is not None:
            if signal.kind is not SignalKind.STATE:
                found.append(
                    Problem(
                        (*kloc, "state", "signal"),
                        f"{state.signal} is a {signal.kind} signal; codes need a state signal",
                    )
                )
            seen: dict[int, str] = {}
            for machine_state, codes in state.codes.items():
                for code in codes:
                    cloc: Loc = (*kloc, "state", "codes", str(machine_state))
                    if code in seen:
                        found.append(Problem(cloc, f"code {code} already means {seen[code]}"))
                    elif not signal.physical.contains(code):
                        why = f"code {code} is outside the physical range {signal.physical}"
                        found.append(Problem(cloc, why))
                    seen.setdefault(code, str(machine_state))
        elif signal.kind is SignalKind.STATE:
            why = f"{state.signal} is a state signal: map its codes instead of thresholds"
            found.append(Problem((*kloc, "state", "running_above"), why))
    counters = spec.kpi.counters
    if counters is not None:
        for role in ("total", "scrap"):
            name = getattr(counters, role)
            if name is None:
                continue
            cloc = (*kloc, "counters", role)
            signal = spec.signals.get(name)
            if signal is None:
                found.append(Problem(cloc, unknown("signal", name, spec.signals)))
            elif signal.kind is not SignalKind.COUNTER:
                found.append(Problem(cloc, f"{name} is a {signal.kind} signal, not a counter"))
    elif spec.kpi.ideal_cycle_time is not None:
        why = "an ideal cycle time needs part counters (counters.total)"
        found.append(Problem((*kloc, "ideal_cycle_time"), why))
    return found
