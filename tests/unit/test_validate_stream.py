"""The validate stage on the simulated demo plant: few false flags, faults found, restarts exact.

Throughput (not asserted, machines vary): `.venv/bin/python -m tests.unit.test_validate_stream`
validates 50-reading frames of a simulated machining centre and prints readings per second.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.sim.plant import PlantModel
from pipeline.settings import DEFAULT_SITE
from pipeline.site import Site, load_site
from pipeline.stages.common import Origin
from pipeline.stages.validate import Validator

T0 = datetime(2025, 3, 14, 6, 0, tzinfo=UTC)
STEP = timedelta(milliseconds=100)  # the shortest sampling period of the demo plant
PUBLISH_EVERY = 5  # steps: a frame per asset every 500 ms, like the connectors' intervals
ORIGIN = Origin("telemetry.raw", 0, 0)


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(DEFAULT_SITE)


def frames(site: Site, scenario: str, seconds: float) -> Iterator[tuple[dict[str, Any], datetime]]:
    """(telemetry frame, arrival time) of every asset, with each fresh reading sent once and
    `seq` numbered per source across its assets, as the connectors do."""
    plant = PlantModel(site, seed=0, scenario=scenario, start=T0)
    seqs: Counter[str] = Counter()
    pending: dict[str, list[dict[str, Any]]] = {a.id: [] for a in site.assets}
    sent: dict[tuple[str, str], datetime] = {}
    for step in range(1, int(seconds / STEP.total_seconds()) + 1):
        now = T0 + step * STEP
        for sample in plant.step(now):
            for r in sample.readings():
                if sent.get((sample.asset_id, r["signal"])) != r["ts"]:
                    sent[(sample.asset_id, r["signal"])] = r["ts"]
                    pending[sample.asset_id].append(r)
        if step % PUBLISH_EVERY:
            continue
        for asset in site.assets:
            if not pending[asset.id]:
                continue
            seqs[asset.source_id] += 1
            yield (
                {
                    "asset_id": asset.id,
                    "source_id": asset.source_id,
                    "seq": seqs[asset.source_id],
                    "ingest_ts": now,
                    "readings": pending[asset.id],
                },
                now + timedelta(milliseconds=20),
            )
            pending[asset.id] = []


def flagged(
    site: Site, scenario: str, seconds: float
) -> tuple[Counter[tuple[str, str]], list[tuple[str, str, str, float]]]:
    """Readings validated per (asset, signal), and (asset, signal, flag, seconds since
    start) of every flag."""
    validator = Validator(site)
    count: Counter[tuple[str, str]] = Counter()
    flags: list[tuple[str, str, str, float]] = []
    for raw, now in frames(site, scenario, seconds):
        result = validator.validate(raw, ORIGIN, now)
        assert result.frame is not None, result.dead_letter
        for r in result.frame["readings"]:
            count[(raw["asset_id"], r["signal"])] += 1
            at = (r["ts"] - T0).total_seconds()
            flags.extend((raw["asset_id"], r["signal"], flag, at) for flag in r["flags"])
    return count, flags


def test_normal_operation_raises_very_few_flags(site: Site) -> None:
    count, flags = flagged(site, "none", 240)
    total = sum(count.values())
    assert total > 50_000
    suspicious = [f for f in flags if f[2] in ("RATE_OF_CHANGE", "STALE", "OUT_OF_EXPECTED_RANGE")]
    # Measured: none in 4 simulated minutes with the 4-sigma noise allowance (without the
    # allowance, 1.7% of all readings and a quarter of some slow temperatures' readings).
    assert len(suspicious) < 0.005 * total, Counter(f[:3] for f in suspicious).most_common(5)
    per_signal = Counter(f[:2] for f in suspicious)
    assert all(n < 0.01 * count[key] for key, n in per_signal.items()), per_signal
    assert not [f for f in flags if f[2] not in ("RATE_OF_CHANGE", "OUT_OF_EXPECTED_RANGE")]


def fault_window(site: Site, scenario: str) -> tuple[str, str, float, float]:
    (event,) = PlantModel(site, scenario=scenario, start=T0).events
    assert event.signal is not None
    return event.asset_id, event.signal, event.start.total_seconds(), event.end.total_seconds()


def test_stuck_sensor_turns_stale(site: Site) -> None:
    asset, signal, start, end = fault_window(site, "stuck-sensor")
    _, flags = flagged(site, "stuck-sensor", 120)
    stale = [f for f in flags if f[2] == "STALE"]
    assert {f[:2] for f in stale} == {(asset, signal)}
    # Stale once the value has been held for the 30 s window, until the sensor recovers.
    assert start + 30 <= min(f[3] for f in stale) <= start + 32
    assert max(f[3] for f in stale) < end + 1
    assert (
        len(stale)
        >= (end - start - 32) / site.asset(asset).signal(signal).sampling_period.total_seconds()
    )


def test_spikes_are_flagged(site: Site) -> None:
    asset, signal, start, end = fault_window(site, "spikes")
    _, flags = flagged(site, "spikes", 120)
    spikes = [f for f in flags if f[2] in ("RATE_OF_CHANGE", "OUT_OF_EXPECTED_RANGE")]
    assert {f[:2] for f in spikes} == {(asset, signal)}
    assert len(spikes) >= 4
    assert all(start <= f[3] <= end + 1 for f in spikes)


def test_restored_state_continues_exactly(site: Site) -> None:
    stream = list(frames(site, "faults", 150))
    # At-least-once artefacts: a frame delivered twice, and a reading from the past.
    stream.insert(700, stream[650])
    late = dict(stream[900][0], seq=10**6)
    late["readings"] = [dict(r, ts=r["ts"] - timedelta(seconds=5)) for r in late["readings"]]
    stream.insert(901, (late, stream[900][1]))

    def run(validator: Validator, part: list[tuple[dict[str, Any], datetime]]) -> list[str]:
        return [repr(validator.validate(raw, ORIGIN, now)) for raw, now in part]

    straight = run(Validator(site), stream)
    first = Validator(site)
    half = len(stream) // 2
    before = run(first, stream[:half])
    snapshots = json.loads(json.dumps({a: first.snapshot(a) for a in first.assets()}))
    second = Validator(site)
    for asset_id, state in snapshots.items():
        second.restore(asset_id, state)
    assert before + run(second, stream[half:]) == straight
    fresh = run(Validator(site), stream[half:])
    assert fresh != straight[half:]  # the restored state made a difference
    assert sum("'duplicate'" in out for out in straight) == 1
    assert sum("OUT_OF_ORDER" in out for out in straight) == 1


def benchmark(frame_size: int = 50, repeats: int = 20) -> float:
    """Readings per second of `validate` on frames of `frame_size` readings of a machining
    centre (5 simulated minutes of it, validated `repeats` times by fresh validators)."""
    site = load_site(DEFAULT_SITE)
    cnc = (raw for raw, _ in frames(site, "none", 300) if raw["asset_id"] == "cnc-01")
    readings = [r for raw in cnc for r in raw["readings"]]
    batch = [
        (
            {
                "asset_id": "cnc-01",
                "source_id": "opcua-line1",
                "seq": i,
                "ingest_ts": readings[i * frame_size]["ts"],
                "readings": readings[i * frame_size : (i + 1) * frame_size],
            },
            readings[(i + 1) * frame_size - 1]["ts"],
        )
        for i in range(len(readings) // frame_size)
    ]
    elapsed = 0.0
    for _ in range(repeats):
        validator = Validator(site)
        started = time.perf_counter()
        for raw, now in batch:
            validator.validate(raw, ORIGIN, now)
        elapsed += time.perf_counter() - started
    return repeats * len(batch) * frame_size / elapsed


if __name__ == "__main__":
    print(f"validate: {benchmark():,.0f} readings/s (50-reading frames)")
