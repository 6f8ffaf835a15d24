"""Fingerprint the known datasets, train the paper's four meta-classifiers, and compare them.

    python -m offline selector --budget 180

1. Fingerprints: the runtime's own transform (autodl_meta.fingerprint) on up to
   `--max-samples` training and test examples of every dataset with an incumbent, cached in
   `<store folder>/fingerprints/` (an interrupted run keeps what it computed).
2. Identification accuracy: each kind is trained on the training fingerprints of all known
   datasets and asked about random batches of each dataset's test fingerprints, for meta-test
   batch sizes 1, 2, 4, ..., 1024.
3. Leave-one-dataset-out: each kind is trained without the held-out dataset and asked about
   random batches of it; the selected dataset's config (the candidate with the best
   cross-evaluated ALC on it, the held-out dataset's own incumbent excluded: `best_configs`) is
   priced with the cross-evaluation matrix (its ALC on the held-out dataset), against the
   same-config oracle (the held-out dataset's own incumbent) and the generalist (the single best
   config on the other datasets).
   Below the confidence threshold the runtime takes the generalist: the threshold is chosen here.
4. The kind with the best mean leave-one-out ALC at the runtime's batch size is trained on all
   known datasets and saved with the report (`<store folder>/selector/`), for `offline export`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autodl_meta.fingerprint import FINGERPRINT_BATCH, Fingerprinter, read_fingerprint_batch
from autodl_meta.selector import MetaClassifier
from offline.meta_classifiers import build, save_selector
from ingestion_local import AutoDLDataset
from offline.cli import (add_budget_argument, add_store_arguments, command_parser,
                         setup_logging)
from offline.crosseval import GENERALIST_NAME, best_configs, candidate_configs
from offline.evaluate import dataset_paths
from offline.store import ResultStore, alc_matrix

logger = logging.getLogger(__name__)

KINDS = ("nearest_centroid", "mlp_vote", "moments_mlp", "vae_ttest")
BATCH_SIZES = tuple(2 ** k for k in range(11))   # 1 .. 1024, the paper's range
THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
REPORT_FILE = "selector_report.json"


@dataclass
class Fingerprints:
    train: np.ndarray
    test: np.ndarray


def fingerprint_dataset(dataset_dir: Path, max_samples: int, cache: Path) -> Fingerprints:
    """Fingerprints of the first `max_samples` train and test examples (cached)."""
    name, data, _ = dataset_paths(dataset_dir)
    path = cache / f"{name}-{max_samples}.npz"
    if path.is_file():
        with np.load(path) as arrays:
            return Fingerprints(arrays["train"], arrays["test"])
    subsets = {split: AutoDLDataset(data / split) for split in ("train", "test")}
    fingerprinter = Fingerprinter(subsets["train"].get_metadata().get_num_channels())
    splits = {split: fingerprinter.fingerprints(
                  read_fingerprint_batch(subset.get_dataset(), max_samples))
              for split, subset in subsets.items()}
    cache.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".partial.npz")
    np.savez(temporary, **splits)
    temporary.replace(path)
    return Fingerprints(splits["train"], splits["test"])


def stacked(fingerprints: dict[str, Fingerprints], names: Sequence[str]
            ) -> tuple[np.ndarray, np.ndarray]:
    features = np.concatenate([fingerprints[name].train for name in names])
    ids = np.concatenate([np.full(len(fingerprints[name].train), i)
                          for i, name in enumerate(names)])
    return features, ids


def draw_batches(features: np.ndarray, size: int, count: int, rng: np.random.Generator
                 ) -> list[np.ndarray]:
    """`count` random batches of `size` rows (all rows when fewer)."""
    size = min(size, len(features))
    return [features[rng.choice(len(features), size, replace=False)] for _ in range(count)]


def identification_accuracy(kind: str, fingerprints: dict[str, Fingerprints],
                            batch_sizes: Sequence[int], repeats: int, seed: int
                            ) -> dict[int, float]:
    """Fraction of test batches whose own dataset is selected, per batch size."""
    names = sorted(fingerprints)
    classifier = build(kind).fit(*stacked(fingerprints, names), names, seed=seed)
    rng = np.random.default_rng(seed)
    accuracy = {}
    for size in batch_sizes:
        hits = [classifier.select(batch)[0] == name for name in names
                for batch in draw_batches(fingerprints[name].test, size, repeats, rng)]
        accuracy[size] = float(np.mean(hits))
    return accuracy


@dataclass
class HeldOut:
    """One held-out dataset: what each choice of config scores on it."""

    dataset: str
    oracle: float            # its own incumbent (the same-config line)
    generalist: float        # the single best config on the other datasets
    default: float           # the default generalist config
    # kind -> batch size -> list of (selected dataset, confidence, ALC of its config)
    selections: dict[str, dict[int, list[tuple[str, float, float]]]]

    def selected_alc(self, kind: str, size: int, threshold: float = 0.0) -> float:
        return float(np.mean([alc if confidence >= threshold else self.generalist
                              for _, confidence, alc in self.selections[kind][size]]))


def leave_one_out(kinds: Sequence[str], fingerprints: dict[str, Fingerprints],
                  configs: list[str], matrix: np.ndarray, datasets: list[str],
                  batch_sizes: Sequence[int], repeats: int, seed: int) -> list[HeldOut]:
    """Train without each dataset in turn and price what is selected for it."""
    results = []
    generalist_row = configs.index(GENERALIST_NAME)
    for held in tqdm(datasets, desc="leave-one-dataset-out", unit="dataset"):
        h = datasets.index(held)
        others = [name for name in datasets if name != held]
        # The generalist must not know the held-out dataset either.
        other_columns = [datasets.index(name) for name in others]
        candidates = [i for i, name in enumerate(configs) if name != held]
        best = max(candidates, key=lambda i: np.nanmean(matrix[i, other_columns]))
        config_of = best_configs(configs, matrix, datasets, exclude=held)
        features = np.concatenate([fingerprints[held].train, fingerprints[held].test])
        selections: dict[str, dict[int, list[tuple[str, float, float]]]] = {}
        for kind in kinds:
            classifier = build(kind).fit(*stacked(fingerprints, others), others, seed=seed)
            rng = np.random.default_rng(seed)
            selections[kind] = {}
            for size in batch_sizes:
                picks = []
                for batch in draw_batches(features, size, repeats, rng):
                    name, confidence = classifier.select(batch)
                    picks.append((name, confidence,
                                  float(matrix[configs.index(config_of[name]), h])))
                selections[kind][size] = picks
        results.append(HeldOut(held, float(matrix[configs.index(held), h]),
                               float(matrix[best, h]), float(matrix[generalist_row, h]),
                               selections))
    return results


def choose(held_out: list[HeldOut], kinds: Sequence[str]) -> tuple[str, float]:
    """The kind and confidence threshold with the best mean ALC at the runtime's batch size."""
    size = FINGERPRINT_BATCH
    scored = [(np.mean([h.selected_alc(kind, size, t) for h in held_out]), kind, t)
              for kind in kinds for t in THRESHOLDS]
    _, kind, threshold = max(scored, key=lambda item: (item[0], -item[2]))
    return kind, threshold


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline selector", __doc__)
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="known datasets (default: those with an incumbent in the store)")
    add_store_arguments(parser)
    add_budget_argument(parser, "the cross-evaluation budget whose ALCs price the selections")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-samples", type=int, default=1024,
                        help="fingerprinted examples per dataset and split")
    parser.add_argument("--repeats", type=int, default=20,
                        help="random meta-test batches per dataset and batch size")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    out = args.store.parent
    with ResultStore(args.store) as store:
        datasets = args.datasets or sorted(store.best_incumbents())
        if len(datasets) < 3:
            parser.error("leave-one-dataset-out needs at least 3 datasets with incumbents")
        configs = candidate_configs(store)
        matrix = alc_matrix(store, configs, datasets, args.budget, (args.seed,))
    names = list(configs)
    missing = [(names[i], datasets[j]) for i, j in zip(*np.nonzero(np.isnan(matrix)))]
    if missing:
        parser.error(f"cross-evaluation incomplete at budget {args.budget:g}, e.g. {missing[:3]}"
                     f": run python -m offline crosseval --budget {args.budget:g}")
    fingerprints = {name: fingerprint_dataset(args.data_dir / name, args.max_samples,
                                              out / "fingerprints")
                    for name in tqdm(datasets, desc="fingerprints", unit="dataset")}
    accuracy = {kind: identification_accuracy(kind, fingerprints, BATCH_SIZES, args.repeats,
                                              args.seed)
                for kind in tqdm(args.kinds, desc="identification", unit="kind")}
    held_out = leave_one_out(args.kinds, fingerprints, names, matrix, datasets, BATCH_SIZES,
                             args.repeats, args.seed)
    kind, threshold = choose(held_out, args.kinds)
    final: MetaClassifier = build(kind).fit(*stacked(fingerprints, datasets), datasets,
                                            seed=args.seed)
    (out / "selector").mkdir(parents=True, exist_ok=True)
    save_selector(final, out / "selector" / "selector.npz")
    report = {"datasets": datasets, "budget": args.budget, "seed": args.seed,
              "batch_sizes": list(BATCH_SIZES), "repeats": args.repeats,
              "max_samples": args.max_samples, "chosen_kind": kind,
              "min_confidence": threshold, "identification_accuracy": accuracy,
              "held_out": [asdict(h) for h in held_out]}
    (out / "selector" / REPORT_FILE).write_text(json.dumps(report, indent=1))
    size = FINGERPRINT_BATCH
    print(f"| held-out dataset | oracle | generalist | default | "
          f"{' | '.join(args.kinds)} |")
    print("|---" * (4 + len(args.kinds)) + "|")
    for h in held_out:
        cells = " | ".join(f"{h.selected_alc(k, size):.3f}" for k in args.kinds)
        print(f"| {h.dataset} | {h.oracle:.3f} | {h.generalist:.3f} | {h.default:.3f} | "
              f"{cells} |")
    print(f"chosen: {kind}, min_confidence {threshold}; mean ALC at batch {size}: "
          f"{np.mean([h.selected_alc(kind, size, threshold) for h in held_out]):.4f} "
          f"(oracle {np.mean([h.oracle for h in held_out]):.4f}, generalist "
          f"{np.mean([h.generalist for h in held_out]):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
