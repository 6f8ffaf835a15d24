"""REPTILE and MetaNAS on Omniglot 20-way 1-shot and 5-shot tasks (MetaNAS paper, Table 1), and
REPTILE-initialised heads over frozen EfficientNet-Lite0 features.

    python -m offline fewshot table [--scale tiny|small|paper] [--seeds 0 1 2]
    python -m offline fewshot heads [--tests pacs_photo caltech101 cifar10] [--seeds 0 1 2]

`table` meta-trains each (method, size, seed) once on 20-way tasks of the meta-train characters
(162 of Omniglot's 242, rotations as extra classes) and evaluates the same meta-model on new
20-way 1-shot and 5-shot tasks of the other 80 characters, as REPTILE's own Omniglot protocol
does (one meta-training, evaluation shots varied). MetaNAS is scored with its pruned task networks
(the paper's number) and, for comparison, unpruned. `heads` compares plain and REPTILE-initialised
linear/MLP heads at 0, 1, 2, ... inner steps on 5-way 5-shot tasks of each test dataset,
meta-training on the other datasets' classes.

Each finished (experiment, method, size, setting, seed) is a JSON file in results/fewshot/ and is
never recomputed; the settings' hash is part of its name, so another scale runs anew. The table
goes to stdout and to reports/fewshot.md (heads: reports/fewshot_head.md).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ingestion_local.prepare import DEFAULT_SHARED
from offline.cli import command_parser, emit_table, setup_logging
from offline.fewshot import convnet, metanas
from offline.fewshot.head import HeadSetting, compare_heads
from offline.fewshot.reptile import (MetaSchedule, TaskLearner, count_parameters, meta_test,
                                     meta_train)
from offline.fewshot.tasks import REPO_ROOT, TaskSampler, cached_archive, split_classes
from offline.tables import mean_std

logger = logging.getLogger(__name__)

DATASETS = DEFAULT_SHARED / "datasets"  # AUTODL_SHARED_DIR moves it
RESULTS = REPO_ROOT / "results" / "fewshot"
REPORTS = REPO_ROOT / "reports"
IMAGE_SIZE = 28
N_WAY = 20
SHOTS = (1, 5)
META_TEST_CHARACTERS = 80
SIZES = {"30k": 30_000, "100k": 100_000}
METHODS = ("reptile", "metanas")


SETUP = """Setup: the 242 Omniglot characters of the archive (8 alphabets, 20 drawings each, 28 px)
are split once (seed 0, over characters) into 162 meta-train and 80 meta-test characters;
meta-training also uses each character rotated by 90/180/270 degrees as a new class
(rotations: {rotations}). Each (method, size, seed) is meta-trained once and evaluated on both
settings (REPTILE's Omniglot protocol). BatchNorm is transductive (batch statistics, the query set
classified as one batch). Inner loop: Adam (lr {lr}, beta1 = 0), fresh per task; outer: REPTILE
with epsilon annealed linearly from 1 to 0. MetaNAS: architecture lr {arch_lr}, softmax
temperature annealed linearly from {temperature_start} to {temperature_end} over each task's inner
steps (Eq. 5 on operations, Eq. 7 on input pairs), pruning threshold {prune_threshold} (surviving
weights kept as they are, no retraining); stem conv stride 2 (cells at 14, 7, 7, 4 px: a CPU
saving), sep/dil convs are one depthwise-pointwise pair, BatchNorm without affine parameters. The
width (filters, constant over the cells) is matched on the pruned size, as in the paper: the size
of a network with 2 inputs per node and one operation per edge, times {metanas_kept_ratio} (how
much more the tasks of an earlier run kept than that: its pruned median over the expected size),
is nearest the target; the pruned median in the table is what the tasks actually kept."""


@dataclass(frozen=True)
class Scale:
    """The compute budget of one (method, size, seed) run."""
    iterations: int
    meta_batch: int
    train_shots: int
    inner_steps: int
    inner_batch: int
    eval_steps: int
    eval_tasks: int
    query_per_class: int
    sizes: dict[str, tuple[str, ...]]
    lr: float = 3e-3
    arch_lr: float = 0.1
    temperature_start: float = 1.0
    temperature_end: float = 0.1
    prune_threshold: float = 0.01
    rotations: bool = True
    # Pruned size the tasks keep / the size the width formula expects (2 inputs per node, one
    # op per edge): measured by a first run, it lets the next match the width on pruned size.
    metanas_kept_ratio: float = 1.0

    def key(self, method: str) -> str:
        """A short hash of what decides a run's result besides the network's width (the sizes
        list and the kept ratio only choose the width, which a file name carries)."""
        settings = {k: v for k, v in asdict(self).items()
                    if k not in ("sizes", "metanas_kept_ratio")}
        if method == "reptile":
            for name in ("arch_lr", "temperature_start", "temperature_end", "prune_threshold"):
                settings.pop(name)
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


SCALES = {
    "tiny": Scale(iterations=2, meta_batch=1, train_shots=1, inner_steps=2, inner_batch=20,
                  eval_steps=2, eval_tasks=2, query_per_class=1,
                  sizes={"reptile": ("30k",), "metanas": ("30k",)}),
    # metanas_kept_ratio 3.17: at width 18 (expected 31,933) the tasks kept a median of 101,378.
    # 5 tasks per meta-iteration as in the paper: with 1 the conv net degraded over longer runs;
    # 200 x 5 beat 500 x 2 at the same 1,000 tasks, and 1000 x 2 at twice as many
    # (reports/fewshot_meta_batch.md).
    "small": Scale(iterations=200, meta_batch=5, train_shots=5, inner_steps=5, inner_batch=20,
                   eval_steps=10, eval_tasks=20, query_per_class=5,
                   sizes={"reptile": ("30k", "100k"), "metanas": ("30k", "100k")},
                   metanas_kept_ratio=3.17),
    "paper": Scale(iterations=30_000, meta_batch=5, train_shots=10, inner_steps=10,
                   inner_batch=20, eval_steps=50, eval_tasks=1000, query_per_class=1, lr=1e-3,
                   sizes={"reptile": ("30k", "100k"), "metanas": ("30k", "100k")}),
}


def width(method: str, size: str, scale: Scale) -> int:
    """Filters per layer (conv net) or per cell (MetaNAS) at the parameter target."""
    if method == "reptile":
        return convnet.channels_for_budget(SIZES[size], 1, N_WAY, IMAGE_SIZE)
    return metanas.channels_for_budget(SIZES[size], 1, N_WAY, scale.metanas_kept_ratio)


def build(method: str, size: str, scale: Scale) -> tuple[torch.nn.Module, TaskLearner]:
    """The network at the parameter target and its task learner."""
    channels = width(method, size, scale)
    if method == "reptile":
        network = convnet.conv_net(channels, 1, N_WAY, IMAGE_SIZE)
        return network, TaskLearner(scale.inner_steps, scale.inner_batch, scale.lr)
    network = metanas.MetaNASNetwork(channels, 1, N_WAY)
    return network, metanas.MetaNASTaskLearner(
        scale.inner_steps, scale.inner_batch, scale.lr, scale.arch_lr, scale.temperature_start,
        scale.temperature_end)


def run_one(method: str, size: str, seed: int, scale: Scale, out: Path) -> dict:
    """Meta-train one model and evaluate it on 20-way 1-shot and 5-shot meta-test tasks."""
    torch.manual_seed(seed)
    images, labels, class_names = cached_archive(DATASETS / "omniglot.tar", IMAGE_SIZE)
    train_classes, test_classes = split_classes(len(class_names), META_TEST_CHARACTERS)
    network, learner = build(method, size, scale)
    logger.info("%s %s seed %d: %d parameters", method, size, seed, count_parameters(network))
    sampler = TaskSampler(images, labels, train_classes, seed, rotations=scale.rotations)
    started = time.perf_counter()
    meta_train(network, learner, sampler, MetaSchedule(scale.iterations, scale.meta_batch),
               N_WAY, scale.train_shots, seed, desc=f"{method} {size} seed {seed}")
    train_seconds = time.perf_counter() - started
    # Meta-test with the evaluation inner steps (temperature annealed over them for MetaNAS).
    evaluator = copy.copy(learner)
    evaluator.steps = scale.eval_steps
    score = (metanas.pruned_and_unpruned_score(scale.prune_threshold)
             if method == "metanas" else None)
    evaluations = {}
    for shots in SHOTS:
        started = time.perf_counter()
        tasks = meta_test(network, evaluator, TaskSampler(images, labels, test_classes, seed + 1),
                          scale.eval_tasks, N_WAY, shots, scale.query_per_class, seed,
                          score=score, desc=f"meta-test {shots}-shot")
        evaluations[f"{shots}shot"] = {"seconds": time.perf_counter() - started, "tasks": tasks}
    result = {"method": method, "size": size, "seed": seed, "scale": asdict(scale),
              "channels": width(method, size, scale),
              "parameters": count_parameters(network), "meta_train_seconds": train_seconds,
              "evaluations": evaluations}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def run_table(scale: Scale, scale_name: str, seeds: Sequence[int], methods: Sequence[str],
              results: Path) -> list[dict]:
    """Every (method, size, seed) of the scale, loading the finished ones."""
    runs = [(method, size, seed) for method in methods for size in scale.sizes[method]
            for seed in seeds]
    found = []
    with logging_redirect_tqdm():
        for method, size, seed in tqdm(runs, desc=f"fewshot {scale_name}", unit="run"):
            out = results / result_name(method, size, seed, scale)
            if out.is_file():
                logger.info("%s exists, not recomputed", out.name)
                found.append(json.loads(out.read_text()))
            else:
                found.append(run_one(method, size, seed, scale, out))
    return found


def result_name(method: str, size: str, seed: int, scale: Scale) -> str:
    # MetaNAS's width depends on the kept ratio, which the key leaves out: the name says it.
    channels = f"-c{width(method, size, scale)}" if method == "metanas" else ""
    return f"table-{method}-{size}{channels}-{scale.key(method)}-seed{seed}.json"


def _percent(values: Sequence[float]) -> str:
    return mean_std(values, scale=100, digits=1)


def table_markdown(runs: list[dict], scale_name: str, settings: Scale) -> str:
    """Table 1's layout, the budget of `settings`, and MetaNAS's architecture frequencies."""
    scale = asdict(settings)
    lines = [f"# Few-shot: REPTILE and MetaNAS on Omniglot (scale `{scale_name}`)", "",
             f"Budget per run: {scale['iterations']} meta-iterations x {scale['meta_batch']} "
             f"task(s) of {N_WAY}-way {scale['train_shots']}-shot, {scale['inner_steps']} inner "
             f"Adam steps (batch {scale['inner_batch']}); meta-test: {scale['eval_tasks']} tasks "
             f"per setting, {scale['eval_steps']} inner steps, {scale['query_per_class']} "
             f"queries per class. Accuracy in %, mean ± std over seeds (each seed's accuracy is "
             f"its mean over tasks).", "", SETUP.format(**scale), "",
             "| Parameters | Architecture | Omniglot 1-shot, 20-way | Omniglot 5-shot, 20-way "
             "| parameters (network / pruned median) | seeds | meta-train wall s (mean) "
             "| meta-test wall s (mean) |", "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["size"], run["method"]), []).append(run)
    for (size, method), members in sorted(groups.items(), key=lambda item: (
            SIZES[item[0][0]], METHODS.index(item[0][1]))):
        # With no meta-iterations the rows are the networks fine-tuned from their random init.
        untrained = " (no meta-training)" if scale["iterations"] == 0 else ""
        variants = [("accuracy", ("REPTILE conv net" if method == "reptile" else
                                  "MetaNAS (pruned)") + untrained)]
        if method == "metanas":
            variants.append(("unpruned_accuracy", "MetaNAS (unpruned)" + untrained))
        for field, label in variants:
            cells = [_percent([np.mean([task[field] for task in run["evaluations"][f"{s}shot"][
                "tasks"]]) for run in members]) for s in SHOTS]
            pruned = [task["pruned_parameters"] for run in members for s in SHOTS
                      for task in run["evaluations"][f"{s}shot"]["tasks"]
                      if "pruned_parameters" in task]
            counts = f"{members[0]['parameters']:,}" + (
                f" / {int(np.median(pruned)):,}" if pruned and field == "accuracy" else "")
            test_seconds = np.mean([sum(e["seconds"] for e in run["evaluations"].values())
                                    for run in members])
            train_seconds = np.mean([run["meta_train_seconds"] for run in members])
            lines.append(f"| {size} | {label} | {cells[0]} | {cells[1]} | {counts} | "
                         f"{len(members)} | {train_seconds:.0f} | {test_seconds:.0f} |")
    widths = sorted({(SIZES[run["size"]], run["method"], run["size"]) for run in runs})
    lines += ["", "Widths (filters): " + ", ".join(
        f"{method} {size} {width(method, size, settings)}" for _, method, size in widths) + "."]
    relabelled = {(run["method"], run["size"]): run["relabelled"] for run in runs
                  if "relabelled" in run}
    lines += [f"\n{method} {size}: {why}." for (method, size), why in relabelled.items()]
    for size in sorted({run["size"] for run in runs if run["method"] == "metanas"},
                       key=SIZES.get):
        kept = [task["kept"] for run in runs if run["method"] == "metanas" and run["size"] == size
                for evaluation in run["evaluations"].values() for task in evaluation["tasks"]]
        lines += ["", frequency_markdown(kept, size)]
    return "\n".join(lines)


def frequency_markdown(kept: list[dict], size: str) -> str:
    """% of MetaNAS meta-test tasks whose pruned network keeps each (cell, node, input, op)."""
    counts = metanas.architecture_frequencies(kept)
    input_names = ["c_{k-2}", "c_{k-1}"] + [f"node {n}" for n in range(metanas.NODES)]
    lines = [f"## MetaNAS {size}: operations kept after pruning, % of {len(kept)} meta-test "
             "tasks (all seeds, 1- and 5-shot)", "",
             "| cell | node | input | " + " | ".join(metanas.OPERATIONS) + " |",
             "|---" * (3 + len(metanas.OPERATIONS)) + "|"]
    for cell_type in ("normal", "reduction"):
        for node in range(metanas.NODES):
            for source in range(2 + node):
                cells = [f"{100 * counts[(cell_type, node, source, op)] / len(kept):.0f}"
                         for op in metanas.OPERATIONS]
                lines.append(f"| {cell_type} | {node} | {input_names[source]} | "
                             + " | ".join(cells) + " |")
    pairs: dict[tuple, int] = {}
    for task in kept:
        for cell_type, nodes in task.items():
            for node, node_kept in enumerate(nodes):
                for pair in node_kept["pairs"]:
                    key = (cell_type, node, tuple(pair))
                    pairs[key] = pairs.get(key, 0) + 1
    lines += ["", "Input pairs kept (% of tasks): " + ", ".join(
        f"{cell_type} node {node} {{{', '.join(input_names[i] for i in pair)}}} "
        f"{100 * count / len(kept):.0f}"
        for (cell_type, node, pair), count in sorted(pairs.items()))]
    return "\n".join(lines)


def run_heads(tests: Sequence[str], seeds: Sequence[int], setting: HeadSetting, results: Path
              ) -> list[dict]:
    archives = {path.stem: path for path in sorted(DATASETS.glob("*.tar"))}
    key = hashlib.sha1(json.dumps(asdict(setting), sort_keys=True).encode()).hexdigest()[:8]
    found = []
    with logging_redirect_tqdm():
        for test, seed in tqdm([(t, s) for t in tests for s in seeds], desc="heads", unit="run"):
            out = results / f"heads-{test}-{key}-seed{seed}.json"
            if out.is_file():
                logger.info("%s exists, not recomputed", out.name)
                found.append(json.loads(out.read_text()))
                continue
            started = time.perf_counter()
            result = compare_heads(test, archives, setting, seed)
            result.update(seed=seed, setting=asdict(setting),
                          seconds=time.perf_counter() - started)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1))
            found.append(json.loads(out.read_text()))  # step keys as strings, as when loaded
    return found


def heads_markdown(runs: list[dict]) -> str:
    setting = runs[0]["setting"]
    steps = [str(step) for step in setting["eval_steps"]]
    lines = ["# REPTILE-initialised heads over frozen EfficientNet-Lite0 features", "",
             f"{setting['n_way']}-way {setting['k_shot']}-shot tasks, {setting['query_per_class']}"
             f" queries per class, {setting['eval_tasks']} tasks per seed; heads fine-tuned by "
             f"full-batch Adam (lr {setting['lr']}) for the given inner steps. REPTILE: "
             f"{setting['iterations']} meta-iterations x {setting['meta_batch']} tasks, "
             f"{setting['inner_steps']} inner steps, on the classes of the other datasets. "
             f"Accuracy in %, mean ± std over seeds {sorted({run['seed'] for run in runs})}.",
             "",
             "| test dataset | head | " + " | ".join(f"{s} steps" for s in steps) + " |",
             "|---" * (2 + len(steps)) + "|"]
    for test in dict.fromkeys(run["test"] for run in runs):
        members = [run for run in runs if run["test"] == test]
        for name in members[0]["curves"]:
            cells = [_percent([run["curves"][name][step] for run in members]) for step in steps]
            lines.append(f"| {test} | {name} | " + " | ".join(cells) + " |")
        lr = _percent([run["logistic_regression"] for run in members])
        lines.append(f"| {test} | logistic regression (LBFGS, L2) | {lr} |"
                     + " |" * (len(steps) - 1))
    lines += ["", "linear_plain: zero-initialised linear head; mlp_plain: 1280-256-n MLP with "
              "PyTorch's default init; *_reptile: the same head after REPTILE. Features are "
              "standardised with meta-train statistics. Logistic regression (C = 1) is fitted "
              "to convergence on each support set; its accuracy sits in the first column.",
              "", "Meta-train datasets per test dataset: " + "; ".join(
        f"{run['test']}: {', '.join(run['meta_train'])} ({run['meta_train_classes']} classes)"
        for run in {run["test"]: run for run in runs}.values())]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline fewshot", __doc__)
    parser.add_argument("experiment", nargs="?", choices=("table", "heads"), default="table",
                        help="table: REPTILE/MetaNAS on Omniglot; heads: the head comparison")
    parser.add_argument("--scale", choices=SCALES, default="small",
                        help="budget preset (table); tiny is a smoke test, paper the paper's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=None,
                        help="parameter regimes for every method (default: the scale's)")
    for name in ("iterations", "meta-batch", "inner-steps", "eval-steps", "eval-tasks"):
        parser.add_argument(f"--{name}", type=int, default=None,
                            help="override the scale's value")
    parser.add_argument("--metanas-kept-ratio", type=float, default=None,
                        help="MetaNAS pruned size over the width formula's expectation, as an "
                             "earlier run measured it (the table's pruned median / expected); "
                             "matches the width on pruned size (default: the scale's)")
    parser.add_argument("--tests", nargs="+", default=["pacs_photo", "caltech101", "cifar10"],
                        help="heads: datasets whose classes form the meta-test tasks")
    parser.add_argument("--head-iterations", type=int, default=HeadSetting.iterations,
                        help="heads: REPTILE meta-iterations")
    parser.add_argument("--head-lr", type=float, default=HeadSetting.lr,
                        help="heads: inner Adam learning rate (meta-training and fine-tuning)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON results (resumable)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown report (default reports/fewshot.md or fewshot_head.md)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    if args.experiment == "heads":
        setting = HeadSetting(iterations=args.head_iterations, lr=args.head_lr)
        runs = run_heads(args.tests, args.seeds, setting, args.results)
        emit_table(heads_markdown(runs), args.out or REPORTS / "fewshot_head.md")
        return 0
    overrides = {field.replace("-", "_"): getattr(args, field.replace("-", "_"))
                 for field in ("iterations", "meta-batch", "inner-steps", "eval-steps",
                               "eval-tasks", "metanas-kept-ratio")}
    scale = replace(SCALES[args.scale], **{k: v for k, v in overrides.items() if v is not None})
    if args.sizes:
        scale = replace(scale, sizes={method: tuple(args.sizes) for method in METHODS})
    runs = run_table(scale, args.scale, args.seeds, args.methods, args.results)
    emit_table(table_markdown(runs, args.scale, scale), args.out or REPORTS / "fewshot.md")
    return 0
