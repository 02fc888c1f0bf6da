"""The `twin` subcommands: thin argument parsing over the library, one module each."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction


def add_site_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--site", metavar="FILE", help="site description (default: $TWIN_SITE or the demo plant)"
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, default=str, sort_keys=False)
    sys.stdout.write("\n")
    sys.stdout.flush()
