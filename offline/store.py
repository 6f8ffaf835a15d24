"""The resumable result store: every evaluation the offline pipeline makes, in one SQLite file.

An evaluation is keyed by (dataset, config, budget, seed, time mode): BOHB, the cross-evaluation
and the selector's report all read the same rows, and a command that is interrupted and started
again finds what it already measured instead of measuring it twice. Incumbents (the best config
BOHB found per dataset and backbone) are kept beside them.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from autodl_meta.config import TrainConfig
from offline.evaluate import Evaluation

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORE = REPO_ROOT / "results" / "offline.sqlite"


def provenance_path(path: Path) -> str:
    """`path` as provenance records it: relative to the repository when inside it, so the
    record reads the same on every clone."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(REPO_ROOT):
        return str(resolved.relative_to(REPO_ROOT))
    return str(path)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    dataset TEXT NOT NULL, config_key TEXT NOT NULL, budget REAL NOT NULL,
    seed INTEGER NOT NULL, time_mode TEXT NOT NULL, config TEXT NOT NULL,
    alc REAL NOT NULL, result TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (dataset, config_key, budget, seed, time_mode));
CREATE TABLE IF NOT EXISTS incumbents (
    dataset TEXT NOT NULL, backbone TEXT NOT NULL, config TEXT NOT NULL, alc REAL NOT NULL,
    budget REAL NOT NULL, trials INTEGER NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (dataset, backbone));
"""


# Fields TrainConfig no longer has; rows written before their removal still hold them.
# train_frames (frames per clip for a training step) was validated but never read.
RETIRED_FIELDS = ("train_frames",)


def stored_config(text: str) -> TrainConfig:
    """The config of a stored row, without the fields the schema has retired."""
    values = json.loads(text)
    for name in RETIRED_FIELDS:
        values.pop(name, None)
    return TrainConfig.from_dict(values)


def config_key(config: TrainConfig) -> str:
    """A canonical text for a config, so equal configs share their results."""
    return json.dumps(config.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class Incumbent:
    dataset: str
    backbone: str
    config: TrainConfig
    alc: float
    budget: float
    trials: int


class ResultStore:
    """Evaluations and incumbents in SQLite; safe to open from several processes in turn."""

    def __init__(self, path: Path = DEFAULT_STORE) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, timeout=60)
        self._connection.executescript(_SCHEMA)
        self._rekey()

    def _rekey(self) -> None:
        """Give rows written before TrainConfig gained or retired fields the keys of today's
        schema (new fields at their defaults), so that they are found again. An old row that
        repeats a run already under that key (written under today's schema, or an older row
        renamed first) is dropped: one run per key, as the table requires."""
        rows = self._connection.execute(
            "SELECT rowid, config_key, config FROM evaluations").fetchall()
        duplicates = 0
        with self._connection:
            for rowid, key, config in rows:
                current = config_key(stored_config(config))
                if current == key:
                    continue
                renamed = self._connection.execute(
                    "UPDATE OR IGNORE evaluations SET config_key=?, config=? WHERE rowid=?",
                    (current, current, rowid)).rowcount
                if not renamed:
                    self._connection.execute("DELETE FROM evaluations WHERE rowid=?", (rowid,))
                    duplicates += 1
        if duplicates:
            logger.warning("%s: dropped %d rows of an older schema that repeat runs stored "
                           "under today's", self.path, duplicates)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def get(self, dataset: str, config: TrainConfig, budget: float, seed: int,
            time_mode: str = "wall") -> Evaluation | None:
        """The run at `budget`, or the prefix of an anytime run at a larger one."""
        rows = self._connection.execute(
            "SELECT result FROM evaluations WHERE dataset=? AND config_key=? AND budget>=? "
            "AND seed=? AND time_mode=? ORDER BY budget",
            (dataset, config_key(config), float(budget), seed, time_mode))
        for (result,) in rows:
            evaluation = Evaluation.from_dict(json.loads(result))
            if evaluation.budget == float(budget):
                return evaluation
            if evaluation.anytime and not evaluation.error:
                return evaluation.at_budget(budget)
        return None

    def put(self, config: TrainConfig, evaluation: Evaluation) -> None:
        with self._connection:
            self._connection.execute(
                "INSERT OR REPLACE INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (evaluation.dataset, config_key(config), float(evaluation.budget),
                 evaluation.seed, evaluation.time_mode, config_key(config), evaluation.alc,
                 json.dumps(evaluation.to_dict()), _now()))

    def evaluations(self, dataset: str | None = None) -> list[tuple[TrainConfig, Evaluation]]:
        query = "SELECT config, result FROM evaluations"
        rows = (self._connection.execute(query + " WHERE dataset=?", (dataset,)) if dataset
                else self._connection.execute(query))
        return [(stored_config(config),
                 Evaluation.from_dict(json.loads(result))) for config, result in rows]

    def datasets(self) -> list[str]:
        """The datasets and tasks any evaluation was made on."""
        rows = self._connection.execute("SELECT DISTINCT dataset FROM evaluations ORDER BY 1")
        return [dataset for (dataset,) in rows]

    def set_incumbent(self, incumbent: Incumbent) -> None:
        with self._connection:
            self._connection.execute(
                "INSERT OR REPLACE INTO incumbents VALUES (?, ?, ?, ?, ?, ?, ?)",
                (incumbent.dataset, incumbent.backbone, config_key(incumbent.config),
                 incumbent.alc, incumbent.budget, incumbent.trials, _now()))

    def incumbents(self) -> list[Incumbent]:
        rows = self._connection.execute(
            "SELECT dataset, backbone, config, alc, budget, trials FROM incumbents "
            "ORDER BY dataset, backbone")
        return [Incumbent(dataset, backbone, stored_config(config), alc,
                          budget, trials)
                for dataset, backbone, config, alc, budget, trials in rows]

    def best_incumbents(self) -> dict[str, Incumbent]:
        """Per dataset, the incumbent of the backbone with the highest ALC."""
        best: dict[str, Incumbent] = {}
        for incumbent in self.incumbents():
            if incumbent.dataset not in best or incumbent.alc > best[incumbent.dataset].alc:
                best[incumbent.dataset] = incumbent
        return best


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def alc_matrix(store: ResultStore, configs: dict[str, TrainConfig], datasets: Sequence[str],
               budget: float, seeds: Sequence[int] = (0,), time_mode: str = "wall"
               ) -> np.ndarray:
    """ALC of config i on dataset j, averaged over seeds; NaN where not evaluated yet."""
    matrix = np.full((len(configs), len(datasets)), np.nan)
    for i, config in enumerate(configs.values()):
        for j, dataset in enumerate(datasets):
            found = [store.get(dataset, config, budget, seed, time_mode) for seed in seeds]
            if all(found):
                matrix[i, j] = float(np.mean([evaluation.alc for evaluation in found]))
    return matrix
