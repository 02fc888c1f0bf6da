"""The bench's own embedded stack: a broker on a free port and a temporary directory.

Each measured run gets a `BenchRun`: its own site file and topic prefix on the shared broker
(so runs never read each other's frames or offsets), its own embedded ClickHouse data path,
and its own child processes (`twin worker`, `twin sink`), which are all stopped when the run
ends, fails or is interrupted. The broker and the directory go when the stack's block ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.bench.plant import BenchPlant, write_site
from pipeline.demo_processes import Children
from pipeline.kafka.broker import EmbeddedBroker
from pipeline.kafka.clients import admin_client
from pipeline.kafka.topics import create_topics
from pipeline.settings import Settings
from pipeline.site import Site, load_site

Progress = Callable[[str], None]


@dataclass
class BenchStack:
    settings: Settings
    """Settings with the embedded broker's bootstrap."""
    root: Path


@contextlib.contextmanager
def bench_stack(settings: Settings, progress: Progress, keep: bool = False) -> Iterator[BenchStack]:
    """A fresh broker on a free port and a temporary directory, both gone afterwards
    (the directory stays with `keep`, for its logs)."""
    root = Path(tempfile.mkdtemp(prefix="twin-bench-"))
    try:
        progress(f"starting the embedded Kafka broker (data and logs in {root})")
        with EmbeddedBroker(log_path=root / "broker.log") as broker:
            progress(f"broker ready on {broker.bootstrap}")
            yield BenchStack(
                settings.model_copy(update={"kafka_bootstrap": broker.bootstrap}), root
            )
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


@dataclass
class BenchRun:
    """One measured configuration: a site (plant + prefix), its directory and processes."""

    name: str
    plant: BenchPlant
    site: Site
    settings: Settings
    """Stack settings with this run's site, data directory and ClickHouse data path."""
    run_dir: Path
    children: Children

    @property
    def clickhouse_path(self) -> Path:
        return self.run_dir / "clickhouse"


@contextlib.contextmanager
def bench_run(
    stack: BenchStack, name: str, plant: BenchPlant, progress: Progress
) -> Iterator[BenchRun]:
    """Site file, topics and a process group for one run; every child is stopped after."""
    run_dir = stack.root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    progress(f"[{name}] site of {plant.assets:,} assets x {plant.signals} signals")
    site_path = write_site(plant, run_dir / "site.yaml")
    site = load_site(site_path)
    settings = stack.settings.model_copy(
        update={
            "site": site_path,
            "data_dir": run_dir,
            "clickhouse_dsn": None,
        }
    )
    create_topics(admin_client(settings), site.topic_prefix, site.kafka.partitions, 1)
    children = Children(run_dir, _child_env(settings))
    try:
        yield BenchRun(name, plant, site, settings, run_dir, children)
    finally:
        children.stop_all()


def _child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    for name in ("TWIN_KAFKA_CONFIG", "TWIN_LOG_LEVEL", "TWIN_SCHEMA_REGISTRY_URL"):
        if name in os.environ:
            env[name] = os.environ[name]
    env["TWIN_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env["TWIN_CLICKHOUSE_DSN"] = settings.clickhouse_url()
    env["TWIN_DATA_DIR"] = str(settings.data_dir)
    env["TWIN_SITE"] = str(settings.site)
    return env
