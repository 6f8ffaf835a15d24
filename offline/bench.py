"""Benchmark the submission through the local harness on a list of AutoDL datasets.

    python -m offline bench --datasets mnist_demo cifar10 --budget 300

Runs the submission (the repository's model.py), the same submission with the meta-learning
switched off (AUTODL_META_LEARNING=0: the generalist config) and the linear baseline on each
dataset with the local ingestion + scoring, and prints a markdown table: ALC, final NAUC, time
of the first prediction (seconds after the first train() call), number of predictions, whether
ingestion succeeded, the known dataset the selector chose and the backbone used; then, per
model, the mean ALC and final NAUC over the datasets and on how many it scored the best ALC. Runs are kept
under `--result-dir` with their logs; a run already there at the same budget is reused (an
interrupted benchmark goes on where it stopped), `--force` runs it again.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autodl_meta.learner import META_LEARNING_ENV
from autodl_meta.record import RUN_RECORD_FILE, read_run_record
from ingestion_local.baselines import code_dir as baseline_dir
from ingestion_local.prepare import DEFAULT_OUT
from ingestion_local.run_local_test import LocalTestResult, run_local_test
from offline.cli import command_parser, emit_table, setup_logging
from offline.tables import markdown_row, markdown_table

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BenchRow:
    dataset: str
    model: str
    alc: float
    final_nauc: float
    first_prediction: float
    predictions: int
    success: bool
    last_prediction: float
    selected: str
    backbone: str
    undecodable: int = 0           # train + test records the run could not decode
    train_share: float = 0.0       # of the run's time, in fine-tuning steps
    predict_share: float = 0.0     # of the run's time, in test passes
    selection_seconds: float = 0.0  # choosing the config: fingerprint or zero-shot

    def cells(self) -> list[str]:
        return [self.dataset, self.model, f"{self.alc:.4f}", f"{self.final_nauc:.4f}",
                f"{self.first_prediction:.1f}", f"{self.last_prediction:.1f}",
                str(self.predictions), str(int(self.success)), self.selected, self.backbone,
                str(self.undecodable), f"{self.train_share:.2f}", f"{self.predict_share:.2f}",
                f"{self.selection_seconds:.3f}"]


COLUMNS = ("dataset", "model", "ALC", "final NAUC", "first prediction (s)",
           "last prediction (s)", "predictions", "ingestion_success", "selected", "backbone",
           "undecodable", "train share", "predict share", "selection (s)")
ROW_FILE = "bench_row.json"  # a finished run's row, kept beside its logs


def _row(dataset: str, model: str, result: LocalTestResult) -> BenchRow:
    scores = result.read("scores.txt")
    timestamps = ast.literal_eval(scores.get("timestamps", "[]"))
    naucs = ast.literal_eval(scores.get("nauc_scores", "[]"))
    record = read_run_record(result.prediction_dir / RUN_RECORD_FILE) or {}
    selection = record.get("selection", {})
    if selection.get("selected"):
        selected = selection["selected"]
    elif "closest" in selection:
        selected = f"generalist (unsure: {selection['closest']} {selection['confidence']:.2f})"
    else:
        selected = "-"
    shares = record.get("time_shares", {})
    return BenchRow(dataset, model, result.alc or 0.0, naucs[-1] if naucs else 0.0,
                    timestamps[0] if timestamps else float("nan"), len(timestamps),
                    result.ingestion_success, timestamps[-1] if timestamps else float("nan"),
                    selected, record.get("config", {}).get("backbone", "-"),
                    sum(record.get("undecodable", {}).values()), shares.get("train", 0.0),
                    shares.get("predict", 0.0), selection.get("seconds", 0.0))


SUMMARY_COLUMNS = ("model", "datasets", "mean ALC", "mean final NAUC", "best ALC on")


def summary_rows(rows: Sequence[BenchRow]) -> list[list[str]]:
    """Per model: datasets, mean ALC and mean final NAUC over them, and on how many datasets
    its ALC is the best of the models (ties count for each)."""
    best = {}
    for row in rows:
        best[row.dataset] = max(best.get(row.dataset, row.alc), row.alc)
    summary = []
    for model in dict.fromkeys(row.model for row in rows):
        mine = [row for row in rows if row.model == model]
        summary.append([model, str(len(mine)), f"{np.mean([r.alc for r in mine]):.4f}",
                        f"{np.mean([r.final_nauc for r in mine]):.4f}",
                        str(sum(r.alc == best[r.dataset] for r in mine))])
    return summary


def run_bench(datasets: Sequence[str], data_dir: Path, budget: float, result_dir: Path,
              baseline: str | None = "linear", generalist: bool = True,
              force: bool = False) -> list[BenchRow]:
    """One row per (dataset, model); runs already in `result_dir` at `budget` are reused
    unless `force`."""
    models = [("submission", REPO_ROOT, {})]
    if generalist:
        models.append(("generalist", REPO_ROOT, {META_LEARNING_ENV: "0"}))
    if baseline:
        models.append((baseline, baseline_dir(baseline), {}))
    rows = []
    for dataset in tqdm(datasets, desc="datasets", unit="dataset"):
        folder = data_dir / dataset
        if not (folder / f"{dataset}.solution").is_file():
            raise FileNotFoundError(f"{folder}: not prepared (python -m ingestion_local.prepare "
                                    f"--only {dataset})")
        for model, code, env in models:
            run_dir = result_dir / dataset / model
            row = None if force else _kept_row(run_dir, budget)
            if row is None:
                result = run_local_test(folder, code, budget, run_dir, capture_logs=True, env=env)
                row = _row(dataset, model, result)
                (run_dir / ROW_FILE).write_text(json.dumps({"budget": budget,
                                                            "row": asdict(row)}))
            rows.append(row)
            tqdm.write(markdown_row(row.cells()))
    return rows


def _kept_row(run_dir: Path, budget: float) -> BenchRow | None:
    """The row of an earlier run in `run_dir` at the same budget, so that an interrupted
    benchmark goes on where it stopped."""
    try:
        kept = json.loads((run_dir / ROW_FILE).read_text())
        return BenchRow(**kept["row"]) if kept["budget"] == budget else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline bench", __doc__)
    parser.add_argument("--datasets", nargs="+", default=["mnist_demo"],
                        help="prepared dataset names")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--budget", type=float, default=300.0,
                        help="time budget per run in seconds")
    parser.add_argument("--baseline", default="linear",
                        help="harness baseline to compare with, or 'none'")
    parser.add_argument("--no-generalist", action="store_true",
                        help="skip the run with the meta-learning switched off")
    parser.add_argument("--result-dir", type=Path, default=REPO_ROOT / "runs" / "bench")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--force", action="store_true",
                        help="run again what --result-dir already holds at this budget")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    rows = run_bench(args.datasets, args.data_dir, args.budget, args.result_dir,
                     None if args.baseline == "none" else args.baseline,
                     not args.no_generalist, args.force)
    table = (f"Budget {args.budget:.0f} s per run.\n\n" +
             markdown_table(COLUMNS, [row.cells() for row in rows]) + "\n\n" +
             markdown_table(SUMMARY_COLUMNS, summary_rows(rows)))
    emit_table(table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
