"""`python -m offline report`: plots and summary.md from a store and a selector report with known
numbers, and clear errors when what it reads is missing."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from autodl_meta.config import GENERALIST, TrainConfig
from offline import report
from offline.crosseval import GENERALIST_NAME
from offline.evaluate import Evaluation
from offline.selector import REPORT_FILE
from offline.store import Incumbent, ResultStore

DATASETS = ["alpha", "beta", "gamma"]
BUDGET = 30.0
GENERALIST_ALC = 0.6   # the held-out reports' "best config on the other datasets"
DEFAULT_ALC = 0.53     # the default config's row of the matrix below
PLOTS = [report.FIG3, report.FIG4, report.CROSSEVAL, report.FIG5, report.IDENTIFICATION]


def matrix_alc(source: int, target: int) -> float:
    """Own config: 0.80, 0.85, 0.90; another row scores 0.5 + 0.01 * row everywhere else."""
    return 0.8 + 0.05 * target if source == target else 0.5 + 0.01 * source


def fill_store(path: Path) -> None:
    configs = {name: TrainConfig(learning_rate=0.001 * (i + 1)) for i, name in enumerate(DATASETS)}
    with ResultStore(path) as store:
        for j, (name, config) in enumerate(configs.items()):
            store.set_incumbent(Incumbent(name, config.backbone, config, matrix_alc(j, j), BUDGET,
                                          5 + j))
            # A BOHB trial at a lower budget: not the incumbent's run, whatever its accuracy.
            store.put(config, Evaluation(name, 10.0, 0, 0.4, 0.4, 0.95))
        for i, config in enumerate([*configs.values(), GENERALIST]):
            for j, target in enumerate(DATASETS):
                accuracy = 0.6 + 0.1 * j if i == j else 0.99  # other configs: never Fig. 3's
                store.put(config, Evaluation(target, BUDGET, 0, matrix_alc(i, j),
                                             matrix_alc(i, j), accuracy))
        # A second backbone on alpha, weaker than the first: a bar, not a matrix row.
        lite1 = TrainConfig(backbone="efficientnet-lite1", learning_rate=0.02)
        store.set_incumbent(Incumbent("alpha", lite1.backbone, lite1, 0.7, BUDGET, 4))
        store.put(lite1, Evaluation("alpha", BUDGET, 0, 0.7, 0.7, 0.55))


def held_out(j: int) -> dict:
    """nearest_centroid picks the first other dataset sure and the second unsure; mlp_vote picks
    the last other dataset twice."""
    others = [i for i in range(len(DATASETS)) if i != j]
    first, last = others[0], others[-1]
    picks = {"nearest_centroid": [[DATASETS[first], 0.9, matrix_alc(first, j)],
                                  [DATASETS[last], 0.3, matrix_alc(last, j)]],
             "mlp_vote": [[DATASETS[last], 0.6, matrix_alc(last, j)]] * 2}
    return {"dataset": DATASETS[j], "oracle": matrix_alc(j, j), "generalist": GENERALIST_ALC,
            "default": DEFAULT_ALC,
            "selections": {kind: {str(size): chosen for size in (1, 8, 64)}
                           for kind, chosen in picks.items()}}


def write_selector_report(store_path: Path) -> None:
    folder = store_path.parent / "selector"
    folder.mkdir()
    values = {"datasets": DATASETS, "budget": BUDGET, "seed": 0, "batch_sizes": [1, 8, 64],
              "repeats": 2, "max_samples": 100, "chosen_kind": "nearest_centroid",
              "min_confidence": 0.5,
              "identification_accuracy": {"nearest_centroid": {"1": 0.5, "8": 0.8, "64": 1.0},
                                          "mlp_vote": {"1": 0.4, "8": 0.7, "64": 0.9}},
              "held_out": [held_out(j) for j in range(len(DATASETS))]}
    (folder / REPORT_FILE).write_text(json.dumps(values))


@pytest.fixture
def store_path(tmp_path) -> Path:
    path = tmp_path / "results" / "store.sqlite"
    fill_store(path)
    return path


def test_report_writes_the_plots_and_a_summary_with_the_numbers(store_path, tmp_path):
    write_selector_report(store_path)
    out = tmp_path / "reports"
    assert report.main(["--store", str(store_path), "--budget", str(BUDGET), "--out",
                        str(out)]) == 0
    for name in PLOTS:
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert path.stat().st_size > 10_000, name
        height, width = imread(path).shape[:2]
        assert width >= 600 and height >= 400, (name, width, height)
    summary = (out / report.SUMMARY).read_text()
    for name in PLOTS:
        assert f"]({name})" in summary  # relative links, beside summary.md
    # Fig. 3's numbers: the incumbent's own run at its budget, not the lower budget's 0.95 or
    # the cross-evaluation's 0.99 of other configs.
    assert "| alpha | efficientnet-lite0 | 0.800 | 0.600 | 30 | 5 | sgd | 32 | 0.001 |" in summary
    assert "| alpha | efficientnet-lite1 | 0.700 | 0.550 | 30 | 4 |" in summary
    assert "| gamma | efficientnet-lite0 | 0.900 | 0.800 | 30 | 7 |" in summary
    assert "0.950" not in summary and "0.990" not in summary
    assert "4-7 trials per (dataset, backbone), 22 in all" in summary
    assert f"| {GENERALIST_NAME} | 0.530 | 0.530 | 0.530 | 0.530 |" in summary
    assert "| nearest_centroid | 0.50 | 0.80 | 1.00 |" in summary
    # Leave-one-out at batch 64: below min_confidence 0.5 the generalist's 0.6 counts.
    chosen = np.mean([(matrix_alc([i for i in range(3) if i != j][0], j) + GENERALIST_ALC) / 2
                      for j in range(3)])
    assert "| alpha | 0.800 | 0.600 | 0.530 | 0.515 | 0.520 | 0.555 |" in summary
    assert f"| **mean** | 0.850 | 0.600 | 0.530 | 0.510 | 0.517 | {chosen:.3f} |" in summary
    assert "chosen: nearest_centroid, confidence >= 0.5" in summary


def test_report_names_the_command_to_run_first(store_path, tmp_path, caplog):
    out = tmp_path / "reports"
    with caplog.at_level(logging.ERROR):
        assert report.main(["--store", str(store_path), "--out", str(out)]) == 1
    assert "python -m offline selector" in caplog.text
    missing = tmp_path / "nowhere" / "store.sqlite"
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert report.main(["--store", str(missing), "--out", str(out)]) == 1
    assert "python -m offline bohb" in caplog.text and not missing.exists()
    assert not out.exists()


def test_tables_and_the_spread_over_seeds():
    from offline.tables import markdown_table, mean_std

    assert markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
    assert mean_std([0.5, 0.7]) == "0.600 ± 0.141"  # the sample std: 0.2 / sqrt(2)
    assert mean_std([0.25]) == "0.250"
    assert mean_std([0.5, 0.6], scale=100, digits=1) == "55.0 ± 7.1"
