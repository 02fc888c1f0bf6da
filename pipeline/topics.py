"""The topic catalog: every Kafka topic Twinline owns, its record type and its policy.

Names here are logical; a site may prefix them (`topic_prefix: plant1.`). Key is always
`asset_id`, so one asset's data meets in one partition (and one worker) on every topic.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    """Logical name (before the site's prefix)."""
    record_type: str | None
    """The Avro record type in `schemas/avro/<record_type>/`; None for internal topics."""
    doc: str
    retention_ms: int = 7 * DAY_MS
    compacted: bool = False

    def config(self) -> dict[str, str]:
        if self.compacted:
            return {"cleanup.policy": "compact"}
        return {"cleanup.policy": "delete", "retention.ms": str(self.retention_ms)}


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("telemetry.raw", "telemetry_frame", "frames as the connectors read them"),
    TopicSpec("telemetry.valid", "validated_frame", "frames with per-reading quality flags"),
    TopicSpec(
        "telemetry.deadletter",
        "dead_letter",
        "undecodable or untrustworthy input, with reason and origin",
        retention_ms=30 * DAY_MS,
    ),
    TopicSpec("twin.state", "state_estimate", "Kalman state estimates per asset and signal"),
    TopicSpec("twin.anomaly", "anomaly_score", "anomaly scores per asset"),
    TopicSpec("twin.kpi", "kpi_window", "closed KPI windows per asset", retention_ms=30 * DAY_MS),
    TopicSpec("twin.alerts", "alert_event", "alert lifecycle events", retention_ms=30 * DAY_MS),
    # The plant simulator's noise-free values, as telemetry frames (source_id "sim-truth"), so
    # estimates and detections can be measured against the truth.
    TopicSpec("sim.truth", "telemetry_frame", "simulator ground truth", retention_ms=DAY_MS),
    # State of the stream agents (topologies/state_store.py): compacted, never expired, so a
    # restarted or rebalanced worker restores the latest state of every key.
    TopicSpec(
        "twinline-state-changelog",
        None,
        "every stage's state per asset (validator, Kalman filters, KPI windows, detector "
        "models, open alerts)",
        compacted=True,
    ),
)


def topic_spec(name: str) -> TopicSpec:
    for spec in TOPICS:
        if spec.name == name:
            return spec
    raise KeyError(name)
