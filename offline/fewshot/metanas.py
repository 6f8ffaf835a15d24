"""MetaNAS (Elsken et al., 2020): a DARTS supernet whose weights and architecture parameters are
both meta-learned by REPTILE, adapted per task by k steps of Adam on both, with soft pruning.

Search space (Section 5.1): cells of 3 intermediate nodes; each node takes a weighted sum over
every 2-combination of its possible inputs (the cell's two inputs and the earlier nodes; Eq. 7),
each input through a mixed operation over 7 candidates (Eq. 5); 4 cells ordered normal,
reduction, normal, reduction, all with the same number of filters. Both mixtures are softmaxes
with a temperature that the task learner anneals over the inner steps, so the architecture
weights approach one-hot; after adaptation, operations and input combinations whose weight is at
most a threshold are pruned without retraining.
"""
from __future__ import annotations

import functools
import itertools
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from offline.fewshot.reptile import TaskLearner, count_parameters, query_accuracy
from offline.fewshot.tasks import Task

OPERATIONS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "conv_1x5_5x1", "conv_3x3",
              "sep_conv_3x3", "dil_conv_3x3")
NODES = 3
INPUTS_PER_NODE = 2
CELL_TYPES = ("normal", "reduction", "normal", "reduction")


def _bn(channels: int) -> nn.BatchNorm2d:
    # No affine parameters, as in DARTS's search; batch statistics always (transductive).
    return nn.BatchNorm2d(channels, affine=False, track_running_stats=False)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset strided 1x1 convolutions (DARTS)."""

    def __init__(self, channels_in: int, channels: int):
        super().__init__()
        self.relu = nn.ReLU()
        self.left = nn.Conv2d(channels_in, channels // 2, 1, stride=2, bias=False)
        self.right = nn.Conv2d(channels_in, channels - channels // 2, 1, stride=2, bias=False)
        self.bn = _bn(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.left(x), self.right(shifted)], dim=1))


def make_operation(name: str, channels: int, stride: int) -> nn.Module:
    """One candidate operation; ReLU-conv-BN ordering and padding as in DARTS."""
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), _bn(channels))
    if name == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), _bn(channels))
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels)
    if name == "conv_1x5_5x1":
        return nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, (1, 5), (1, stride), (0, 2), bias=False),
            nn.Conv2d(channels, channels, (5, 1), (stride, 1), (2, 0), bias=False), _bn(channels))
    if name == "conv_3x3":
        return nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, stride, 1, bias=False),
                             _bn(channels))
    dilation = 2 if name == "dil_conv_3x3" else 1
    return nn.Sequential(  # sep_conv_3x3 / dil_conv_3x3: depthwise then pointwise, once
        nn.ReLU(), nn.Conv2d(channels, channels, 3, stride, dilation, dilation, groups=channels,
                             bias=False),
        nn.Conv2d(channels, channels, 1, bias=False), _bn(channels))


def _preprocess(channels_in: int, channels: int, reduce: bool) -> nn.Module:
    if reduce:  # the previous-but-one cell's output is twice the current resolution
        return FactorizedReduce(channels_in, channels)
    return nn.Sequential(nn.ReLU(), nn.Conv2d(channels_in, channels, 1, bias=False),
                         _bn(channels))


def input_combinations(node: int) -> list[tuple[int, ...]]:
    """Every 2-combination of node `node`'s possible inputs (0, 1: the cell inputs; 2+: nodes)."""
    return list(itertools.combinations(range(2 + node), INPUTS_PER_NODE))


def _pair_membership(node: int) -> torch.Tensor:
    """[pairs, inputs]: 1 where the input belongs to the pair."""
    membership = torch.zeros(len(input_combinations(node)), 2 + node)
    for row, pair in enumerate(input_combinations(node)):
        membership[row, list(pair)] = 1.0
    return membership


class Cell(nn.Module):
    """A DARTS cell: 3 nodes, each a soft mixture over input pairs of mixed operations; the
    output concatenates the nodes. Architecture weights are passed in (shared per cell type)."""

    def __init__(self, channels_prev_prev: int, channels_prev: int, channels: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.preprocess0 = _preprocess(channels_prev_prev, channels, reduction_prev)
        self.preprocess1 = _preprocess(channels_prev, channels, False)
        self.edges = nn.ModuleDict()
        for node in range(NODES):
            for source in range(2 + node):
                stride = 2 if reduction and source < 2 else 1
                self.edges[f"{source}->{node}"] = nn.ModuleList(
                    make_operation(name, channels, stride) for name in OPERATIONS)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, op_weights: list[torch.Tensor],
                input_weights: list[torch.Tensor]) -> torch.Tensor:
        """op_weights[node]: [inputs, operations]; input_weights[node]: [combinations]. An
        exactly-zero weight skips its operation (that is what pruning sets)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(NODES):
            # Each input's weight is the sum over the pairs that contain it (Eq. 7).
            per_input = input_weights[node] @ _pair_membership(node)
            total = 0
            for source, state in enumerate(states):
                for weight, operation in zip(op_weights[node][source],
                                             self.edges[f"{source}->{node}"]):
                    if per_input[source] != 0 and weight != 0:
                        total = total + per_input[source] * weight * operation(state)
            states.append(total)
        return torch.cat(states[2:], dim=1)


@dataclass(frozen=True)
class Architecture:
    """Per cell type and node: the op weights [inputs, ops] and input-pair weights, as numbers."""
    op_weights: dict[str, list[list[list[float]]]]
    input_weights: dict[str, list[list[float]]]

    def kept(self) -> dict[str, list[dict]]:
        """Per cell type and node: the input pairs and (input, operation) edges with weight > 0."""
        cells = {}
        for cell_type, nodes in self.op_weights.items():
            cells[cell_type] = []
            for node, ops in enumerate(nodes):
                pairs = [pair for pair, weight in zip(input_combinations(node),
                                                      self.input_weights[cell_type][node])
                         if weight > 0]
                inputs = sorted({source for pair in pairs for source in pair})
                edges = [(source, OPERATIONS[o]) for source in inputs
                         for o, weight in enumerate(ops[source]) if weight > 0]
                cells[cell_type].append({"pairs": pairs, "edges": edges})
        return cells


class MetaNASNetwork(nn.Module):
    """The supernet: a stem conv, the 4 cells, global average pooling and a linear classifier.

    Architecture parameters are nn.Parameters (alpha: op logits, beta: input-pair logits, one set
    per cell type), so REPTILE meta-learns them with the weights. `temperature` divides the logits
    (Eq. 5, Eq. 7); `pruned` holds 0/1 masks once `prune` has run.
    """

    def __init__(self, channels: int, in_channels: int, num_classes: int, stem_stride: int = 2):
        super().__init__()
        self.channels = channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, stem_stride, 1,
                                            bias=False), _bn(channels))
        cells, prev_prev, prev, reduction_prev = [], channels, channels, False
        for cell_type in CELL_TYPES:
            reduction = cell_type == "reduction"
            cells.append(Cell(prev_prev, prev, channels, reduction, reduction_prev))
            prev_prev, prev, reduction_prev = prev, NODES * channels, reduction
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(prev, num_classes)
        self.alpha = nn.ParameterDict({
            cell_type: nn.Parameter(1e-3 * torch.randn(sum(2 + n for n in range(NODES)),
                                                       len(OPERATIONS)))
            for cell_type in ("normal", "reduction")})
        self.beta = nn.ParameterDict({
            f"{cell_type}_{node}": nn.Parameter(1e-3 * torch.randn(len(input_combinations(node))))
            for cell_type in ("normal", "reduction") for node in range(NODES)})
        self.temperature = 1.0
        self.masks: dict[str, torch.Tensor] | None = None

    def architecture_parameters(self) -> list[nn.Parameter]:
        return [*self.alpha.values(), *self.beta.values()]

    def weight_parameters(self) -> list[nn.Parameter]:
        architecture = {id(p) for p in self.architecture_parameters()}
        return [p for p in self.parameters() if id(p) not in architecture]

    def mixture_weights(self, cell_type: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Softmax with temperature of the op logits per edge and the pair logits per node,
        zeroed where pruned."""
        ops = torch.softmax(self.alpha[cell_type] / self.temperature, dim=-1)
        if self.masks is not None:
            ops = ops * self.masks[f"alpha_{cell_type}"]
        op_weights, start = [], 0
        for node in range(NODES):
            op_weights.append(ops[start:start + 2 + node])
            start += 2 + node
        input_weights = []
        for node in range(NODES):
            key = f"{cell_type}_{node}"
            weights = torch.softmax(self.beta[key] / self.temperature, dim=-1)
            input_weights.append(weights * self.masks[f"beta_{key}"] if self.masks is not None
                                 else weights)
        return op_weights, input_weights

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(images)
        weights = {cell_type: self.mixture_weights(cell_type) for cell_type in ("normal",
                                                                                "reduction")}
        for cell, cell_type in zip(self.cells, CELL_TYPES):
            s0, s1 = s1, cell(s0, s1, *weights[cell_type])
        return self.classifier(s1.mean(dim=(2, 3)))

    @torch.no_grad()
    def prune(self, threshold: float) -> None:
        """Keep the operations and input pairs whose current weight exceeds `threshold`; the
        surviving weights stay as they are (no renormalisation, no retraining)."""
        self.masks = None
        masks = {}
        for cell_type in ("normal", "reduction"):
            op_weights, input_weights = self.mixture_weights(cell_type)
            masks[f"alpha_{cell_type}"] = (torch.cat(op_weights) > threshold).float()
            for node, weights in enumerate(input_weights):
                masks[f"beta_{cell_type}_{node}"] = (weights > threshold).float()
        self.masks = masks

    @torch.no_grad()
    def architecture(self) -> Architecture:
        """The current (masked) mixture weights as plain numbers."""
        op_weights, input_weights = {}, {}
        for cell_type in ("normal", "reduction"):
            ops, inputs = self.mixture_weights(cell_type)
            op_weights[cell_type] = [node.tolist() for node in ops]
            input_weights[cell_type] = [node.tolist() for node in inputs]
        return Architecture(op_weights, input_weights)

    def pruned_parameter_count(self) -> int:
        """Parameters the pruned network uses: stem, preprocessing, classifier and the kept ops."""
        kept = self.architecture().kept()
        total = count_parameters(self.stem) + count_parameters(self.classifier)
        for cell, cell_type in zip(self.cells, CELL_TYPES):
            total += count_parameters(cell.preprocess0) + count_parameters(cell.preprocess1)
            for node, node_kept in enumerate(kept[cell_type]):
                for source, name in node_kept["edges"]:
                    total += count_parameters(
                        cell.edges[f"{source}->{node}"][OPERATIONS.index(name)])
        return total


def expected_pruned_parameters(channels: int, in_channels: int, num_classes: int) -> float:
    """Parameter count of a pruned network with two inputs per node and one operation per edge
    drawn uniformly from the candidates: the size MetaNAS's width is matched on."""
    network = MetaNASNetwork(channels, in_channels, num_classes)
    total = count_parameters(network.stem) + count_parameters(network.classifier)
    for cell in network.cells:
        total += count_parameters(cell.preprocess0) + count_parameters(cell.preprocess1)
        for node in range(NODES):
            mean_edge = sum(count_parameters(op) for source in range(2 + node)
                            for op in cell.edges[f"{source}->{node}"]) / (
                (2 + node) * len(OPERATIONS))
            total += INPUTS_PER_NODE * mean_edge
    return total


# Pure and slow (it builds a network per candidate width); the few-shot command asks often.
@functools.cache
def channels_for_budget(target_parameters: int, in_channels: int, num_classes: int,
                        kept_ratio: float = 1.0) -> int:
    """The (even) width whose expected pruned network, times `kept_ratio` (how much more than
    that expectation the tasks were measured to keep), is nearest to the target size."""
    return min(range(4, 129, 2), key=lambda channels: abs(
        kept_ratio * expected_pruned_parameters(channels, in_channels, num_classes)
        - target_parameters))


class MetaNASTaskLearner(TaskLearner):
    """Algorithm 2, lines 8-11: Adam on weights and architecture together on the support set,
    with the softmax temperature annealed linearly from `temperature_start` to
    `temperature_end` over the inner steps (soft pruning, Section 4)."""

    def __init__(self, steps: int, batch_size: int, lr: float, arch_lr: float,
                 temperature_start: float, temperature_end: float):
        super().__init__(steps, batch_size, lr)
        self.arch_lr = arch_lr
        self.temperature_start = temperature_start
        self.temperature_end = temperature_end

    def param_groups(self, model: MetaNASNetwork) -> list[dict]:
        return [{"params": model.weight_parameters(), "lr": self.lr},
                {"params": model.architecture_parameters(), "lr": self.arch_lr}]

    def temperature(self, step: int) -> float:
        done = step / max(self.steps - 1, 1)
        return (1 - done) * self.temperature_start + done * self.temperature_end

    def before_step(self, model: MetaNASNetwork, step: int) -> None:
        model.temperature = self.temperature(step)


def pruned_and_unpruned_score(threshold: float):
    """A meta_test score: query accuracy before and after pruning, and what survived."""
    def score(adapted: MetaNASNetwork, task: Task) -> dict:
        unpruned = query_accuracy(adapted, task)
        adapted.prune(threshold)
        return {"accuracy": query_accuracy(adapted, task), "unpruned_accuracy": unpruned,
                "pruned_parameters": adapted.pruned_parameter_count(),
                "kept": adapted.architecture().kept()}
    return score


def architecture_frequencies(kept_per_task: list[dict[str, list[dict]]]) -> Counter:
    """How many tasks keep each (cell type, node, input, operation) edge."""
    counts: Counter = Counter()
    for kept in kept_per_task:
        for cell_type, nodes in kept.items():
            for node, node_kept in enumerate(nodes):
                for source, name in node_kept["edges"]:
                    counts[(cell_type, node, source, name)] += 1
    return counts
