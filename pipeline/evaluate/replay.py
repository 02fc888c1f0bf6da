"""Replay recorded series through the real pipeline: broker, `twin worker`, twin.anomaly.

Each series (one file) becomes one asset: one telemetry frame per row, every column a reading
stamped with the row's time, produced to telemetry.raw keyed by the asset id. A `twin worker`
child process (the same stream agents a plant runs) validates, estimates and scores them; the
anomaly_score records it writes to twin.anomaly are read back, the i-th score of an asset for
its i-th row. Nothing here knows how the detector works.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError

from pipeline.demo_processes import Child
from pipeline.errors import SerdeError, TwinError
from pipeline.evaluate.datasets import Series, telemetry_frames
from pipeline.kafka.clients import producer
from pipeline.kafka.tail import assigned_consumer
from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.site import Site

Progress = Callable[[str], None]

PROGRESS_EVERY_S = 5.0
#: How long the worker may go without a new score before the replay gives up on the rest.
IDLE_TIMEOUT_S = 60.0
#: Joining the consumer group on the embedded broker alone takes several seconds.
START_TIMEOUT_S = 120.0


@dataclass
class Scores:
    """Per asset: the anomaly_score record of each row (None where none arrived)."""

    rows: dict[str, list[dict[str, Any] | None]] = field(default_factory=dict)
    records: int = 0
    duplicates: int = 0
    placed: dict[str, int] = field(default_factory=dict)
    unmatched: int = 0
    """Records of an asset that is not being replayed."""
    retimed: int = 0
    """Scores whose event time differs from their row's (e.g. a row stamped earlier than the
    one before it is estimated at the asset's latest time)."""

    def model(self) -> str:
        """The model id/version of the scores (several, comma-separated, if they differ)."""
        models = {
            f"{r['model_id']}/{r['model_version']}"
            for rows in self.rows.values()
            for r in rows
            if r is not None
        }
        return ", ".join(sorted(models)) or "none"

    def missing(self) -> int:
        return sum(row is None for rows in self.rows.values() for row in rows)


def produce_series(
    settings: Settings, site: Site, series: Sequence[Series], progress: Progress
) -> int:
    """Produce every row of every series to telemetry.raw; the number of frames produced."""
    serde = AvroSerde.from_settings(settings)
    topic = site.topic("telemetry.raw")
    failures: list[str] = []

    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    kafka = producer(settings, **{"linger.ms": 50, "batch.size": 1_000_000})
    frames = 0
    for one in series:
        key = one.asset_id.encode()
        for frame in telemetry_frames(one, datetime.now(UTC)):
            value = serde.encode("telemetry_frame", frame, topic=topic)
            while True:
                try:
                    kafka.produce(topic, value, key, on_delivery=delivered)
                    break
                except BufferError:
                    kafka.poll(0.1)
            frames += 1
        kafka.poll(0)
    left = kafka.flush(60)
    if left or failures:
        reason = failures[0] if failures else f"{left} frames not confirmed within 60 s"
        raise TwinError(f"evaluate: producing to {topic} failed: {reason}")
    progress(f"produced {frames:,} frames from {len(series)} series to {topic}")
    return frames


def collect_scores(
    settings: Settings,
    site: Site,
    series: Sequence[Series],
    worker: Child,
    progress: Progress,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> Scores:
    """Read twin.anomaly until every row has its score (or the worker stops making progress)."""
    scores = Scores({one.asset_id: [None] * len(one.times_us) for one in series})
    times = {one.asset_id: one.times_us for one in series}
    expected = sum(len(rows) for rows in scores.rows.values())
    matched = 0
    serde = AvroSerde.from_settings(settings)
    consumer = assigned_consumer(settings.librdkafka(), site.topic("twin.anomaly"))
    started = last_progress = last_record = time.monotonic()
    try:
        while matched < expected:
            if not worker.running():
                raise TwinError(f"evaluate: the worker exited:\n{worker.log_tail()}")
            now = time.monotonic()
            limit = START_TIMEOUT_S if scores.records == 0 else idle_timeout_s
            if now - last_record > limit:
                progress(f"no new score for {limit:.0f}s; {expected - matched:,} rows unscored")
                break
            if now - last_progress >= PROGRESS_EVERY_S:
                progress(f"scored {matched:,} / {expected:,} rows ({now - started:.0f}s)")
                last_progress = now
            for message in consumer.consume(5000, timeout=0.5):
                if message.error() is not None:
                    continue
                try:
                    record = serde.decode(message.value()).record
                except SerdeError:
                    continue
                last_record = time.monotonic()
                scores.records += 1
                matched += _place(record, scores, times)
    finally:
        consumer.close()
    progress(f"scored {matched:,} / {expected:,} rows")
    return scores


def _place(record: dict[str, Any], scores: Scores, times: Mapping[str, Sequence[int]]) -> int:
    """Put a score on its row: the i-th score of an asset belongs to its i-th row.

    One frame gives one score, and the worker keeps each asset's order (its frames are on
    one partition, read by one consumer). Matching by event time would not do: rows sharing a
    timestamp exist, and a row stamped earlier than its predecessor is estimated at the
    asset's latest time."""
    asset_id = str(record["asset_id"])
    rows = scores.rows.get(asset_id)
    if rows is None:
        scores.unmatched += 1
        return 0
    index = scores.placed.get(asset_id, 0)
    if index >= len(rows):
        scores.duplicates += 1
        return 0
    scores.placed[asset_id] = index + 1
    rows[index] = record
    if int(record["ts"].timestamp() * 1_000_000) != int(times[asset_id][index]):
        scores.retimed += 1
    return 1


def child_env(
    settings: Settings, site_path: Path, run_dir: Path, base: dict[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in ("TWIN_DATA_DIR", "TWIN_SITE")}
    env["TWIN_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env["TWIN_DATA_DIR"] = str(run_dir)
    env["TWIN_SITE"] = str(site_path)
    return env
