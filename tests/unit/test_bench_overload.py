"""The latency phase's deliberate alerts: which machines run overloaded and when, the frames
they send, the alert the pipeline's stages raise from them, and how each alert is matched
to the frame that caused it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import yaml

from connectors.sim.plant import PlantModel
from pipeline.bench.overload import (
    FRAME_SPAN_S,
    OVERLOAD_LEVEL,
    OVERLOAD_NOISE,
    OverloadPlan,
    SentFrames,
    alert_arrivals,
    overloaded,
)
from pipeline.bench.plant import (
    GAUGE_PERIOD,
    OVERLOAD_ABOVE,
    OVERLOAD_SIGNAL,
    BenchPlant,
    site_document,
)
from pipeline.bench.replay import FrameReplay, replay_frames
from pipeline.bench.watch import AlertSeen
from pipeline.bench.workload import STEPS_PER_FRAME, _frame_readings
from pipeline.serde import AvroSerde, SchemaCatalog
from pipeline.serde.columnar import encode_frames
from pipeline.site import Site, parse_site
from pipeline.stages.common import to_micros
from topologies.processor import FrameProcessor, RawMessage

TOPIC = "o.telemetry.raw"
GAP_S = 4.0
"""How far apart the latency phase sends one asset's frames at its default load."""


@pytest.fixture(scope="module")
def serde() -> AvroSerde:
    return AvroSerde(SchemaCatalog.load())


def bench_site(assets: int, gauges: int = 3) -> Site:
    plant = BenchPlant(assets=assets, gauges=gauges, partitions=1, topic_prefix="o.")
    return parse_site(yaml.safe_dump(site_document(plant), sort_keys=False))


def plant_frames(site: Site, count: int, start: datetime, gap_s: float) -> list[dict[str, Any]]:
    """`count` frames of every asset of the bench site, one per asset every `gap_s` seconds
    of event time (as the latency phase spaces them), each holding the readings of the frame
    interval before its ingest time."""
    model = PlantModel(site, seed=3, scenario="none", start=start)
    frames: list[dict[str, Any]] = []
    ts = start
    for _ in range(count):
        pending: dict[str, list[dict[str, Any]]] = {a.id: [] for a in site.assets}
        for _ in range(STEPS_PER_FRAME):
            previous, ts = ts, ts + GAUGE_PERIOD
            for sample in model.step(ts):
                pending[sample.asset_id].extend(_frame_readings(sample, previous))
        for asset_id, readings in pending.items():
            frames.append({"asset_id": asset_id, "source_id": "bench-gateway",
                           "seq": len(frames), "ingest_ts": ts, "readings": readings})  # fmt: skip
        for _ in range(round(gap_s / GAUGE_PERIOD.total_seconds()) - STEPS_PER_FRAME):
            ts += GAUGE_PERIOD
            model.step(ts)
    return frames


def test_the_plant_has_the_overload_rule_only_with_a_spindle_load() -> None:
    rules = {r.id: r for r in bench_site(2, gauges=3).alert_rules}
    assert rules["machine-overload"].signal == OVERLOAD_SIGNAL
    assert rules["machine-overload"].raise_above == OVERLOAD_ABOVE
    assert "machine-overload" not in {r.id for r in bench_site(2, gauges=1).alert_rules}


def test_overloaded_frames_change_only_the_load_readings(serde: AvroSerde) -> None:
    site = bench_site(3)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    values = [serde.encode("telemetry_frame", f) for f in plant_frames(site, 4, start, 0.5)]
    frames = replay_frames(serde, values)
    rows = np.array([1, 4, 7], dtype=np.int64)
    hot = overloaded(frames, rows)
    plain = frames.take(rows)
    load = hot.signal == OVERLOAD_SIGNAL
    assert load.sum() == 3 * STEPS_PER_FRAME
    assert np.all(np.abs(hot.value[load] - OVERLOAD_LEVEL) < 6 * OVERLOAD_NOISE)
    assert np.unique(hot.value[load]).size == load.sum()  # no value repeats (no frozen sensor)
    assert np.all(hot.value[load] > OVERLOAD_ABOVE) and np.all(plain.value[load] < OVERLOAD_ABOVE)
    assert np.array_equal(hot.value[~load], plain.value[~load])
    assert np.array_equal(hot.ts_us, plain.ts_us) and hot.asset_id == plain.asset_id
    assert np.array_equal(frames.take(rows).value, plain.value)  # the workload is untouched


def test_every_tenth_machine_is_overloaded_in_its_own_block(serde: AvroSerde) -> None:
    site = bench_site(25)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    values = [serde.encode("telemetry_frame", f) for f in plant_frames(site, 2, start, 0.5)]
    frames = replay_frames(serde, values)
    plan = OverloadPlan.build(serde, frames, TOPIC, seconds=60)
    assert plan is not None
    assert plan.machines == ["m-0001", "m-0011", "m-0021"]
    rows = np.arange(len(frames), dtype=np.int64)
    by_asset = {a: np.array([a == b for b in frames.asset_id]) for a in set(frames.asset_id)}
    # Blocks start spread over the first half of the phase and last a quarter of it.
    for machine, start_s in zip(plan.machines, (0.0, 10.0, 20.0), strict=True):
        mine = by_asset[machine]
        assert not plan.hot(rows, start_s - 0.01)[mine].any()
        assert plan.hot(rows, start_s)[mine].all()
        assert plan.hot(rows, start_s + 14.99)[mine].all()
        assert not plan.hot(rows, start_s + 15.0)[mine].any()
    others = ~np.any([by_asset[m] for m in plan.machines], axis=0)
    assert not any(plan.hot(rows, t)[others].any() for t in np.arange(0, 60, 0.5))
    # A short phase still gives each block MIN_BLOCK_S, long enough for a frame or two.
    short = OverloadPlan.build(serde, frames, TOPIC, seconds=3)
    assert short is not None and short.hot(rows, 1.99)[by_asset["m-0001"]].all()
    one_gauge = plant_frames(bench_site(2, gauges=1), 1, start, 0.5)
    no_load = replay_frames(serde, [serde.encode("telemetry_frame", f) for f in one_gauge])
    assert OverloadPlan.build(serde, no_load, TOPIC, seconds=60) is None


def test_the_plan_sends_overloaded_frames_in_place_with_their_numbers(serde: AvroSerde) -> None:
    site = bench_site(12)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    values = [serde.encode("telemetry_frame", f) for f in plant_frames(site, 2, start, 0.5)]
    frames = replay_frames(serde, values)
    plain = FrameReplay(serde, frames, TOPIC)
    plan = OverloadPlan.build(serde, frames, TOPIC, seconds=40)
    assert plan is not None and plan.machines == ["m-0001", "m-0011"]
    rows = np.arange(len(frames), dtype=np.int64)
    now = to_micros(datetime(2026, 3, 2, tzinfo=UTC))
    sent = [serde.decode(v).record for v in plan.encode(plain, rows, 1.0, now, 500)]
    assert [r["seq"] for r in sent] == list(range(500, 500 + len(frames)))
    assert [r["asset_id"] for r in sent] == frames.asset_id
    for record, value in zip(sent, plain.encode(rows, now, 500), strict=True):
        loads = [x["value"] for x in record["readings"] if x["signal"] == OVERLOAD_SIGNAL]
        if record["asset_id"] == "m-0001":  # its block: 0 to 10 s; m-0011's begins at 10 s
            assert min(loads) > OVERLOAD_ABOVE
        else:
            assert serde.encode("telemetry_frame", record, topic=TOPIC) == value
    # Outside every block the plan sends what the plain replay sends.
    assert plan.encode(plain, rows, 39.0, now, 7) == plain.encode(rows, now, 7)


def test_the_stages_raise_the_overload_alert_at_the_first_overloaded_frame(
    serde: AvroSerde,
) -> None:
    """Through the worker's own stages: frames of one machine GAP_S apart, the 4th to the 6th
    overloaded. The alert is raised by the 4th and matched to its ingest time."""
    site = bench_site(1)
    start = datetime.now(UTC) - timedelta(seconds=120)
    records = plant_frames(site, 12, start, GAP_S)
    values = [serde.encode("telemetry_frame", r, topic=TOPIC) for r in records]
    frames = replay_frames(serde, values)
    values[3:6] = encode_frames(serde, overloaded(frames, np.arange(3, 6, dtype=np.int64)), TOPIC)
    processor = FrameProcessor(site, serde)
    raised: list[tuple[int, dict[str, Any]]] = []
    sent = SentFrames(frames.asset_id)
    for k, (record, value) in enumerate(zip(records, values, strict=True)):
        result = processor.process([RawMessage(TOPIC, 0, k, b"m-0001", value)])
        sent.add(np.array([k]), to_micros(record["ingest_ts"]))
        for out in result.outputs:
            if out.topic.endswith("twin.alerts"):
                alert = serde.decode(out.value).record
                if alert["rule_id"] == "machine-overload":
                    raised.append((k, alert))
    assert [(k, a["event"]) for k, a in raised][:1] == [(3, "RAISED")]
    assert [a["event"] for _, a in raised].count("RAISED") == 1
    seen = [AlertSeen(0.0, "m-0001", to_micros(a["ts"])) for _, a in raised]
    arrivals, unmatched = alert_arrivals(seen, sent.by_asset())
    assert unmatched == 0
    assert [a.since for a in arrivals][:1] == [records[3]["ingest_ts"].timestamp()]


def test_alerts_are_matched_to_the_first_frame_at_or_after_their_time() -> None:
    sent = SentFrames(["a", "b", "a", "c"])  # the workload's frames: their assets
    second = 1_000_000
    sent.add(np.array([0, 1]), 10 * second)  # a and b sent at 10 s
    sent.add(np.array([2]), 14 * second)  # a again at 14 s
    sent.add(np.array([0, 3]), 18 * second)  # a at 18 s, c at 18 s
    assert {k: v.tolist() for k, v in sent.by_asset().items()} == {
        "a": [10 * second, 14 * second, 18 * second],
        "b": [10 * second],
        "c": [18 * second],
    }

    def seen(asset: str, ts_s: float) -> AlertSeen:
        return AlertSeen(received=30.0, asset_id=asset, ts_us=round(ts_s * second))

    alerts = [
        seen("a", 13.6),  # a reading of the frame sent at 14 s
        seen("a", 14.0),  # the frame's last reading: its ingest time
        seen("b", 9.8),
        seen("a", 18.0 - FRAME_SPAN_S),  # as early as a frame's reading can be
        seen("a", 12.0),  # 2 s before a's next frame: no frame of a holds it (a tick's)
        seen("c", 18.5),  # after c's last frame
        seen("z", 10.0),  # an asset never sent
    ]
    arrivals, unmatched = alert_arrivals(alerts, sent.by_asset())
    assert [(a.received, a.since) for a in arrivals] == [(30.0, 14.0), (30.0, 14.0),
                                                        (30.0, 10.0), (30.0, 18.0)]  # fmt: skip
    assert unmatched == 3
    assert alert_arrivals([], {}) == ([], 0)
