"""The pipeline bench's result: one JSON object, or the same figures as text."""

from __future__ import annotations

from typing import Any, TextIO

from pipeline.bench.run import BenchResult, machine

FEW_SAMPLES = 100
"""Below this many samples a p99 is the slowest sample or next to it: the report says so."""


def _ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


def _peak_rss(result: BenchResult) -> float | None:
    """The largest worker peak RSS of every run of the bench (10,000 assets when measured)."""
    runs = [result.pipeline, *result.scale_out, *result.growth.values()]
    peaks = [run.rss_mb for run in runs if run is not None and run.rss_mb is not None]
    return max(peaks) if peaks else None


def as_dict(result: BenchResult) -> dict[str, Any]:
    options = result.options
    rate = result.pipeline.readings_per_s if result.pipeline else None
    raw = result.raw.readings_per_s if result.raw else None
    naive = result.naive.readings_per_s if result.naive else None
    latency = result.latency
    small, large = (result.growth.get(n) for n in (100, 10_000))
    by_workers = {str(f.workers): round(f.readings_per_s) for f in result.scale_out}
    if result.pipeline is not None:
        by_workers[str(result.pipeline.workers)] = round(result.pipeline.readings_per_s)
    return {
        "readings_per_s": round(rate) if rate is not None else None,
        "raw_per_s": round(raw) if raw is not None else None,
        "ratio": _ratio(rate, raw),
        "naive_per_s": round(naive) if naive is not None else None,
        "speedup_vs_naive": _ratio(rate, naive, 1),
        "latency_p50_ms": latency.state_p50_ms if latency else None,
        "latency_p99_ms": latency.state_p99_ms if latency else None,
        "latency_kept_up": latency.kept_up if latency else None,
        "alert_latency_p50_ms": latency.alert_p50_ms if latency else None,
        "alert_latency_p99_ms": latency.alert_p99_ms if latency else None,
        "rss_mb": _peak_rss(result),
        "rss_mb_at_10000_assets": large.rss_mb if large else None,
        "cost_growth": _ratio(
            small.readings_per_s if small else None, large.readings_per_s if large else None
        ),
        "readings_per_s_by_workers": dict(sorted(by_workers.items())),
        "workload": result.workload,
        "machine": machine(),
        "options": {
            "assets": options.assets,
            "signals": options.signals,
            "readings": options.readings,
            "workers": options.workers,
            "rate": options.rate,
            "latency_s": options.latency_s,
            "naive_readings": options.naive_readings,
            "growth": options.growth,
        },
        "pipeline": result.pipeline.as_dict() if result.pipeline else None,
        "raw": result.raw.as_dict() if result.raw else None,
        "naive": result.naive.as_dict() if result.naive else None,
        "latency": latency.as_dict() if latency else None,
        "scale_out": [f.as_dict() for f in result.scale_out],
        "growth": {str(n): f.as_dict() for n, f in sorted(result.growth.items())},
        "seconds": round(result.seconds, 1),
    }


def _n(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,.0f}{unit}"


def write_text(report: dict[str, Any], out: TextIO) -> None:
    w, m = report["workload"], report["machine"]
    p = report["pipeline"] or {}
    lines = [
        f"twin bench: {w['assets']:,} assets x {w['signals_per_asset']} signals "
        f"({w['sampling']}), one frame per asset every {w['frame_interval_ms']} ms",
        f"  workload   {w['frames']:,} frames, {w['readings']:,} readings, "
        f"{w['readings_per_frame']} readings/frame, {w['frame_bytes']:,} bytes/frame, "
        f"{len(w['faults'])} faults",
        f"  machine    {m['cpus']} CPUs, {m['cpu_model']}",
        "",
        f"  pipeline   {_n(report['readings_per_s'])} readings/s "
        f"({p.get('workers', '?')} worker(s); {p.get('seconds', 0):.1f} s; "
        f"state out at {p.get('worker_done_s', 0):.1f} s, ClickHouse at "
        f"{p.get('clickhouse_done_s', 0):.1f} s)",
        f"  raw limit  {_n(report['raw_per_s'])} readings/s   ratio {report['ratio']}",
        f"  naive      {_n(report['naive_per_s'])} readings/s   "
        f"speedup {report['speedup_vs_naive']}x",
    ]
    latency = report["latency"]
    if latency:
        lines.append(
            f"  latency    at {latency['offered_readings_per_s']:,.0f} readings/s: state p50 "
            f"{report['latency_p50_ms']} ms, p99 {report['latency_p99_ms']} ms "
            f"({latency['state_samples']:,} records); alerts p50 "
            f"{report['alert_latency_p50_ms']} ms, p99 {report['alert_latency_p99_ms']} ms "
            f"({latency['alert_samples']} alert events; "
            f"{latency['overloaded_machines']} machines overloaded on purpose)"
        )
        lines.append(
            f"             of which before processing (ingest to the worker's batch): p50 "
            f"{latency['pickup_p50_ms']} ms, p99 {latency['pickup_p99_ms']} ms"
        )
        if latency.get("slices"):
            lines.append(
                "             state p50 / p99 by ingest time: "
                + ", ".join(
                    f"{s['start_s']:.0f} s {s['p50_ms']:.0f} / {s['p99_ms']:.0f} ms"
                    for s in latency["slices"]
                )
            )
        if 0 < latency["alert_samples"] < FEW_SAMPLES:
            lines.append(
                f"  note: the alert percentiles rest on {latency['alert_samples']} alert event(s), "
                "so their p99 is about the slowest of them, not a stable figure"
            )
        if not latency["kept_up"]:
            lines.append(
                f"  note: the pipeline fell behind the offered load: {latency['state_samples']:,} "
                f"of {latency['frames_sent']:,} state records came back, so the percentiles "
                "understate the latency"
            )
    lines.append(f"  worker RSS {report['rss_mb']} MB peak over every run")
    if report["growth"]:
        rates = ", ".join(
            f"{int(n):,} assets {g['readings_per_s']:,} readings/s (RSS {g['rss_mb']} MB)"
            for n, g in report["growth"].items()
        )
        lines.append(f"  growth     {rates}; cost_growth {report['cost_growth']}")
    if len(report["readings_per_s_by_workers"]) > 1:
        rates = ", ".join(
            f"{n} worker(s) {r:,}" for n, r in report["readings_per_s_by_workers"].items()
        )
        lines.append(f"  scale-out  {rates} readings/s")
    for note in p.get("notes", []):
        lines.append(f"  note: {note}")
    lines.append(f"  ({report['seconds']} s in all)")
    out.write("\n".join(lines) + "\n")
