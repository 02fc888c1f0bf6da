"""`twin evaluate`: labelled recordings through the real pipeline, scored against the labels.

1. The files are read (pipeline.evaluate.datasets) and a site description is derived from them:
   one asset per file, its signals from the columns (written to the run directory, so the
   worker reads it like any site file).
2. Kafka: the cluster at TWIN_KAFKA_BOOTSTRAP when it is set, else an embedded broker; the
   site's topics under a prefix of this run, so runs never see each other's data.
3. A `twin worker` child process; every row is produced to telemetry.raw as one frame; the
   scores are read back from twin.anomaly (pipeline.evaluate.replay).
4. The flags are scored against the labels (pipeline.evaluate.scoring).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from pipeline.demo import kafka_for_demo
from pipeline.demo_processes import Children
from pipeline.evaluate import datasets, scoring
from pipeline.evaluate.replay import Scores, child_env, collect_scores, produce_series
from pipeline.kafka.clients import admin_client
from pipeline.kafka.topics import create_topics
from pipeline.settings import Settings
from pipeline.site import load_site

Progress = Callable[[str], None]

PARTITIONS = 2


def run_evaluation(
    settings: Settings,
    paths: Sequence[Path],
    fmt: str,
    train_rows: int,
    progress: Progress,
) -> dict[str, Any]:
    started = datetime.now(UTC)
    series = datasets.load(fmt, paths)
    progress(
        f"read {len(series)} files, {sum(len(s.times_us) for s in series):,} rows ({fmt} layout)"
    )
    run_id = started.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    run_dir = settings.data_dir / "evaluate" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    site_doc = datasets.site_for(series, train_rows)
    site_doc["kafka"] = {"topic_prefix": f"eval-{run_id}.", "partitions": PARTITIONS}
    site_path = run_dir / "site.yaml"
    site_path.write_text(yaml.safe_dump(site_doc, sort_keys=False), encoding="utf-8")
    site = load_site(site_path)
    with kafka_for_demo(settings, progress) as (kafka, _embedded):
        create_topics(
            admin_client(kafka),
            site.topic_prefix,
            site.kafka.partitions,
            site.kafka.replication_factor,
        )
        children = Children(run_dir, child_env(kafka, site_path, run_dir, dict(os.environ)))
        try:
            progress(f"starting the stream agents (twin worker); logs in {run_dir}")
            worker = children.twin("worker", "worker")
            produce_series(kafka, site, series, progress)
            scores = collect_scores(kafka, site, series, worker, progress)
        finally:
            children.stop_all()
    result = _score(fmt, series, scores, train_rows)
    result["format"] = fmt
    result["rows"] = sum(len(one.times_us) for one in series)
    result["model"] = scores.model()
    result["rows_unscored"] = scores.missing()
    result["redelivered"] = scores.duplicates
    result["rows_retimed"] = scores.retimed
    result["run_dir"] = str(run_dir)
    result["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    return result


def _score(
    fmt: str, series: Sequence[datasets.Series], scores: Scores, train_rows: int
) -> dict[str, Any]:
    flags = {
        one.asset_id: [bool(r is not None and r["is_anomaly"]) for r in scores.rows[one.asset_id]]
        for one in series
    }
    return scoring.score(fmt, series, flags, train_rows)
