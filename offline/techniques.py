"""Low-data techniques against plain cross-entropy: same backbone, same budget, three seeds.

    python -m offline techniques --datasets cifar10 caltech101 pacs_photo omniglot brain_mri \\
        --budget 60 --seeds 0 1 2

Each technique is the default config with one field changed (MixUp, CutMix, the cosine loss,
supervised-contrastive or Siamese embedding learning, the transductive GCN at test time). A run
is the submission's own later stages (`HeadStage`, then `FineTuneStage`, with the runtime's
`GraphRefinement` for the GCN), on a fixed low-data subset of the dataset (by default up to
1,000 training and 500 test examples at 32 px, decoded once and cached, all of them training
rows): the linear head on frozen features, then fine-tuning, predicting the test subset (without
flip-TTA) after slices that end at 1/16, 1/8, 1/4, 1/2 and all of the budget. The clock counts
the head fit, the training and the GCN, not the plain test passes (the same for every
technique), so the budget goes to what the techniques change. Scored like the platform: final
top-1 accuracy, final NAUC and the ALC over the budget, mean and standard deviation over seeds
(the seed moves the initialisation of new layers, the batches and the augmentation; the
subset is fixed). Every run is kept as a JSON file, so an interrupted study resumes. What a
technique could not do within the budget (too few steps for an embedding loss) is reported
beside its score.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from autodl_meta.config import GENERALIST, TrainConfig
from autodl_meta.data import RecordReader
from autodl_meta.pool import TestSet, TrainingPool
from autodl_meta.stages import Candidate, FineTuneStage, HeadStage
from autodl_meta.techniques import GraphRefinement
from autodl_meta.trainer import Trainer
from offline.cli import command_parser, emit_table, setup_logging
from offline.cluster import dask_client, run_all, threads_per_task
from offline.evaluate import Evaluation, dataset_paths
from ingestion_local import AutoDLDataset
from ingestion_local.prepare import DEFAULT_OUT as DEFAULT_DATA
from offline.store import REPO_ROOT
from offline.tables import markdown_table, mean_std
from scoring_local.metrics import alc, nauc

logger = logging.getLogger(__name__)

BASELINE = "cross_entropy"
# Each technique: the fields it changes in the default config.
TECHNIQUES: dict[str, dict] = {
    BASELINE: {},
    "mixup": {"augmentation": "mixup"},
    "cutmix": {"augmentation": "cutmix"},
    "cosine_loss": {"loss": "cosine"},
    "supcon": {"embedding_loss": "supcon"},
    "siamese_contrastive": {"embedding_loss": "contrastive"},
    "siamese_triplet": {"embedding_loss": "triplet"},
    "transductive_gcn": {"transductive_gnn": True},
}
DEFAULT_DATASETS = ("cifar10", "caltech101", "pacs_photo", "omniglot", "brain_mri")
DEFAULT_OUT = REPO_ROOT / "reports" / "techniques.md"
DEFAULT_RESULTS = REPO_ROOT / "results" / "techniques"
CHECKPOINTS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


@dataclass
class TechniqueRun(Evaluation):
    """One technique on one dataset with one seed: an evaluation, with the technique's name and
    the training steps it took."""

    technique: str = ""
    steps: int = 0


def technique_configs(names: Sequence[str], base: TrainConfig = GENERALIST,
                      alpha: float | None = None) -> dict[str, TrainConfig]:
    """The config of each technique in `names`: `base` with the technique's fields set."""
    unknown = [name for name in names if name not in TECHNIQUES]
    if unknown:
        raise KeyError(f"unknown technique(s) {unknown}; known: {', '.join(TECHNIQUES)}")
    # Plain test passes: flip-TTA would cost every technique the same and change none.
    extra: dict[str, Any] = {"flip_tta": False}
    if alpha is not None:
        extra["augmentation_alpha"] = alpha
    return {name: TrainConfig.from_dict({**base.to_dict(), **extra, **TECHNIQUES[name]})
            for name in names}


def decode_subsets(dataset_dir: Path, resolution: int, max_train: int, max_test: int,
                   cache_dir: Path) -> Path:
    """Decode a dataset at `resolution` (one frame per clip) and keep fixed random subsets of
    its train and test sets in a torch file under `cache_dir`; decoded once, then reused."""
    name, data, solution_path = dataset_paths(dataset_dir)
    path = cache_dir / f"{name}-{resolution}px-{max_train}-{max_test}.pt"
    if path.is_file():
        return path
    subsets = {}
    rng = np.random.default_rng(0)
    for split, limit in (("train", max_train), ("test", max_test)):
        decoded = RecordReader(AutoDLDataset(data / split).get_dataset(), resolution,
                               frames=1).decode()
        labels = (torch.from_numpy(decoded.labels) if split == "train" else
                  torch.from_numpy(np.loadtxt(solution_path, ndmin=2)[decoded.positions]).float())
        keep = torch.from_numpy(np.sort(rng.permutation(len(decoded.positions))[:limit]))
        subsets[split] = (torch.from_numpy(decoded.images)[keep].clone(), labels[keep].clone())
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(subsets, path)
    return path


def run_technique(config: dict[str, Any], data_path: str, dataset: str, technique: str,
                  budget: float, seed: int, threads: int | None = None) -> dict[str, Any]:
    """Train `config` on a cached subset for `budget` seconds of its own clock (see the
    module docstring) and score its predictions; a plain dict for a Dask worker."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    began = time.monotonic()
    subsets = torch.load(data_path, weights_only=True)
    (train_images, train_labels), (test_images, test_labels) = subsets["train"], subsets["test"]
    solution = test_labels.numpy()
    config = TrainConfig.from_dict(config)
    pool, test_set = TrainingPool.of_examples(train_images, train_labels), TestSet(test_images)
    trainer = Trainer(config, train_labels.shape[1], train_images.shape[2],
                      multilabel=bool((train_labels.sum(1) > 1).any()),
                      device=torch.device("cpu"), seed=seed)
    refinement = None
    if config.transductive_gnn:
        refinement = GraphRefinement(trainer.features, trainer.multilabel, seed)
        refinement.use_nodes(pool.images, pool.labels, pool.fit_rows())
    head = HeadStage(trainer, seed, refinement)
    fine_tune = FineTuneStage(trainer, refinement)
    clock, timestamps, scores, accuracies, notes = 0.0, [], [], [], []

    def record(candidate: Candidate) -> None:
        nonlocal clock
        prediction = candidate.test(test_set)
        if refinement is not None:
            clock += refinement.last_seconds
        timestamps.append(round(clock, 3))
        scores.append(nauc(solution, prediction))
        accuracies.append(float((prediction.argmax(1) == solution.argmax(1)).mean()))

    started = time.monotonic()
    candidate = head.fit(pool, seconds=budget)
    clock += time.monotonic() - started
    record(candidate)
    for fraction in CHECKPOINTS:
        if clock >= fraction * budget:
            continue
        trained = trainer.train_seconds
        fine_tune.train(pool, fraction * budget - clock)
        clock += trainer.train_seconds - trained
        if refinement is not None:
            refinement.network_moved()
        if not notes and (note := trainer.embedding_pace_note(budget - clock)):
            notes.append(note)
        record(fine_tune.candidate(pool))
    return asdict(TechniqueRun(
        dataset=dataset, technique=technique, seed=seed, budget=budget,
        alc=alc(timestamps, scores, budget), final_nauc=scores[-1],
        final_accuracy=accuracies[-1], timestamps=timestamps,
        scores=[round(score, 6) for score in scores], steps=trainer.steps,
        wall_seconds=time.monotonic() - began, notes=notes))


def markdown_tables(results: dict[tuple[str, str], list[TechniqueRun]],
                    datasets: Sequence[str], names: Sequence[str], budget: float) -> str:
    """One table per dataset (top-1 accuracy, NAUC, ALC: mean ± std over seeds; ALC gain over
    the baseline; notes), then the mean gain of each technique over the datasets."""
    sections = []
    gains: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for dataset in datasets:
        baseline = results.get((dataset, BASELINE), [])
        rows = []
        for name in names:
            runs = results.get((dataset, name), [])
            if not runs:
                rows.append([name, "-", "-", "-", "-", "-", 0, "not run"])
                continue
            gain = (np.mean([r.alc for r in runs]) - np.mean([r.alc for r in baseline])
                    if baseline else np.nan)
            accuracy_gain = (np.mean([r.final_accuracy for r in runs]) -
                             np.mean([r.final_accuracy for r in baseline])
                             if baseline else np.nan)
            gains[name].append((gain, accuracy_gain))
            notes = sorted({note.split(":")[0] + ": too few steps for the budget"
                            for run in runs for note in run.notes})
            rows.append([name, mean_std([r.final_accuracy for r in runs]),
                         mean_std([r.final_nauc for r in runs]), mean_std([r.alc for r in runs]),
                         f"{gain:+.3f}", f"{np.mean([r.steps for r in runs]):.0f}", len(runs),
                         "; ".join(notes)])
        sections.append(f"### {dataset}\n\n" + markdown_table(
            ["technique", "final accuracy", "final NAUC", f"ALC at {budget:.0f} s",
             "ALC - baseline", "steps", "seeds", "notes"], rows))
    summary = []
    for name in names:
        pairs = [pair for pair in gains[name] if np.isfinite(pair[0])]
        if pairs:
            alc_gain, accuracy_gain = np.mean(pairs, axis=0)
            summary.append([name, f"{100 * accuracy_gain:+.1f}", f"{alc_gain:+.3f}", len(pairs)])
    sections.append("### Mean over the datasets\n\n" + markdown_table(
        ["technique", "accuracy - baseline (points)", "ALC - baseline", "datasets"], summary))
    return "\n\n".join(sections)


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline techniques", __doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS),
                        help="prepared dataset names under --data-dir")
    parser.add_argument("--techniques", nargs="+", default=list(TECHNIQUES),
                        choices=list(TECHNIQUES),
                        help="techniques to run (the baseline is always added)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of each run's clock (the ALC's T)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--resolution", type=int, default=32, help="image side, pixels")
    parser.add_argument("--max-train", type=int, default=1000,
                        help="training examples kept per dataset (the low-data regime)")
    parser.add_argument("--max-test", type=int, default=500, help="test examples kept")
    parser.add_argument("--alpha", type=float, default=None,
                        help="MixUp/CutMix Beta(alpha, alpha) (default: the config's)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                        help="folder of prepared AutoDL datasets")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="folder of per-run JSON results (reused to resume) and the cache")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown table to write")
    parser.add_argument("--scheduler", default=None,
                        help="address of an existing Dask scheduler (default: a LocalCluster)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    names = [BASELINE] + [name for name in args.techniques if name != BASELINE]
    configs = technique_configs(names, base=TrainConfig(resolution=args.resolution),
                                alpha=args.alpha)
    folders = {name: args.data_dir / name for name in args.datasets}
    absent = [name for name, f in folders.items() if not (f / f"{name}.solution").is_file()]
    if absent:
        parser.error(f"not prepared in {args.data_dir}: {absent} "
                     f"(python -m ingestion_local.prepare --only ...)")
    scale = f"{args.budget:g}s-{args.resolution}px-{args.max_train}-{args.max_test}"
    run_dir = args.results / scale

    def result_path(dataset: str, name: str, seed: int) -> Path:
        return run_dir / dataset / f"{name}-seed{seed}.json"

    jobs = [(dataset, name, seed) for dataset in args.datasets for name in names
            for seed in args.seeds if not result_path(dataset, name, seed).is_file()]
    logger.info("%d runs to do, %d found in %s", len(jobs),
                len(args.datasets) * len(names) * len(args.seeds) - len(jobs), run_dir)
    if jobs:
        caches = {dataset: decode_subsets(folders[dataset], args.resolution, args.max_train,
                                          args.max_test, args.results / "cache")
                  for dataset in tqdm(sorted({job[0] for job in jobs}), desc="decoding")}
        with dask_client(args.scheduler, args.workers) as client, \
                tqdm(total=len(jobs), desc="technique runs", unit="run") as progress:
            threads = threads_per_task(client)
            calls = [{"config": configs[name].to_dict(), "data_path": str(caches[dataset]),
                      "dataset": dataset, "technique": name, "budget": args.budget,
                      "seed": seed, "threads": threads} for dataset, name, seed in jobs]

            def save(index: int, result: dict) -> None:
                path = result_path(*jobs[index])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(result, indent=1))
                progress.set_postfix(dataset=result["dataset"], technique=result["technique"],
                                     alc=f"{result['alc']:.3f}")
                progress.update()

            run_all(client, run_technique, calls, save)
    results = {(dataset, name): [TechniqueRun(**json.loads(result_path(dataset, name, seed)
                                                           .read_text()))
                                 for seed in args.seeds
                                 if result_path(dataset, name, seed).is_file()]
               for dataset in args.datasets for name in names}
    header = (f"## Low-data techniques: {args.budget:g} s per run, {args.resolution} px, up to "
              f"{args.max_train} training and {args.max_test} test examples, seeds "
              f"{', '.join(map(str, args.seeds))}\n\nEach technique is the default config "
              f"({GENERALIST.backbone}, {GENERALIST.optimizer} lr {GENERALIST.learning_rate}, "
              f"batch {GENERALIST.batch_size}, dropout {GENERALIST.dropout}) with one field "
              f"changed; head on frozen features, then fine-tuning by the runtime's Trainer, "
              f"predictions without flip-TTA after 1/16, 1/8, 1/4, 1/2 and all of the budget. "
              f"Accuracy is top-1 on the test subset; 'steps' are training steps (mean over "
              f"seeds).\n")
    emit_table(header + "\n" + markdown_tables(results, args.datasets, names, args.budget),
               args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
