"""`twin bench`: measure throughput against baselines measured in the same run.

`twin bench` (suite `pipeline`, the default) runs the whole pipeline on its own embedded
stack; `twin bench serde` compares the wire-format serde with bare fastavro.
"""

from __future__ import annotations

import argparse
import sys

from confluent_kafka import KafkaException

from pipeline.commands import Subparsers, add_json_option, print_json
from pipeline.errors import ConfigError, TwinError
from pipeline.settings import Settings


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "bench",
        help="measure throughput (ratios against baselines in the same run)",
        description="Benchmarks. `pipeline` (default): its own broker and embedded "
        "ClickHouse; a simulated plant's frames through `twin worker` and `twin sink`, "
        "against the raw consume-and-decode limit and a naive per-reading Faust agent on "
        "the same frames; latency at a fixed load; worker RSS; cost growth from 100 to "
        "10,000 assets. `serde`: Avro encode/decode of telemetry frames in the Confluent "
        "wire format against bare fastavro on the same frames.",
    )
    parser.add_argument("suite", nargs="?", default="pipeline", choices=["pipeline", "serde"])
    pipe = parser.add_argument_group("pipeline suite")
    pipe.add_argument("--assets", type=int, default=1_000, help="assets (1000)")
    pipe.add_argument("--signals", type=int, default=16, help="gauges per asset (16)")
    pipe.add_argument(
        "--readings",
        type=int,
        default=None,
        help="readings produced (2,000,000; serde: 50 per frame)",
    )
    pipe.add_argument("--workers", type=int, choices=[1, 2], default=1, help="workers (1)")
    pipe.add_argument(
        "--scale-out", action="store_true", help="also measure the other worker count (1 and 2)"
    )
    pipe.add_argument("--rate", type=float, default=20_000, help="latency load, readings/s")
    pipe.add_argument("--latency-s", type=float, default=60, help="latency phase seconds (60)")
    pipe.add_argument(
        "--naive-readings", type=int, default=20_000, help="readings for the naive agent (20000)"
    )
    pipe.add_argument(
        "--growth",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the rate at 100 and 10,000 assets (on)",
    )
    pipe.add_argument(
        "--growth-readings", type=int, help="readings per growth run (3 frames per asset)"
    )
    pipe.add_argument("--keep", action="store_true", help="keep the run directory and its logs")
    serde = parser.add_argument_group("serde suite")
    serde.add_argument("--frames", type=int, default=2000, help="frames per round (2000)")
    serde.add_argument("--rounds", type=int, default=5, help="rounds; the best counts (5)")
    add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.suite == "serde":
        return _serde(args)
    from pipeline.bench.report import as_dict, write_text
    from pipeline.bench.run import BenchOptions, run_bench

    readings = 2_000_000 if args.readings is None else args.readings
    positive = {
        "--assets": args.assets,
        "--signals": args.signals,
        "--readings": readings,
        "--rate": args.rate,
        "--naive-readings": args.naive_readings,
    }
    for flag, value in positive.items():
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1")
    if args.latency_s < 0:
        raise ConfigError("--latency-s must not be negative")
    if args.growth_readings is not None and args.growth_readings < 1:
        raise ConfigError("--growth-readings must be at least 1")
    options = BenchOptions(
        assets=args.assets,
        signals=args.signals,
        readings=readings,
        workers=args.workers,
        scale_out=args.scale_out,
        rate=args.rate,
        latency_s=args.latency_s,
        naive_readings=args.naive_readings,
        growth=args.growth,
        growth_readings=args.growth_readings,
        keep=args.keep,
    )
    try:
        report = as_dict(run_bench(settings, options, _progress))
    except KafkaException as exc:
        raise TwinError(f"Kafka failed during the bench: {exc.args[0]}") from exc
    if args.json:
        print_json(report)
    else:
        write_text(report, sys.stdout)
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _serde(args: argparse.Namespace) -> int:
    from pipeline.bench.serde import run_serde_bench

    readings = 50 if args.readings is None else args.readings
    if min(args.frames, readings, args.rounds) < 1:
        raise ConfigError("--frames, --readings and --rounds must be at least 1")
    result = run_serde_bench(args.frames, readings, args.rounds).as_dict()
    if args.json:
        print_json(result)
        return 0
    print(
        f"serde: {result['frames']} telemetry frames x {result['readings_per_frame']} readings "
        f"({result['frame_bytes']} bytes each), best of {args.rounds} rounds"
    )
    for op in ("encode", "decode"):
        print(
            f"  {op}  {result[f'{op}_frames_per_s']:>8,} frames/s  "
            f"{result[f'{op}_readings_per_s']:>10,} readings/s  "
            f"(fastavro alone {result[f'fastavro_{op}_frames_per_s']:,} frames/s, "
            f"ratio {result[f'{op}_ratio']:.2f})"
        )
    return 0
