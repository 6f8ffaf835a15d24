"""Run ingestion and scoring side by side on one dataset, like the platform's run_local_test.py.

    python -m ingestion_local.run_local_test --dataset_dir D --code_dir C --time_budget T

D holds `<name>.data/` and `<name>.solution`. The outputs go to
`RESULT_DIR/AutoDL_sample_result_submission/` (predictions) and
`RESULT_DIR/AutoDL_scoring_output/` (scores.txt, learning-curve-<name>.png,
detailed_results.html); RESULT_DIR defaults to `runs/<name>`.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ingestion_local.dataset import DatasetFormatError, find_solution_file
from ingestion_local.logs import setup_logging

logger = logging.getLogger("run_local_test")

PREDICTIONS_DIRNAME = "AutoDL_sample_result_submission"
SCORES_DIRNAME = "AutoDL_scoring_output"


@dataclass
class LocalTestResult:
    """Where a local run left its outputs, and what they say."""

    task: str
    prediction_dir: Path
    score_dir: Path
    ingestion_returncode: int
    scoring_returncode: int

    def read(self, filename: str) -> dict[str, str]:
        path = self.score_dir / filename
        if not path.exists():
            return {}
        values = {}
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            values[key.strip()] = value.strip()
        return values

    @property
    def ingestion_success(self) -> bool:
        return self.read("end.txt").get("ingestion_success") == "1"

    @property
    def alc(self) -> float | None:
        score = self.read("scores.txt").get("score")
        return float(score) if score is not None else None

    @property
    def learning_curve(self) -> Path:
        return self.score_dir / f"learning-curve-{self.task}.png"

    @property
    def detailed_results(self) -> Path:
        return self.score_dir / "detailed_results.html"


def run_local_test(dataset_dir: str | Path, code_dir: str | Path, time_budget: float,
                   result_dir: str | Path | None = None, extra_ingestion_args: Sequence[str] = (),
                   start_wait: float = 600.0, capture_logs: bool = False,
                   env: dict[str, str] | None = None) -> LocalTestResult:
    """Run both programs as separate processes and wait for them; return the outcome.

    With `capture_logs`, their output goes to `ingestion.log` and `scoring.log` in the result
    dir instead of the terminal. `env` adds environment variables for the ingestion (and so
    for the submission's code).
    """
    dataset_dir = Path(dataset_dir)
    task = find_solution_file(dataset_dir).name.split(".")[0]
    result_dir = Path(result_dir) if result_dir else Path("runs") / task
    prediction_dir = result_dir / PREDICTIONS_DIRNAME
    score_dir = result_dir / SCORES_DIRNAME
    for folder in (prediction_dir, score_dir):
        shutil.rmtree(folder, ignore_errors=True)
    prediction_dir.mkdir(parents=True)

    logs = {name: (result_dir / f"{name}.log").open("w") if capture_logs else None
            for name in ("ingestion", "scoring")}

    ingestion = subprocess.Popen(
        [sys.executable, "-m", "ingestion_local", f"--dataset_dir={dataset_dir}",
         f"--output_dir={prediction_dir}", f"--code_dir={code_dir}", f"--score_dir={score_dir}",
         f"--time_budget={time_budget}", *extra_ingestion_args],
        env={**os.environ, **(env or {})}, stdout=logs["ingestion"],
        stderr=subprocess.STDOUT if capture_logs else None)
    scoring = subprocess.Popen(
        [sys.executable, "-m", "scoring_local", f"--solution_dir={dataset_dir}",
         f"--prediction_dir={prediction_dir}", f"--score_dir={score_dir}",
         f"--start-wait={start_wait}"],
        stdout=logs["scoring"], stderr=subprocess.STDOUT if capture_logs else None)
    # An ingestion that dies before writing start.txt (bad dataset, bad code dir) would leave
    # the scorer waiting for it: stop the scorer then.
    while scoring.poll() is None:
        if ingestion.poll() is not None and not (prediction_dir / "start.txt").exists():
            logger.error("ingestion exited (code %d) before starting: stopping the scorer",
                         ingestion.returncode)
            scoring.terminate()
            break
        time.sleep(0.5)
    ingestion.wait()
    scoring.wait()
    for log in logs.values():
        if log is not None:
            log.close()
    return LocalTestResult(task, prediction_dir, score_dir, ingestion.returncode,
                           scoring.returncode)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ingestion_local.run_local_test",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True,
                        help="folder holding <name>.data/ and <name>.solution")
    parser.add_argument("--code_dir", default=".",
                        help="folder holding model.py (default: the current folder)")
    parser.add_argument("--time_budget", type=float, default=1200.0,
                        help="seconds (default: %(default)s)")
    # The project's own options: dashes, the underscore spelling accepted too.
    parser.add_argument("--result-dir", "--result_dir", default=None,
                        help="default: runs/<name>")
    parser.add_argument("--charge-init-to-budget", "--charge_init_to_budget",
                        action="store_true",
                        help="AutoCV-era rule: the model constructor runs inside the budget")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    extra = ["--charge-init-to-budget"] if args.charge_init_to_budget else []
    try:
        result = run_local_test(args.dataset_dir, args.code_dir, args.time_budget,
                                args.result_dir, extra)
    except DatasetFormatError as err:
        logger.error("%s", err)
        return 2
    alc = "none" if result.alc is None else f"{result.alc:.4f}"
    print(f"\n{result.task}: ALC {alc}, ingestion_success: {int(result.ingestion_success)}")
    print(f"learning curve:   {result.learning_curve}")
    print(f"detailed results: {result.detailed_results}")
    return 0 if result.ingestion_success and result.alc is not None else 1


if __name__ == "__main__":
    sys.exit(main())
