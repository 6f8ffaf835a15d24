"""Zero-shot config choice: a portfolio config picked from what the metadata says of a dataset.

    metadata/zeroshot.json   the portfolio, and per time budget a model that scores its configs

A dataset's meta-features (`meta_features`) are read from the metadata the platform hands to
`Model(metadata)`: classes, training examples, examples per class, image side, channels, frames.
No record is read and nothing is fingerprinted, so the choice costs microseconds and the first
prediction waits for nothing. The models are trained offline on the meta-dataset's matrix (every
portfolio config on every task, `python -m offline zeroshot`): each scores every config, and the
best score runs. Most predict a config's ALC relative to the mean ALC of all configs on the task
(a task's difficulty is the same for every config, so only the relative part says which one to
run). The kinds:

- `linear`: ridge regression per config on the standardised meta-features;
- `ranking`: linear scores per config trained, as in zero-shot AutoML with pretrained models
  (Öztürk et al., 2022), with a pairwise logistic ranking loss: on every training task, of every
  two configs the one with the higher ALC should score higher (only the order counts, not by
  how much);
- `nearest`: the mean relative ALC of the `k` training tasks nearest in standardised
  meta-features;
- `tree`: a shallow decision tree on the standardised meta-features that predicts which config
  is best, its training tasks weighted by how far apart their configs are (its scores: the
  share of that weight each config won in the leaf the dataset falls in);
- `single`: the mean relative ALC over all training tasks, whatever the features: the single
  best config, shipped where none of the others beat it held out;
- `fixed`: one config named in advance (the portfolio's default), learned from nothing: shipped
  where no kind above beat it held out (its `bias` is 1 for that config, 0 for the others).

A run uses the model of the budget nearest its own on a log scale (the anytime runtime makes a
long run's first T' seconds the run at T', so every budget up to the largest is measured). The
file is validated on load; every error names the file and the field.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autodl_meta.config import ConfigError, TrainConfig

FORMAT_VERSION = 1
ZEROSHOT_FILE = "zeroshot.json"
KINDS = ("linear", "ranking", "nearest", "tree", "single", "fixed")
# Kinds whose model is a linear score per config, `weights @ x + bias`.
LINEAR_KINDS = ("linear", "ranking")
FEATURES = ("log_classes", "log_train_examples", "log_examples_per_class", "log_side",
            "channels", "log_frames")
# Variable-size images and clips declare -1: these stand in for a side or a length not given
# (a photo at its usual size, a short clip).
UNKNOWN_SIDE = 256
UNKNOWN_FRAMES = 16
# A tree node's row in `weights`: the feature it splits on (-1 at a leaf), the threshold (a
# standardised feature at most this goes left) and the rows of its two children (-1 at a leaf).
TREE_NODE_FIELDS = ("feature", "threshold", "left", "right")


class ZeroShotError(ValueError):
    """metadata/zeroshot.json is invalid; the message names the file and the field."""


def meta_features(metadata: Any) -> np.ndarray:
    """The FEATURES of the dataset an AutoDL metadata object describes."""
    classes = max(1, int(metadata.get_output_size()))
    examples = max(1, int(metadata.size()))
    rows, cols = metadata.get_matrix_size()
    side = max(rows, cols) if rows > 0 and cols > 0 else UNKNOWN_SIDE
    channels = metadata.get_num_channels()
    frames = metadata.get_sequence_size()
    frames = frames if frames > 0 else UNKNOWN_FRAMES
    return np.array([math.log(classes), math.log(examples), math.log(examples / classes),
                     math.log(side), 3.0 if channels == 3 else 1.0, math.log(frames)])


@dataclass
class BudgetModel:
    """Scores every portfolio config from standardised meta-features, for one time budget."""

    budget: float
    kind: str
    mean: np.ndarray           # features: the training tasks' mean and std
    scale: np.ndarray
    weights: np.ndarray        # linear, ranking: configs x features; nearest: training
                               # tasks x features; tree: nodes x TREE_NODE_FIELDS; single,
                               # fixed: none (0 x features)
    bias: np.ndarray           # linear, single: configs (relative ALC); ranking: configs (a
                               # score); fixed: configs (one-hot);
                               # nearest: training tasks x configs (relative ALC); tree: nodes x
                               # configs (each config's share of the node's weight)
    neighbours: int = 0        # nearest: k

    def standardise(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=float) - self.mean) / self.scale

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Each config's score on a dataset with these meta-features, the highest the best: its
        predicted relative ALC (linear, nearest, single), its rank score (ranking) or its share
        of the leaf (tree)."""
        if self.kind in ("single", "fixed"):
            return self.bias
        x = self.standardise(features)
        if self.kind in LINEAR_KINDS:
            return self.weights @ x + self.bias
        if self.kind == "tree":
            node = 0
            while self.weights[node, 0] >= 0:
                feature, threshold, left, right = self.weights[node]
                node = int(left if x[int(feature)] <= threshold else right)
            return self.bias[node]
        distances = np.linalg.norm(self.weights - x, axis=1)
        nearest = np.argsort(distances, kind="stable")[:self.neighbours]
        return self.bias[nearest].mean(axis=0)

    def selectable(self) -> set[int]:
        """Indices of the configs this model picks for some dataset: the one it always picks
        (single, fixed), those that win a leaf (tree), or every config (linear, ranking,
        nearest, whose scores move with the features)."""
        if self.kind in ("single", "fixed"):
            return {int(np.argmax(self.bias))}
        if self.kind == "tree":
            leaves = self.weights[:, 0] < 0
            return {int(np.argmax(shares)) for shares in self.bias[leaves]}
        return set(range(self.bias.shape[-1]))

    def to_json(self) -> dict[str, Any]:
        return {"budget": self.budget, "kind": self.kind, "neighbours": self.neighbours,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "bias": self.bias.tolist()}


@dataclass
class ZeroShotSelector:
    """The portfolio and one scoring model per budget it was trained at."""

    configs: dict[str, TrainConfig]
    models: list[BudgetModel]

    def model_for(self, budget: float) -> BudgetModel:
        """The model trained at the budget nearest `budget` on a log scale."""
        return min(self.models, key=lambda model: abs(math.log(model.budget / max(budget, 1.0))))

    def select(self, features: np.ndarray, budget: float) -> tuple[str, np.ndarray]:
        """The name of the config with the best predicted ALC, and every config's score."""
        scores = self.model_for(budget).scores(features)
        return list(self.configs)[int(np.argmax(scores))], scores

    def selectable_configs(self) -> dict[str, TrainConfig]:
        """The portfolio configs some budget's model can pick: the only ones a run can train."""
        names = list(self.configs)
        picked = set().union(*(model.selectable() for model in self.models))
        return {names[index]: self.configs[names[index]] for index in sorted(picked)}

    @property
    def largest_budget(self) -> float:
        return max(model.budget for model in self.models)

    def to_json(self, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "features": list(FEATURES),
                "configs": {name: config.to_dict() for name, config in self.configs.items()},
                "models": [model.to_json() for model in self.models],
                "provenance": provenance or {}}

    def save(self, path: Path, provenance: dict[str, Any] | None = None) -> None:
        path.write_text(json.dumps(self.to_json(provenance), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ZeroShotSelector":
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ZeroShotError(f"{path}: cannot be read as JSON: {err}") from err
        if not isinstance(values, dict):
            raise ZeroShotError(f"{path}: expected a JSON object")
        for name in ("format_version", "features", "configs", "models"):
            if name not in values:
                raise ZeroShotError(f"{path}: missing field '{name}'")
        if values["format_version"] != FORMAT_VERSION:
            raise ZeroShotError(f"{path}: field 'format_version' is {values['format_version']!r},"
                                f" this runtime reads {FORMAT_VERSION}")
        if values["features"] != list(FEATURES):
            raise ZeroShotError(f"{path}: field 'features' is {values['features']}, but this "
                                f"runtime computes {list(FEATURES)}")
        if not isinstance(values["configs"], dict) or not values["configs"]:
            raise ZeroShotError(f"{path}: field 'configs' must be a non-empty object")
        try:
            configs = {name: TrainConfig.from_dict(config, f"{path}: configs.{name}")
                       for name, config in values["configs"].items()}
        except (ConfigError, TypeError) as err:
            raise ZeroShotError(str(err)) from err
        if not isinstance(values["models"], list) or not values["models"]:
            raise ZeroShotError(f"{path}: field 'models' must be a non-empty list")
        models = [_load_model(path, f"models[{i}]", model, len(configs))
                  for i, model in enumerate(values["models"])]
        budgets = [model.budget for model in models]
        if len(set(budgets)) < len(budgets):
            raise ZeroShotError(f"{path}: field 'models' holds two models of one budget "
                                f"({', '.join(f'{b:g}' for b in budgets)} s)")
        return cls(configs, sorted(models, key=lambda model: model.budget))


def _load_model(path: Path, where: str, values: Any, config_count: int) -> BudgetModel:
    def fail(field: str, why: str) -> ZeroShotError:
        return ZeroShotError(f"{path}: field '{where}.{field}' {why}")

    if not isinstance(values, dict):
        raise ZeroShotError(f"{path}: field '{where}' must be an object")
    for name in ("budget", "kind", "neighbours", "mean", "scale", "weights", "bias"):
        if name not in values:
            raise fail(name, "is missing")
    budget, kind, neighbours = values["budget"], values["kind"], values["neighbours"]
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) \
            or not 0 < budget < math.inf:
        raise fail("budget", "must be a positive, finite number of seconds")
    if kind not in KINDS:
        raise fail("kind", f"must be one of {KINDS}, got {kind!r}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, int):
        raise fail("neighbours", f"must be an integer, got {neighbours!r}")
    if kind != "nearest" and neighbours != 0:
        raise fail("neighbours", f"must be 0 (the {kind} kind averages no neighbours)")
    arrays = {}
    for name in ("mean", "scale", "weights", "bias"):
        try:
            arrays[name] = np.asarray(values[name], dtype=float)
        except (TypeError, ValueError) as err:
            raise fail(name, f"must be numbers: {err}") from None
        if not np.isfinite(arrays[name]).all():
            raise fail(name, "must be finite")
    width = len(FEATURES)
    if arrays["mean"].shape != (width,):
        raise fail("mean", f"must hold {width} numbers")
    if arrays["scale"].shape != (width,) or (arrays["scale"] <= 0).any():
        raise fail("scale", f"must hold {width} positive numbers")
    weights, bias = arrays["weights"], arrays["bias"]
    if kind in LINEAR_KINDS and weights.shape != (config_count, width):
        raise fail("weights", f"must be {config_count} x {width} (configs x features)")
    if kind in ("single", "fixed"):
        if weights.size:
            raise fail("weights", f"must be empty (the {kind} kind reads no feature)")
        weights = weights.reshape(0, width)
    if kind in (*LINEAR_KINDS, "single", "fixed") and bias.shape != (config_count,):
        raise fail("bias", f"must hold {config_count} numbers (one per config)")
    if kind == "fixed" and sorted(bias.tolist()) != [0.0] * (config_count - 1) + [1.0]:
        raise fail("bias", "must be 1 for the fixed config and 0 for the others")
    if kind == "tree":
        _check_tree(weights, bias, config_count, fail)
    if kind == "nearest":
        if weights.ndim != 2 or weights.shape[1] != width or len(weights) == 0:
            raise fail("weights", f"must be tasks x {width} (the training tasks' features)")
        if bias.shape != (len(weights), config_count):
            raise fail("bias", f"must be {len(weights)} x {config_count} (tasks x configs)")
        if not 1 <= neighbours <= len(weights):
            raise fail("neighbours", f"must be an integer in [1, {len(weights)}]")
    return BudgetModel(float(budget), kind, arrays["mean"], arrays["scale"], weights, bias,
                       int(neighbours))


def _check_tree(nodes: np.ndarray, shares: np.ndarray, config_count: int,
                fail: Callable[[str, str], ZeroShotError]) -> None:
    """A tree's nodes (nodes x TREE_NODE_FIELDS) each split on a feature or end in a leaf, and
    each child comes after its parent, so a walk from the root ends in a leaf."""
    fields = len(TREE_NODE_FIELDS)
    if nodes.ndim != 2 or nodes.shape[1] != fields or len(nodes) == 0:
        raise fail("weights", f"must be nodes x {fields} ({', '.join(TREE_NODE_FIELDS)})")
    if shares.shape != (len(nodes), config_count):
        raise fail("bias", f"must be {len(nodes)} x {config_count} (nodes x configs)")
    for row, (feature, _, left, right) in enumerate(nodes):
        if feature == -1 and left == right == -1:
            continue
        if feature not in range(len(FEATURES)) or left not in range(row + 1, len(nodes)) \
                or right not in range(row + 1, len(nodes)):
            raise fail("weights", f"node {row} must split on a feature in [0, "
                                  f"{len(FEATURES)}) into two later nodes, or be a leaf "
                                  f"(-1, _, -1, -1)")
