"""BOHB per (known dataset, backbone): SMAC3's MultiFidelityFacade, Hyperband, eta = 3, on Dask.

    python -m offline bohb --datasets cifar10 omniglot --backbones efficientnet-lite0 \\
        --trials 24 --min-budget 20 --max-budget 180

The objective is the submission's ALC at a time budget (offline.evaluate), the fidelity is that
budget in seconds. SMAC proposes trials through its ask/tell interface; each wave of trials (one
per Dask worker) runs on the cluster and is told back in proposal order, so a run is
reproducible from its seed. Every result goes into the SQLite store, and SMAC's own state (its
run history and the Hyperband brackets) is saved after every wave in a folder beside the store:
started again with the same arguments, the command reloads that state and goes on where it
stopped; a trial that had finished but was not yet told to SMAC is found in the store instead
of being run twice. The best config at the highest budget reached is kept as the dataset's
incumbent.

Workers: a LocalCluster on 127.0.0.1 by default (`--workers N`), or an existing cluster with
`--scheduler tcp://HOST:8786` (see the README for `dask scheduler` / `dask worker` and
dask-jobqueue).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

from ConfigSpace import (Categorical, Configuration, ConfigurationSpace, Float,
                         ForbiddenAndConjunction, ForbiddenInClause)
from smac import MultiFidelityFacade, Scenario
from smac.runhistory.dataclasses import TrialInfo, TrialValue
from tqdm import tqdm

from autodl_meta.backbones import available_backbones
from autodl_meta.config import (AUGMENTATIONS, BATCH_SIZES, EMBEDDING_LOSSES, LOSSES, OPTIMIZERS,
                                TrainConfig)
from offline.cli import (add_run_arguments, add_store_arguments, check_run_arguments,
                         command_parser, setup_logging, shipped_budget)
from offline.cluster import dask_client, run_all, threads_per_task
from offline.evaluate import Evaluation, evaluate_task
from offline.store import Incumbent, ResultStore

logger = logging.getLogger(__name__)

RESOLUTIONS = (32, 64, 96, 128)
ETA = 3
MAX_TRIALS = 100_000


def configspace(resolutions: Sequence[int] = RESOLUTIONS, seed: int = 0,
                techniques: bool = False) -> ConfigurationSpace:
    """The paper's space (optimizer, batch size, learning rate, dropout) plus the input
    resolution cap and the augmentation; with `techniques`, also the loss, the embedding loss
    and the transductive GCN (autodl_meta/techniques.py)."""
    space = ConfigurationSpace(seed=seed)
    space.add([
        Categorical("optimizer", list(OPTIMIZERS)),
        Categorical("batch_size", list(BATCH_SIZES), ordered=True),
        Float("learning_rate", (1e-5, 0.5), log=True),
        Float("dropout", (0.01, 0.99)),
        Categorical("resolution", list(resolutions), ordered=True),
        Categorical("augmentation", list(AUGMENTATIONS)),
    ])
    if techniques:
        embedding = Categorical("embedding_loss", list(EMBEDDING_LOSSES))
        space.add([Categorical("loss", list(LOSSES)), embedding,
                   Categorical("transductive_gnn", [False, True])])
        # TrainConfig refuses an embedding loss with MixUp/CutMix (they blend the classes).
        space.add(ForbiddenAndConjunction(
            ForbiddenInClause(embedding, [e for e in EMBEDDING_LOSSES if e != "none"]),
            ForbiddenInClause(space["augmentation"],
                              [a for a in AUGMENTATIONS if a != "none"])))
    return space


def to_train_config(configuration: Configuration | dict, backbone: str) -> TrainConfig:
    values = {key: value.item() if hasattr(value, "item") else value
              for key, value in dict(configuration).items()}
    return TrainConfig.from_dict({**values, "backbone": backbone})


class BOHBStudy:
    """One BOHB run: a dataset, a backbone, the search and its store."""

    def __init__(self, dataset_dir: Path, backbone: str, store: ResultStore, trials: int,
                 min_budget: float, max_budget: float, seed: int = 0, time_mode: str = "wall",
                 cost_table: Path | None = None,
                 resolutions: Sequence[int] = RESOLUTIONS, techniques: bool = False) -> None:
        self.dataset_dir = dataset_dir
        self.dataset = dataset_dir.name
        self.backbone = backbone
        self.store = store
        self.trials = trials
        self.seed = seed
        self.time_mode = time_mode
        self.cost_table = cost_table
        # Each dataset gets its own search seed: with one seed every dataset would start from
        # the same initial design, and a short search would hand them all the same incumbent.
        search_seed = (seed * 1_000_003 + zlib.crc32(self.dataset.encode())) % 2**31
        # SMAC asks on stdin when a folder holds a different scenario: one folder per scenario.
        # The trial count is ours to enforce (ask/tell ignores it), so a larger --trials
        # continues the same search.
        scenario_id = hashlib.sha1(json.dumps(
            [min_budget, max_budget, search_seed, time_mode, list(resolutions)]
            + (["techniques"] if techniques else [])).encode()
        ).hexdigest()[:10]
        scenario = Scenario(configspace(resolutions, search_seed, techniques), deterministic=True,
                            n_trials=MAX_TRIALS, min_budget=min_budget, max_budget=max_budget,
                            seed=search_seed, output_directory=store.path.parent / "smac",
                            name=f"{self.dataset}-{backbone}-{scenario_id}")
        intensifier = MultiFidelityFacade.get_intensifier(scenario, eta=ETA)
        # The target function is never called by SMAC: trials run through ask/tell below.
        self.smac = MultiFidelityFacade(scenario, lambda config, seed, budget: 0.0,
                                        intensifier=intensifier, overwrite=False,
                                        logging_level=logging.WARNING)

    def call(self, info: TrialInfo, threads: int) -> dict:
        return {"config": to_train_config(info.config, self.backbone).to_dict(),
                "dataset_dir": str(self.dataset_dir), "budget": float(info.budget),
                "seed": self.seed, "time_mode": self.time_mode,
                "cost_table_path": str(self.cost_table) if self.cost_table else None,
                "threads": threads}

    def run(self, client, progress: tqdm | None = None) -> Incumbent:
        workers = max(1, len(client.scheduler_info()["workers"]))
        threads = threads_per_task(client)
        done = self.smac.runhistory.finished
        if progress is not None and done:
            progress.update(done)
        while done < self.trials:
            wave = [self.smac.ask() for _ in range(min(workers, self.trials - done))]
            evaluations: list[Evaluation | None] = []
            missing = []
            for info in wave:
                config = to_train_config(info.config, self.backbone)
                cached = self.store.get(self.dataset, config, info.budget, self.seed,
                                        self.time_mode)
                evaluations.append(cached)
                if cached is None:
                    missing.append(len(evaluations) - 1)

            def record(index: int, result: dict) -> None:
                evaluation = Evaluation.from_dict(result)
                evaluations[missing[index]] = evaluation
                if evaluation.error is None:
                    self.store.put(to_train_config(wave[missing[index]].config, self.backbone),
                                   evaluation)
                else:
                    logger.warning("trial failed on %s: %s", self.dataset, evaluation.error)

            run_all(client, evaluate_task, [self.call(wave[i], threads) for i in missing],
                    record)
            for info, evaluation in zip(wave, evaluations):
                self.smac.tell(info, TrialValue(cost=1.0 - evaluation.alc))
                if progress is not None:
                    progress.set_postfix(dataset=self.dataset, budget=f"{info.budget:.0f}",
                                         alc=f"{evaluation.alc:.3f}")
                    progress.update()
            done += len(wave)
        return self._incumbent()

    def _incumbent(self) -> Incumbent:
        """The best ALC among the trials at the highest budget any trial reached."""
        history = self.smac.runhistory
        trials = [(key, value) for key, value in history.items() if key.budget is not None]
        top = max(key.budget for key, _ in trials)
        key, value = min(((k, v) for k, v in trials if k.budget == top),
                         key=lambda pair: pair[1].cost)
        config = to_train_config(history.get_config(key.config_id), self.backbone)
        incumbent = Incumbent(self.dataset, self.backbone, config, 1.0 - value.cost, top,
                              len(trials))
        self.store.set_incumbent(incumbent)
        return incumbent


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline bohb", __doc__)
    parser.add_argument("--datasets", nargs="+", required=True,
                        help="prepared dataset names under --data-dir")
    parser.add_argument("--backbones", nargs="+", default=None,
                        help="backbones to search (default: every one with weights)")
    add_store_arguments(parser)
    parser.add_argument("--trials", type=int, default=13, help="trials per (dataset, backbone)")
    parser.add_argument("--min-budget", type=float, default=shipped_budget() / 3,
                        help="smallest time budget of a trial, seconds; by default a third "
                             "of metadata/'s tuned_budget")
    parser.add_argument("--max-budget", type=float, default=shipped_budget(),
                        help="largest time budget of a trial, seconds (the ALC's T); by "
                             "default metadata/'s tuned_budget")
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    parser.add_argument("--search-techniques", action="store_true",
                        help="also search the loss (cross-entropy/cosine), the embedding loss "
                             "(supcon/contrastive/triplet) and the transductive GCN")
    parser.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_run_arguments(parser, args)
    setup_logging()
    backbones = args.backbones or available_backbones()
    missing = [b for b in backbones if b not in available_backbones()]
    if missing:
        parser.error(f"no weights for {missing} in pretrained/ (make pretrained)")
    folders = [args.data_dir / name for name in args.datasets]
    absent = [f.name for f in folders if not (f / f"{f.name}.solution").is_file()]
    if absent:
        parser.error(f"not prepared in {args.data_dir}: {absent} "
                     f"(python -m ingestion_local.prepare --only ...)")
    with ResultStore(args.store) as store, dask_client(args.scheduler, args.workers) as client:
        total = len(folders) * len(backbones) * args.trials
        with tqdm(total=total, desc="bohb trials", unit="trial") as progress:
            for folder in folders:
                for backbone in backbones:
                    study = BOHBStudy(folder, backbone, store, args.trials, args.min_budget,
                                      args.max_budget, args.seed, args.time_mode,
                                      args.cost_table, args.resolutions,
                                      args.search_techniques)
                    incumbent = study.run(client, progress)
                    tqdm.write(f"{incumbent.dataset} {backbone}: ALC {incumbent.alc:.4f} at "
                               f"{incumbent.budget:.0f} s with {incumbent.config.to_dict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
