"""Write metadata/: the configs, the chosen meta-classifier, the provenance.

    python -m offline export --budget 180

Reads the store (incumbents and the cross-evaluation at `--budget`) and what
`python -m offline selector` saved beside it. The generalist is the config with the best mean
ALC over the known datasets in the cross-evaluation (an incumbent or the default), the config
the runtime falls back to when the selector is unsure; each known dataset's config is the
candidate with the best cross-evaluated ALC on it (`crosseval.best_configs`). The written folder
is loaded back with the runtime's own validation before the command reports success.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from autodl_meta.metadata import (CONFIGS_FILE, METADATA_DIR, PROVENANCE_FILE, SELECTOR_FILE,
                                  MetaData)
from offline.crosseval import best_configs, candidate_configs
from offline.selector import REPORT_FILE
from offline.store import DEFAULT_STORE, REPO_ROOT, ResultStore, alc_matrix
from offline.cli import add_budget_argument, command_parser, setup_logging

logger = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export(store_path: Path, out: Path, budget: float, seed: int, commands: list[str]
           ) -> MetaData:
    selector_dir = store_path.parent / "selector"
    report = json.loads((selector_dir / REPORT_FILE).read_text())
    with ResultStore(store_path) as store:
        incumbents = store.best_incumbents()
        configs = candidate_configs(store)
        datasets = report["datasets"]
        matrix = alc_matrix(store, configs, datasets, budget, (seed,))
        trials = {name: incumbent.trials for name, incumbent in incumbents.items()}
    names = list(configs)
    generalist = names[int(np.nanargmax(np.nanmean(matrix, axis=1)))]
    logger.info("generalist: the config of %s (mean ALC %.4f)", generalist,
                float(np.nanmean(matrix[names.index(generalist)])))
    config_of = best_configs(names, matrix, datasets)
    meta = MetaData(generalist=configs[generalist],
                    configs={name: configs[config_of[name]] for name in datasets},
                    min_confidence=float(report["min_confidence"]), tuned_budget=budget)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(selector_dir / "selector.npz", out / SELECTOR_FILE)
    (out / CONFIGS_FILE).write_text(json.dumps(meta.to_json(), indent=1, sort_keys=True) + "\n")
    provenance = {
        "datasets": datasets, "commands": commands, "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scale": {"crosseval_budget_seconds": budget, "seed": seed,
                  "bohb_trials": trials, "bohb_max_budget_seconds":
                      {name: incumbents[name].budget for name in datasets},
                  "backbones": sorted({incumbents[name].backbone for name in datasets}),
                  "selector": report["chosen_kind"], "min_confidence": report["min_confidence"],
                  "fingerprinted_samples": report["max_samples"],
                  "generalist_from": generalist, "configs_from": config_of},
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1) + "\n")
    return MetaData.load(out)


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline export", __doc__)
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE)
    add_budget_argument(parser, "the cross-evaluation budget the generalist is chosen at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=METADATA_DIR)
    parser.add_argument("--commands", nargs="*", default=[],
                        help="the commands that produced the store, for provenance.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    commands = args.commands + ["python -m offline export " + " ".join(argv or sys.argv[1:])]
    meta = export(args.store, args.out, args.budget, args.seed, commands)
    print(f"{args.out}: {len(meta.configs)} dataset configs, selector {meta.selector.kind}, "
          f"min_confidence {meta.min_confidence}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
