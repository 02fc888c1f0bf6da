"""Serde throughput: our Confluent-wire-format encode/decode against bare fastavro.

Both sides handle the very same frames in the same run, so the ratio shows what the wire
format, schema lookup and error handling cost on top of Avro itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from pipeline.serde import AvroSerde, SchemaCatalog

SIGNALS = ("flow", "pressure", "temperature", "current", "vibration", "speed", "power", "level")


@dataclass(frozen=True)
class SerdeBench:
    frames: int
    readings_per_frame: int
    frame_bytes: int
    encode_frames_per_s: float
    decode_frames_per_s: float
    fastavro_encode_frames_per_s: float
    fastavro_decode_frames_per_s: float

    def as_dict(self) -> dict[str, Any]:
        r = self.readings_per_frame
        return {
            "frames": self.frames,
            "readings_per_frame": r,
            "frame_bytes": self.frame_bytes,
            "encode_frames_per_s": round(self.encode_frames_per_s),
            "encode_readings_per_s": round(self.encode_frames_per_s * r),
            "decode_frames_per_s": round(self.decode_frames_per_s),
            "decode_readings_per_s": round(self.decode_frames_per_s * r),
            "fastavro_encode_frames_per_s": round(self.fastavro_encode_frames_per_s),
            "fastavro_decode_frames_per_s": round(self.fastavro_decode_frames_per_s),
            "encode_ratio": round(self.encode_frames_per_s / self.fastavro_encode_frames_per_s, 3),
            "decode_ratio": round(self.decode_frames_per_s / self.fastavro_decode_frames_per_s, 3),
        }


def workload(frames: int, readings_per_frame: int) -> list[dict[str, Any]]:
    """Frames of `readings_per_frame` readings: signals round-robin, 100 ms apart."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i in range(frames):
        t0 = start + timedelta(seconds=i)
        readings = [
            {
                "signal": SIGNALS[j % len(SIGNALS)],
                "ts": t0 + timedelta(milliseconds=100 * (j // len(SIGNALS))),
                "value": 20.0 + (i * 7 + j) % 50 / 10,
                "quality": "GOOD",
                "status_code": 0,
            }
            for j in range(readings_per_frame)
        ]
        out.append(
            {
                "asset_id": f"asset-{i % 1000:04d}",
                "source_id": "bench",
                "seq": i,
                "ingest_ts": t0 + timedelta(seconds=1),
                "readings": readings,
            }
        )
    return out


def _best_rates(n: int, rounds: int, **runs: Callable[[], object]) -> dict[str, float]:
    """Best rate of each run over `rounds`; the runs alternate within every round, so a
    noisy neighbour slows both sides of a ratio alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: n / seconds for name, seconds in best.items()}


def run_serde_bench(
    frames: int = 2000, readings_per_frame: int = 50, rounds: int = 5
) -> SerdeBench:
    serde = AvroSerde.local()
    schema = SchemaCatalog.load().latest("telemetry_frame").parsed
    records = workload(frames, readings_per_frame)
    encoded = [serde.encode("telemetry_frame", r) for r in records]
    bodies = [e[5:] for e in encoded]

    def fastavro_encode() -> None:
        for r in records:
            out = BytesIO()
            schemaless_writer(out, schema, r)
            out.getvalue()

    def fastavro_decode() -> None:
        for b in bodies:
            schemaless_reader(BytesIO(b), schema, None)

    rates = _best_rates(
        frames,
        rounds,
        fastavro_encode=fastavro_encode,
        encode=lambda: [serde.encode("telemetry_frame", r) for r in records],
        fastavro_decode=fastavro_decode,
        decode=lambda: [serde.decode(e) for e in encoded],
    )
    return SerdeBench(
        frames=frames,
        readings_per_frame=readings_per_frame,
        frame_bytes=len(encoded[0]),
        encode_frames_per_s=rates["encode"],
        decode_frames_per_s=rates["decode"],
        fastavro_encode_frames_per_s=rates["fastavro_encode"],
        fastavro_decode_frames_per_s=rates["fastavro_decode"],
    )
