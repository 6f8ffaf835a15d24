"""Training and prediction: a linear head on frozen features first, then fine-tuning.

Images come as uint8 `[n, frames, channel, h, w]` (see data.py). Training samples one frame per
clip and step; prediction averages the class scores over the frames (Eq. 2 of the paper) and,
optionally, over a horizontal flip.

The config picks the low-data techniques (autodl_meta/techniques.py): MixUp/CutMix, the cosine
loss, or an embedding loss (supervised contrastive, Siamese contrastive or triplet) that trains
the backbone through a projection while the head learns from the detached features: the head
follows the embedding as it forms, so a prediction is ready after every slice.
"""
from __future__ import annotations

import ctypes
import logging
import os
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from autodl_meta.backbones import Classifier, FeatureExtractor
from autodl_meta.config import TrainConfig
from autodl_meta.quick import fit_linear
from autodl_meta.techniques import (EMBEDDING_LOSSES, class_balanced_batch, cosine_loss,
                                    cosine_scores, group_by_class, projection_head)

logger = logging.getLogger(__name__)

# Frames per inference batch: small batches in channels-last layout run 3x faster than batches
# of 256 in the default layout on a CPU (README, "Speed").
PREDICT_BATCH = 64
# Batches of a time-limited feature pass: small, so that it stops close to its time.
TIMED_FEATURE_BATCH = 32
BACKBONE_LR_SCALE = 0.1
GRADIENT_CLIP_NORM = 2.0
# Rule of thumb: an embedding loss that gets fewer training steps than this trails plain
# cross-entropy, and a run says so.
EMBEDDING_MIN_STEPS = 300


# glibc's mallopt(3) parameters, and what the runtime sets them to: a batch's activations are
# tens of MB, freed and allocated again at every batch; glibc's defaults return such blocks to
# the system at once and fault them in again, which made an eval pass up to 3x and a training
# step 1.35x slower on a CPU (README, "Speed").
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 1 << 30
# The largest mmap threshold older glibc accepts on 64-bit systems (newer ones take more).
OLD_GLIBC_MMAP_MAX = 32 << 20


def keep_freed_memory() -> bool:
    """Let this process's allocator keep freed memory for reuse (glibc on Linux; elsewhere
    nothing changes). Returns whether both settings took."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mmap = (libc.mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES) == 1 or
                libc.mallopt(M_MMAP_THRESHOLD, OLD_GLIBC_MMAP_MAX) == 1)
        trim = libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES) == 1
    except (OSError, AttributeError):  # not glibc
        return False
    return mmap and trim


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def usable_cores() -> int:
    """The cores this process may run on: a container or `taskset` can allow fewer than the
    machine has, and more threads than cores slow every step."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# Networks and image batches are kept channels-last: see PREDICT_BATCH; training steps also run
# 1.6-1.8x faster in that layout here.
MEMORY_FORMAT = torch.channels_last


def to_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images `[n, channel, h, w]` as floats in [0, 1], in MEMORY_FORMAT."""
    floats = images.to(device, non_blocking=True).float().div_(255.0)
    return floats.contiguous(memory_format=MEMORY_FORMAT) if floats.dim() == 4 else floats


class Trainer:
    """Owns the network and optimiser for one dataset."""

    def __init__(self, config: TrainConfig, num_classes: int, in_channels: int,
                 multilabel: bool, device: torch.device | None = None, seed: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`clock` times `train_for`'s slices and time-limited eval passes: the run's clock
        (autodl_meta/policy.py)."""
        self.config = config
        self.clock = clock
        self.device = device or pick_device()
        self.generator = torch.Generator().manual_seed(seed)
        extractor = FeatureExtractor(config.backbone, in_channels)
        self.model = Classifier(extractor, num_classes, config.dropout,
                                mlp_head=config.mlp_head).to(
            self.device, memory_format=MEMORY_FORMAT)
        # Frozen before the optimiser is made, which trains only what still needs gradients.
        self.frozen = extractor.freeze(config.frozen_fraction)
        self.projection = (projection_head(extractor.num_features).to(self.device)
                           if config.embedding_loss != "none" else None)
        self.optimizer: torch.optim.Optimizer | None = None
        # Sigmoid outputs and binary cross-entropy per class, or softmax and cross-entropy.
        self.multilabel = multilabel
        self.loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
        self.use_amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        # The network's work so far, and the wall-clock seconds it took: an offline clock
        # re-prices it (batch by batch, so that it moves during a slice or a pass too).
        # Steps by the number of examples in their batch: a pool smaller than the configured
        # batch size makes smaller batches, and cheaper steps.
        self.steps_by_batch_size: Counter[int] = Counter()
        self.train_seconds = 0.0
        self.forward_images = 0       # images through the network in eval passes, flips counted
        self.forward_seconds = 0.0
        self.step_seconds: float | None = None   # on self.clock

    @property
    def steps(self) -> int:
        """Training steps so far."""
        return sum(self.steps_by_batch_size.values())

    @property
    def embedding_active(self) -> bool:
        """Whether fine-tuning trains an embedding (it needs one class per example)."""
        return self.projection is not None and not self.multilabel

    def embedding_pace_note(self, remaining_seconds: float) -> str | None:
        """After some training: a warning when the embedding loss will get fewer than
        EMBEDDING_MIN_STEPS steps in `remaining_seconds` at the measured pace, else None."""
        if not self.embedding_active or self.step_seconds is None:
            return None
        expected = self.steps + max(remaining_seconds, 0.0) / self.step_seconds
        if expected >= EMBEDDING_MIN_STEPS:
            return None
        return (f"embedding_loss {self.config.embedding_loss}: about {expected:.0f} training "
                f"steps fit in this budget, it needs about {EMBEDDING_MIN_STEPS} to pay off; "
                f"expect it to trail plain cross-entropy")

    def _classifier_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "cosine":
            return cosine_loss(logits, targets)
        return self.loss_fn(logits, targets)  # one-hot (or mixed) float targets suit both

    @torch.no_grad()
    def _per_clip(self, images: torch.Tensor, frame_fn, seconds: float | None = None,
                  batch_size: int = PREDICT_BATCH, passes: int = 1) -> torch.Tensor:
        """`frame_fn` (float frames on the device -> one row each, from `passes` passes through
        the network) averaged over each clip's frames, in eval mode and in batches; with
        `seconds`, only the clips of the batches begun within that time (at least one batch)."""
        self.model.eval()
        deadline = None if seconds is None else self.clock() + seconds
        outputs = []
        batch_size = max(1, batch_size // max(1, images.shape[1]))  # frames, not clips
        # No clips still run one (empty) batch: the result has the width of frame_fn's rows
        # (a tiny dataset holds no validation rows).
        for start in range(0, max(1, len(images)), batch_size):
            if outputs and deadline is not None and self.clock() > deadline:
                break
            began = time.monotonic()
            clips = images[start:start + batch_size]
            flat = to_float(clips.flatten(0, 1), self.device)
            with torch.autocast(self.device.type, enabled=self.use_amp):
                rows = frame_fn(flat).float()
            outputs.append(rows.view(len(clips), clips.shape[1], rows.shape[1]).mean(1).cpu())
            self.forward_images += passes * len(flat)
            self.forward_seconds += time.monotonic() - began
        return torch.cat(outputs)

    # -- frozen features and the linear head -------------------------------------------------
    def features(self, images: torch.Tensor, seconds: float | None = None) -> torch.Tensor:
        """Frozen features of `images`, averaged over the frames of each clip. With `seconds`,
        those of a prefix of `images`: as many as were embedded within about that time."""
        if seconds is None:
            return self._per_clip(images, self.model.extractor)
        return self._per_clip(images, self.model.extractor, seconds, TIMED_FEATURE_BATCH)

    def fit_head(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Fit the linear head on frozen features (L2-regularised logistic regression)."""
        features, labels = features.to(self.device), labels.to(self.device)
        targets = labels if self.multilabel else labels.argmax(1)
        fit_linear(self.model.head, features, targets, self.loss_fn)

    # -- fine-tuning --------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        # The pretrained backbone moves 10x slower than the head: the head starts from a fit on
        # frozen features, and full-rate steps through it wreck those features at once.
        head = list(self.model.head.parameters())
        head_ids = {id(p) for p in head}
        backbone = [p for p in self.model.parameters()
                    if id(p) not in head_ids and p.requires_grad]  # frozen blocks: none
        if self.projection is not None:
            head += list(self.projection.parameters())  # new layers learn at the head's rate
        lr = self.config.learning_rate
        groups = [{"params": head, "lr": lr}]
        if backbone:
            groups.append({"params": backbone, "lr": lr * BACKBONE_LR_SCALE})
        if self.config.optimizer == "adam":
            return torch.optim.Adam(groups, lr=lr)
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-6)

    def _augment(self, images: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.where(torch.rand(len(images), 1, 1, 1, generator=self.generator)
                             .to(images.device) < 0.5, images.flip(3), images)
        if self.config.augmentation == "none":
            return images, targets
        lam = float(np.random.default_rng(self.steps).beta(self.config.augmentation_alpha,
                                                           self.config.augmentation_alpha))
        order = torch.randperm(len(images), generator=self.generator).to(images.device)
        if self.config.augmentation == "mixup":
            images = lam * images + (1 - lam) * images[order]
        else:
            height, width = images.shape[2:]
            cut_h, cut_w = int(height * np.sqrt(1 - lam)), int(width * np.sqrt(1 - lam))
            top = int(torch.randint(0, height - cut_h + 1, (1,), generator=self.generator))
            left = int(torch.randint(0, width - cut_w + 1, (1,), generator=self.generator))
            images = images.clone()
            images[:, :, top:top + cut_h, left:left + cut_w] = \
                images[order, :, top:top + cut_h, left:left + cut_w]
            lam = 1 - cut_h * cut_w / (height * width)
        return images, lam * targets + (1 - lam) * targets[order]

    def train_for(self, images: torch.Tensor, labels: torch.Tensor, seconds: float,
                  indices: torch.Tensor | None = None) -> int:
        """Fine-tune for about `seconds` on the examples at `indices` (all when None); return
        the steps taken. Batches are gathered from `indices`, so no subset copy is made."""
        pool = indices if indices is not None else torch.arange(len(images))
        by_class = ([pool[group] for group in group_by_class(labels[pool])]
                    if self.embedding_active else [])
        self.start_training()
        deadline = self.clock() + seconds
        batch_size = min(self.config.batch_size, len(pool))
        taken = 0
        while taken == 0 or self.clock() + (self.step_seconds or 0) < deadline:
            began, began_wall = self.clock(), time.monotonic()
            if by_class:
                index = class_balanced_batch(by_class, batch_size, self.generator)
            else:
                index = pool[torch.randint(0, len(pool), (batch_size,),
                                           generator=self.generator)]
            frame = torch.randint(0, images.shape[1], (len(index),), generator=self.generator)
            batch = to_float(images[index, frame], self.device)
            targets = labels[index].to(self.device)
            self.train_step(*self._augment(batch, targets), embedding=bool(by_class))
            self.steps_by_batch_size[len(index)] += 1
            self.train_seconds += time.monotonic() - began_wall
            elapsed = self.clock() - began
            self.step_seconds = elapsed if self.step_seconds is None else \
                0.8 * self.step_seconds + 0.2 * elapsed
            taken += 1
        return taken

    def start_training(self) -> None:
        """The optimiser (made once) and the modules' modes for fine-tuning steps."""
        if self.optimizer is None:
            self.optimizer = self._make_optimizer()
        if self.projection is not None:
            self.projection.train()
        self.model.train()
        # BatchNorm keeps its ImageNet statistics: re-estimating them from small batches of
        # unfamiliar images (grayscale, upscaled) wrecks the pretrained features at first.
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        # Frozen blocks compute the features they will predict with: no drop-connect.
        for unit in self.frozen:
            unit.eval()

    def train_step(self, batch: torch.Tensor, targets: torch.Tensor,
                   embedding: bool = False) -> None:
        """One optimiser step on a float batch on the device, after `start_training`; the step
        `python -m offline profile` times for the cost table."""
        with torch.autocast(self.device.type, enabled=self.use_amp):
            loss = (self._embedding_step_loss(batch, targets) if embedding
                    else self._classifier_loss(self.model(batch).float(), targets))
        parameters = list(self.model.parameters())
        if self.projection is not None:
            parameters += list(self.projection.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(parameters, GRADIENT_CLIP_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _embedding_step_loss(self, batch: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The embedding loss for the backbone, plus the classifier's loss for the head on
        detached features (the head must not pull the embedding)."""
        features = self.model.extractor(batch)
        embeddings = nn.functional.normalize(self.projection(features).float(), dim=1)
        embedding_loss = EMBEDDING_LOSSES[self.config.embedding_loss](embeddings,
                                                                      targets.argmax(1))
        logits = self.model.head(self.model.dropout(features.detach())).float()
        return embedding_loss + self._classifier_loss(logits, targets)

    # -- prediction ---------------------------------------------------------------------------
    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Class scores of the head fitted by fit_head (cross-entropy)."""
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)

    def network_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Class scores of the fine-tuned network, as its loss defines them."""
        if self.config.loss == "cosine":
            return cosine_scores(logits)
        return self.scores(logits)

    def predict(self, images: torch.Tensor, flip: bool | None = None) -> np.ndarray:
        """Class scores per clip: averaged over frames, and over a flip when `flip`."""
        return self.predict_with_features(images, flip)[0]

    def predict_with_features(self, images: torch.Tensor, flip: bool | None = None
                              ) -> tuple[np.ndarray, torch.Tensor]:
        """`predict`, and the features of the unflipped images from the same pass."""
        flip = self.config.flip_tta if flip is None else flip
        classes = self.model.num_classes

        def frame_rows(frames: torch.Tensor) -> torch.Tensor:
            features = self.model.extractor(frames)
            scores = self.network_scores(self.model.head(features).float())
            if flip:
                flipped = self.model(frames.flip(3)).float()
                scores = (scores + self.network_scores(flipped)) / 2
            return torch.cat([scores, features.float()], dim=1)

        rows = self._per_clip(images, frame_rows, passes=2 if flip else 1)
        return rows[:, :classes].numpy(), rows[:, classes:]

    @torch.no_grad()
    def predict_from_features(self, features: torch.Tensor) -> np.ndarray:
        self.model.eval()
        return self.scores(self.model.head(features.to(self.device))).cpu().numpy()
