"""The demo's figures, computed once the pipeline has drained and stopped.

Counts come from ClickHouse, restricted to this run (rows whose ingest time, detection time
or emission time is at or after the run's start), with FINAL so a replayed insert is never
counted twice. Accounting for readings: every reading the connectors delivered is either a
row of `readings` or inside a frame the validator dead-lettered (the dead letter keeps the
frame's bytes, decoded here to count its readings, by reason).

Latency: for each record on twin.state, its Kafka timestamp (when the worker produced the
estimate) minus the ingest time of its source frame (when the connector produced it). The
connectors start before the worker has joined its consumer group, so the first frames wait
for it: the latency is also given over the frames ingested once the worker's first state
record was out ("live"), with how long into the run that was.

Estimate quality: for every gauge reading that has both a stored raw value and a measured
state estimate at the same event time, the error of each against the simulator's true value
(sim.truth, nearest truth sample within 150 ms). Errors are divided by the signal's
measurement noise, so signals in different units weigh alike; the ratio is
RMSE(estimate) / RMSE(raw reading): below 1 means the filter is closer to the truth than
the sensor it reads.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from clickhouse_connect.driver.client import Client

from pipeline.clickhouse import run_query
from pipeline.demo_kafka import read_all
from pipeline.errors import SerdeError
from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.site import SignalKind, Site

TRUTH_TOLERANCE_US = 150_000


@dataclass
class StoredCounts:
    readings_stored: int = 0
    readings_distinct: int = 0
    readings_rows: int = 0
    dead_letters: int = 0
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    state_rows: int = 0
    kpi_windows: int = 0
    kpi_windows_by_kind: dict[str, int] = field(default_factory=dict)
    anomaly_rows: int = 0
    anomalies_flagged: int = 0
    alert_events_by_kind: dict[str, int] = field(default_factory=dict)
    alerts_raised: list[str] = field(default_factory=list)
    """alert_id of every alert raised in the run, in order of event time."""


def _literal(ts: datetime) -> str:
    return f"toDateTime64('{ts.strftime('%Y-%m-%d %H:%M:%S.%f')}', 6, 'UTC')"


def _one(client: Client, sql: str) -> int:
    _, rows = run_query(client, sql)
    return int(rows[0][0]) if rows else 0


def stored_counts(client: Client, since: datetime) -> StoredCounts:
    s = _literal(since)
    counts = StoredCounts()
    counts.readings_stored = _one(
        client, f"SELECT count() FROM readings FINAL WHERE ingest_ts >= {s}"
    )
    counts.readings_distinct = _one(
        client,
        "SELECT count(DISTINCT (asset_id, signal, ts, source_id, seq)) FROM readings "
        f"WHERE ingest_ts >= {s}",
    )
    counts.readings_rows = _one(client, f"SELECT count() FROM readings WHERE ingest_ts >= {s}")
    _, rows = run_query(
        client,
        "SELECT reason_code, count() FROM dead_letters FINAL "
        f"WHERE detected_ts >= {s} GROUP BY reason_code ORDER BY reason_code",
    )
    counts.dead_letters_by_reason = {str(r[0]): int(r[1]) for r in rows}
    counts.dead_letters = sum(counts.dead_letters_by_reason.values())
    counts.state_rows = _one(client, f"SELECT count() FROM states FINAL WHERE ingest_ts >= {s}")
    _, rows = run_query(
        client,
        "SELECT window_kind, count() FROM kpi_windows FINAL "
        f"WHERE emitted_ts >= {s} GROUP BY window_kind ORDER BY window_kind",
    )
    counts.kpi_windows_by_kind = {str(r[0]): int(r[1]) for r in rows}
    counts.kpi_windows = sum(counts.kpi_windows_by_kind.values())
    counts.anomaly_rows = _one(
        client, f"SELECT count() FROM anomalies FINAL WHERE ingest_ts >= {s}"
    )
    counts.anomalies_flagged = _one(
        client, f"SELECT countIf(is_anomaly) FROM anomalies FINAL WHERE ingest_ts >= {s}"
    )
    _, rows = run_query(
        client,
        "SELECT event, count() FROM alerts FINAL "
        f"WHERE emitted_ts >= {s} GROUP BY event ORDER BY event",
    )
    counts.alert_events_by_kind = {str(r[0]): int(r[1]) for r in rows}
    _, rows = run_query(
        client,
        "SELECT alert_id FROM alerts FINAL "
        f"WHERE emitted_ts >= {s} AND event = 'RAISED' ORDER BY ts, alert_id",
    )
    counts.alerts_raised = [str(r[0]) for r in rows]
    return counts


@dataclass
class DeadLetteredReadings:
    """Readings inside frames the validator rejected, by reason code."""

    by_reason: Counter[str] = field(default_factory=Counter)
    frames_by_reason: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


def dead_lettered_readings(settings: Settings, site: Site, since: datetime) -> DeadLetteredReadings:
    serde = AvroSerde.from_settings(settings)
    raw_topic = site.topic("telemetry.raw")
    out = DeadLetteredReadings()
    for item in read_all(settings, site.topic("telemetry.deadletter"), since):
        letter = item.record
        if letter.get("origin_topic") != raw_topic:
            continue  # e.g. a connector's malformed device payload: never a published reading
        reason = str(letter.get("reason_code"))
        out.frames_by_reason[reason] += 1
        try:
            readings = serde.decode(letter["payload"]).record.get("readings") or []
        except (SerdeError, KeyError, TypeError):
            continue  # undecodable bytes carry no countable readings
        out.by_reason[reason] += len(readings)
    return out


@dataclass
class Latency:
    p50_ms: float | None = None
    p99_ms: float | None = None
    samples: int = 0
    live_p50_ms: float | None = None
    live_p99_ms: float | None = None
    live_samples: int = 0
    """Over the frames ingested once the worker's first state record was out."""
    first_output_s: float | None = None
    """When the worker's first state record was out, seconds after the run began."""


def state_latency(settings: Settings, site: Site, since: datetime) -> Latency:
    records = read_all(settings, site.topic("twin.state"), since)
    return latency_of([(item.appended, item.record["ingest_ts"]) for item in records], since)


def latency_of(outputs: list[tuple[datetime, datetime]], since: datetime) -> Latency:
    """The latency of (appended, ingest time of its frame) pairs; see the module doc."""
    if not outputs:
        return Latency()
    first = min(appended for appended, _ in outputs)
    delays = np.array([(a - i).total_seconds() * 1000 for a, i in outputs])
    live = np.array([i >= first for _, i in outputs])
    out = Latency(*_p50_p99(delays), len(delays))
    out.first_output_s = round((first - since).total_seconds(), 1)
    if live.any():
        out.live_p50_ms, out.live_p99_ms = _p50_p99(delays[live])
        out.live_samples = int(live.sum())
    return out


def _p50_p99(delays_ms: np.ndarray) -> tuple[float, float]:
    p50, p99 = np.percentile(delays_ms, [50, 99])
    return round(float(p50), 1), round(float(p99), 1)


Key = tuple[str, str]


def _truth(settings: Settings, site: Site, since: datetime) -> dict[Key, tuple[Any, Any]]:
    series: dict[Key, list[tuple[int, float]]] = defaultdict(list)
    for item in read_all(settings, site.topic("sim.truth"), since):
        frame = item.record
        for reading in frame["readings"]:
            micros = int(reading["ts"].timestamp() * 1_000_000)
            series[(frame["asset_id"], reading["signal"])].append((micros, reading["value"]))
    out = {}
    for key, points in series.items():
        points.sort()
        out[key] = (np.array([p[0] for p in points]), np.array([p[1] for p in points]))
    return out


def _noise(site: Site) -> dict[Key, float]:
    return {
        (asset.id, signal.name): signal.measurement_noise
        for asset in site.assets
        for signal in asset.signals.values()
        if signal.kind is SignalKind.GAUGE and signal.measurement_noise > 0
    }


@dataclass
class EstimateScore:
    rmse_ratio: float | None = None
    points: int = 0
    signals: int = 0
    by_signal: dict[str, float] = field(default_factory=dict)
    """"signal" (type-level name) -> RMSE ratio over every asset's readings of it."""


def estimate_score(
    client: Client, settings: Settings, site: Site, since: datetime
) -> EstimateScore:
    truth = _truth(settings, site, since)
    noise = _noise(site)
    _, rows = run_query(
        client,
        "SELECT s.asset_id, s.signal, toUnixTimestamp64Micro(s.ts), s.value, r.value "
        "FROM (SELECT asset_id, signal, ts, value FROM states FINAL "
        f"      WHERE ingest_ts >= {_literal(since)} AND measured) AS s "
        "INNER JOIN (SELECT asset_id, signal, ts, value FROM readings FINAL "
        f"      WHERE ingest_ts >= {_literal(since)} AND isFinite(value)) AS r "
        "ON s.asset_id = r.asset_id AND s.signal = r.signal AND s.ts = r.ts",
    )
    est_sq = raw_sq = 0.0
    points = 0
    signals: set[Key] = set()
    per_signal: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for asset_id, signal, micros, estimate, raw in rows:
        key = (str(asset_id), str(signal))
        if key not in noise or key not in truth or not math.isfinite(estimate):
            continue
        times, values = truth[key]
        i = int(np.searchsorted(times, micros))
        best = min(
            (j for j in (i - 1, i) if 0 <= j < len(times)), key=lambda j: abs(times[j] - micros)
        )
        if abs(int(times[best]) - int(micros)) > TRUTH_TOLERANCE_US:
            continue
        true = float(values[best])
        sigma = noise[key]
        est_sq += ((estimate - true) / sigma) ** 2
        raw_sq += ((raw - true) / sigma) ** 2
        sums = per_signal[key[1]]
        sums[0] += ((estimate - true) / sigma) ** 2
        sums[1] += ((raw - true) / sigma) ** 2
        points += 1
        signals.add(key)
    if points == 0 or raw_sq == 0:
        return EstimateScore(points=points)
    ratio = math.sqrt(est_sq / points) / math.sqrt(raw_sq / points)
    by_signal = {
        name: round(math.sqrt(e / r), 3) for name, (e, r) in sorted(per_signal.items()) if r > 0
    }
    return EstimateScore(round(ratio, 3), points, len(signals), by_signal)
