"""Prometheus metrics of the stream agents: a processed batch moves the per-stage counters
by what the stages counted, dead letters by reason, and a reset stage is not counted twice."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import REGISTRY

from pipeline.serde import AvroSerde
from pipeline.settings import DEFAULT_SITE
from pipeline.site import load_site
from tests.unit.test_processor import START, TOPIC, clock_after, raw_messages
from topologies.metrics import StageMetrics
from topologies.processor import FrameProcessor, RawMessage


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def dead(reason: str) -> float:
    return sample("twin_stage_dead_letters_total", stage="validate", reason=reason)


def snapshot() -> dict[str, float]:
    return {
        "valid_in": sample("twin_stage_frames_in_total", stage="validate"),
        "valid_out": sample("twin_stage_frames_out_total", stage="validate"),
        "valid_readings": sample("twin_stage_readings_out_total", stage="validate"),
        "estimate_out": sample("twin_stage_frames_out_total", stage="estimate"),
        "estimate_readings": sample("twin_stage_readings_in_total", stage="estimate"),
        "kpi_in": sample("twin_stage_frames_in_total", stage="kpi"),
        "kpi_windows": sample("twin_stage_frames_out_total", stage="kpi"),
        "undecodable": dead("undecodable"),
        "duplicate": dead("duplicate"),
        "batches": sample("twin_worker_batch_seconds_count"),
    }  # fmt: skip


def test_a_batch_moves_the_stage_counters_by_what_the_stages_counted() -> None:
    site = load_site(DEFAULT_SITE)
    serde = AvroSerde.local()
    messages = raw_messages(site, serde, seconds=150)
    junk = RawMessage(TOPIC, 0, 10_000, b"press-01", b"not avro")
    processor = FrameProcessor(site, serde, clock=clock_after(messages))
    metrics = StageMetrics()
    before = snapshot()

    result = processor.process([*messages, junk, messages[0]])  # garbage and a duplicate
    metrics.observe(processor, result, 0.02, len(messages) + 2)
    after = snapshot()
    grew = {k: after[k] - before[k] for k in after}

    assert result.frames == len(messages)
    assert grew["valid_in"] == len(messages) + 2
    assert grew["valid_out"] == len(messages) == grew["estimate_out"] == grew["kpi_in"]
    assert grew["valid_readings"] == result.readings == grew["estimate_readings"]
    assert grew["undecodable"] == 1
    assert grew["duplicate"] == 1
    assert grew["kpi_windows"] == processor.kpi.stats.windows_emitted > 0
    assert grew["batches"] == 1

    # Nothing new happened: observing again adds nothing.
    metrics.observe(processor, processor.tick())
    assert snapshot()["valid_in"] == after["valid_in"]

    # After a reset the fresh stages count from zero again, and only their own work counts.
    processor.reset()
    more = raw_messages(site, serde, seconds=1)
    again = processor.process(more[:2])
    metrics.observe(processor, again, 0.01, 2)
    assert snapshot()["valid_in"] - after["valid_in"] == 2


def test_anomalies_and_alert_events_are_counted() -> None:
    site = load_site(DEFAULT_SITE)
    serde = AvroSerde.local()
    messages = raw_messages(site, serde, seconds=300, scenario="faults")
    processor = FrameProcessor(site, serde, clock=clock_after(messages))
    metrics = StageMetrics()
    names = ("RAISED", "UPDATED", "CLEARED")
    before = {e: sample("twin_alert_events_total", event=e) for e in names}
    flagged = sample("twin_anomaly_flagged_total")
    suppressed = sample("twin_alert_updates_suppressed_total")

    result = processor.process(messages)
    metrics.observe(processor, result, 0.5, len(messages))

    events = [serde.decode(o.value).record["event"] for o in result.outputs if "alerts" in o.topic]
    for event in names:
        grew = sample("twin_alert_events_total", event=event) - before[event]
        assert grew == events.count(event)
    assert events.count("RAISED") >= 4
    scores = [serde.decode(o.value).record for o in result.outputs if "anomaly" in o.topic]
    assert sample("twin_anomaly_flagged_total") - flagged == sum(s["is_anomaly"] for s in scores)
    assert result.anomalies > 0
    assert sample("twin_alert_updates_suppressed_total") - suppressed == processor.alerts.suppressed


def test_the_log_time_gauge_shows_how_far_behind_the_worker_reads() -> None:
    site = load_site(DEFAULT_SITE)
    serde = AvroSerde.local()
    messages = raw_messages(site, serde, seconds=10)
    wall = [START + timedelta(hours=1)]
    processor = FrameProcessor(site, serde, clock=lambda: wall[0])
    metrics = StageMetrics()
    metrics.observe(processor, processor.process(messages[:10]))
    first = sample("twin_worker_log_behind_seconds")
    assert 3590 < first < 3600  # the frames were ingested an hour ago
    # Reading on, the worker gains on the wall clock.
    wall[0] += timedelta(seconds=1)
    metrics.observe(processor, processor.process(messages[10:]))
    assert first - 10 < sample("twin_worker_log_behind_seconds") < first
    # A worker reading the frames as they come is at the head of the log.
    live = FrameProcessor(site, serde, clock=lambda: START + timedelta(seconds=10.5))
    metrics.observe(live, live.process(messages))
    assert sample("twin_worker_log_behind_seconds") == 0
