"""The stream agents' batch work (`FrameProcessor`) in memory: decode, validate, estimate,
KPI windows and dead letters, and a restart that resumes from the persisted stage state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.sim.plant import PlantModel
from pipeline.serde import AvroSerde
from pipeline.settings import DEFAULT_SITE
from pipeline.site import Site, load_site
from pipeline.stages.common import StageStateError
from pipeline.stages.frames import Frames, States
from topologies.processor import STAGES, FrameProcessor, Output, RawMessage
from topologies.state import PendingState, decode_state, encode_state

START = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
TOPIC = "telemetry.raw"


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(DEFAULT_SITE)


def raw_messages(
    site: Site, serde: AvroSerde, seconds: float, step_s: float = 0.5, scenario: str = "none"
) -> list[RawMessage]:
    """Telemetry frames of the simulated demo plant, one per asset per step, as Kafka would
    deliver them (offsets per partition of one topic; one partition per asset is enough)."""
    plant = PlantModel(site, seed=1, scenario=scenario, start=START)
    partitions = {a.id: i % 4 for i, a in enumerate(site.assets)}
    offsets = dict.fromkeys(range(4), 0)
    seqs: dict[str, int] = {}
    out = []
    for i in range(int(seconds / step_s)):
        now = START + timedelta(seconds=i * step_s)
        for sample in plant.step(now):
            if not sample.readings():
                continue  # a source that lost its link sends nothing
            asset = site.asset(sample.asset_id)
            seq = seqs[asset.source_id] = seqs.get(asset.source_id, -1) + 1
            frame = {
                "asset_id": sample.asset_id,
                "source_id": asset.source_id,
                "seq": seq,
                "ingest_ts": now + timedelta(milliseconds=20),
                "readings": sample.readings(),
            }
            p = partitions[sample.asset_id]
            value = serde.encode("telemetry_frame", frame)
            out.append(RawMessage(TOPIC, p, offsets[p], sample.asset_id.encode(), value))
            offsets[p] += 1
    return out


def clock_after(messages: list[RawMessage]) -> Any:
    return lambda: START + timedelta(seconds=len(messages) / 20 + 5)


def decoded(serde: AvroSerde, outputs: list[Output], topic: str) -> list[dict[str, Any]]:
    return [serde.decode(o.value).record for o in outputs if o.topic == topic]


def test_frames_flow_to_valid_state_and_kpi_topics(site: Site) -> None:
    serde = AvroSerde.local()
    messages = raw_messages(site, serde, seconds=150)
    processor = FrameProcessor(site, serde, clock=clock_after(messages))
    result = processor.process(messages)

    valid = decoded(serde, result.outputs, "telemetry.valid")
    states = decoded(serde, result.outputs, "twin.state")
    kpis = decoded(serde, result.outputs, "twin.kpi")
    assert len(valid) == len(messages) == result.frames
    assert result.dead_letters == 0
    assert len(states) == len(valid)
    assert {s["asset_id"] for s in states} == {a.id for a in site.assets}
    assert result.readings == sum(len(v["readings"]) for v in valid)
    # 150 s of event time: the first two 1-minute windows of every asset have closed.
    closed = {(k["asset_id"], k["window_start"]) for k in kpis if k["window_kind"] == "TUMBLING"}
    assert len(closed) >= 2 * len(site.assets) - 2
    assert all(o.key == o.key.decode().encode() and o.key for o in result.outputs)
    assert result.touched == {a.id for a in site.assets}


def test_plant_faults_raise_and_clear_alerts(site: Site) -> None:
    """The demo scenario's stuck sensor, Modbus link loss, bearing wear and breakdown each
    raise their site rule's alert (the breakdown through the anomaly detector), which clears
    again; every alert's events form a valid lifecycle."""
    serde = AvroSerde.local()
    messages = raw_messages(site, serde, seconds=300, scenario="faults")
    processor = FrameProcessor(site, serde, clock=clock_after(messages))
    alerts = decoded(serde, processor.process(messages).outputs, "twin.alerts")
    by_id: dict[str, list[str]] = {}
    for alert in alerts:
        by_id.setdefault(alert["alert_id"], []).append(alert["event"])
        assert alert["alert_id"] == f"{alert['asset_id']}:{alert['rule_id']}"
    expected = (
        "cnc-01:cnc-stale",
        "pump-02:utilities-stale",
        "cnc-02:cnc-vibration-high",
        "cnc-03:cnc-anomaly",
    )
    for alert_id in expected:
        assert alert_id in by_id, sorted(by_id)
        assert by_id[alert_id][0] == "RAISED" and by_id[alert_id][-1] == "CLEARED"
    for events in by_id.values():
        transitions = [e for e in events if e != "UPDATED"]
        assert transitions[::2] == ["RAISED"] * len(transitions[::2])
        assert transitions[1::2] == ["CLEARED"] * len(transitions[1::2])
    # The healthy machines raise nothing.
    assert not {a["asset_id"] for a in alerts} & {"pump-03", "comp-01"}


def test_a_backlog_read_slowly_raises_no_stale_alert_and_closes_no_window_early(
    site: Site,
) -> None:
    """A worker ten minutes behind, swamped: it reads a frame every 2.1 s, so each asset's
    frames come ~31 s apart by the wall clock, longer than any stale rule's `after` and the
    KPI idle timeout. Measured in log time, no asset is silent; once the backlog is read
    and nothing more comes, the silence counts."""
    serde = AvroSerde.local()
    messages = raw_messages(site, serde, seconds=10)
    wall = [START + timedelta(minutes=10)]
    processor = FrameProcessor(site, serde, clock=lambda: wall[0])
    outputs: list[Output] = []
    for message in messages:
        outputs += processor.process([message]).outputs
        for pause in (1.0, 1.1):
            wall[0] += timedelta(seconds=pause)
            outputs += processor.tick().outputs
    alerts = decoded(serde, outputs, "twin.alerts")
    assert [a for a in alerts if a["kind"] == "STALE"] == []
    windows = decoded(serde, outputs, "twin.kpi")
    assert {w["version"] for w in windows} <= {1}
    assert processor.kpi.stats.readings_too_late == 0

    # The backlog ends where the plant stopped sending: after the settle time its silence
    # counts, and the stale rules raise.
    after = []
    for _ in range(40):
        wall[0] += timedelta(seconds=1)
        after += processor.tick().outputs
    raised = decoded(serde, after, "twin.alerts")
    stale_rules = {"cnc-stale", "utilities-stale", "conveyor-speed-stale"}
    covered = {a.id for a in site.assets if {r.id for r in site.rules_for(a.id)} & stale_rules}
    assert covered and {a["asset_id"] for a in raised if a["event"] == "RAISED"} == covered


def test_a_tick_in_steps_closes_the_windows_one_whole_tick_closes(site: Site) -> None:
    """The plant stops; a minute later every asset's windows close by idle timeout. Ticking
    two assets' windows at a time gives, over the steps, what one whole tick gives."""
    serde = AvroSerde.local()
    messages = raw_messages(site, serde, seconds=40)
    wall = [START + timedelta(seconds=41)]
    stepped, whole = (FrameProcessor(site, serde, clock=lambda: wall[0]) for _ in range(2))
    for processor in (stepped, whole):
        processor.process(messages)
        processor.tick()
    wall[0] += timedelta(seconds=60)
    expected = whole.tick().outputs
    got: list[Output] = []
    steps = 0
    while True:
        step = stepped.tick(kpi_assets=2).outputs
        steps += 1
        assert len({w["asset_id"] for w in decoded(serde, step, "twin.kpi")}) <= 2
        got += step
        if not stepped.ticking() or steps > len(site.assets):
            break
    assert not stepped.ticking() and not whole.ticking()
    kpis = decoded(serde, expected, "twin.kpi")
    assert steps >= len({w["asset_id"] for w in kpis}) / 2 > 1
    for topic in ("twin.kpi", "twin.alerts"):
        assert sorted(decoded(serde, got, topic), key=str) == sorted(
            decoded(serde, expected, topic), key=str
        ), topic
    assert kpis


def _alerts_read(
    site: Site, messages: list[RawMessage], wall_of: Callable[[datetime], datetime]
) -> list[tuple[str, str, datetime]]:
    """The alert events of the frames read a plant step at a time, the step ingested at
    `ingest` read at wall clock `wall_of(ingest)`, with a tick every wall-clock second."""
    serde = AvroSerde.local()
    steps: dict[datetime, list[RawMessage]] = {}
    for message in messages:
        ingest = serde.decode(message.value or b"").record["ingest_ts"]
        steps.setdefault(ingest, []).append(message)
    wall = [wall_of(min(steps))]
    processor = FrameProcessor(site, serde, clock=lambda: wall[0])
    outputs: list[Output] = []
    next_tick = wall[0]
    for ingest, batch in steps.items():
        wall[0] = wall_of(ingest)
        outputs += processor.process(batch).outputs
        while next_tick <= wall[0]:
            outputs += processor.tick().outputs
            next_tick += timedelta(seconds=1)
    alerts = decoded(serde, outputs, "twin.alerts")
    return [(a["alert_id"], a["event"], a["ts"]) for a in alerts]


def test_a_backlog_replay_raises_the_stale_alerts_a_live_worker_raises(site: Site) -> None:
    """The demo faults (a stuck sensor, a link lost) read live, and read from a backlog ten
    minutes late at a third of the plant's pace: the same stale alerts, at the same event
    time (within the half-second a live tick may come later)."""
    messages = raw_messages(site, AvroSerde.local(), seconds=300, scenario="faults")
    live = _alerts_read(site, messages, lambda ingest: ingest + timedelta(seconds=0.1))
    replay = _alerts_read(
        site, messages, lambda ingest: ingest + timedelta(minutes=10) + 2 * (ingest - START)
    )
    stale_live = [a for a in live if "stale" in a[0]]
    stale_replay = [a for a in replay if "stale" in a[0]]
    assert {a[0] for a in stale_live} >= {"cnc-01:cnc-stale", "pump-02:utilities-stale"}
    assert [a[:2] for a in stale_replay] == [a[:2] for a in stale_live]
    for (_, _, t_live), (_, _, t_replay) in zip(stale_live, stale_replay, strict=True):
        assert abs((t_replay - t_live).total_seconds()) <= 0.5


def test_undecodable_and_unknown_input_become_dead_letters_with_origin(site: Site) -> None:
    serde = AvroSerde.local()
    good = raw_messages(site, serde, seconds=1)[0]
    stranger = serde.encode(
        "telemetry_frame",
        {**serde.decode(good.value).record, "asset_id": "nobody-01"},
    )
    not_a_frame = serde.encode("kpi_window", _example_kpi())
    batch = [
        RawMessage(TOPIC, 2, 40, b"cnc-01", b"\x00\x00\x00"),
        RawMessage(TOPIC, 3, 41, b"nobody-01", stranger),
        RawMessage(TOPIC, 1, 42, b"cnc-01", not_a_frame),
        good,
    ]
    result = FrameProcessor(site, serde).process(batch)
    letters = decoded(serde, result.outputs, "telemetry.deadletter")
    letters.sort(key=lambda d: d["origin_offset"])  # decoding comes before validation
    assert [d["reason_code"] for d in letters] == [
        "undecodable",
        "unknown_asset",
        "schema_mismatch",
    ]
    assert [(d["origin_topic"], d["origin_partition"], d["origin_offset"]) for d in letters] == [
        (TOPIC, 2, 40),
        (TOPIC, 3, 41),
        (TOPIC, 1, 42),
    ]
    assert letters[0]["payload"] == b"\x00\x00\x00"
    assert letters[1]["payload"] == stranger  # the original bytes, nothing lost
    assert all(d["reason"] for d in letters)
    assert result.frames == 1 and result.dead_letters == 3


def test_a_restarted_processor_resumes_from_persisted_state(site: Site) -> None:
    serde = AvroSerde.local()
    messages = raw_messages(site, serde, seconds=100)
    half = len(messages) // 2
    clock = clock_after(messages)

    continuous = FrameProcessor(site, serde, clock=clock)
    expected_first = continuous.process(messages[:half]).outputs
    expected_second = continuous.process(messages[half:]).outputs

    first = FrameProcessor(site, serde, clock=clock)
    assert len(first.process(messages[:half]).outputs) == len(expected_first)
    # As the worker's state table keeps it: one encoded record per asset, every stage in it.
    table: dict[str, bytes] = {}
    for asset in site.assets:
        states = first.snapshot_asset(asset.id)
        assert states is not None and set(states) == set(STAGES)
        table[asset.id] = encode_state(states)

    def load(asset_id: str) -> dict[str, dict[str, Any]] | None:
        value = table.get(asset_id)
        return None if value is None else decode_state(value, asset_id)

    second = FrameProcessor(site, serde, load, clock=clock)
    resumed = second.process(messages[half:]).outputs

    def records(out: list[Output]) -> list[tuple[str, dict[str, Any]]]:
        return [(o.topic, _without_processing_times(serde.decode(o.value).record)) for o in out]

    assert records(resumed) == records(expected_second)
    # Without the persisted state the second half differs (filters, KPI panes, seq windows).
    fresh = FrameProcessor(site, serde, clock=clock)
    assert records(fresh.process(messages[half:]).outputs) != records(expected_second)


def _without_processing_times(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("validated_ts", "emitted_ts")}


def _example_kpi() -> dict[str, Any]:
    from pipeline.serde.examples import example

    return example("kpi_window")


def test_a_stage_failing_on_one_frame_dead_letters_it_and_the_batch_goes_on(site: Site) -> None:
    serde = AvroSerde.local()
    messages = raw_messages(site, serde, seconds=0.5)  # one frame per asset
    victim = serde.decode(messages[2].value).record["asset_id"]
    processor = FrameProcessor(site, serde)
    estimate = processor.estimator.estimate_frames

    def failing(frames: Frames) -> States:
        # The batch fails as a whole; run again frame by frame, only the victim's fails.
        if victim in frames.asset_id:
            raise ValueError("filter diverged")
        return estimate(frames)

    processor.estimator.estimate_frames = failing  # type: ignore[method-assign]
    result = processor.process(messages)
    letters = decoded(serde, result.outputs, "telemetry.deadletter")
    assert [(d["reason_code"], d["origin_offset"]) for d in letters] == [
        ("processing_error", messages[2].offset)
    ]
    assert "ValueError: filter diverged" in letters[0]["reason"]
    assert letters[0]["payload"] == messages[2].value
    valid = decoded(serde, result.outputs, "telemetry.valid")
    # The failed frame emitted nothing else; every other frame went through.
    assert victim not in {v["asset_id"] for v in valid}
    assert len(valid) == len(messages) - 1 == result.frames


def test_kpi_failing_on_one_frame_dead_letters_it_and_the_later_frames_go_on(site: Site) -> None:
    serde = AvroSerde.local()
    messages = raw_messages(site, serde, seconds=3.0)
    victim = serde.decode(messages[len(messages) // 2].value).record["asset_id"]
    processor = FrameProcessor(site, serde, clock=clock_after(messages))
    reference = FrameProcessor(site, serde, clock=clock_after(messages))
    add_groups = processor.kpi._add_groups

    def failing(groups: Any, i: int, asset_id: str, source_id: str, now: datetime) -> Any:
        if asset_id == victim:
            raise KeyError("machine_state")
        return add_groups(groups, i, asset_id, source_id, now)

    processor.kpi._add_groups = failing  # type: ignore[method-assign]
    result = processor.process(messages)
    failed = [m for m in messages if m.key == victim.encode()]
    assert len(failed) > 1
    letters = decoded(serde, result.outputs, "telemetry.deadletter")
    assert [(d["reason_code"], d["origin_offset"]) for d in letters] == [
        ("processing_error", m.offset) for m in failed
    ]
    assert all("KeyError" in d["reason"] for d in letters)
    # Every other frame went through, with the outputs it has without the failure.
    expected = reference.process(messages).outputs
    others = [
        o for o in result.outputs if o.key != victim.encode() and o.topic != "telemetry.deadletter"
    ]
    assert others == [o for o in expected if o.key != victim.encode()]
    assert result.frames == len(messages) - len(failed)


def test_kpi_batch_failing_as_a_whole_falls_back_to_frame_by_frame(site: Site) -> None:
    serde = AvroSerde.local()
    messages = raw_messages(site, serde, seconds=150.0, step_s=2.0)  # closes windows

    def clock() -> datetime:
        return START + timedelta(seconds=155)

    processor = FrameProcessor(site, serde, clock=clock)
    reference = FrameProcessor(site, serde, clock=clock)

    def broken(frames: Frames, now: datetime) -> list[list[dict[str, Any]]]:
        raise RuntimeError("kpi batch code broken")

    processor.kpi.add_frames = broken  # type: ignore[method-assign]
    got = processor.process(messages)
    assert got.outputs == reference.process(messages).outputs
    assert any(o.topic == "twin.kpi" for o in got.outputs) and got.dead_letters == 0


def test_state_record_keeps_what_json_cannot_and_refuses_garbage() -> None:
    states = {"estimate": {"x": [float("nan"), float("inf"), -0.0, 1e-310], "n": 2**62}}
    back = decode_state(encode_state(states), "p1")
    x = back["estimate"]["x"]
    assert x[0] != x[0] and x[1] == float("inf") and str(x[2]) == "-0.0" and x[3] == 1e-310
    assert back["estimate"]["n"] == 2**62
    for garbage in (b"", b"\xc1", b"{}", encode_state(states)[:-3]):
        with pytest.raises(StageStateError):
            decode_state(garbage, "p1")


def test_pending_state_is_due_by_held_events_and_by_age() -> None:
    pending = PendingState(max_events=3, max_age_s=3600)
    assert not pending.due()
    pending.add({"a"}, ["e1", "e2"])
    pending.add({"a", "b"})
    assert not pending.due()
    pending.add({"c"}, ["e3"])
    assert pending.due()
    assert pending.take() == ({"a", "b", "c"}, ["e1", "e2", "e3"])
    assert not pending.due() and pending.take() == (set(), [])
    aged = PendingState(max_events=1000, max_age_s=0.0)
    assert not aged.due()
    aged.add({"a"})  # tick outputs: an asset changed, no event held
    assert aged.due()


def test_pending_state_age_does_not_count_during_a_backlog() -> None:
    now = [0.0]
    pending = PendingState(max_events=3, max_age_s=1.0, clock=lambda: now[0])
    pending.add({"a"}, ["e1"], backlog=True)
    now[0] = 0.9
    pending.add({"a"}, [], backlog=True)  # the backlog goes on
    now[0] = 1.5
    assert not pending.due()  # old enough, but the worker is working through a backlog
    pending.add({"b"})  # a tick says nothing about the backlog
    assert not pending.due()
    pending.add({"b"}, ["e2", "e3"], backlog=True)
    assert pending.due()  # enough events held, backlog or not
    pending.take()
    pending.add({"c"}, ["e4"], backlog=True)
    now[0] = 3.0
    pending.add({"c"}, ["e5"], backlog=True)
    assert not pending.due()
    pending.add({"c"}, ["e6"], backlog=False)  # the backlog is worked off
    assert pending.due()
    pending.take()
    pending.add({"d"}, ["e7"], backlog=True)  # the last batch of a backlog: none follows
    now[0] = 3.9
    assert not pending.due()
    now[0] = 4.0  # max_age_s after it: the age counts again
    assert pending.due()
