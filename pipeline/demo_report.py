"""The demo's report: what ran, what was published, stored and dead-lettered, and whether it
adds up (`consistent`: every published reading is a stored row or inside a dead letter)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.demo_summary import (
    dead_lettered_readings,
    estimate_score,
    state_latency,
    stored_counts,
)
from pipeline.settings import Settings
from pipeline.site import Site


@dataclass
class DemoReport:
    bootstrap: str
    embedded_broker: bool
    clickhouse: str
    run_start: datetime
    run_dir: str = ""
    migrations_applied: int = 0
    seconds: float = 0.0
    children: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.problems and self.figures.get("readings_unaccounted") == 0

    def connectors(self) -> dict[str, dict[str, Any]]:
        return {
            name[len("connect-") :]: summary
            for name, summary in self.children.items()
            if name.startswith("connect-") and summary is not None
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.figures,
            "consistent": self.consistent,
            "problems": self.problems,
            "notes": self.notes,
            "bootstrap": self.bootstrap,
            "embedded_broker": self.embedded_broker,
            "clickhouse": self.clickhouse,
            "run_start": self.run_start.isoformat(),
            "run_dir": self.run_dir,
            "migrations_applied": self.migrations_applied,
            "seconds": round(self.seconds, 1),
            "connectors": self.connectors(),
            "simulator": self.children.get("simulate"),
            "sink": self.children.get("sink"),
        }


def summarise(report: DemoReport, client: Client, kafka: Settings, site: Site) -> None:
    """Fill `report.figures` (and `problems`) from ClickHouse and the topics."""
    since = report.run_start
    connectors = report.connectors()
    for name, child in report.children.items():
        if child is None:
            report.problems.append(f"{name} printed no summary")
    published = sum(int(c.get("delivered_readings", 0)) for c in connectors.values())
    stored = stored_counts(client, since)
    lettered = dead_lettered_readings(kafka, site, since)
    latency = state_latency(kafka, site, since)
    score = estimate_score(client, kafka, site, since)
    unaccounted = published - stored.readings_stored - lettered.total
    report.figures = {
        "readings_published": published,
        "readings_stored": stored.readings_stored,
        "readings_dead_lettered": lettered.total,
        "readings_dead_lettered_by_reason": dict(lettered.by_reason),
        "duplicate_readings": lettered.by_reason.get("duplicate", 0),
        "readings_unaccounted": unaccounted,
        "readings_rows_before_dedup": stored.readings_rows,
        "readings_distinct": stored.readings_distinct,
        "frames_dead_lettered": sum(lettered.frames_by_reason.values()),
        "frames_published": sum(int(c.get("delivered", 0)) for c in connectors.values()),
        "dead_letters": stored.dead_letters,
        "dead_letters_by_reason": stored.dead_letters_by_reason,
        "state_rows": stored.state_rows,
        "kpi_windows": stored.kpi_windows,
        "kpi_windows_by_kind": stored.kpi_windows_by_kind,
        "anomaly_rows": stored.anomaly_rows,
        "anomalies_flagged": stored.anomalies_flagged,
        "alert_events_by_kind": stored.alert_events_by_kind,
        "alerts_raised": stored.alerts_raised,
        "latency_p50_ms": latency.p50_ms,
        "latency_p99_ms": latency.p99_ms,
        "latency_measure": "twin.state record Kafka timestamp - source frame ingest_ts",
        "latency_samples": latency.samples,
        "latency_live_p50_ms": latency.live_p50_ms,
        "latency_live_p99_ms": latency.live_p99_ms,
        "latency_live_samples": latency.live_samples,
        "worker_first_output_s": latency.first_output_s,
        "estimate_rmse_ratio": score.rmse_ratio,
        "estimate_points": score.points,
        "estimate_signals": score.signals,
        "estimate_rmse_ratio_by_signal": score.by_signal,
        "reconnects": sum(int(c.get("reconnects", 0)) for c in connectors.values()),
        "truth_frames": ((report.children.get("simulate") or {}).get("truth") or {}).get("frames"),
    }
    if unaccounted != 0:
        report.problems.append(
            f"{unaccounted} published readings are neither stored nor dead-lettered"
        )
    if stored.readings_distinct != stored.readings_stored:
        report.problems.append(
            f"readings stored {stored.readings_stored} but distinct "
            f"{stored.readings_distinct}: a reading is stored twice"
        )
