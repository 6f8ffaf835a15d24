"""Evaluate one configuration on one known dataset: the submission's own Learner, in process.

    evaluate(config, dataset_dir, budget, seed) -> Evaluation

The loop is the platform's: train(), then test(), until `done_training` or the budget `T` is
spent; every prediction is scored with the platform's NAUC and the curve with its ALC (t0 =
60 s) over [0, T]. So the number BOHB optimises is the number the submission would get at that
budget, with the same time policy, validation guard and first predictions. Nothing here imports
SMAC or Dask: any engine can call `evaluate` (Dask workers call `evaluate_task`).

Time is wall-clock by default. With a cost table (`time_mode="simulated"`), the run is timed by
a clock that replaces the wall time the network spends with its price in the table (the paper's
lookup-table ALC): training steps at the step cost of the config's backbone, resolution, actual
batch size (the configured one, or the whole pool when it is smaller) and frozen fraction, and
images through an eval pass (features, validation, test, flips
counted) at the prediction cost per image. The learner sizes its slices and passes and the
harness stops the run on that clock, so a run does the same work whether its worker has one
thread or two, or shares the machine; only reading and decoding records, building the
network (loading its weights) and the small pixel-level and linear fits keep their wall-clock
times.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autodl_meta.config import TrainConfig
from offline.costs import CostTable
from autodl_meta.learner import Learner
from autodl_meta.trainer import Trainer
from ingestion_local import AutoDLDataset
from scoring_local.metrics import accuracy, alc, is_multiclass, nauc

logger = logging.getLogger(__name__)

TIME_MODES = ("wall", "simulated")


@dataclass
class Evaluation:
    """The learning curve of one run and what the scorer makes of it."""

    dataset: str
    budget: float
    seed: int
    alc: float
    final_nauc: float
    final_accuracy: float
    timestamps: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    # What the run cost on the wall clock, whole: a prefix (`at_budget`) was made by all of it.
    wall_seconds: float = 0.0
    time_mode: str = "wall"
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # what a technique could not do as set
    accuracies: list[float] = field(default_factory=list)  # of each prediction
    # Made by an anytime runtime (autodl_meta/policy.py): its prefix up to T' is the run at T'.
    anytime: bool = False
    # Each prediction's wall-clock time: `timestamps` itself in wall mode; in simulated mode
    # what the re-timing replaced (empty in runs stored before it was kept).
    wall_timestamps: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def at_budget(self, budget: float) -> "Evaluation":
        """The run at a budget up to its own: the predictions made by then, scored at it."""
        if not self.anytime:
            raise ValueError("only an anytime run's prefix is a run at a shorter budget")
        if budget > self.budget:
            raise ValueError(f"a {self.budget:g}-s run says nothing of {budget:g} s")
        kept = sum(t <= budget for t in self.timestamps)
        scores = self.scores[:kept]
        return Evaluation(
            dataset=self.dataset, budget=budget, seed=self.seed,
            alc=alc(self.timestamps[:kept], scores, budget),
            final_nauc=scores[-1] if scores else 0.0,
            final_accuracy=self.accuracies[kept - 1] if kept and self.accuracies else 0.0,
            timestamps=self.timestamps[:kept], scores=scores,
            wall_seconds=self.wall_seconds, time_mode=self.time_mode, error=self.error,
            notes=self.notes, accuracies=self.accuracies[:kept], anytime=True,
            wall_timestamps=self.wall_timestamps[:kept])

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Evaluation":
        return cls(**values)


def dataset_paths(dataset_dir: Path) -> tuple[str, Path, Path]:
    """(name, <name>.data folder, <name>.solution) of a prepared AutoDL dataset folder."""
    name = dataset_dir.name
    data, solution = dataset_dir / f"{name}.data", dataset_dir / f"{name}.solution"
    if not data.is_dir() or not solution.is_file():
        raise FileNotFoundError(f"{dataset_dir}: expected {name}.data/ and {name}.solution "
                                f"(python -m ingestion_local.prepare --only {name})")
    return name, data, solution


def evaluate(config: TrainConfig, dataset_dir: Path, budget: float, seed: int = 0,
             time_mode: str = "wall", cost_table: CostTable | None = None,
             threads: int | None = None) -> Evaluation:
    """Run the submission with `config` on `dataset_dir` for `budget` seconds; score it."""
    if time_mode not in TIME_MODES:
        raise ValueError(f"time_mode must be one of {TIME_MODES}, got {time_mode!r}")
    if time_mode == "simulated" and cost_table is None:
        raise ValueError("simulated time needs a cost table (python -m offline profile)")
    name, data, solution_path = dataset_paths(Path(dataset_dir))
    solution = np.loadtxt(solution_path, ndmin=2)
    train, test = AutoDLDataset(data / "train"), AutoDLDataset(data / "test")
    torch.manual_seed(seed)
    began = time.monotonic()
    clock = time.monotonic
    if time_mode == "simulated":
        def clock() -> float:  # first read in learner.train(), when both names below are set
            return _simulated_now(learner.trainer, prices)
    learner = Learner(train.get_metadata(), config=config, seed=seed, clock=clock)
    if learner.config != config:  # the runtime's fallback would store another config's run
        raise RuntimeError(f"the weights of {config.backbone} are missing here (make "
                           f"pretrained): the run would be of {learner.config.backbone}")
    if time_mode == "simulated":  # an unpriced config fails here, not inside the run
        prices = _Prices.of(learner, cost_table)
    if threads:  # the Learner takes every core; a Dask worker shares them with others
        torch.set_num_threads(threads)
    start, wall_start = clock(), time.monotonic()
    timestamps, wall_timestamps, scores, accuracies = [], [], [], []
    while not learner.done_training:
        remaining = start + budget - clock()
        if remaining <= 0:
            break
        learner.train(train.get_dataset(), remaining_time_budget=remaining)
        remaining = start + budget - clock()
        prediction = learner.test(test.get_dataset(), remaining_time_budget=remaining)
        elapsed = clock() - start
        if elapsed > budget:  # the platform would have stopped the run before this one
            break
        timestamps.append(elapsed)
        wall_timestamps.append(time.monotonic() - wall_start)
        scores.append(nauc(solution, prediction))
        accuracies.append(accuracy(solution, prediction) if is_multiclass(solution) else 0.0)
    if time_mode == "simulated" and timestamps:
        logger.info("%s: last prediction at %.1f s simulated, %.1f s on the wall clock",
                    name, timestamps[-1], wall_timestamps[-1])
    return Evaluation(
        dataset=name, budget=budget, seed=seed, alc=alc(timestamps, scores, budget),
        final_nauc=scores[-1] if scores else 0.0,
        final_accuracy=accuracies[-1] if accuracies else 0.0,
        timestamps=[round(t, 3) for t in timestamps], scores=[round(s, 6) for s in scores],
        wall_seconds=time.monotonic() - began, time_mode=time_mode, notes=list(learner.notes),
        accuracies=[round(a, 6) for a in accuracies], anytime=True,
        wall_timestamps=[round(t, 3) for t in wall_timestamps])


@dataclass
class _Prices:
    """What the cost table charges for one run's network work: a training step by the size of
    its batch (a pool smaller than the configured batch size makes cheaper steps), an image
    through an eval pass at the run's resolution."""

    table: CostTable
    config: TrainConfig
    resolution: int
    image_seconds: float
    step_seconds: dict[int, float] = field(default_factory=dict)  # by batch size, as asked

    @classmethod
    def of(cls, learner: Learner, cost_table: CostTable) -> _Prices:
        """The prices of `learner`'s config; an unpriced config fails here."""
        prices = cls(cost_table, learner.config, learner.resolution,
                     cost_table.predict_seconds(learner.config.backbone, learner.resolution, 1))
        prices.step(learner.config.batch_size)
        return prices

    def step(self, batch_size: int) -> float:
        """Seconds of one training step on `batch_size` examples."""
        if batch_size not in self.step_seconds:
            self.step_seconds[batch_size] = self.table.train_step_seconds(
                self.config.backbone, self.resolution, batch_size, self.config.frozen_fraction)
        return self.step_seconds[batch_size]


def _simulated_now(trainer: Trainer | None, prices: _Prices) -> float:
    """The monotonic wall clock, less the wall time of the network's work so far, plus its
    price."""
    now = time.monotonic()
    if trainer is None:
        return now
    steps = sum(count * prices.step(batch_size)
                for batch_size, count in trainer.steps_by_batch_size.items())
    return (now - trainer.train_seconds - trainer.forward_seconds + steps +
            trainer.forward_images * prices.image_seconds)


def evaluate_task(config: dict[str, Any], dataset_dir: str, budget: float, seed: int,
                  time_mode: str = "wall", cost_table_path: str | None = None,
                  threads: int | None = None) -> dict[str, Any]:
    """`evaluate` with plain arguments and result, for a Dask worker; errors become results."""
    try:
        table = CostTable.load(Path(cost_table_path)) if cost_table_path else None
        result = evaluate(TrainConfig.from_dict(config), Path(dataset_dir), budget, seed,
                          time_mode, table, threads)
    except Exception as err:  # noqa: BLE001 - one failed trial must not end the search
        logger.exception("evaluation failed on %s", dataset_dir)
        result = Evaluation(dataset=Path(dataset_dir).name, budget=budget, seed=seed, alc=0.0,
                            final_nauc=0.0, final_accuracy=0.0, time_mode=time_mode,
                            error=f"{type(err).__name__}: {err}")
    return result.to_dict()
