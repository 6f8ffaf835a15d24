"""REPTILE-initialised heads over frozen backbone features (the low-resource paper's setting).

Features of every archive come from the project's FeatureExtractor (EfficientNet-Lite0, images at
64 px) and are cached once. For each test dataset, a linear or MLP head with n_way outputs is
meta-trained by REPTILE on n-way tasks over the classes of the *other* datasets (labels shuffled
per task, the classic REPTILE trick), then fine-tuned on new tasks of the test dataset for
0, 1, 2, ... inner steps and compared with the same head plainly initialised (zero / PyTorch
default) at the same steps, and with an L2 logistic regression fitted by LBFGS.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from tqdm import tqdm

from autodl_meta.backbones import FeatureExtractor
from offline.fewshot.reptile import MetaSchedule, TaskLearner, meta_train, query_accuracy
from offline.fewshot.tasks import CACHE_DIR, TaskSampler, cached_archive

logger = logging.getLogger(__name__)

BACKBONE = "efficientnet-lite0"
FEATURE_SIZE = 64
HIDDEN = 256
# Same-class siblings: PACS domains share their 7 classes, so they never meta-train each other.
FAMILIES = {"pacs_photo": "pacs", "pacs_art_painting": "pacs", "pacs_cartoon": "pacs"}


def archive_features(path: Path, per_class: int, seed: int = 0, cache_dir: Path = CACHE_DIR
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features [n, 1280] of at most `per_class` images per class, cached."""
    cache = cache_dir / f"features_{Path(path).stem}_{BACKBONE}_{FEATURE_SIZE}px_{per_class}.npz"
    if cache.is_file():
        stored = np.load(cache)
        return stored["features"], stored["labels"]
    images, labels, _ = cached_archive(path, FEATURE_SIZE, cache_dir)
    rng = np.random.default_rng(seed)
    chosen = np.sort(np.concatenate([
        rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]))
    extractor = FeatureExtractor(BACKBONE, images.shape[1]).eval()
    features = []
    with torch.no_grad():
        for start in tqdm(range(0, len(chosen), 64), desc=f"features {Path(path).stem}",
                          unit="batch", leave=False):
            batch = torch.from_numpy(images[chosen[start:start + 64]]).float() / 255
            features.append(extractor(batch).numpy())
    np.savez_compressed(cache, features=np.concatenate(features), labels=labels[chosen])
    return np.concatenate(features), labels[chosen]


@dataclass
class FeaturePool:
    """Features of several datasets with their classes renumbered into one label space."""
    features: np.ndarray
    labels: np.ndarray

    @classmethod
    def join(cls, parts: list[tuple[np.ndarray, np.ndarray]]) -> FeaturePool:
        features, labels, offset = [], [], 0
        for part_features, part_labels in parts:
            features.append(part_features)
            labels.append(part_labels + offset)
            offset += int(part_labels.max()) + 1
        return cls(np.concatenate(features), np.concatenate(labels))

    def classes_with(self, minimum: int) -> np.ndarray:
        """Classes holding at least `minimum` examples (enough for shots + queries)."""
        ids, counts = np.unique(self.labels, return_counts=True)
        return ids[counts >= minimum]


def make_head(kind: str, in_features: int, n_way: int, zero: bool = False) -> nn.Module:
    """A linear head (zero-initialised when `zero`) or a two-layer MLP head."""
    if kind == "linear":
        head = nn.Linear(in_features, n_way)
        if zero:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        return head
    return nn.Sequential(nn.Linear(in_features, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, n_way))


def steps_curve(head: nn.Module, learner: TaskLearner, sampler: TaskSampler, num_tasks: int,
                n_way: int, k_shot: int, query_per_class: int, steps: list[int], seed: int
                ) -> dict[int, float]:
    """Mean query accuracy after each number of full-batch inner steps, over the same tasks."""
    accuracies: dict[int, list[float]] = {step: [] for step in steps}
    for _ in range(num_tasks):
        task = sampler.sample(n_way, k_shot, query_per_class)
        for step in steps:
            # Full-batch steps: the same seed replays the same trajectory truncated at `step`.
            adapted = learner.adapt(copy.deepcopy(head), task.support_images,
                                    task.support_labels, torch.Generator().manual_seed(seed),
                                    steps=step)
            accuracies[step].append(query_accuracy(adapted, task))
    return {step: float(np.mean(values)) for step, values in accuracies.items()}


def logistic_regression_accuracy(sampler: TaskSampler, num_tasks: int, n_way: int, k_shot: int,
                                 query_per_class: int) -> float:
    """Mean query accuracy of an LBFGS L2 logistic regression fitted on each support set."""
    accuracies = []
    for _ in range(num_tasks):
        task = sampler.sample(n_way, k_shot, query_per_class)
        model = LogisticRegression(C=1.0, max_iter=1000).fit(task.support_images.numpy(),
                                                             task.support_labels.numpy())
        accuracies.append(float((model.predict(task.query_images.numpy()) ==
                                 task.query_labels.numpy()).mean()))
    return float(np.mean(accuracies))


@dataclass(frozen=True)
class HeadSetting:
    """What the head comparison runs: task shape, inner loop, meta-training budget."""
    n_way: int = 5
    k_shot: int = 5
    query_per_class: int = 10
    train_shots: int = 5
    inner_steps: int = 5
    lr: float = 1e-3
    iterations: int = 1000
    meta_batch: int = 5
    eval_tasks: int = 200
    eval_steps: tuple[int, ...] = (0, 1, 2, 5, 10, 25)
    per_class: int = 40


def compare_heads(test_name: str, archives: dict[str, Path], setting: HeadSetting, seed: int
                  ) -> dict:
    """Plain vs REPTILE-initialised linear and MLP heads (and logistic regression) on n-way
    k-shot tasks of `test_name`, meta-training on the other archives' classes."""
    torch.manual_seed(seed)
    family = FAMILIES.get(test_name, test_name)
    train_names = [name for name in archives if FAMILIES.get(name, name) != family]
    train_pool = FeaturePool.join([archive_features(archives[name], setting.per_class)
                                   for name in train_names])
    test_pool = FeaturePool.join([archive_features(archives[test_name], setting.per_class)])
    # Standardise with meta-train statistics only: the test dataset is unseen until its tasks.
    mean, std = train_pool.features.mean(0), train_pool.features.std(0) + 1e-6
    train_pool.features = (train_pool.features - mean) / std
    test_pool.features = (test_pool.features - mean) / std
    needed = setting.k_shot + setting.query_per_class
    train_sampler = TaskSampler(train_pool.features, train_pool.labels,
                                train_pool.classes_with(setting.train_shots), seed)

    def test_sampler() -> TaskSampler:  # the same test tasks for every head
        return TaskSampler(test_pool.features, test_pool.labels,
                           test_pool.classes_with(needed), seed + 1000)

    learner = TaskLearner(setting.inner_steps, setting.n_way * setting.k_shot, setting.lr)
    in_features = train_pool.features.shape[1]
    curve_args = (setting.eval_tasks, setting.n_way, setting.k_shot, setting.query_per_class,
                  list(setting.eval_steps), seed)
    schedule = MetaSchedule(setting.iterations, setting.meta_batch)
    curves = {}
    for kind in ("linear", "mlp"):
        plain = make_head(kind, in_features, setting.n_way, zero=True)
        meta = meta_train(copy.deepcopy(plain), learner, train_sampler, schedule, setting.n_way,
                          setting.train_shots, seed, desc=f"reptile {kind} head")
        curves[f"{kind}_plain"] = steps_curve(plain, learner, test_sampler(), *curve_args)
        curves[f"{kind}_reptile"] = steps_curve(meta, learner, test_sampler(), *curve_args)
    return {"test": test_name, "meta_train": train_names,
            "meta_train_classes": len(train_sampler.classes),
            "test_classes": len(test_sampler().classes), "curves": curves,
            "logistic_regression": logistic_regression_accuracy(
                test_sampler(), setting.eval_tasks, setting.n_way, setting.k_shot,
                setting.query_per_class)}
