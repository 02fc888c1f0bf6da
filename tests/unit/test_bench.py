"""`twin bench serde` runs and reports consistent figures (no timing is asserted)."""

from __future__ import annotations

from pipeline.bench.serde import run_serde_bench, workload
from pipeline.serde import AvroSerde


def test_workload_frames_are_valid_telemetry_frames() -> None:
    frames = workload(frames=3, readings_per_frame=17)
    serde = AvroSerde.local()
    for frame in frames:
        assert len(frame["readings"]) == 17
        assert serde.decode(serde.encode("telemetry_frame", frame)).record == frame


def test_bench_reports_rates_and_ratios_from_the_same_run() -> None:
    result = run_serde_bench(frames=20, readings_per_frame=10, rounds=1).as_dict()
    for key in ("encode", "decode", "fastavro_encode", "fastavro_decode"):
        assert result[f"{key}_frames_per_s"] > 0
    # Rates are rounded to whole frames/s before multiplying out, hence the slack.
    assert abs(result["encode_readings_per_s"] - result["encode_frames_per_s"] * 10) <= 10
    expected = result["decode_frames_per_s"] / result["fastavro_decode_frames_per_s"]
    assert abs(result["decode_ratio"] - expected) < 0.01
