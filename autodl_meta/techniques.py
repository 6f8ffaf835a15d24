"""Low-data training techniques (the VIPriors study): losses, embedding learning and a GCN.

- `cosine_loss`: 1 - cos(output, target), the cosine loss of Barz & Denzler.
- Embedding losses on L2-normalised projections of the backbone features, for batches that hold
  several examples per class (`class_balanced_batch`):
  `supcon_loss` (supervised contrastive, Khosla et al.), `contrastive_loss` (Siamese pairs: all
  pairs of the batch share the network) and `triplet_loss` (batch-hard triplets).
- `gcn_scores`: a transductive step over train and test embeddings: edges between samples closer
  than the mean distance, weights 1/d normalised per node, two GCN layers trained on the labelled
  (training) nodes, class scores for the unlabelled (test) ones. `GraphRefinement` applies it to
  a prediction, over a fixed set of labelled nodes (`graph_nodes`); the runtime's stages and the
  technique study both call it.
MixUp and CutMix live in the trainer's augmentation.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SUPCON_TEMPERATURE = 0.1
CONTRASTIVE_MARGIN = 1.0
TRIPLET_MARGIN = 0.3
EMBEDDING_DIM = 128
EXAMPLES_PER_CLASS = 4     # in a class-balanced batch: positives for every anchor
GCN_INPUT_DIM = 64
GCN_HIDDEN = 64
GCN_EPOCHS = 100
GCN_LEARNING_RATE = 0.05
# Each node keeps this share of itself: its closer-than-mean neighbours are about half the
# graph, and an equal mix with them washed the classes out (pacs_photo, brain_mri features).
GCN_SELF_WEIGHT = 0.8
GCN_TEST_CHUNK = 2000   # test nodes per graph: memory and time grow with the nodes squared
GCN_WEIGHT_DECAY = 5e-4
GNN_TRAIN_NODES = 500   # labelled nodes of the transductive graph


def cosine_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(output, target); targets one-hot, multi-hot or mixed."""
    return (1.0 - F.cosine_similarity(outputs, targets, dim=1)).mean()


def cosine_scores(outputs: torch.Tensor) -> torch.Tensor:
    """Class scores in [0, 1] from outputs trained with the cosine loss: (cos + 1) / 2."""
    return (F.normalize(outputs, dim=1) + 1.0) / 2.0


def _pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor,
                temperature: float = SUPCON_TEMPERATURE) -> torch.Tensor:
    """Supervised contrastive loss (L_out) of normalised `embeddings` with integer `labels`;
    anchors without a positive in the batch are left out."""
    positives, _ = _pair_masks(labels)
    logits = embeddings @ embeddings.T / temperature
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    log_prob = logits - torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1,
                                        keepdim=True)
    counts = positives.sum(1)
    has_positive = counts > 0
    if not has_positive.any():
        return embeddings.sum() * 0.0
    mean_log_prob = (log_prob * positives).sum(1)[has_positive] / counts[has_positive]
    return -mean_log_prob.mean()


def contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor,
                     margin: float = CONTRASTIVE_MARGIN) -> torch.Tensor:
    """Siamese contrastive loss over every pair of the batch: d^2 for pairs of one class,
    max(0, margin - d)^2 for pairs of two."""
    positives, negatives = _pair_masks(labels)
    distances = torch.cdist(embeddings, embeddings).clamp_min(1e-9)
    pull = (distances.square() * positives).sum() / positives.sum().clamp_min(1)
    push = (F.relu(margin - distances).square() * negatives).sum() / negatives.sum().clamp_min(1)
    return pull + push


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor,
                 margin: float = TRIPLET_MARGIN) -> torch.Tensor:
    """Batch-hard triplet loss: each anchor with its farthest positive and nearest negative."""
    positives, negatives = _pair_masks(labels)
    distances = torch.cdist(embeddings, embeddings).clamp_min(1e-9)
    valid = positives.any(1) & negatives.any(1)
    if not valid.any():
        return embeddings.sum() * 0.0
    hardest_positive = (distances * positives).max(1).values
    hardest_negative = distances.masked_fill(~negatives, float("inf")).min(1).values
    return F.relu(hardest_positive - hardest_negative + margin)[valid].mean()


EMBEDDING_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "supcon": supcon_loss,
    "contrastive": contrastive_loss,
    "triplet": triplet_loss,
}


def projection_head(num_features: int) -> nn.Module:
    """The MLP that maps backbone features to the space the embedding loss shapes."""
    return nn.Sequential(nn.Linear(num_features, 2 * EMBEDDING_DIM), nn.ReLU(inplace=True),
                         nn.Linear(2 * EMBEDDING_DIM, EMBEDDING_DIM))


def class_balanced_batch(by_class: list[torch.Tensor], batch_size: int,
                         generator: torch.Generator) -> torch.Tensor:
    """Indices of `batch_size // EXAMPLES_PER_CLASS` random classes with EXAMPLES_PER_CLASS
    examples each (drawn with replacement), so that every anchor has positives; with fewer
    classes than that, more examples of each keep the batch at `batch_size`."""
    chosen = torch.randperm(len(by_class), generator=generator)[
        :max(2, batch_size // EXAMPLES_PER_CLASS)]
    per_class = max(EXAMPLES_PER_CLASS, batch_size // len(chosen))
    picks = [by_class[c][torch.randint(0, len(by_class[c]), (per_class,), generator=generator)]
             for c in chosen.tolist()]
    return torch.cat(picks)


def group_by_class(labels: torch.Tensor) -> list[torch.Tensor]:
    """Positions of each class's examples in `labels` (one-hot rows); empty classes dropped."""
    hard = labels.argmax(1)
    groups = [torch.nonzero(hard == c).flatten() for c in range(labels.shape[1])]
    return [group for group in groups if len(group)]


def similarity_graph(embeddings: torch.Tensor) -> torch.Tensor:
    """Row-normalised adjacency with self-loops: edge i-j when d(i, j) is below the mean
    distance, weight 1/d, each node's weights summing to one, then mixed with the node itself
    (GCN_SELF_WEIGHT)."""
    distances = torch.cdist(embeddings, embeddings)
    off_diagonal = ~torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
    threshold = distances[off_diagonal].mean()
    weights = torch.where((distances < threshold) & off_diagonal,
                          1.0 / distances.clamp_min(1e-6), torch.zeros_like(distances))
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
    eye = torch.eye(len(embeddings), device=embeddings.device)
    return (1.0 - GCN_SELF_WEIGHT) * weights + GCN_SELF_WEIGHT * eye


class GCN(nn.Module):
    """Two graph-convolution layers. The first propagation (adjacency @ nodes) is computed once
    by the caller; the second is computed only for the rows asked for, as training needs the
    labelled rows and prediction the test rows."""

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.first = nn.Linear(num_features, GCN_HIDDEN)
        self.second = nn.Linear(GCN_HIDDEN, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, adjacency_rows: torch.Tensor, propagated: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(F.relu(self.first(propagated)))
        return self.second(adjacency_rows @ hidden)


def principal_components(nodes: torch.Tensor, count: int) -> torch.Tensor:
    """`nodes` centred and projected on their first `count` principal axes: the GCN's cost is
    linear in the feature width, and pooled CNN features keep most of their spread in few axes."""
    centred = nodes - nodes.mean(0, keepdim=True)
    if centred.shape[1] <= count:
        return centred
    _, _, axes = torch.pca_lowrank(centred, q=min(count, *centred.shape), center=False)
    return centred @ axes


def refine_with_gcn(prediction: np.ndarray, train_embeddings: torch.Tensor,
                    train_labels: torch.Tensor, test_embeddings: torch.Tensor, multilabel: bool,
                    seed: int = 0, chunk: int = GCN_TEST_CHUNK) -> np.ndarray:
    """`prediction` averaged with the GCN's scores; the test nodes go in chunks of `chunk`
    beside all train nodes, as memory and time grow with the square of the nodes."""
    graph = np.concatenate([
        gcn_scores(train_embeddings, train_labels, test_embeddings[start:start + chunk],
                   multilabel, seed=seed)
        for start in range(0, len(test_embeddings), chunk)])
    return (prediction + graph) / 2


def gcn_scores(train_embeddings: torch.Tensor, train_labels: torch.Tensor,
               test_embeddings: torch.Tensor, multilabel: bool, seed: int = 0,
               epochs: int = GCN_EPOCHS) -> np.ndarray:
    """Class scores of the test nodes from a GCN over train + test embeddings, trained on the
    train nodes' labels (one-hot or multi-hot rows)."""
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        nodes = F.normalize(torch.cat([train_embeddings, test_embeddings]).float(), dim=1)
        adjacency = similarity_graph(nodes)
        propagated = adjacency @ principal_components(nodes, GCN_INPUT_DIM)
        labelled = len(train_embeddings)
        model = GCN(propagated.shape[1], train_labels.shape[1])
        optimizer = torch.optim.Adam(model.parameters(), lr=GCN_LEARNING_RATE,
                                     weight_decay=GCN_WEIGHT_DECAY)
        targets = train_labels.float() if multilabel else train_labels.argmax(1)
        loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
        model.train()
        for _ in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(adjacency[:labelled], propagated), targets).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(adjacency[labelled:], propagated)
        scores = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
        return scores.numpy()
    finally:
        torch.random.set_rng_state(rng_state)


def graph_nodes(train: torch.Tensor, seed: int) -> torch.Tensor:
    """Up to GNN_TRAIN_NODES of the training rows `train`, the labelled nodes of the graph."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train[order[:GNN_TRAIN_NODES]]


class GraphRefinement:
    """The transductive step as a stage's `refine(prediction, test_features)`: `prediction`
    averaged with a GCN's scores over the labelled nodes (drawn by `use_nodes`) and the test
    examples. The nodes are embedded once per network state (`network_moved` forgets that
    embedding); `last_seconds` is what the latest refinement took on `clock` (the run's),
    embedding included."""

    def __init__(self, embed: Callable[[torch.Tensor], torch.Tensor], multilabel: bool,
                 seed: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.embed, self.multilabel, self.seed = embed, multilabel, seed
        self.clock = clock
        self.node_images = torch.zeros(0)
        self.node_labels = torch.zeros(0)
        self._node_features: torch.Tensor | None = None
        self.last_seconds = 0.0

    def use_nodes(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> None:
        """The labelled nodes: `graph_nodes` of `rows` (the training rows of `images`)."""
        nodes = graph_nodes(rows, self.seed)
        self.node_images, self.node_labels = images[nodes], labels[nodes]
        self._node_features = None

    def network_moved(self) -> None:
        self._node_features = None

    def __call__(self, prediction: np.ndarray, test_features: torch.Tensor) -> np.ndarray:
        if not len(self.node_images):
            raise ValueError("GraphRefinement: no labelled nodes (use_nodes first)")
        began = self.clock()
        if self._node_features is None:
            self._node_features = self.embed(self.node_images)
        refined = refine_with_gcn(prediction, self._node_features, self.node_labels,
                                  test_features, self.multilabel, self.seed)
        self.last_seconds = self.clock() - began
        return refined
