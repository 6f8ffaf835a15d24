"""Benchmark the submission through the local harness on a list of AutoDL datasets.

    python -m offline bench --datasets mnist_demo cifar10 --budget 300

Runs the submission (the repository's model.py) and the linear baseline on each dataset with
the local ingestion + scoring, and prints a markdown table: ALC, final NAUC, time of the first
prediction (seconds after the first train() call), number of predictions, whether ingestion
succeeded, and the backbone used. Runs are kept under `--result-dir` with their logs.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ingestion_local.baselines import code_dir as baseline_dir
from ingestion_local.prepare import DEFAULT_OUT
from ingestion_local.run_local_test import LocalTestResult, run_local_test

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
    backbone: str

    def markdown(self) -> str:
        return (f"| {self.dataset} | {self.model} | {self.alc:.4f} | {self.final_nauc:.4f} | "
                f"{self.first_prediction:.1f} | {self.last_prediction:.1f} | {self.predictions} "
                f"| {int(self.success)} | {self.backbone} |")


HEADER = ("| dataset | model | ALC | final NAUC | first prediction (s) | last prediction (s) "
          "| predictions | ingestion_success | backbone |\n|---|---|---|---|---|---|---|---|---|")


def _row(dataset: str, model: str, result: LocalTestResult) -> BenchRow:
    scores = result.read("scores.txt")
    timestamps = ast.literal_eval(scores.get("timestamps", "[]"))
    naucs = ast.literal_eval(scores.get("nauc_scores", "[]"))
    backbone = "-"
    log = result.prediction_dir.parent / "ingestion.log"
    if log.is_file():
        for line in log.read_text().splitlines():
            if "autodl_meta: config " in line:
                backbone = json.loads(line.split("autodl_meta: config ", 1)[1])["backbone"]
    return BenchRow(dataset, model, result.alc or 0.0, naucs[-1] if naucs else 0.0,
                    timestamps[0] if timestamps else float("nan"), len(timestamps),
                    result.ingestion_success, timestamps[-1] if timestamps else float("nan"),
                    backbone)


def run_bench(datasets: Sequence[str], data_dir: Path, budget: float, result_dir: Path,
              baseline: str | None = "linear") -> list[BenchRow]:
    models = [("submission", REPO_ROOT)]
    if baseline:
        models.append((baseline, baseline_dir(baseline)))
    rows = []
    for dataset in tqdm(datasets, desc="datasets", unit="dataset"):
        folder = data_dir / dataset
        if not (folder / f"{dataset}.solution").is_file():
            raise FileNotFoundError(f"{folder}: not prepared (python -m ingestion_local.prepare "
                                    f"--only {dataset})")
        for model, code in models:
            result = run_local_test(folder, code, budget, result_dir / dataset / model,
                                    capture_logs=True)
            rows.append(_row(dataset, model, result))
            tqdm.write(rows[-1].markdown())
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist_demo"],
                        help="prepared dataset names (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--budget", type=float, default=300.0,
                        help="time budget per run in seconds (default: %(default)s)")
    parser.add_argument("--baseline", default="linear",
                        help="harness baseline to compare with, or 'none' (default: %(default)s)")
    parser.add_argument("--result-dir", type=Path, default=REPO_ROOT / "runs" / "bench")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    rows = run_bench(args.datasets, args.data_dir, args.budget, args.result_dir,
                     None if args.baseline == "none" else args.baseline)
    table = "\n".join([f"Budget {args.budget:.0f} s per run.", "", HEADER,
                       *(r.markdown() for r in rows)])
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
