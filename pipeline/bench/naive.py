"""The naive baseline: one reading per event through a plain Faust agent with a table
update per event (pipeline.bench.naive_agent), on the same broker, over readings taken
from the first frames of the same workload (a subset: the agent is slow).

The readings go to their own topic as one JSON message each (key asset_id, 4 partitions)
before the agent starts; the agent's clock runs from its first event to its last, so its
start-up and JoinGroup are not counted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka.admin import NewTopic

from pipeline.bench.stack import BenchStack
from pipeline.bench.workload import Workload
from pipeline.demo_processes import Children
from pipeline.errors import TwinError
from pipeline.kafka.clients import admin_client, producer

Progress = Callable[[str], None]

TOPIC = "bench.naive.readings"
TIMEOUT_S = 600.0


@dataclass(frozen=True)
class NaiveFigures:
    events: int
    seconds: float

    @property
    def readings_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "readings": self.events,
            "seconds": round(self.seconds, 3),
            "readings_per_s": round(self.readings_per_s),
            "what": "faust-streaming agent, `async for` one JSON reading per event, a table "
            "update per event (running mean per asset and signal)",
        }


def measure_naive(stack: BenchStack, workload: Workload, progress: Progress) -> NaiveFigures:
    count = len(workload.per_reading)
    if count == 0:
        raise TwinError("the naive baseline has no readings to process")
    settings = stack.settings
    admin = admin_client(settings)  # kept referenced until the topic exists
    for future in admin.create_topics([NewTopic(TOPIC, 4, 1)]).values():
        future.result(15)
    out = producer(settings, **{"linger.ms": 50})
    for key, value in zip(workload.per_reading_keys, workload.per_reading, strict=True):
        while True:
            try:
                out.produce(TOPIC, value, key)
                break
            except BufferError:
                out.poll(0.1)
    if out.flush(60):
        raise TwinError(f"per-reading messages were not delivered to {TOPIC}")
    run_dir = stack.root / "naive"
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "result.json"
    children = Children(run_dir, {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")})
    progress(f"[naive] a plain Faust agent over {count:,} per-reading events")
    argv = [sys.executable, "-m", "pipeline.bench.naive_agent", "--bootstrap",
            settings.kafka_bootstrap, "--topic", TOPIC, "--count", str(count),
            "--out", str(result_path)]  # fmt: skip
    agent = children.spawn("naive-agent", argv)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        next_line = time.monotonic() + 10
        while not result_path.exists():
            if not agent.running():
                raise TwinError(f"the naive Faust agent exited:\n{agent.log_tail()}")
            if time.monotonic() > deadline:
                raise TwinError(f"the naive Faust agent did not finish in {TIMEOUT_S:.0f}s")
            if time.monotonic() >= next_line:
                next_line += 10
                progress("  [naive] the agent is still reading")
            time.sleep(0.2)
        result = json.loads(result_path.read_text(encoding="utf-8"))
    finally:
        children.stop_all()
    return NaiveFigures(int(result["events"]), float(result["last"]) - float(result["first"]))
