"""Measure the sink: validated frames from Kafka to ClickHouse, in readings per second.

    python -m pipeline.sink.bench [--frames 4000] [--readings 50] [--max-rows 50000]

Starts an embedded broker (or uses TWIN_KAFKA_BOOTSTRAP), publishes `--frames` validated
frames of `--readings` readings with recent timestamps to a fresh topic, then runs the sink
process (assign mode) into a new embedded ClickHouse under a temporary directory until
every frame is stored and committed. Prints one JSON object; `rows_per_s` counts from the
sink's start to its last commit (the idle time it waits before exiting is not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.clickhouse import migrate, open_client
from pipeline.kafka.broker import EmbeddedBroker
from pipeline.kafka.clients import admin_client, producer
from pipeline.kafka.topics import create_topics
from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.sink.consumer import SinkOptions, SinkProcess, sink_consumer
from pipeline.sink.writer import ClickHouseSink

_IDLE_S = 1.5


def validated_frames(count: int, readings: int) -> Iterator[tuple[bytes, dict[str, Any]]]:
    start = datetime.now(UTC) - timedelta(minutes=30)
    for seq in range(count):
        ts = start + timedelta(milliseconds=100 * seq)
        asset = f"press-{seq % 16:02d}"
        yield (
            asset.encode(),
            {
                "asset_id": asset,
                "source_id": "bench",
                "seq": seq,
                "ingest_ts": ts,
                "validated_ts": ts,
                "readings": [
                    {
                        "signal": f"signal_{i:02d}",
                        "ts": ts + timedelta(microseconds=i),
                        "value": float(seq + i),
                        "quality": "GOOD" if i % 10 else "UNCERTAIN",
                        "flags": [] if i % 10 else ["DEVICE_UNCERTAIN"],
                    }
                    for i in range(readings)
                ],
            },
        )


@contextlib.contextmanager
def _kafka() -> Iterator[str]:
    bootstrap = os.environ.get("TWIN_KAFKA_BOOTSTRAP")
    if bootstrap:
        yield bootstrap
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


def measure(bootstrap: str, frames: int, readings: int, max_rows: int) -> dict[str, Any]:
    settings = Settings(kafka_bootstrap=bootstrap)
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    create_topics(admin_client(settings), prefix, 4, 1)
    topic = prefix + "telemetry.valid"
    serde = AvroSerde.local()
    out = producer(settings)
    for key, record in validated_frames(frames, readings):
        out.produce(topic, key=key, value=serde.encode("validated_frame", record, topic))
        out.poll(0)
    out.flush(60)
    with tempfile.TemporaryDirectory() as directory:
        client = open_client(f"chdb://{directory}/clickhouse", create_database=True)
        try:
            migrate(client)
            options = SinkOptions(
                topics=(topic,), mode="assign", group_id=f"{prefix}sink", max_rows=max_rows,
                idle_exit_s=_IDLE_S, duration_s=600.0,
            )  # fmt: skip
            process = SinkProcess(
                sink_consumer(settings, options.group_id),
                ClickHouseSink(client, max_rows, options.max_delay_s),
                serde,
                options,
            )
            started = time.monotonic()
            summary = process.run()
            busy = max(1e-9, time.monotonic() - started - _IDLE_S)
            stored = int(client.query("SELECT count() FROM readings").result_rows[0][0])
        finally:
            client.close()
    return {
        "frames": frames,
        "readings_per_frame": readings,
        "readings_stored": stored,
        "flushes": summary.flushes,
        "seconds": round(busy, 3),
        "rows_per_s": round(stored / busy),
        "frames_per_s": round(frames / busy),
        "records": sum(summary.records.values()),
        "lag": summary.lag,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sink.bench", description=__doc__)
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--readings", type=int, default=50)
    parser.add_argument("--max-rows", type=int, default=50_000)
    args = parser.parse_args(argv)
    with _kafka() as bootstrap:
        result = measure(bootstrap, args.frames, args.readings, args.max_rows)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
