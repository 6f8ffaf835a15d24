"""Cross-evaluation: every incumbent, and the default generalist, on every known dataset.

    python -m offline crosseval --budget 180

Row "cifar10", column "omniglot" is the ALC of cifar10's incumbent config on omniglot: the
diagonal is the paper's "same-config" line, the rest its "other datasets' configs" lines, and
the matrix is what the selector's report prices a selection with. Results go into the same
SQLite store as BOHB's, so an interrupted run resumes and a repeated run costs nothing.

With `--portfolio results/portfolio.json` the portfolio's configs run instead, on any prepared
datasets and derived tasks (`python -m offline tasks` writes them beside their sources): the
meta-dataset's matrix of every config on every task.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autodl_meta.config import GENERALIST, TrainConfig
from offline.cli import (add_budget_argument, add_run_arguments, add_store_arguments,
                         check_run_arguments, command_parser, emit_table, setup_logging)
from offline.cluster import dask_client, run_all, threads_per_task
from offline.costs import CostTable, CostTableError, check_prices
from offline.evaluate import Evaluation, evaluate_task
from offline.portfolio import load_portfolio
from offline.store import ResultStore, alc_matrix
from offline.tables import markdown_table

logger = logging.getLogger(__name__)

GENERALIST_NAME = "generalist"


def candidate_configs(store: ResultStore) -> dict[str, TrainConfig]:
    """The best incumbent of each dataset, and the default generalist config."""
    configs = {name: incumbent.config for name, incumbent in store.best_incumbents().items()}
    configs[GENERALIST_NAME] = GENERALIST
    return configs


def best_configs(names: Sequence[str], matrix: np.ndarray, datasets: Sequence[str],
                 exclude: str | None = None) -> dict[str, str]:
    """Each dataset's config: the candidate with the best cross-evaluated ALC on it.

    At a small search scale another dataset's incumbent often beats a dataset's own on it (the
    matrix measures every candidate there at the same budget), so the per-dataset configs are
    chosen from the whole portfolio. `exclude` leaves one dataset's config out: a held-out
    dataset's search must not be known when the others' configs are chosen.
    """
    rows = [i for i, name in enumerate(names) if name != exclude]
    scores = np.nan_to_num(matrix, nan=-np.inf)
    return {dataset: names[max(rows, key=lambda i: scores[i, j])]
            for j, dataset in enumerate(datasets)}


def markdown_matrix(names: Sequence[str], datasets: Sequence[str], matrix: np.ndarray) -> str:
    rows = [[name, *("-" if np.isnan(v) else f"{v:.3f}" for v in row),
             f"{np.nanmean(row) if np.isfinite(row).any() else 0.0:.3f}"]
            for name, row in zip(names, matrix)]
    return markdown_table(["config \\ dataset", *datasets, "mean"], rows)


def cross_evaluate(store: ResultStore, client, data_dir: Path, datasets: Sequence[str],
                   configs: dict[str, TrainConfig], budget: float, seeds: Sequence[int],
                   time_mode: str = "wall", cost_table: Path | None = None) -> np.ndarray:
    """Run what the store lacks of `configs` on `datasets`; return their ALC matrix."""
    threads = threads_per_task(client)
    # Dataset by dataset: an interrupted matrix holds whole columns, which a selector can use.
    todo = [(config, dataset, seed) for dataset in datasets for config in configs.values()
            for seed in seeds if store.get(dataset, config, budget, seed, time_mode) is None]
    logger.info("%d configs x %d datasets x %d seeds: %d evaluations to run", len(configs),
                len(datasets), len(seeds), len(todo))
    calls = [{"config": config.to_dict(), "dataset_dir": str(data_dir / dataset),
              "budget": budget, "seed": seed, "time_mode": time_mode,
              "cost_table_path": str(cost_table) if cost_table else None, "threads": threads}
             for config, dataset, seed in todo]
    with tqdm(total=len(calls), desc="crosseval", unit="run") as progress:
        def record(index: int, result: dict) -> None:
            evaluation = Evaluation.from_dict(result)
            if evaluation.error is None:
                store.put(todo[index][0], evaluation)
            else:
                logger.warning("%s failed: %s", evaluation.dataset, evaluation.error)
            progress.set_postfix(dataset=evaluation.dataset, alc=f"{evaluation.alc:.3f}")
            progress.update()

        run_all(client, evaluate_task, calls, record)
    return alc_matrix(store, configs, datasets, budget, seeds, time_mode)


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline crosseval", __doc__)
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="datasets to evaluate on (default: those with an incumbent; "
                             "needed with --portfolio)")
    add_store_arguments(parser)
    add_budget_argument(parser, "time budget T of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    add_run_arguments(parser)
    parser.add_argument("--portfolio", type=Path, default=None,
                        help="run these configs (python -m offline portfolio) instead of the "
                             "incumbents and the generalist")
    parser.add_argument("--out", type=Path, default=None, help="also write the matrix here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_run_arguments(parser, args)
    if args.portfolio and not args.datasets:
        parser.error("--portfolio runs on the tasks that --datasets names (prepared datasets or "
                     "derived tasks under --data-dir)")
    setup_logging()
    configs = load_portfolio(args.portfolio) if args.portfolio else None
    with ResultStore(args.store) as store:
        datasets = args.datasets or sorted(store.best_incumbents())
        if not datasets:
            parser.error(f"{args.store} holds no incumbent: run python -m offline bohb first")
        configs = configs or candidate_configs(store)
        if args.time_mode == "simulated":
            try:
                check_prices(CostTable.load(args.cost_table), configs, str(args.cost_table))
            except CostTableError as err:
                parser.error(str(err))
        with dask_client(args.scheduler, args.workers) as client:
            matrix = cross_evaluate(store, client, args.data_dir, datasets, configs,
                                    args.budget, args.seeds, args.time_mode, args.cost_table)
        table = markdown_matrix(list(configs), datasets, matrix)
    emit_table(table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
