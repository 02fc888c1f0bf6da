"""The `twin` command: one entry point for everything an operator or engineer runs.

Each command lives in `pipeline/commands/<name>.py` with a `register(subparsers)` function
that adds its parser and sets `handler(args, settings) -> exit code`. Exit codes: 0 success,
2 usage or configuration error (one line per problem), 1 failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.errors import ConfigError, TwinError
from pipeline.settings import load_settings

COMMANDS = (
    "broker",
    "topics",
    "tail",
    "schemas",
    "site",
    "db",
    "sql",
    "demo",
    "bench",
    "evaluate",
    "connect",
    "simulate",
    "sink",
    "run",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twin",
        description="Twinline: a Kafka stream-processing pipeline for industrial digital twins.",
        epilog="Settings come from TWIN_* environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"twin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"pipeline.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(site=getattr(args, "site", None))
        configure_logging(settings.log_level)
        return int(args.handler(args, settings) or 0)
    except ConfigError as exc:
        for line in exc.lines():
            print(f"twin {args.command}: {line}", file=sys.stderr)
        return 2
    except TwinError as exc:
        print(f"twin {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`twin tail ... | head`): not an error, and nothing to print.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


#: Libraries whose INFO lines narrate their internals (sessions, sockets); our own log lines
#: already say what happened to the connection.
CHATTY_LIBRARIES = ("asyncua", "pymodbus", "aiokafka", "urllib3", "clickhouse_connect")


def configure_logging(level_name: str) -> None:
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        raise ConfigError(
            f"TWIN_LOG_LEVEL: unknown level {level_name!r} (DEBUG, INFO, WARNING, ...)"
        )
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


if __name__ == "__main__":
    sys.exit(main())
