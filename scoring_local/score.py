"""The scoring program, as the platform runs it beside ingestion or after it.

    python -m scoring_local --solution_dir D --prediction_dir P --score_dir S

It waits for `P/start.txt`, then polls once a second: every new `<task>.predict_<i>` is scored
(NAUC, accuracy for multiclass tasks) and `scores.txt`, the learning-curve PNG and
`detailed_results.html` are rewritten, so a partial score exists at all times. At
`start_time + time_budget` it stops ingestion if it is still running. On a finished output
folder (end.txt present, or the budget long past) it scores everything at once.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scoring_local import metrics, report

logger = logging.getLogger("scoring")
# The project's one log format (ingestion_local/logs.py), spelled here: the scoring program
# runs on the platform without the harness.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

DEFAULT_START_WAIT = 1800.0
KILL_GRACE_SECONDS = 5.0


class IngestionError(RuntimeError):
    """Ingestion never started (no start.txt) or its output cannot be read."""


def read_key_values(path: Path) -> dict[str, str]:
    """`key: value` lines; a line still being appended (no colon yet) is skipped."""
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            values[key.strip()] = value.strip()
    return values


@dataclass
class IngestionInfo:
    """What start.txt says: the start, the budget, the pid and one timestamp per prediction."""

    task_name: str
    start_time: float
    time_budget: float
    ingestion_pid: int
    timestamps: dict[int, float] = field(default_factory=dict)

    @classmethod
    def read(cls, start_file: Path) -> "IngestionInfo":
        values = read_key_values(start_file)
        try:
            info = cls(values["task_name"], float(values["start_time"]),
                       float(values["time_budget"]), int(values["ingestion_pid"]))
        except (KeyError, ValueError) as err:
            raise IngestionError(f"{start_file}: missing or bad field: {err}") from err
        info.timestamps = {int(k): float(v) for k, v in values.items() if k.isdigit()}
        return info


def find_solution_file(solution_dir: Path) -> Path:
    found = sorted(Path(solution_dir).glob("*.solution"))
    if len(found) != 1:
        raise IngestionError(f"{solution_dir}: expected exactly one '*.solution' file, found "
                             f"{len(found)}")
    return found[0]


class Evaluator:
    """Scores the predictions of one task as they appear."""

    def __init__(self, solution_dir: str | Path, prediction_dir: str | Path,
                 score_dir: str | Path) -> None:
        self.solution_file = find_solution_file(Path(solution_dir))
        self.task = self.solution_file.name.split(".")[0]
        self.solution = metrics.as_matrix(np.loadtxt(self.solution_file))
        self.is_multiclass = metrics.is_multiclass(self.solution)
        self.prediction_dir = Path(prediction_dir)
        self.score_dir = Path(score_dir)
        self.score_dir.mkdir(parents=True, exist_ok=True)
        self.info: IngestionInfo | None = None
        self.nauc_scores: list[float] = []
        self.accuracies: list[float] = []
        self.timestamps: list[float] = []
        report.write_detailed_results(self.score_dir, auto_refresh=True)

    @property
    def start_file(self) -> Path:
        return self.prediction_dir / "start.txt"

    @property
    def end_file(self) -> Path:
        return self.prediction_dir / "end.txt"

    def wait_for_start(self, timeout: float = DEFAULT_START_WAIT) -> IngestionInfo:
        deadline = time.time() + timeout
        while not self.start_file.exists():
            if time.time() > deadline:
                raise IngestionError(f"{self.start_file} did not appear within {timeout:.0f} s")
            time.sleep(1)
        self.info = IngestionInfo.read(self.start_file)
        return self.info

    def prediction_files(self) -> list[Path]:
        files = self.prediction_dir.glob(f"{self.task}.predict_*")
        return sorted((f for f in files if f.name.rsplit("_", 1)[-1].isdigit()),
                      key=lambda f: int(f.name.rsplit("_", 1)[-1]))

    def score_new_predictions(self) -> bool:
        """Score predictions not scored yet, in order; rewrite the outputs if any was new."""
        self.info = IngestionInfo.read(self.start_file)
        new = False
        for path in self.prediction_files()[len(self.nauc_scores):]:
            index = int(path.name.rsplit("_", 1)[-1])
            if index != len(self.nauc_scores) or index not in self.info.timestamps:
                break
            try:
                prediction = metrics.as_matrix(np.loadtxt(path))
                score = metrics.nauc(self.solution, prediction)
            except ValueError as err:
                logger.error("%s: cannot be scored: %s", path, err)
                break
            self.nauc_scores.append(score)
            self.accuracies.append(metrics.accuracy(self.solution, prediction))
            self.timestamps.append(self.info.timestamps[index] - self.info.start_time)
            logger.info("prediction %d at %.1f s: NAUC %.4f", index, self.timestamps[-1], score)
            new = True
        if new:
            self.write_outputs(auto_refresh=True)
        return new

    @property
    def score(self) -> float:
        return metrics.alc(self.timestamps, self.nauc_scores, self.info.time_budget)

    def write_outputs(self, auto_refresh: bool) -> None:
        late = [t for t in self.timestamps if t > self.info.time_budget]
        if late:
            logger.warning("%d prediction(s) made after the time budget; they do not count",
                           len(late))
        report.write_scores_txt(self.score_dir / "scores.txt", self.score, self.timestamps,
                                self.nauc_scores, self.accuracies if self.is_multiclass else None)
        report.plot_learning_curve(self.score_dir / f"learning-curve-{self.task}.png", self.task,
                                   self.timestamps, self.nauc_scores, self.info.time_budget,
                                   self.score)
        report.write_detailed_results(self.score_dir, auto_refresh=auto_refresh)

    def run(self, start_wait: float = DEFAULT_START_WAIT, poll_seconds: float = 1.0) -> float:
        """Follow ingestion until it ends or its budget is spent; return the final ALC."""
        info = self.wait_for_start(start_wait)
        deadline = info.start_time + info.time_budget
        while time.time() < deadline:
            if self.end_file.exists():
                break
            time.sleep(poll_seconds)
            self.score_new_predictions()
        else:
            finished = self.end_file.exists()
            if stop_ingestion(info) and not finished:
                logger.error("time budget exceeded: ingestion (pid %d) was stopped",
                             info.ingestion_pid)
        self.score_new_predictions()
        self.write_outputs(auto_refresh=False)
        self._log_outcome()
        return self.score

    def _log_outcome(self) -> None:
        if not self.end_file.exists():
            logger.error("no end.txt: ingestion exceeded the time budget or was killed; "
                         "the predictions made so far were scored")
        elif read_key_values(self.end_file).get("ingestion_success") != "1":
            logger.error("ingestion failed (ingestion_success: 0); the predictions made so far "
                         "were scored")
        logger.info("%s: ALC %.4f over %d prediction(s)", self.task, self.score,
                    len(self.nauc_scores))


def stop_ingestion(info: IngestionInfo) -> bool:
    """Terminate the ingestion process of `info` if it still runs; True if it was stopped.

    The pid is only trusted if that process started before the run did, so that scoring an
    old output folder never signals an unrelated process that reused the pid.
    """
    import psutil

    try:
        process = psutil.Process(info.ingestion_pid)
        if process.create_time() > info.start_time + 1:
            return False
        process.terminate()
        try:
            process.wait(KILL_GRACE_SECONDS)
        except psutil.TimeoutExpired:
            process.kill()
        return True
    except psutil.NoSuchProcess:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scoring_local",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--solution_dir", required=True,
                        help="folder holding exactly one <task>.solution")
    parser.add_argument("--prediction_dir", required=True,
                        help="ingestion's output_dir (start.txt, <task>.predict_<i>, end.txt)")
    parser.add_argument("--score_dir", required=True,
                        help="where scores.txt, the learning curve and the HTML go")
    # The project's own option: dashes, the underscore spelling accepted too.
    parser.add_argument("--start-wait", "--start_wait", type=float,
                        default=DEFAULT_START_WAIT,
                        help="seconds to wait for start.txt (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        score = Evaluator(args.solution_dir, args.prediction_dir, args.score_dir).run(
            start_wait=args.start_wait)
    except IngestionError as err:
        logger.error("%s", err)
        return 1
    print(f"score: {score:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
