"""The stage snapshots the worker writes every second are built without `dataclasses.asdict`,
`np.triu_indices` per call or numpy arrays of short lists, and must still encode to exactly
the bytes the earlier code gave, so changelogs written before restore as they did.

The earlier snapshot code of each stage that changed (anomaly model, KPI windows, alerts) is
kept below as the reference: random states and the demo plant's real ones (faults scenario)
must give the same `encode_state` bytes both ways, and the anomaly model's restore must give
the same arrays, bit for bit.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
from dataclasses import asdict, astuple, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from connectors.sim.plant import PlantModel
from pipeline.serde import AvroSerde
from pipeline.settings import DEFAULT_SITE
from pipeline.site import load_site
from pipeline.stages.alerts_state import AlertState, AssetAlerts, KpiEntry
from pipeline.stages.anomaly_model import HotellingT2, unpack_floats
from pipeline.stages.kpi_aggregate import KpiResult, Pane, SignalStats
from pipeline.stages.kpi_state import SNAPSHOT_FORMAT as KPI_FORMAT
from pipeline.stages.kpi_state import AssetWindows, EmittedWindow, _pack
from pipeline.stages.kpi_windows import SourceClock
from topologies.processor import STAGES, FrameProcessor, RawMessage
from topologies.state import encode_state

# --- the earlier snapshot code, verbatim but for the names -------------------------------


def old_pack(values: list[Any], dtype: type[np.generic]) -> str:
    data = np.asarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return base64.b64encode(data).decode("ascii")


def old_kpi_snapshot(state: AssetWindows) -> dict[str, Any]:
    return {
        "format": KPI_FORMAT,
        "watermark": state.watermark,
        "clocks": {s: [c.max_ts, c.last_arrival] for s, c in state.clocks.items()},
        "carried": {s: [ts, v] for s, (ts, v) in state.carried.items()},
        "emitted": [
            [kind, start, end, e.version, e.fingerprint]
            for (kind, start, end), e in state.emitted.items()
        ],
        "panes": [
            {
                "start": start,
                "values": {s: old_pack(v, np.float64) for s, v in pane.values.items()},
                "times": {s: old_pack(t, np.int64) for s, t in pane.times.items()},
            }
            for start, pane in state.panes.items()
        ],
    }


def old_alerts_snapshot(state: AssetAlerts) -> dict[str, Any]:
    return {
        "format": 1,
        "alerts": {rule_id: asdict(a) for rule_id, a in state.alerts.items()},
        "fresh": {s: list(v) for s, v in state.fresh.items()},
        "clock": state.clock_us,
        "clock_arrival": state.clock_arrival_us,
        "watched": state.watched_us,
        "updates": list(state.updates),
        "windows": [
            [start, w.version, w.end_us, dict(w.values)] for start, w in state.windows.items()
        ],
    }


def old_pack_floats(values: Any) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=np.dtype("<f8")).tobytes()).decode()


def old_hotelling_snapshot(model: HotellingT2) -> dict[str, Any]:
    upper = np.triu_indices(len(model.features))
    return {
        "mean": old_pack_floats(model.mean),
        "cov_upper": old_pack_floats(model.cov[upper]),
        "counts": old_pack_floats(model.counts),
        "precision": old_pack_floats(model.precision),
        "learned": model.learned,
    }


def old_hotelling_cov(model: HotellingT2, state: dict[str, Any]) -> Any:
    d = len(model.features)
    upper = np.triu_indices(d)
    cov = np.zeros((d, d))
    cov[upper] = unpack_floats(state["cov_upper"], (len(upper[0]),))
    cov.T[upper] = cov[upper]
    return cov


def same_bytes(stage: str, new: dict[str, Any], old: dict[str, Any]) -> None:
    assert encode_state({stage: new}) == encode_state({stage: old})


# --- random states -------------------------------------------------------------------------

SPECIAL = [0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308, 1e-300]


def random_float(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.1:
        return rng.choice(SPECIAL)
    if pick < 0.2:
        return float(rng.randint(-(10**6), 10**6))
    return rng.uniform(-1e3, 1e3) * 10 ** rng.randint(-8, 8)


def random_windows(rng: random.Random) -> AssetWindows:
    t0 = 1_714_521_600_000_000 + rng.randrange(10**9)
    signals = [f"sig{i}" for i in range(rng.randint(1, 20))]
    panes = {}
    for k in range(rng.randint(1, 4)):
        pane = Pane()
        for signal in rng.sample(signals, rng.randint(1, len(signals))):
            n = rng.choice([0, 1, 2, 3, 5, 15, rng.randint(0, 3000)])
            pane.values[signal] = [random_float(rng) for _ in range(n)]
            if rng.random() < 0.3:
                pane.times[signal] = sorted(t0 + rng.randrange(60_000_000) for _ in range(n))
        panes[t0 + k * 60_000_000] = pane
    return AssetWindows(
        panes=panes,
        clocks={f"src{i}": SourceClock(t0 + i, t0 + 2 * i) for i in range(rng.randint(0, 3))},
        watermark=rng.choice([None, t0 - 1]),
        carried={s: (t0 - 5, random_float(rng)) for s in signals[:3]},
        emitted={
            ("TUMBLING", t0, t0 + 60_000_000): EmittedWindow(rng.randint(1, 5), "ab12"),
            ("HOPPING", t0 - 240_000_000, t0 + 60_000_000): EmittedWindow(1, "cd34"),
        },
    )


def random_alert(rng: random.Random) -> AlertState:
    def maybe_int() -> int | None:
        return rng.choice([None, rng.randrange(2**60)])

    return AlertState(
        active=rng.random() < 0.5,
        raised_us=maybe_int(),
        since_us=maybe_int(),
        clear_since_us=maybe_int(),
        cleared_us=maybe_int(),
        last_us=maybe_int(),
        held=rng.random() < 0.5,
        reported=rng.choice([None, random_float(rng)]),
        detail=rng.choice(["", "high", "flow,pressure"]),
        kind=rng.choice(["", "threshold", "anomaly"]),
        severity=rng.choice(["", "warning", "critical"]),
    )


def random_alerts(rng: random.Random) -> AssetAlerts:
    t0 = 1_714_521_600_000_000
    return AssetAlerts(
        alerts={f"rule-{i}": random_alert(rng) for i in range(rng.randint(1, 6))},
        fresh={f"sig{i}": [t0 + i, t0 + 2 * i] for i in range(rng.randint(0, 20))},
        clock_us=rng.choice([None, t0]),
        clock_arrival_us=rng.choice([None, t0 + 7]),
        watched_us=rng.choice([None, t0 + 9]),
        updates=[t0 + i for i in range(rng.randint(0, 5))],
        windows={
            t0 + i: KpiEntry(i + 1, t0 + i + 60, {"oee": random_float(rng), "quality": None})
            for i in range(rng.randint(0, 3))
        },
    )


def random_model(rng: random.Random, d: int) -> HotellingT2:
    model = HotellingT2(tuple(f"f{i}" for i in range(d)), refresh=3, min_samples=2)
    np_rng = np.random.default_rng(rng.randrange(2**32))
    for _ in range(rng.randint(0, 40)):
        vector = np_rng.normal(size=d) * np_rng.uniform(0.1, 100, size=d)
        vector[np_rng.random(d) < 0.1] = np.nan
        present = np.isfinite(vector)
        model.learn_vector(vector, present, present.astype(np.float64))
    return model


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_kpi_snapshot_bytes_are_unchanged(seed: int) -> None:
    same_bytes("kpi", AssetWindows().snapshot(), old_kpi_snapshot(AssetWindows()))
    state = random_windows(random.Random(seed))
    snapshot = state.snapshot()
    same_bytes("kpi", snapshot, old_kpi_snapshot(state))
    # ...and what it restores snapshots to the same bytes again.
    same_bytes("kpi", AssetWindows.restore(snapshot).snapshot(), snapshot)


@pytest.mark.parametrize("seed", SEEDS)
def test_alerts_snapshot_bytes_are_unchanged(seed: int) -> None:
    same_bytes("alerts", AssetAlerts().snapshot(), old_alerts_snapshot(AssetAlerts()))
    state = random_alerts(random.Random(seed))
    snapshot = state.snapshot()
    same_bytes("alerts", snapshot, old_alerts_snapshot(state))
    same_bytes("alerts", AssetAlerts.restore(snapshot).snapshot(), snapshot)


@pytest.mark.parametrize("d", [1, 2, 5, 32])
@pytest.mark.parametrize("seed", range(3))
def test_anomaly_model_snapshot_and_restore_are_unchanged(d: int, seed: int) -> None:
    model = random_model(random.Random(seed), d)
    snapshot = model.snapshot()
    same_bytes("anomaly", snapshot, old_hotelling_snapshot(model))
    restored = HotellingT2(model.features)
    restored.restore(snapshot)
    assert restored.cov.tobytes() == old_hotelling_cov(restored, snapshot).tobytes()
    for name in ("mean", "cov", "counts", "precision"):
        assert getattr(restored, name).tobytes() == getattr(model, name).tobytes(), name
    same_bytes("anomaly", restored.snapshot(), snapshot)


def test_a_transposed_covariance_snapshots_as_before() -> None:
    """The triangle is read from the matrix as it is, whatever its memory layout."""
    model = random_model(random.Random(7), 6)
    model.cov = np.asfortranarray(model.cov + np.triu(np.ones((6, 6))))  # not symmetric
    same_bytes("anomaly", model.snapshot(), old_hotelling_snapshot(model))


ODD_LISTS: list[list[Any]] = [
    [],
    [1, 2**53 + 1, 2**63, -(2**63)],
    [10**400],
    [None, 1.0],
    ["1.5"],
    [True, False],
    [Decimal("0.1"), Fraction(1, 3)],
    [np.float64(2.5), np.int64(3), np.float32(0.1), np.int32(5)],
    [np.uint64(2**64 - 1)],
    [1 + 2j],
    [1.7, 2.5],
    [[1.0]],
]


@pytest.mark.parametrize("values", ODD_LISTS, ids=range(len(ODD_LISTS)))
@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_pane_lists_of_any_content_pack_or_fail_as_before(
    values: list[Any], dtype: type[np.generic]
) -> None:
    def outcome(pack: Any) -> Any:
        try:
            return pack(values, dtype)
        except Exception as exc:  # the same failure is part of "as before"
            return type(exc), str(exc)

    assert outcome(_pack) == outcome(old_pack)


# --- the demo plant's real state -----------------------------------------------------------

START = datetime(2024, 5, 1, 8, tzinfo=UTC)


def old_snapshot_asset(processor: FrameProcessor, asset_id: str) -> dict[str, Any]:
    """What `snapshot_asset` gave with the earlier snapshot code (after the catch-up that the
    current one did: the stages' state is the same)."""
    states: dict[str, Any] = {}
    for stage in STAGES:
        state = processor.snapshot(stage, asset_id)
        if state is None:
            continue
        if stage == "anomaly":
            state["model"] = old_hotelling_snapshot(processor.anomaly._models[asset_id].model)
        elif stage == "kpi":
            state = old_kpi_snapshot(processor.kpi._assets[asset_id])
        elif stage == "alerts":
            state = old_alerts_snapshot(processor.alerts._assets[asset_id])
        states[stage] = state
    return states


def test_demo_plant_snapshots_encode_as_before() -> None:
    """Seven minutes of the demo plant with its faults, snapshotted every 30 s of event time:
    alerts raised and cleared, anomaly models refreshed, KPI windows emitted and panes
    dropped (their last readings carried)."""
    site = load_site(DEFAULT_SITE)
    serde = AvroSerde.local()
    plant = PlantModel(site, seed=3, scenario="faults", start=START)
    now = [START]
    processor = FrameProcessor(site, serde, clock=lambda: now[0])
    seqs: dict[str, int] = {}
    compared = 0
    reached: set[str] = set()
    for step in range(1, 841):
        ts = START + timedelta(seconds=step * 0.5)
        batch = []
        for sample in plant.step(ts):
            readings = sample.readings()
            if not readings:
                continue
            source = site.asset(sample.asset_id).source_id
            seq = seqs[source] = seqs.get(source, -1) + 1
            frame = {
                "asset_id": sample.asset_id,
                "source_id": source,
                "seq": seq,
                "ingest_ts": ts,
                "readings": readings,
            }
            value = serde.encode("telemetry_frame", frame)
            batch.append(RawMessage("telemetry.raw", 0, step, sample.asset_id.encode(), value))
        now[0] = ts + timedelta(milliseconds=50)
        processor.process(batch)
        processor.tick()
        if step % 60:
            continue
        for asset in site.assets:
            states = processor.snapshot_asset(asset.id)
            assert states is not None
            assert encode_state(states) == encode_state(old_snapshot_asset(processor, asset.id))
            compared += 1
            reached.update(what_state_holds(processor, asset.id))
    assert compared == 14 * len(site.assets)
    # The comparisons covered the states that matter.
    assert reached == {"emitted", "carried", "active", "cleared", "precision", "timed pane"}


def what_state_holds(processor: FrameProcessor, asset_id: str) -> set[str]:
    kpi = processor.kpi._assets[asset_id]
    alerts = processor.alerts._assets[asset_id].alerts.values()
    held = {
        "emitted": bool(kpi.emitted),
        "carried": bool(kpi.carried),
        "timed pane": any(pane.times for pane in kpi.panes.values()),
        "active": any(a.active for a in alerts),
        "cleared": any(a.cleared_us is not None for a in alerts),
        "precision": bool(processor.anomaly._models[asset_id].model.precision.any()),
    }
    return {name for name, there in held.items() if there}


# --- KPI result fingerprints --------------------------------------------------------------


def _reference_fingerprint(result: KpiResult) -> str:
    """The earlier fingerprint: of the text of dataclasses.astuple."""
    return hashlib.blake2b(repr(astuple(result)).encode(), digest_size=8).hexdigest()


@pytest.mark.parametrize("seed", range(20))
def test_kpi_fingerprint_is_the_one_astuple_gave(seed: int) -> None:
    rng = random.Random(seed)

    def maybe(value: float) -> float | None:
        return None if rng.random() < 0.3 else value

    odd = [0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1e308, 0.1 + 0.2]
    signals = tuple(
        SignalStats(
            f"s{i}",
            rng.randrange(0, 10_000),
            rng.choice(odd),
            rng.uniform(-1e6, 1e6),
            rng.gauss(0, 1),
            rng.choice([*odd, rng.random()]),
        )
        for i in range(rng.randrange(0, 20))
    )
    result = KpiResult(
        availability=maybe(rng.random()), performance=maybe(rng.random()),
        quality=maybe(rng.random()), oee=maybe(rng.choice(odd)), run_s=rng.uniform(0, 60),
        idle_s=rng.uniform(0, 60), down_s=rng.choice(odd), parts_total=rng.randrange(0, 99),
        parts_good=rng.randrange(0, 99), failures=rng.randrange(0, 3),
        mtbf_s=maybe(rng.uniform(0, 1e4)), mttr_s=maybe(rng.uniform(0, 1e4)), signals=signals,
    )  # fmt: skip
    assert result.fingerprint() == _reference_fingerprint(result)
    # ... and it still tells results apart.
    changed = replace(result, parts_good=result.parts_good + 1)
    assert changed.fingerprint() != result.fingerprint()
