"""REPTILE (Nichol et al., 2018), first order, over any nn.Module.

The task learner runs k steps of Adam on a task's support set (mini-batches, cross-entropy); the
meta-learner moves the meta-parameters towards the adapted ones, θ ← θ + ε · mean_i(θ̃_i − θ),
with ε annealed linearly over the meta-iterations. Every nn.Parameter of the model is
meta-learned this way, so MetaNAS's architecture parameters follow the same update as the
weights (Algorithm 2, lines 13-14).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional
from tqdm import tqdm

from offline.fewshot.tasks import Task, TaskSampler

logger = logging.getLogger(__name__)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


class TaskLearner:
    """k steps of Adam on a support set; subclasses add parameter groups and per-step hooks."""

    def __init__(self, steps: int, batch_size: int, lr: float):
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr

    def param_groups(self, model: nn.Module) -> list[dict]:
        return [{"params": list(model.parameters()), "lr": self.lr}]

    def before_step(self, model: nn.Module, step: int) -> None:
        """Called before inner step `step` (0-based) of `self.steps`."""

    def adapt(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              generator: torch.Generator, steps: int | None = None) -> nn.Module:
        """Train `model` in place on (images, labels) and return it."""
        # beta1 = 0 as in REPTILE: a fresh optimizer per task has no momentum to carry over.
        optimizer = torch.optim.Adam(self.param_groups(model), betas=(0.0, 0.999))
        model.train()
        for step, batch in zip(range(self.steps if steps is None else steps),
                               _mini_batches(len(labels), self.batch_size, generator)):
            self.before_step(model, step)
            loss = functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return model


def _mini_batches(size: int, batch_size: int, generator: torch.Generator):
    """Endless mini-batch indices: epochs of shuffled data, a batch never spanning two epochs."""
    while True:
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, batch_size):
            yield order[start:start + batch_size]


@dataclass(frozen=True)
class MetaSchedule:
    """The outer loop's budget: meta-iterations, tasks per iteration, and ε from start to final."""
    iterations: int
    meta_batch: int
    meta_step: float = 1.0
    meta_step_final: float = 0.0

    def epsilon(self, iteration: int) -> float:
        done = iteration / max(self.iterations, 1)
        return (1 - done) * self.meta_step + done * self.meta_step_final


def reptile_update(model: nn.Module, learner: TaskLearner, tasks: list[Task], epsilon: float,
                   generator: torch.Generator) -> None:
    """One outer step: adapt a copy of `model` to each task, move `model` towards their mean."""
    meta = [parameter.detach().clone() for parameter in model.parameters()]
    mean_delta = [torch.zeros_like(parameter) for parameter in meta]
    for task in tasks:
        adapted = learner.adapt(copy.deepcopy(model), task.support_images, task.support_labels,
                                generator)
        for delta, new, old in zip(mean_delta, adapted.parameters(), meta):
            delta += (new.detach() - old) / len(tasks)
    with torch.no_grad():
        for parameter, delta in zip(model.parameters(), mean_delta):
            parameter += epsilon * delta


def meta_train(model: nn.Module, learner: TaskLearner, sampler: TaskSampler,
               schedule: MetaSchedule, n_way: int, train_shots: int, seed: int,
               desc: str = "meta-train") -> nn.Module:
    """REPTILE's outer loop over `schedule.iterations` meta-batches of n-way tasks."""
    generator = torch.Generator().manual_seed(seed)
    for iteration in tqdm(range(schedule.iterations), desc=desc, unit="it", leave=False):
        tasks = [sampler.sample(n_way, train_shots, 0) for _ in range(schedule.meta_batch)]
        reptile_update(model, learner, tasks, schedule.epsilon(iteration), generator)
    return model


@torch.no_grad()
def query_accuracy(model: nn.Module, task: Task) -> float:
    """Accuracy on the query set, classified as one batch (transductive BatchNorm)."""
    model.train()
    predicted = model(task.query_images).argmax(dim=1)
    return (predicted == task.query_labels).float().mean().item()


def meta_test(model: nn.Module, learner: TaskLearner, sampler: TaskSampler, num_tasks: int,
              n_way: int, k_shot: int, query_per_class: int, seed: int,
              score: Callable[[nn.Module, Task], dict] | None = None,
              desc: str = "meta-test") -> list[dict]:
    """Fine-tune a copy of `model` on each new task's support set, then score it on the query
    set: {"accuracy": ...} by default, or whatever `score(adapted, task)` returns."""
    score = score or (lambda adapted, task: {"accuracy": query_accuracy(adapted, task)})
    generator = torch.Generator().manual_seed(seed)
    results = []
    for _ in tqdm(range(num_tasks), desc=desc, unit="task", leave=False):
        task = sampler.sample(n_way, k_shot, query_per_class)
        adapted = learner.adapt(copy.deepcopy(model), task.support_images, task.support_labels,
                                generator)
        results.append(score(adapted, task))
    return results
