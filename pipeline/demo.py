"""The whole pipeline on one machine: `twin demo`.

1. Kafka: the cluster at TWIN_KAFKA_BOOTSTRAP when it is set, else an embedded broker on a
   free port; the site's topics; the ClickHouse schema (migrated here, then the client is
   closed: the embedded engine admits one process at a time, and the sink needs it).
2. Child processes, each a real `twin` command with its log in the run directory
   (<data dir>/demo/<run start>/): `twin worker`, `twin sink --assign`, Mosquitto on a free
   port (when installed; without it the MQTT assets are left out), `twin simulate --scenario
   faults --truth` on free ports, and one `twin connect` per source of the site.
3. After `duration` seconds of telemetry: the simulator and connectors stop (their JSON
   summaries are kept), the worker and the sink run until their consumer groups have
   committed everything (they have drained), then stop too.
4. The summary (pipeline.demo_summary): counts of this run's rows in ClickHouse, readings
   accounted for, latency, and how close the state estimate came to the simulator's truth.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pipeline.clickhouse import migrate, open_client, redact_dsn
from pipeline.demo_kafka import ProgressCounter, group_lag
from pipeline.demo_processes import (
    Child,
    Children,
    mosquitto_binary,
    start_mosquitto,
    wait_for_text,
)
from pipeline.demo_report import DemoReport, summarise
from pipeline.errors import TwinError
from pipeline.kafka.broker import EmbeddedBroker, free_port
from pipeline.kafka.clients import admin_client
from pipeline.kafka.topics import create_topics
from pipeline.settings import Settings
from pipeline.sink.consumer import GROUP_ID as SINK_GROUP
from pipeline.sink.consumer import SINK_TOPICS
from pipeline.site import ModbusSource, OpcUaSource, Site

Progress = Callable[[str], None]

DEFAULT_DURATION_S = 90.0
PROGRESS_EVERY_S = 10.0
DRAIN_TIMEOUT_S = 90.0
#: The worker's consumer group (topologies.agents.app_id), without importing Faust here.
WORKER_APP = "twinline"


@contextlib.contextmanager
def kafka_for_demo(settings: Settings, progress: Progress) -> Iterator[tuple[Settings, bool]]:
    """The cluster at TWIN_KAFKA_BOOTSTRAP when it is set, else a fresh embedded broker."""
    if "TWIN_KAFKA_BOOTSTRAP" in os.environ:
        yield settings, False
        return
    progress("starting the embedded Kafka broker")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(log_path=settings.data_dir / "broker.log") as broker:
        progress(f"broker ready on {broker.bootstrap}")
        yield settings.model_copy(update={"kafka_bootstrap": broker.bootstrap}), True


def run_demo(
    settings: Settings,
    site: Site,
    progress: Progress,
    duration_s: float = DEFAULT_DURATION_S,
    hold: bool = False,
) -> DemoReport:
    started = datetime.now(UTC)
    with kafka_for_demo(settings, progress) as (kafka, embedded):
        report = DemoReport(
            bootstrap=kafka.kafka_bootstrap,
            embedded_broker=embedded,
            clickhouse=redact_dsn(kafka.clickhouse_url()),
            run_start=started,
        )
        progress("creating topics")
        create_topics(
            admin_client(kafka),
            site.topic_prefix,
            site.kafka.partitions,
            site.kafka.replication_factor,
        )
        progress(f"migrating ClickHouse at {report.clickhouse}")
        client = open_client(kafka.clickhouse_url(), create_database=True)
        try:
            report.migrations_applied = len(migrate(client).applied)
        finally:
            client.close()
        run_dir = settings.data_dir / "demo" / started.strftime("%Y%m%dT%H%M%SZ")
        run_dir.mkdir(parents=True, exist_ok=True)
        report.run_dir = str(run_dir)
        children = Children(run_dir, _child_env(kafka, site, run_dir))
        try:
            _run_pipeline(children, kafka, site, report, progress, duration_s)
        finally:
            children.stop_all()
        progress("computing the summary")
        client = open_client(kafka.clickhouse_url())
        try:
            summarise(report, client, kafka, site)
        finally:
            client.close()
        report.seconds = (datetime.now(UTC) - started).total_seconds()
        if hold and embedded:
            progress(f"broker stays up on {kafka.kafka_bootstrap}; Ctrl-C stops it")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
    return report


def _child_env(kafka: Settings, site: Site, run_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TWIN_DATA_DIR", "TWIN_SITE")}
    env["TWIN_KAFKA_BOOTSTRAP"] = kafka.kafka_bootstrap
    env["TWIN_CLICKHOUSE_DSN"] = kafka.clickhouse_url()
    # Spools, Faust state and logs of this run only: a spool left by an earlier run must
    # not replay old frames into this one.
    env["TWIN_DATA_DIR"] = str(run_dir)
    env["TWIN_SITE"] = str(kafka.site)
    return env


def _run_pipeline(
    children: Children,
    kafka: Settings,
    site: Site,
    report: DemoReport,
    progress: Progress,
    duration_s: float,
) -> None:
    progress("starting the stream agents (twin worker) and the sink (twin sink)")
    worker = children.twin("worker", "worker")
    sink = children.twin("sink", "sink", "--assign", "--no-migrate", "--json")
    sources = _start_sources(children, site, report, progress)
    progress(f"telemetry flows for {duration_s:.0f}s; logs in {report.run_dir}")
    counter = ProgressCounter(kafka, _progress_topics(site), report.run_start)
    try:
        deadline = time.monotonic() + duration_s
        next_line = time.monotonic() + PROGRESS_EVERY_S
        while time.monotonic() < deadline:
            _check_alive([worker, sink, *sources])
            counter.poll(0.5)
            if time.monotonic() >= next_line:
                progress(_progress_line(counter, site, kafka))
                next_line += PROGRESS_EVERY_S
        progress("stopping the connectors and the simulator")
        for child in sources:
            children.stop(child)
        _drain(kafka, site, [worker, sink], counter, progress)
    finally:
        counter.close()
    for child in sources:
        report.children[child.name] = child.summary
    children.stop(worker, timeout=60)
    children.stop(sink, timeout=60)
    report.children["sink"] = sink.summary
    for child in (worker, sink):
        if child.returncode not in (0, -15):
            report.problems.append(f"{child.name} exited with {child.returncode}")


def _start_sources(
    children: Children, site: Site, report: DemoReport, progress: Progress
) -> list[Child]:
    """Mosquitto, the simulator and the connectors, simulator first so connectors find it."""
    opcua_port, modbus_port = free_port(), free_port()
    sim_args = ["simulate", "--scenario", "faults", "--truth", "--json"]
    sim_args += ["--opcua-port", str(opcua_port), "--modbus-port", str(modbus_port)]
    mqtt_url = None
    mqtt_sources = [sid for sid, s in site.sources.items() if str(s.kind) == "mqtt"]
    if mqtt_sources:
        binary = mosquitto_binary()
        if binary is None:
            report.notes.append("mosquitto is not installed: the MQTT assets are left out")
            progress(report.notes[-1])
        else:
            port = free_port()
            start_mosquitto(children, binary, port)
            mqtt_url = f"mqtt://127.0.0.1:{port}"
            sim_args += ["--mqtt", mqtt_url]
    progress("starting the plant simulator (fault scenario, ground truth on sim.truth)")
    sim = children.twin("simulate", *sim_args)
    wait_for_text(sim, "Running;", timeout=60)
    connectors = []
    opcua_i = modbus_i = 0
    for source_id, source in site.sources.items():
        if not site.assets_fed_by(source_id):
            continue
        args = ["connect", str(source.kind), "--source", source_id, "--json"]
        if isinstance(source, OpcUaSource):
            args += ["--endpoint", _with_port(source.endpoint, opcua_port + opcua_i)]
            opcua_i += 1
        elif isinstance(source, ModbusSource):
            args += ["--port", str(modbus_port + modbus_i)]
            modbus_i += 1
        elif mqtt_url is not None:
            args += ["--broker", mqtt_url]
        else:
            continue
        connectors.append(children.twin(f"connect-{source_id}", *args))
    progress(f"connectors started: {', '.join(c.name[8:] for c in connectors)}")
    return [*connectors, sim]


def _with_port(endpoint: str, port: int) -> str:
    parts = urlsplit(endpoint)
    return urlunsplit(parts._replace(netloc=f"{parts.hostname or '127.0.0.1'}:{port}"))


def _progress_topics(site: Site) -> list[str]:
    return [
        site.topic(t)
        for t in ("telemetry.raw", "telemetry.valid", "telemetry.deadletter", "twin.state")
    ]


def _progress_line(counter: ProgressCounter, site: Site, kafka: Settings) -> str:
    counts = counter.counts
    raw, valid = site.topic("telemetry.raw"), site.topic("telemetry.valid")
    dead, state = site.topic("telemetry.deadletter"), site.topic("twin.state")
    lag = group_lag(kafka, SINK_GROUP, [site.topic(t) for t in SINK_TOPICS])
    return (
        f"published {counts.readings[raw]} readings ({counts.frames[raw]} frames), "
        f"valid {counts.readings[valid]}, dead letters {counts.frames[dead]}, "
        f"states {counts.frames[state]}, sink lag {'?' if lag is None else lag} messages"
    )


def _check_alive(children: list[Child]) -> None:
    for child in children:
        if not child.running():
            raise TwinError(
                f"{child.name} stopped unexpectedly (exit {child.process.returncode}):\n"
                f"{child.log_tail()}"
            )


def _drain(
    kafka: Settings,
    site: Site,
    agents: list[Child],
    counter: ProgressCounter,
    progress: Progress,
) -> None:
    """Wait until the worker has committed all of telemetry.raw and the sink all of its
    topics, twice in a row a second apart (the worker may still emit as it commits)."""
    progress("waiting for the stream agents and the sink to drain")
    raw = [site.topic("telemetry.raw")]
    sink_topics = [site.topic(t) for t in SINK_TOPICS]
    worker_group = site.topic(WORKER_APP)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    settled = 0
    while time.monotonic() < deadline and settled < 2:
        _check_alive(agents)
        counter.poll(0.2)
        time.sleep(1.0)
        idle = group_lag(kafka, worker_group, raw) == 0
        idle = idle and group_lag(kafka, SINK_GROUP, sink_topics) == 0
        settled = settled + 1 if idle else 0
    if settled < 2:
        progress(f"the pipeline did not drain within {DRAIN_TIMEOUT_S:.0f}s; stopping anyway")
    progress(_progress_line(counter, site, kafka))
