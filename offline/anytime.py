"""Check that runs are anytime: the first T' seconds of a T-second run score as a T'-second run.

    python -m offline anytime --datasets cifar10 omniglot brain_mri --budgets 60 180 --seeds 0 1 2

For each dataset and seed, the submission's Learner runs in process (`offline/evaluate.py`, the
default config) once at each budget. The table sets the ALC at each shorter budget computed from
the prefix of the longest run (`Evaluation.at_budget`) beside the real run at that budget, mean
± std over seeds, and their difference; the offline store relies on that equality to score one
long run at every shorter budget. Runs go one at a time (they are timed on the wall clock) and
are kept as JSON files under --results, so an interrupted check resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autodl_meta.config import GENERALIST
from ingestion_local.prepare import DEFAULT_OUT as DEFAULT_DATA
from offline.cli import command_parser, emit_table, setup_logging
from offline.evaluate import Evaluation, evaluate
from offline.store import REPO_ROOT
from offline.tables import markdown_table, mean_std

logger = logging.getLogger(__name__)

DEFAULT_DATASETS = ("cifar10", "omniglot", "brain_mri")
DEFAULT_RESULTS = REPO_ROOT / "results" / "anytime"
DEFAULT_OUT = REPO_ROOT / "reports" / "anytime.md"


def prefix_table(runs: dict[tuple[str, float, int], Evaluation], datasets: Sequence[str],
                 budgets: Sequence[float], seeds: Sequence[int]) -> tuple[str, list[dict]]:
    """Markdown and JSON rows: each shorter budget's ALC, from the longest run's prefix and
    from real runs."""
    longest = max(budgets)
    rows, records = [], []
    for dataset in datasets:
        for budget in sorted(b for b in budgets if b < longest):
            pairs = [(runs[dataset, longest, seed].at_budget(budget).alc,
                      runs[dataset, budget, seed].alc) for seed in seeds
                     if (dataset, longest, seed) in runs and (dataset, budget, seed) in runs]
            if not pairs:
                continue
            prefix, real = np.array(pairs).T
            rows.append([dataset, f"{budget:g}", mean_std(prefix, digits=4),
                         mean_std(real, digits=4), f"{(prefix - real).mean():+.4f}",
                         len(pairs)])
            records.append({"dataset": dataset, "budget": budget, "from_budget": longest,
                            "prefix_alc": prefix.tolist(), "real_alc": real.tolist()})
    header = ["dataset", "budget (s)", f"ALC from the {longest:g}-s run's prefix",
              "ALC of real runs", "prefix - real", "seeds"]
    return markdown_table(header, rows), records


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline anytime", __doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS),
                        help="prepared dataset names under --data-dir")
    parser.add_argument("--budgets", type=float, nargs="+", default=[60.0, 180.0],
                        help="time budgets, seconds; the largest is the one whose prefix is "
                             "scored at the others")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                        help="folder of prepared AutoDL datasets")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="folder of per-run JSON results (reused to resume)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown table to write")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the rows as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if len(args.budgets) < 2:
        parser.error("--budgets needs a shorter budget and a longer one")
    absent = [name for name in args.datasets if not (args.data_dir / name).is_dir()]
    if absent:
        parser.error(f"not prepared in {args.data_dir}: {absent} "
                     f"(python -m ingestion_local.prepare --only ...)")

    def result_path(dataset: str, budget: float, seed: int) -> Path:
        return args.results / dataset / f"{budget:g}s-seed{seed}.json"

    jobs = [(dataset, budget, seed) for dataset in args.datasets for seed in args.seeds
            for budget in args.budgets]
    todo = [job for job in jobs if not result_path(*job).is_file()]
    logger.info("%d runs to do, %d found in %s", len(todo), len(jobs) - len(todo), args.results)
    for dataset, budget, seed in tqdm(todo, desc="anytime runs", unit="run"):
        evaluation = evaluate(GENERALIST, args.data_dir / dataset, budget, seed)
        path = result_path(dataset, budget, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(evaluation.to_dict(), indent=1))
    runs = {job: Evaluation.from_dict(json.loads(result_path(*job).read_text()))
            for job in jobs if result_path(*job).is_file()}
    table, records = prefix_table(runs, args.datasets, args.budgets, args.seeds)
    emit_table(f"## Anytime runs: ALC at a budget from a longer run's prefix\n\n{table}",
               args.out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
