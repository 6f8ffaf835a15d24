"""The ingestion program, with the platform's arguments and flow (version v20191204).

    python -m ingestion_local --dataset_dir D --code_dir C [--time_budget 1200] ...

1. Read `D/<name>.data/{train,test}`, checking every record (outside the budget).
2. Build `Model(train_metadata)` from `C/model.py`: outside the budget and capped at
   `--init-time-limit` seconds (20 min), or inside it with `--charge-init-to-budget` (the
   AutoCV-era rule).
3. Write `start.txt`, then loop: `train`, `test`, check the prediction's shape, append
   `<i>: <timestamp>` to start.txt, write `<task>.predict_<i>` atomically; stop on
   `done_training`, on `None` from `test`, or when the budget is spent.
4. Write `end.txt` and copy every output into `--score_dir`.

The budget is enforced: a `train` or `test` call still running at `start + time_budget` is
stopped with the whole program (like the platform's scorer does), after `end.txt` records
`ingestion_success: 0`. Any exception of the model also ends the run with
`ingestion_success: 0`; the predictions written before it still count.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ingestion_local.logs import setup_logging

logger = logging.getLogger("ingestion")

VERSION = "v20191204-local"
DEFAULT_TIME_BUDGET = 1200.0
DEFAULT_INIT_TIME_LIMIT = 1200.0
TIME_LIMIT_EXIT_CODE = 3


class ModelApiError(Exception):
    """The model lacks `train` or `test`."""


class BadPredictionShapeError(Exception):
    """`test` returned an array of the wrong shape."""


class InitTimeoutError(Exception):
    """The model's constructor ran past its time limit."""


@contextmanager
def time_limit(seconds: float, what: str):
    """Raise InitTimeoutError in the main thread when the block runs longer than `seconds`."""
    def on_alarm(signum, frame):
        raise InitTimeoutError(f"{what} exceeded {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, math.ceil(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def write_prediction(path: Path, prediction: np.ndarray) -> None:
    """One row per line, values '{:g}', written to a temporary file and renamed."""
    temporary = path.with_name(f"temp_prediction_file_{os.getpid()}_{path.name}")
    with temporary.open("w") as handle:
        for row in prediction:
            handle.write(" ".join(f"{value:g}" for value in row) + "\n")
    os.replace(temporary, path)


def load_model_class(code_dir: Path, ingestion_program_dir: Path | None):
    """`Model` from `code_dir/model.py`, with the platform's sys.path entries."""
    for path in (ingestion_program_dir, code_dir, code_dir / "AutoDL_sample_code_submission"):
        if path is not None and str(path) not in sys.path:
            sys.path.insert(0, str(path))
    stale = sys.modules.get("model")
    if stale is not None and Path(getattr(stale, "__file__", "")).parent != code_dir.resolve():
        del sys.modules["model"]
    return importlib.import_module("model").Model


class IngestionRun:
    """One run of a model on one dataset, writing the platform's output files."""

    def __init__(self, dataset_dir: str | Path, output_dir: str | Path, code_dir: str | Path,
                 score_dir: str | Path | None = None,
                 ingestion_program_dir: str | Path | None = None,
                 time_budget: float = DEFAULT_TIME_BUDGET,
                 init_time_limit: float = DEFAULT_INIT_TIME_LIMIT,
                 charge_init_to_budget: bool = False) -> None:
        from ingestion_local.dataset import find_data_dir

        self.data_dir = find_data_dir(dataset_dir)
        self.task = self.data_dir.name.split(".")[0]
        self.output_dir = Path(output_dir)
        self.code_dir = Path(code_dir).resolve()
        self.score_dir = Path(score_dir) if score_dir else None
        self.ingestion_program_dir = (Path(ingestion_program_dir) if ingestion_program_dir
                                      else None)
        self.time_budget = float(time_budget)
        self.init_time_limit = init_time_limit
        self.charge_init_to_budget = charge_init_to_budget
        self.start: float | None = None
        self._finish_lock = threading.RLock()
        self._finished = False

    @property
    def start_file(self) -> Path:
        return self.output_dir / "start.txt"

    def run(self) -> bool:
        """Run ingestion to the end; True when `ingestion_success` is 1."""
        from ingestion_local.dataset import AutoDLDataset

        self._prepare_output_dir()
        d_train = AutoDLDataset(self.data_dir / "train")
        d_test = AutoDLDataset(self.data_dir / "test")
        for subset in (d_train, d_test):
            subset.check_records()
        expected_shape = (d_test.get_metadata().size(), d_test.get_metadata().get_output_size())
        logger.info("dataset %s: %d train, %d test samples, tensor shape %s, %d classes",
                    self.task, d_train.get_metadata().size(), d_test.get_metadata().size(),
                    d_train.get_metadata().get_tensor_shape(), expected_shape[1])

        if self.charge_init_to_budget:
            self.start = time.time()
        model = self._build_model(d_train.get_metadata())
        if not self.charge_init_to_budget:
            self.start = time.time()
        self._write_start_file()
        signal.signal(signal.SIGTERM, self._on_sigterm)
        watchdog = threading.Thread(target=self._watchdog, daemon=True, name="budget-watchdog")
        watchdog.start()

        success = True
        try:
            if model is None:
                raise ModelApiError("the model could not be built (see the error above)")
            self._loop(model, d_train, d_test, expected_shape)
        except Exception:  # noqa: BLE001 - any model failure ends the run, as on the platform
            logger.error("ingestion failed:\n%s", traceback.format_exc())
            success = False
        self._finish(success)
        return success

    def _prepare_output_dir(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stale = [self.start_file, self.output_dir / "end.txt",
                 *self.output_dir.glob(f"{self.task}.predict_*")]
        for path in stale:
            if path.exists():
                logger.warning("removing %s from an earlier run", path)
                path.unlink()

    def _build_model(self, train_metadata):
        began = time.time()
        try:
            model_class = load_model_class(self.code_dir, self.ingestion_program_dir)
            if self.charge_init_to_budget:
                model = model_class(train_metadata)
            else:
                with time_limit(self.init_time_limit, "initialization"):
                    model = model_class(train_metadata)
        except InitTimeoutError as err:
            logger.error("%s; moving on to the train/predict phase without a model", err)
            return None
        except Exception:  # noqa: BLE001 - reported, then the run fails like the platform's
            logger.error("model initialization failed:\n%s", traceback.format_exc())
            return None
        logger.info("model initialized in %.2f s", time.time() - began)
        return model

    def _write_start_file(self) -> None:
        self.start_file.write_text(f"ingestion_pid: {os.getpid()}\n"
                                   f"task_name: {self.task}\n"
                                   f"time_budget: {self.time_budget}\n"
                                   f"start_time: {self.start}\n")

    def remaining(self) -> float:
        return self.start + self.time_budget - time.time()

    def _loop(self, model, d_train, d_test, expected_shape: tuple[int, int]) -> None:
        if not (hasattr(model, "train") and hasattr(model, "test")):
            raise ModelApiError("the model must have train() and test() methods")
        use_done_training = hasattr(model, "done_training")
        if not use_done_training:
            logger.warning("the model has no done_training attribute: training continues "
                           "until the time budget is spent")
        index = 0
        while not (use_done_training and model.done_training):
            model.train(d_train.get_dataset(), remaining_time_budget=self.remaining())
            prediction = model.test(d_test.get_dataset(), remaining_time_budget=self.remaining())
            if prediction is None:
                logger.info("test() returned None: stopping")
                break
            prediction = np.asarray(prediction)
            if tuple(prediction.shape) != expected_shape:
                raise BadPredictionShapeError(f"prediction shape {tuple(prediction.shape)}, "
                                              f"expected {expected_shape}")
            with self._finish_lock:
                if self._finished:
                    return
                with self.start_file.open("a") as handle:
                    handle.write(f"{index}: {time.time()}\n")
                write_prediction(self.output_dir / f"{self.task}.predict_{index}", prediction)
            logger.info("prediction %d written at %.1f s", index,
                        self.time_budget - self.remaining())
            index += 1
            if self.remaining() <= 0:
                logger.info("time budget spent: stopping")
                break

    def _watchdog(self) -> None:
        while self.remaining() > 0:
            time.sleep(min(1.0, max(0.01, self.remaining())))
            if self._finished:
                return
        if self._finished:
            return
        logger.error("time budget of %.0f s exceeded during a train/test call: stopping the "
                     "model; the predictions made so far count", self.time_budget)
        self._finish(False)
        os._exit(TIME_LIMIT_EXIT_CODE)

    def _on_sigterm(self, signum, frame) -> None:
        logger.error("terminated (time budget exceeded or stopped by the scorer)")
        self._finish(False)
        os._exit(TIME_LIMIT_EXIT_CODE)

    def _finish(self, success: bool) -> None:
        """Write end.txt and copy the outputs to the score dir, once."""
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
            end = time.time()
            (self.output_dir / "end.txt").write_text(
                f"ingestion_duration: {end - self.start}\n"
                f"ingestion_success: {int(success)}\n"
                f"end_time: {end}\n")
            if self.score_dir is not None and self.score_dir.resolve() != \
                    self.output_dir.resolve():
                shutil.copytree(self.output_dir, self.score_dir, dirs_exist_ok=True)
            logger.info("ingestion %s in %.1f s", "succeeded" if success else "FAILED",
                        end - self.start)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ingestion_local",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True,
                        help="folder holding exactly one <name>.data (and usually <name>.solution)")
    parser.add_argument("--output_dir", default="AutoDL_sample_result_submission",
                        help="where start.txt, the predictions and end.txt go "
                             "(default: %(default)s)")
    parser.add_argument("--ingestion_program_dir", default=None,
                        help="put on sys.path before importing the model (platform argument)")
    parser.add_argument("--code_dir", required=True, help="folder holding model.py")
    parser.add_argument("--score_dir", default=None,
                        help="the outputs are copied here at the end (platform argument)")
    parser.add_argument("--time_budget", type=float, default=DEFAULT_TIME_BUDGET,
                        help="seconds for train/test calls (default: %(default)s)")
    # The project's own options: dashes, the underscore spelling accepted too.
    parser.add_argument("--init-time-limit", "--init_time_limit", type=float,
                        default=DEFAULT_INIT_TIME_LIMIT,
                        help="cap on the model constructor, outside the budget "
                             "(default: %(default)s)")
    parser.add_argument("--charge-init-to-budget", "--charge_init_to_budget",
                        action="store_true",
                        help="AutoCV-era rule: the constructor runs inside the time budget")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from ingestion_local.dataset import DatasetFormatError

    try:
        ingestion = IngestionRun(args.dataset_dir, args.output_dir, args.code_dir,
                                 score_dir=args.score_dir,
                                 ingestion_program_dir=args.ingestion_program_dir,
                                 time_budget=args.time_budget,
                                 init_time_limit=args.init_time_limit,
                                 charge_init_to_budget=args.charge_init_to_budget)
        success = ingestion.run()
    except DatasetFormatError as err:
        logger.error("%s", err)
        return 2
    return 0 if success else 1


def run_and_exit(argv: Sequence[str] | None = None) -> None:
    """main(), then exit at once: a model's leftover threads (tf.data prefetching, thread
    pools) can keep the interpreter alive after end.txt, until the scorer kills it at T."""
    code = main(argv)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
