"""The portfolio: the configs every task of the meta-dataset is run with.

    python -m offline portfolio --budget 30 --incumbents 1

Its members are of two kinds. BOHB incumbents, chosen greedily on the store's cross-evaluation
at `--budget`: each next one is the incumbent that most raises the mean over datasets of the
best ALC among those chosen (so a second incumbent that wins where the first already wins adds
nothing). And configs that differ on purpose in what a short-budget search cannot see or did not
try: a larger backbone (Lite1, Lite2), a lower or a higher resolution, Adam at a small learning
rate, CutMix, a frozen backbone (only the head trains, on every example, each step about a
forward pass) and a half-frozen one (Lite2 at 128 px for a cheaper step). (Adam at 1e-3, batch
32 and 64 px on Lite0 and on Lite2, tried in place of CutMix and Lite2 at 96 px, lost on the
matrix's first tasks at 180 s: 0.664 and 0.575 on cifar10, 0.435 and 0.272 on its grey 16-px
task, against 0.745 and 0.636 for Adam at 32 px.) The portfolio is
written to `results/portfolio.json` ({name: TrainConfig}), validated field by field when
loaded; `python -m offline crosseval --portfolio` runs it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from autodl_meta.config import GENERALIST, ConfigError, TrainConfig
from offline.cli import add_budget_argument, command_parser, emit_table, setup_logging
from offline.store import (DEFAULT_STORE, ResultStore, alc_matrix, config_key,
                           provenance_path)
from offline.tables import markdown_table

logger = logging.getLogger(__name__)

DEFAULT_PORTFOLIO = DEFAULT_STORE.parent / "portfolio.json"

# Differ from the default config in one or two of the fields that matter at 30-600 s.
DIVERSIFIED = {
    "default": GENERALIST,
    "lite0-32px-adam": replace(GENERALIST, resolution=32, batch_size=64, optimizer="adam",
                               learning_rate=1e-3),
    "lite0-128px": replace(GENERALIST, resolution=128),
    "lite0-96px-cutmix-adam": replace(GENERALIST, resolution=96, batch_size=16,
                                      optimizer="adam", learning_rate=3e-4,
                                      augmentation="cutmix", augmentation_alpha=1.0),
    "lite1-64px": replace(GENERALIST, backbone="efficientnet-lite1"),
    "lite2-96px": replace(GENERALIST, backbone="efficientnet-lite2", resolution=96),
    "lite0-64px-frozen": replace(GENERALIST, frozen_fraction=1.0),
    "lite2-128px-half-frozen": replace(GENERALIST, backbone="efficientnet-lite2",
                                       resolution=128, frozen_fraction=0.5),
}


def greedy_members(names: Sequence[str], matrix: np.ndarray, count: int) -> list[str]:
    """`count` rows of `matrix` (configs x datasets, NaN: not run), each raising the mean over
    datasets of the best chosen ALC the most; ties go to the row listed first."""
    scores = np.nan_to_num(matrix, nan=0.0)
    chosen: list[int] = []
    best = np.zeros(scores.shape[1])
    for _ in range(min(count, len(names))):
        gains = [np.maximum(best, row).mean() if i not in chosen else -np.inf
                 for i, row in enumerate(scores)]
        pick = int(np.argmax(gains))
        chosen.append(pick)
        best = np.maximum(best, scores[pick])
    return [names[i] for i in chosen]


def build_portfolio(store: ResultStore, budget: float, incumbents: int,
                    seeds: Sequence[int] = (0,)) -> dict[str, TrainConfig]:
    """The greedy incumbents at `budget`, then the diversified configs not already among them."""
    best = store.best_incumbents()
    candidates = {f"incumbent-{name}": incumbent.config for name, incumbent in sorted(best.items())}
    datasets = sorted(best)
    portfolio: dict[str, TrainConfig] = {}
    if candidates and incumbents > 0:
        matrix = alc_matrix(store, candidates, datasets, budget, seeds)
        if np.isnan(matrix).all():
            raise ConfigError(f"{store.path}: no cross-evaluation at {budget:g} s to choose "
                              f"incumbents from (python -m offline crosseval --budget "
                              f"{budget:g})")
        portfolio = {name: candidates[name]
                     for name in greedy_members(list(candidates), matrix, incumbents)}
    keys = {config_key(config) for config in portfolio.values()}
    for name, config in DIVERSIFIED.items():
        if config_key(config) not in keys:
            portfolio[name] = config
            keys.add(config_key(config))
    return portfolio


def save_portfolio(portfolio: dict[str, TrainConfig], path: Path, provenance: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": provenance,
                                "configs": {name: config.to_dict()
                                            for name, config in portfolio.items()}},
                               indent=2) + "\n")


def load_portfolio(path: Path) -> dict[str, TrainConfig]:
    """The named configs of a portfolio file; errors name the file, the config and the field."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read as JSON: {err}") from err
    configs = values.get("configs") if isinstance(values, dict) else None
    if not isinstance(configs, dict) or not configs:
        raise ConfigError(f"{path}: field 'configs' must be a non-empty object of named configs")
    return {name: TrainConfig.from_dict(config, source=f"{path}: configs.{name}")
            for name, config in configs.items()}


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline portfolio", __doc__)
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="the result store")
    add_budget_argument(parser, "the cross-evaluation budget the incumbents are chosen at")
    parser.add_argument("--incumbents", type=int, default=1,
                        help="BOHB incumbents taken, greedily, before the diversified configs")
    parser.add_argument("--out", type=Path, default=DEFAULT_PORTFOLIO, help="portfolio file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    with ResultStore(args.store) as store:
        portfolio = build_portfolio(store, args.budget, args.incumbents)
    save_portfolio(portfolio, args.out, {"store": provenance_path(args.store),
                                         "budget": args.budget, "incumbents": args.incumbents})
    rows = [[name, config.backbone, config.resolution, config.batch_size, config.optimizer,
             f"{config.learning_rate:.2g}", config.augmentation, f"{config.frozen_fraction:g}"]
            for name, config in portfolio.items()]
    emit_table(markdown_table(["config", "backbone", "px", "batch", "optimizer", "lr",
                               "augmentation", "frozen"], rows), None)
    logger.info("%d configs written to %s", len(portfolio), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
