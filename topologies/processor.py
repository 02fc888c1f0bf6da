"""The stream agents' work for one batch of raw telemetry messages, without Kafka.

decode -> validate -> (telemetry.valid, telemetry.deadletter)
                   -> estimate -> twin.state
                               -> anomaly -> twin.anomaly
                   -> kpi      -> twin.kpi
                   -> alerts   -> twin.alerts   (fed by every stage's output, see below)

The anomaly stage scores every state estimate. The alert stage hears the validated frame
(stale sensors), the state estimate (thresholds on the filtered level), the anomaly score
and every KPI window (KPI floors); `tick` closes idle windows and raises
stale alerts of assets that stopped sending.

The Faust topology (`topologies/agents.py`) hands each batch of `telemetry.raw` messages to
`FrameProcessor.process`, sends the returned outputs, and persists `snapshot_asset(asset)` of
every asset the batches touched into its changelog-backed table (one record per asset with
every stage's snapshot). State of an asset not seen yet by this process is loaded lazily
through `load_state` (all stages of one asset at once), so a restarted or rebalanced worker
resumes where the previous owner stopped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import SerdeError
from pipeline.serde import AvroSerde
from pipeline.site import Site
from pipeline.stages.alerts import AlertEngine
from pipeline.stages.anomaly import AnomalyDetector
from pipeline.stages.common import Origin
from pipeline.stages.estimate import Estimator
from pipeline.stages.kpi import KpiWindows
from pipeline.stages.validate import Validator

log = logging.getLogger(__name__)

#: The stages whose state is kept per asset, in the order a frame passes them.
STAGES = ("validate", "estimate", "anomaly", "kpi", "alerts")

StateLoader = Callable[[str], "dict[str, dict[str, Any]] | None"]
"""asset_id -> {stage: snapshot} as `snapshot_asset` gave it, or None for an asset never seen."""


@dataclass(frozen=True, slots=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    key: bytes
    value: bytes


@dataclass
class BatchResult:
    outputs: list[Output] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    """Assets whose stage state changed: persist their snapshots."""
    frames: int = 0
    readings: int = 0
    dead_letters: int = 0
    anomalies: int = 0
    """Anomaly scores with is_anomaly set."""
    alert_events: Counter[str] = field(default_factory=Counter)
    """Alert events by transition (RAISED, UPDATED, CLEARED)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class FrameProcessor:
    """Validate, estimate and window the frames of a batch; the outputs as encoded messages."""

    def __init__(
        self,
        site: Site,
        serde: AvroSerde,
        load_state: StateLoader | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.site = site
        self.serde = serde
        self._load_state = load_state
        self._clock = clock
        self.reset()
        self.topics = {
            name: site.topic(name)
            for name in (
                "telemetry.valid",
                "telemetry.deadletter",
                "twin.state",
                "twin.anomaly",
                "twin.kpi",
                "twin.alerts",
            )
        }

    def reset(self) -> None:
        """Forget all in-memory state (e.g. after a rebalance); it reloads through
        `load_state` as frames arrive."""
        self.validator = Validator(self.site)
        self.estimator = Estimator(self.site)
        self.kpi = KpiWindows(self.site)
        self.anomaly = AnomalyDetector(self.site)
        self.alerts = AlertEngine(self.site)
        self._loaded: set[str] = set()

    def process(self, messages: Iterable[RawMessage]) -> BatchResult:
        result = BatchResult()
        now = self._clock()
        for message in messages:
            origin = Origin(message.topic, message.partition, message.offset)
            mark = len(result.outputs)
            try:
                self._process_one(message, origin, now, result)
            except Exception as exc:  # a stage failing on one frame must not stop the agent
                # Whatever the failed frame had emitted is withdrawn; the frame itself goes to
                # the dead-letter topic with the error, so nothing is lost without a trace.
                del result.outputs[mark:]
                log.exception(
                    "frames: %s[%d]@%d failed", origin.topic, origin.partition, origin.offset
                )
                reason = f"processing failed: {type(exc).__name__}: {exc}"
                record = self.validator.undecodable(
                    message.value or b"", message.key, origin, reason, now
                )
                record["reason_code"] = "processing_error"
                self._dead_letter(record, result)
        return result

    def _process_one(
        self, message: RawMessage, origin: Origin, now: datetime, result: BatchResult
    ) -> None:
        frame = self._decode(message, origin, now, result)
        if frame is None:
            return
        asset_id = str(frame.get("asset_id", ""))
        self._ensure_loaded(asset_id)
        validated = self.validator.validate(
            frame, origin, now, payload=message.value, key=message.key
        )
        if validated.dead_letter is not None:
            self._dead_letter(validated.dead_letter, result)
            return
        valid = validated.frame
        if valid is None:  # pragma: no cover - the stage sets exactly one of the two
            return
        key = asset_id.encode()
        state = self.estimator.estimate(valid)
        score = self.anomaly.score(state)
        windows = self.kpi.add(valid, now)
        alerts = self.alerts.on_frame(valid, now) + self.alerts.on_state(state, now)
        alerts += self.alerts.on_anomaly(score, now)
        for window in windows:
            alerts += self.alerts.on_kpi(window, now)
        outputs = [("telemetry.valid", "validated_frame", valid)]
        outputs.append(("twin.state", "state_estimate", state))
        outputs.append(("twin.anomaly", "anomaly_score", score))
        outputs += [("twin.kpi", "kpi_window", w) for w in windows]
        outputs += [("twin.alerts", "alert_event", a) for a in alerts]
        for topic, record_type, record in outputs:
            self._emit(result, topic, key, record_type, record)
        result.touched.add(asset_id)
        result.anomalies += bool(score["is_anomaly"])
        result.alert_events.update(str(a["event"]) for a in alerts)
        result.frames += 1
        result.readings += len(valid["readings"])

    def tick(self) -> BatchResult:
        """Close windows of idle sources and raise stale alerts (processing time).

        Only assets with an output are marked touched: the alert stage's record of when each
        asset was last heard of changes on every tick, but persisting every asset every second
        would cost more than it saves (a restored worker may then excuse a little more silence
        before a stale alert, never raise a false one)."""
        result = BatchResult()
        now = self._clock()
        alerts: list[dict[str, Any]] = []
        for window in self.kpi.tick(now):
            asset_id = str(window["asset_id"])
            result.touched.add(asset_id)
            self._emit(result, "twin.kpi", asset_id.encode(), "kpi_window", window)
            alerts += self.alerts.on_kpi(window, now)
        for alert in alerts + self.alerts.tick(now):
            asset_id = str(alert["asset_id"])
            result.touched.add(asset_id)
            result.alert_events[str(alert["event"])] += 1
            self._emit(result, "twin.alerts", asset_id.encode(), "alert_event", alert)
        return result

    def snapshot(self, stage: str, asset_id: str) -> dict[str, Any] | None:
        return self._stage(stage).snapshot(asset_id)

    def restore(self, stage: str, asset_id: str, state: dict[str, Any]) -> None:
        self._stage(stage).restore(asset_id, state)

    def snapshot_asset(self, asset_id: str) -> dict[str, dict[str, Any]] | None:
        """{stage: snapshot} of every stage holding state for the asset; None if none does."""
        states = {}
        for stage in STAGES:
            state = self._stage(stage).snapshot(asset_id)
            if state is not None:
                states[stage] = state
        return states or None

    def restore_asset(self, asset_id: str, states: dict[str, dict[str, Any]]) -> None:
        """Restore what `snapshot_asset` gave (stages missing from it start afresh)."""
        for stage in STAGES:
            state = states.get(stage)
            if state is not None:
                self._stage(stage).restore(asset_id, state)

    def _stage(self, stage: str) -> Any:
        stages = {
            "validate": self.validator,
            "estimate": self.estimator,
            "anomaly": self.anomaly,
            "kpi": self.kpi,
            "alerts": self.alerts,
        }
        return stages[stage]

    def _ensure_loaded(self, asset_id: str) -> None:
        if asset_id in self._loaded:
            return
        self._loaded.add(asset_id)
        if self._load_state is None:
            return
        states = self._load_state(asset_id)
        if states is not None:
            self.restore_asset(asset_id, states)

    def _decode(
        self, message: RawMessage, origin: Origin, now: datetime, result: BatchResult
    ) -> dict[str, Any] | None:
        payload = message.value or b""
        try:
            decoded = self.serde.decode(message.value)
        except SerdeError as exc:
            record = self.validator.undecodable(payload, message.key, origin, str(exc), now)
            self._dead_letter(record, result)
            return None
        if decoded.record_type != "telemetry_frame":
            reason = f"expected a telemetry_frame, got a {decoded.record_type}"
            record = self.validator.undecodable(payload, message.key, origin, reason, now)
            record["reason_code"] = "schema_mismatch"
            self._dead_letter(record, result)
            return None
        return decoded.record

    def _dead_letter(self, record: dict[str, Any], result: BatchResult) -> None:
        result.dead_letters += 1
        log.info(
            "%s: dead letter %s[%s]@%s (%s): %s",
            record.get("stage"), record.get("origin_topic"), record.get("origin_partition"),
            record.get("origin_offset"), record.get("reason_code"), record.get("reason"),
        )  # fmt: skip
        key = str(record.get("asset_id") or "").encode()
        self._emit(result, "telemetry.deadletter", key, "dead_letter", record)

    def _emit(
        self, result: BatchResult, topic: str, key: bytes, record_type: str, record: dict[str, Any]
    ) -> None:
        real = self.topics[topic]
        result.outputs.append(Output(real, key, self.serde.encode(record_type, record, topic=real)))
