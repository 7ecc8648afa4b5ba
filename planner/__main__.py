"""`coinfer-plan`: one entry point; each subcommand lives in the module named in the table."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from planner.datasets import DatasetError
from planner.parallel import EngineUnavailableError
from planner.registry import NoDatasetError, UnsupportedModelError

# subcommand -> module that defines `add_parser(subparsers) -> None`; each parser sets
# `func(args) -> int` as its default. Tables, not branches.
SUBCOMMAND_MODULES = (
    "planner.train_cli",     # train, evaluate, evaluate-grid
    "planner.db_cli",        # db import / export / list
    "planner.search_cli",    # search, frontier
    "planner.profile_cli",   # profile
    "planner.bank_cli",      # bank build
    "planner.export_cli",    # export
    "planner.partitions_cli",  # partitions
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coinfer-plan", description="Plan collaborative inference: train models, evaluate schemes into "
        "the accuracy database, profile, and search for the scheme that meets a requirement.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (DatasetError, NoDatasetError, UnsupportedModelError, EngineUnavailableError) as e:
        # a --dataset that cannot be read, a model that cannot be trained here, --engine ray
        # without Ray: one line, no traceback
        print(f"coinfer-plan: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
