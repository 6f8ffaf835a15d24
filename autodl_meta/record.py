"""What a run did, for people and for `python -m offline bench`: the run record and its parts.

`RunRecord` is written as JSON after every `train()` and `test()` call (the process may be
stopped at any time), atomically, to `run_record.json` in the folder the platform's ingestion
writes predictions to (its `--output_dir` argument), or to the path in AUTODL_RUN_RECORD.
It holds the selected known dataset and confidence, the config, each stage's time and outcome,
each prediction's time, the models blended and their validation score, where the time went
(`TimeLedger`), the records that could not be decoded, and the errors with their counts
(`ErrorLog`: a repeated error is logged once, then counted).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger("autodl_meta")

RUN_RECORD_ENV = "AUTODL_RUN_RECORD"
RUN_RECORD_FILE = "run_record.json"
# Where the time of a run goes; anything else (Python, logging, the record itself) is "other".
ACTIVITIES = ("read_labels", "read_train", "read_test", "fingerprint", "fit", "train",
              "validate", "predict")


def run_record_path(argv: list[str] | None = None) -> Path | None:
    """AUTODL_RUN_RECORD, else `run_record.json` in the ingestion's --output_dir, else None."""
    if os.environ.get(RUN_RECORD_ENV):
        return Path(os.environ[RUN_RECORD_ENV])
    argv = sys.argv if argv is None else argv
    for index, argument in enumerate(argv):
        if argument.startswith("--output_dir="):
            return Path(argument.split("=", 1)[1]) / RUN_RECORD_FILE
        if argument == "--output_dir" and index + 1 < len(argv):
            return Path(argv[index + 1]) / RUN_RECORD_FILE
    return None


class TimeLedger:
    """Seconds spent per activity (ACTIVITIES); nested activities count for the inner one."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self._active: list[str] = []

    @contextmanager
    def timed(self, activity: str) -> Iterator[None]:
        if activity not in ACTIVITIES:
            raise ValueError(f"unknown activity {activity!r}")
        began = time.monotonic()
        self._active.append(activity)
        try:
            yield
        finally:
            self._active.pop()
            spent = time.monotonic() - began
            self.seconds[activity] += spent
            if self._active:  # the outer activity did not spend this time itself
                self.seconds[self._active[-1]] -= spent

    def shares(self, elapsed: float) -> dict[str, float]:
        """Each activity's share of `elapsed` seconds, with the rest as "other"."""
        if elapsed <= 0:
            return {}
        shares = {name: round(self.seconds[name] / elapsed, 4) for name in ACTIVITIES}
        shares["other"] = round(max(0.0, 1 - sum(shares.values())), 4)
        return shares


class ErrorLog:
    """Failures by place and kind: the first is logged with its traceback, repeats are
    counted and logged at 10, 100, 1000... occurrences."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def report(self, where: str, error: BaseException) -> None:
        message = str(error).splitlines()[0][:200] if str(error) else ""
        key = f"{where}: {type(error).__name__}: {message}"
        self.counts[key] += 1
        count = self.counts[key]
        if count == 1:
            logger.error("%s failed; going on without it\n%s", where,
                         "".join(traceback.format_exception(error)).rstrip())
        elif str(count).strip("0") == "1":  # 10, 100, 1000, ...
            logger.error("%s failed again (%d times so far): %s", where, count, key)

    def to_list(self) -> list[dict[str, Any]]:
        return [{"error": key, "count": count} for key, count in self.counts.items()]


@dataclass
class PredictionEntry:
    index: int
    seconds: float                  # after the first train() call
    models: dict[str, float]        # model name -> blend weight
    validation_nauc: float | None   # of the blend; None when undefined
    new: bool                       # False: the previous prediction returned again


@dataclass
class StageEntry:
    name: str
    status: str = "waiting"         # waiting, done, failed, skipped
    started: float | None = None    # seconds after the first train() call
    seconds: float = 0.0
    failures: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    dataset: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, StageEntry] = field(default_factory=dict)
    predictions: list[PredictionEntry] = field(default_factory=list)
    undecodable: dict[str, int] = field(default_factory=lambda: {"train": 0, "test": 0})
    notes: list[str] = field(default_factory=list)
    done_training: bool = False
    elapsed: float = 0.0

    def stage(self, name: str) -> StageEntry:
        if name not in self.stages:
            self.stages[name] = StageEntry(name)
        return self.stages[name]

    def to_json(self, ledger: TimeLedger, errors: ErrorLog) -> dict[str, Any]:
        values = asdict(self)
        values["time_shares"] = ledger.shares(self.elapsed)
        values["seconds"] = {name: round(ledger.seconds[name], 3) for name in ACTIVITIES}
        values["errors"] = errors.to_list()
        return values

    def write(self, path: Path, ledger: TimeLedger, errors: ErrorLog) -> None:
        """Write the record atomically; a failure to write is logged, never raised."""
        try:
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self.to_json(ledger, errors), indent=1,
                                            default=float))
            os.replace(temporary, path)
        except OSError as err:
            logger.warning("could not write the run record %s: %s", path, err)


def read_run_record(path: Path) -> dict[str, Any] | None:
    """A run record written by `RunRecord.write`, or None when absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
