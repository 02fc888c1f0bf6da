"""The naive baseline's stream processor: a plain Faust agent, one reading per event.

What most Faust tutorials write: an agent iterating over a topic of JSON events, each one
reading, updating a table entry per event (here the running mean of the asset's signal).
It records the wall-clock time of its first event (after the consumer group has joined, so
start-up is not counted) and of its `--count`-th event, writes both to `--out` as JSON,
and keeps running until it is stopped.

    python -m pipeline.bench.naive_agent --bootstrap HOST:PORT --topic T --count N --out F
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import faust

APP_ID = "twin-bench-naive"


def build_app(bootstrap: str, topic_name: str, count: int, out: Path, data_dir: Path) -> faust.App:
    app = faust.App(
        APP_ID,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        topic_partitions=4,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        datadir=str(data_dir),
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
    topic = app.topic(topic_name, value_type=bytes, value_serializer="json")
    means = app.Table("signal-means", default=lambda: None, partitions=4)
    seen = {"count": 0, "first": 0.0}

    @app.agent(topic)
    async def readings(stream: Any) -> None:
        async for reading in stream:
            key = f"{reading['asset_id']}/{reading['signal']}"
            n, mean = means[key] or (0, 0.0)
            n += 1
            means[key] = (n, mean + (float(reading["value"]) - mean) / n)
            seen["count"] += 1
            if seen["count"] == 1:
                seen["first"] = time.time()
            if seen["count"] == count:
                result = {"first": seen["first"], "last": time.time(), "events": count}
                partial = out.with_suffix(".partial")
                partial.write_text(json.dumps(result), encoding="utf-8")
                partial.replace(out)  # the bench sees the whole file or none

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from faust.worker import Worker

    data_dir = args.out.parent / "naive-faust"
    data_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(args.bootstrap, args.topic, args.count, args.out, data_dir)
    Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
