"""The stream agents' work for one batch of raw telemetry messages, without Kafka.

decode -> validate -> (telemetry.valid, telemetry.deadletter)
                   -> estimate -> twin.state
                               -> anomaly -> twin.anomaly
                   -> kpi      -> twin.kpi
                   -> alerts   -> twin.alerts   (fed by every stage's output, see below)

The anomaly stage scores every state estimate. The alert stage hears the validated frame
(stale sensors), the state estimate (thresholds on the filtered level), the anomaly score
and every KPI window (KPI floors); `tick` closes idle windows and raises
stale alerts of assets that stopped sending. Both judge silence in log time
(`pipeline.stages.log_time`), which the processor keeps from the ingest times of the frames
it reads from each partition: a worker catching up on a backlog raises no stale alert for
frames that are only late.

The Faust topology (`topologies/agents.py`) hands each batch of `telemetry.raw` messages to
`FrameProcessor.process`, sends the returned outputs, and persists `snapshot_asset(asset)` of
every asset the batches touched into its compacted state topic (one record per asset with
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

import numpy as np

from pipeline.serde import AvroSerde
from pipeline.serde.columnar import FrameDecoder, encode_states, encode_validated
from pipeline.site import Site
from pipeline.stages.alerts import AlertEngine
from pipeline.stages.alerts_times import FrameTimes, frame_times
from pipeline.stages.anomaly import AnomalyDetector
from pipeline.stages.common import Origin, to_micros
from pipeline.stages.estimate import Estimator
from pipeline.stages.frames import Frames, States, concat_frames, concat_states
from pipeline.stages.kpi import KpiFrameError, KpiWindows
from pipeline.stages.log_time import LogClock
from pipeline.stages.validate import ValidatedBatch, Validator

log = logging.getLogger(__name__)

#: The stages whose state is kept per asset, in the order a frame passes them.
STAGES = ("validate", "estimate", "anomaly", "kpi", "alerts")

SCHEMA_MISMATCH = "expected a telemetry_frame"
"""How the decoder's reason for a message of another record type begins."""

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
        self.decoder = FrameDecoder(serde)
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
        self.log = LogClock()
        self.kpi = KpiWindows(self.site, log=self.log)
        self.anomaly = AnomalyDetector(self.site)
        self.alerts = AlertEngine(self.site, log=self.log)
        self._loaded: set[str] = set()

    def process(self, messages: Iterable[RawMessage]) -> BatchResult:
        """Every stage for one batch of telemetry.raw messages; the outputs, encoded.

        Decoding, validation, estimation and the encoding of valid frames and state records
        work on the whole batch as columns (`pipeline.stages.frames`), as does the KPI
        stage's reading of the frames; the anomaly and alert stages take the frames one by
        one. A stage failing on a frame must not stop the agent: a batch stage that fails is
        run again frame by frame, and a frame that still fails goes to the dead-letter topic
        with the error (its other outputs are withdrawn), so nothing is lost without a trace.
        (The KPI stage has taken a frame's readings before a later stage fails on it: its
        windows count them, as they count the readings of the frames before and after.)"""
        result = BatchResult()
        now = self._clock()
        batch = list(messages)
        decoded = self.decoder.decode([m.value for m in batch])
        for index, reason in sorted(decoded.errors.items()):
            self._undecodable(batch[index], reason, now, result)
        if not len(decoded.frames):
            return result
        sources = [batch[row] for row in decoded.rows]
        self._heard(decoded.frames, sources, now)
        for asset_id in dict.fromkeys(decoded.frames.asset_id):
            self._ensure_loaded(asset_id)
        valid, sources = self._validate(decoded.frames, sources, now, result)
        if not len(valid):
            return result
        states, valid, sources = self._estimate(valid, sources, now, result)
        valid_out = encode_validated(self.serde, valid, self.topics["telemetry.valid"])
        state_out = encode_states(self.serde, states, self.topics["twin.state"])
        times = frame_times(valid)
        windows, kpi_failed = self._kpi_windows(valid, now)
        for i, message in enumerate(sources):
            mark = len(result.outputs)
            try:
                failure = kpi_failed.get(i)
                if failure is not None:
                    raise failure
                outputs = (valid_out[i], state_out[i])
                self._finish_frame(valid, states, i, (times[i], windows[i]), outputs, now, result)
            except Exception as exc:
                del result.outputs[mark:]
                self._failed(message, exc, now, result)
        return result

    def _heard(self, frames: Frames, sources: list[RawMessage], now: datetime) -> None:
        """Move the log clock on with the ingest time of each frame read."""
        now_us = to_micros(now)
        for message, ingest_us in zip(sources, frames.ingest_us.tolist(), strict=True):
            self.log.heard((message.topic, message.partition), ingest_us, now_us)

    def _validate(
        self, frames: Frames, sources: list[RawMessage], now: datetime, result: BatchResult
    ) -> tuple[Frames, list[RawMessage]]:
        """The valid frames and their messages; dead letters for the rest."""
        try:
            checked = self._validate_batch(frames, sources, now)
        except Exception:
            log.exception("validate: a batch of %d frames failed; frame by frame", len(frames))
            parts: list[tuple[int, ValidatedBatch]] = []
            for i, message in enumerate(sources):
                try:
                    parts.append((i, self._validate_batch(frames.take([i]), [message], now)))
                except Exception as exc:
                    self._failed(message, exc, now, result)
            keep = [i for i, part in parts if len(part.frames)]
            for _, part in parts:
                for _, record in part.dead_letters:
                    self._dead_letter(record, result)
            if not keep:
                return frames.take(np.array([], dtype=np.int64)), []
            valid = concat_frames([part.frames for _, part in parts if len(part.frames)])
            return valid, [sources[i] for i in keep]
        for _, record in checked.dead_letters:
            self._dead_letter(record, result)
        return checked.frames, [sources[row] for row in checked.rows]

    def _validate_batch(
        self, frames: Frames, sources: list[RawMessage], now: datetime
    ) -> ValidatedBatch:
        origins = [Origin(m.topic, m.partition, m.offset) for m in sources]
        return self.validator.validate_frames(
            frames, origins, now, [m.value for m in sources], [m.key for m in sources]
        )

    def _estimate(
        self, valid: Frames, sources: list[RawMessage], now: datetime, result: BatchResult
    ) -> tuple[States, Frames, list[RawMessage]]:
        try:
            return self.estimator.estimate_frames(valid), valid, sources
        except Exception:
            # A filter step never runs backwards, so frames the failed batch had already
            # absorbed are not absorbed twice.
            log.exception("estimate: a batch of %d frames failed; frame by frame", len(valid))
        keep: list[int] = []
        parts: list[States] = []
        for i, message in enumerate(sources):
            try:
                parts.append(self.estimator.estimate_frames(valid.take([i])))
                keep.append(i)
            except Exception as exc:
                self._failed(message, exc, now, result)
        rows = np.array(keep, dtype=np.int64)
        return concat_states(parts), valid.take(rows), [sources[i] for i in keep]

    def _kpi_windows(
        self, valid: Frames, now: datetime
    ) -> tuple[list[list[dict[str, Any]]], dict[int, Exception]]:
        """The KPI windows each frame closed or revised, and the frames the stage failed on
        (index -> error; their lists are empty)."""
        windows: list[list[dict[str, Any]]] = []
        failed: dict[int, Exception] = {}
        start = 0
        while start < len(valid):
            part = valid if start == 0 else valid.take(np.arange(start, len(valid)))
            try:
                windows += self.kpi.add_frames(part, now)
                break
            except KpiFrameError as exc:
                windows += exc.done
                index = start + exc.index
                cause = exc.__cause__
                failed[index] = cause if isinstance(cause, Exception) else exc
                windows.append([])
                start = index + 1
            except Exception:
                log.exception("kpi: a batch of %d frames failed; frame by frame", len(part))
                for i in range(start, len(valid)):
                    try:
                        windows.append(self.kpi.add(valid.record(i, micros=True), now))
                    except Exception as exc:
                        failed[i] = exc
                        windows.append([])
                break
        return windows, failed

    def _finish_frame(
        self,
        valid: Frames,
        states: States,
        i: int,
        taken: tuple[FrameTimes, list[dict[str, Any]]],
        encoded: tuple[bytes, bytes],
        now: datetime,
        result: BatchResult,
    ) -> None:
        """The per-frame stages (anomaly, alerts) and every output of frame i (`taken`:
        what the stale rules need of it and the KPI windows it closed; `encoded`: its
        validated frame and state record, already encoded)."""
        asset_id = valid.asset_id[i]
        key = asset_id.encode()
        times, windows = taken
        valid_bytes, state_bytes = encoded
        state = states.record(i)
        score = self.anomaly.score(state)
        alerts = self.alerts.on_frame_records(asset_id, times, state, score, now)
        for window in windows:
            alerts += self.alerts.on_kpi(window, now)
        result.outputs.append(Output(self.topics["telemetry.valid"], key, valid_bytes))
        result.outputs.append(Output(self.topics["twin.state"], key, state_bytes))
        self._emit(result, "twin.anomaly", key, "anomaly_score", score)
        for window in windows:
            self._emit(result, "twin.kpi", key, "kpi_window", window)
        for alert in alerts:
            self._emit(result, "twin.alerts", key, "alert_event", alert)
        result.touched.add(asset_id)
        result.anomalies += bool(score["is_anomaly"])
        result.alert_events.update(str(a["event"]) for a in alerts)
        result.frames += 1
        result.readings += int(valid.bounds[i + 1] - valid.bounds[i])

    def _failed(
        self, message: RawMessage, exc: Exception, now: datetime, result: BatchResult
    ) -> None:
        origin = Origin(message.topic, message.partition, message.offset)
        log.error(
            "frames: %s[%d]@%d failed",
            origin.topic, origin.partition, origin.offset, exc_info=exc,
        )  # fmt: skip
        reason = f"processing failed: {type(exc).__name__}: {exc}"
        record = self.validator.undecodable(message.value or b"", message.key, origin, reason, now)
        record["reason_code"] = "processing_error"
        self._dead_letter(record, result)

    def _undecodable(
        self, message: RawMessage, reason: str, now: datetime, result: BatchResult
    ) -> None:
        origin = Origin(message.topic, message.partition, message.offset)
        record = self.validator.undecodable(message.value or b"", message.key, origin, reason, now)
        if reason.startswith(SCHEMA_MISMATCH):
            record["reason_code"] = "schema_mismatch"
        self._dead_letter(record, result)

    def tick(self, kpi_assets: int | None = None) -> BatchResult:
        """Close windows of idle sources and raise stale alerts (processing time). The KPI
        stage closes the windows of at most `kpi_assets` assets (about a millisecond each);
        `ticking` then says whether more are waiting for the next call.

        Only assets with an output are marked touched: the alert stage's record of when each
        asset was last heard of changes on every tick, but persisting every asset every second
        would cost more than it saves (a restored worker may then excuse a little more silence
        before a stale alert, never raise a false one)."""
        result = BatchResult()
        now = self._clock()
        alerts: list[dict[str, Any]] = []
        for window in self.kpi.tick(now, kpi_assets):
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

    def ticking(self) -> bool:
        """The last tick left windows to close: call `tick` again soon."""
        return self.kpi.waiting()

    def behind_s(self) -> float:
        """How far log time is behind the wall clock, in seconds (see `log_time`)."""
        return self.log.behind(to_micros(self._clock())) / 1e6

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
