"""Arguments and output shared by the offline commands, so each states them once."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from autodl_meta.metadata import METADATA_DIR
from ingestion_local.prepare import DEFAULT_OUT
from ingestion_local.logs import setup_logging  # noqa: F401 - every offline command's
from offline.evaluate import TIME_MODES
from offline.store import DEFAULT_STORE


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help; the docstring's own line breaks kept."""


def command_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The parser of every offline command: the module docstring's first paragraph before the
    options, the rest of it after them."""
    first, _, rest = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(prog=prog, description=first, epilog=rest or None,
                                   formatter_class=_HelpFormatter)


# The cross-evaluation budget when metadata/configs.json cannot say which it was tuned at.
FALLBACK_BUDGET = 30.0


def shipped_budget(metadata_dir: Path = METADATA_DIR) -> float:
    """The time budget the shipped metadata/ was tuned at (its `tuned_budget`): the default of
    the commands that regenerate it, so that running them again needs no --budget."""
    try:
        return float(json.loads((metadata_dir / "configs.json").read_text())["tuned_budget"])
    except (OSError, ValueError, KeyError, TypeError):
        return FALLBACK_BUDGET


def add_budget_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """`--budget`, the cross-evaluation budget, defaulting to the shipped metadata's."""
    parser.add_argument("--budget", type=float, default=shipped_budget(),
                        help=f"{help}, seconds; by default metadata/'s tuned_budget")


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_OUT,
                        help="folder of prepared AutoDL datasets")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE,
                        help="SQLite result store; reused to resume")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """How evaluations are timed and where they run."""
    parser.add_argument("--time", choices=TIME_MODES, default="wall", dest="time_mode",
                        help="ALC time: wall-clock, or simulated from --cost-table")
    parser.add_argument("--cost-table", type=Path, default=None,
                        help="cost table for --time simulated (python -m offline profile)")
    parser.add_argument("--scheduler", default=None,
                        help="address of an existing Dask scheduler (default: a LocalCluster)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")


def check_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.time_mode == "simulated" and args.cost_table is None:
        parser.error("--time simulated needs --cost-table")


def emit_table(table: str, out: Path | None) -> None:
    """Print a markdown table, and write it to `out` when given."""
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
