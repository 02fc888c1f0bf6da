"""`twin bench`: measure throughput against a baseline measured in the same run."""

from __future__ import annotations

import argparse

from pipeline.bench.serde import run_serde_bench
from pipeline.commands import Subparsers, add_json_option, print_json
from pipeline.errors import ConfigError
from pipeline.settings import Settings


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "bench",
        help="measure throughput (ratios against a baseline in the same run)",
        description="Benchmarks. `serde`: Avro encode/decode of telemetry frames in the "
        "Confluent wire format against bare fastavro on the same frames.",
    )
    parser.add_argument("suite", nargs="?", default="serde", choices=["serde"])
    parser.add_argument("--frames", type=int, default=2000, help="frames per round (2000)")
    parser.add_argument("--readings", type=int, default=50, help="readings per frame (50)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best counts (5)")
    add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if min(args.frames, args.readings, args.rounds) < 1:
        raise ConfigError("--frames, --readings and --rounds must be at least 1")
    result = run_serde_bench(args.frames, args.readings, args.rounds).as_dict()
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
