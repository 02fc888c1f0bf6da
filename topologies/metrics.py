"""Prometheus metrics of the stream agents (`twin worker --metrics-port P`: /metrics).

Per stage (validate, estimate, anomaly, kpi): frames in and out, readings in and out, dead
letters by reason, readings by validation flag, KPI readings left out and windows emitted;
anomalous scores; alert events by transition, updates dropped by the rate limit and raises
held back by the re-raise holdoff; per batch:
processing time and size; how far log time is behind the wall clock (`log_time`); per
partition of telemetry.raw: consumer lag. The counts come
from the stages' own `stats` (Validator.stats, KpiWindows.stats) where a stage keeps them,
so nothing is counted twice; `StageMetrics.observe` turns their growth since the last batch
into counter increments (a stage replaced by `FrameProcessor.reset()` starts from zero).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from topologies.processor import BatchResult, FrameProcessor

FRAMES_IN = Counter("twin_stage_frames_in", "Frames (messages) a stage received", ["stage"])
FRAMES_OUT = Counter(
    "twin_stage_frames_out",
    "Records a stage produced (validate: valid frames, estimate: state estimates, "
    "kpi: KPI windows, including re-emissions)",
    ["stage"],
)
READINGS_IN = Counter(
    "twin_stage_readings_in",
    "Readings a stage received (validate: not counted for rejected frames)",
    ["stage"],
)
READINGS_OUT = Counter(
    "twin_stage_readings_out",
    "Readings a stage passed on (validate: readings of valid frames; kpi: readings counted "
    "in windows)",
    ["stage"],
)
DEAD_LETTERS = Counter(
    "twin_stage_dead_letters", "Messages sent to telemetry.deadletter", ["stage", "reason"]
)
READINGS_FLAGGED = Counter(
    "twin_validate_readings_flagged", "Readings that received a validation flag", ["flag"]
)
KPI_READINGS_EXCLUDED = Counter(
    "twin_kpi_readings_excluded",
    "Readings left out of KPI windows (unusable: quality or flags; too_late: beyond the "
    "allowed lateness)",
    ["reason"],
)
KPI_WINDOWS_REVISED = Counter(
    "twin_kpi_windows_revised", "KPI windows re-emitted with a higher version after late data"
)
ANOMALIES = Counter("twin_anomaly_flagged", "Anomaly scores with is_anomaly set")
ALERT_EVENTS = Counter(
    "twin_alert_events", "Alert events sent to twin.alerts, by transition", ["event"]
)
ALERTS_SUPPRESSED = Counter(
    "twin_alert_updates_suppressed", "UPDATED alert events dropped by the per-asset rate limit"
)
ALERTS_HELD_BACK = Counter(
    "twin_alert_raises_held_back", "Alert raises held back by the re-raise holdoff"
)
BATCH_SECONDS = Histogram(
    "twin_worker_batch_seconds",
    "Time to process one batch of telemetry.raw messages (stages and encoding, not sending)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BATCH_MESSAGES = Histogram(
    "twin_worker_batch_messages",
    "Messages per batch",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
)
LOG_BEHIND = Gauge(
    "twin_worker_log_behind_seconds",
    "How far the log time that processing-time rules (stale alerts, KPI idle timeouts) use is "
    "behind the wall clock: 0 at the head of the log, else the age of the frames being read",
)
CONSUMER_LAG = Gauge(
    "twin_worker_consumer_lag",
    "Messages between the last committed offset and the partition's high watermark",
    ["topic", "partition"],
)


class StageMetrics:
    """Feeds the counters from a FrameProcessor's stage stats after each batch or tick."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, dict[str, int]]] = {}

    def observe(
        self,
        processor: FrameProcessor,
        result: BatchResult,
        seconds: float | None = None,
        messages: int = 0,
    ) -> None:
        """Count what `result` and the stages' stats say happened since the last call;
        `seconds`/`messages` describe a batch (None for a tick)."""
        if seconds is not None:
            BATCH_SECONDS.observe(seconds)
            BATCH_MESSAGES.observe(messages)
        LOG_BEHIND.set(processor.behind_s())
        validate = self._growth("validate", processor.validator, _validate_counts(processor))
        dead = {k[len("dead:") :]: v for k, v in validate.items() if k.startswith("dead:")}
        FRAMES_IN.labels(stage="validate").inc(validate["frames"] + dead.get("undecodable", 0))
        FRAMES_OUT.labels(stage="validate").inc(validate["frames_valid"])
        READINGS_IN.labels(stage="validate").inc(validate["readings"])
        READINGS_OUT.labels(stage="validate").inc(validate["readings"])
        for reason, n in dead.items():
            if n:
                DEAD_LETTERS.labels(stage="validate", reason=reason).inc(n)
        for key, n in validate.items():
            if key.startswith("flag:") and n:
                READINGS_FLAGGED.labels(flag=key[len("flag:") :]).inc(n)

        # The estimator keeps no counters: one state estimate per valid frame.
        FRAMES_IN.labels(stage="estimate").inc(result.frames)
        FRAMES_OUT.labels(stage="estimate").inc(result.frames)
        READINGS_IN.labels(stage="estimate").inc(result.readings)

        FRAMES_IN.labels(stage="anomaly").inc(result.frames)
        FRAMES_OUT.labels(stage="anomaly").inc(result.frames)
        ANOMALIES.inc(result.anomalies)
        for event, n in result.alert_events.items():
            ALERT_EVENTS.labels(event=event).inc(n)
        counters = processor.alerts.counters
        alerts = self._growth(
            "alerts",
            processor.alerts,
            {"suppressed": counters.suppressed, "held_back": counters.held_back},
        )
        ALERTS_SUPPRESSED.inc(alerts["suppressed"])
        ALERTS_HELD_BACK.inc(alerts["held_back"])

        kpi = self._growth("kpi", processor.kpi, _counts(vars_of(processor.kpi.stats)))
        FRAMES_IN.labels(stage="kpi").inc(kpi["frames"])
        FRAMES_OUT.labels(stage="kpi").inc(kpi["windows_emitted"])
        READINGS_IN.labels(stage="kpi").inc(kpi["readings"])
        READINGS_OUT.labels(stage="kpi").inc(
            max(0, kpi["readings"] - kpi["readings_unusable"] - kpi["readings_too_late"])
        )
        KPI_READINGS_EXCLUDED.labels(reason="unusable").inc(kpi["readings_unusable"])
        KPI_READINGS_EXCLUDED.labels(reason="too_late").inc(kpi["readings_too_late"])
        KPI_WINDOWS_REVISED.inc(kpi["windows_revised"])

    def _growth(self, stage: str, owner: object, counts: dict[str, int]) -> dict[str, int]:
        """`counts` minus the counts seen last time for the same stage object."""
        previous_id, previous = self._seen.get(stage, (0, {}))
        base = previous if previous_id == id(owner) else {}
        self._seen[stage] = (id(owner), counts)
        return {k: max(0, v - base.get(k, 0)) for k, v in counts.items()}


def _validate_counts(processor: FrameProcessor) -> dict[str, int]:
    stats = processor.validator.stats
    counts = _counts({k: v for k, v in stats.items() if isinstance(v, int)})
    counts.update({f"flag:{k}": int(v) for k, v in stats.get("flags", {}).items()})
    counts.update({f"dead:{k}": int(v) for k, v in stats.get("dead_letters", {}).items()})
    return counts


def vars_of(stats: Any) -> dict[str, Any]:
    """The fields of a slotted stats dataclass."""
    return {name: getattr(stats, name) for name in stats.__slots__}


def _counts(values: Mapping[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in values.items() if isinstance(v, int)}


def update_consumer_lag(consumer: Any, topic: str) -> None:
    """Set the lag gauge of `topic`'s assigned partitions from a Faust consumer's cached
    high watermarks and committed offsets (no broker request; a partition without either
    yet is left out)."""
    committed: Mapping[Any, int | None] = getattr(consumer, "_committed_offset", {})
    for tp in consumer.assignment():
        if tp.topic != topic:
            continue
        try:
            high = consumer.highwater(tp)
        except (KeyError, AttributeError, TypeError):
            continue
        done = committed.get(tp)
        if high is None or high < 0:
            continue
        # Faust keeps Kafka's meaning: the committed offset is the next message to read.
        next_offset = done or 0
        CONSUMER_LAG.labels(topic=topic, partition=str(tp.partition)).set(
            max(0, high - next_offset)
        )
