"""The AutoDL model API over the runtime stages: decode, head on frozen features, fine-tune.

`Learner(metadata)` is what model.py exposes as `Model`. The first `train()` fingerprints a
first batch of the training set, asks the meta-classifier in `metadata/` which known dataset it
resembles and takes that dataset's config (the generalist config when the selector is unsure,
when `metadata/` holds none, or when AUTODL_META_LEARNING=0); it then decodes a first piece of the
training set and fits a ridge model on pixels, so the first `test()` returns a real prediction
within seconds. The second `train()` fits a linear head on frozen pretrained features; later calls
fine-tune the whole network for time slices chosen by the TimePolicy. No exception escapes
`train`/`test`: a failure is logged and the last good prediction is returned.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

# The first torch optimiser imports torch._dynamo (1-2 s on a CPU): importing it with this
# module, before the budget starts, keeps that time away from the first prediction.
import torch._dynamo

from autodl_meta.backbones import available_backbones
from autodl_meta.config import GENERALIST, TrainConfig
from autodl_meta.data import DatasetReader
from autodl_meta.fingerprint import Fingerprinter, read_fingerprint_batch
from autodl_meta.metadata import METADATA_DIR, MetaData, MetadataError
from autodl_meta.policy import TimePolicy
from autodl_meta.quick import PixelLogistic
from autodl_meta.techniques import refine_with_gcn
from autodl_meta.trainer import Trainer, pick_device, usable_cores
from autodl_meta.validation import complement, nauc, split_validation

logger = logging.getLogger("autodl_meta")

# The first train() decodes up to FIRST_READ_COUNT frames (or for FIRST_READ_SECONDS); when that
# was quick (small images), up to EXTRA_READ_COUNT more for the pixel model, so that small
# datasets are whole from the first prediction. The head embeds the first FIRST_READ_COUNT.
FIRST_READ_COUNT = 512
FIRST_READ_SECONDS = 4.0
EXTRA_READ_COUNT = 1536
EXTRA_READ_SECONDS = 0.5
# Share of the remaining budget the head's feature pass over the training examples may take.
HEAD_SHARE = 0.15
DEFAULT_TIME_BUDGET = 1200.0
# Set to 0 (or off/false/no) to skip the dataset selection and run the generalist config.
META_LEARNING_ENV = "AUTODL_META_LEARNING"
GNN_TRAIN_NODES = 500        # labelled nodes of the transductive graph
GNN_MAX_SHARE = 0.1          # of the time budget one refinement may take
RECENT_PREDICTIONS = 3       # network predictions averaged when validation says it helps


def meta_learning_enabled() -> bool:
    return os.environ.get(META_LEARNING_ENV, "1").strip().lower() not in ("0", "off", "false",
                                                                           "no")


def graph_nodes(train: torch.Tensor, seed: int) -> torch.Tensor:
    """Up to GNN_TRAIN_NODES of the training positions `train`, the labelled nodes of the
    transductive GCN's graph."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train[order[:GNN_TRAIN_NODES]]


def effective_resolution(metadata, cap: int) -> int:
    """The config's resolution is a cap: small fixed-size images keep their size (rounded up to
    a multiple of 16, at least 32), as upscaling them costs much more than it gives on a CPU."""
    row_count, col_count = metadata.get_matrix_size()
    if row_count <= 0 or col_count <= 0:
        return cap
    native = 16 * -(-max(row_count, col_count) // 16)
    return min(cap, max(32, native))


class Learner:
    """One dataset's run: the state kept between the platform's train/test calls."""

    def __init__(self, metadata, config: TrainConfig | None = None, seed: int = 0,
                 metadata_dir: Path = METADATA_DIR) -> None:
        """`config` forces a configuration (no selection); otherwise `metadata_dir` decides."""
        self.done_training = False
        self.metadata = metadata
        self.seed = seed
        self.output_dim = metadata.get_output_size()
        self.in_channels = metadata.get_num_channels()
        self.is_video = metadata.get_sequence_size() != 1
        self.device = pick_device()
        if self.device.type == "cpu":
            torch.set_num_threads(usable_cores())
        self.meta = MetaData() if config is not None else self._load_metadata(metadata_dir)
        self.fingerprinter: Fingerprinter | None = None
        if config is None and self.meta.selector is not None:
            if meta_learning_enabled():
                self.fingerprinter = Fingerprinter(self.in_channels, self.device)
            else:
                logger.info("meta-learning switched off (%s): generalist config",
                            META_LEARNING_ENV)
        self.selected: str | None = None
        self.config = self._usable(config or self.meta.generalist)
        self.resolution = effective_resolution(metadata, self.config.resolution)
        self.frames = self.config.test_frames if self.is_video else 1
        # Built by the second train() call: the first prediction (the pixel model's) does not
        # wait for the backbone.
        self.trainer: Trainer | None = None
        self.multilabel = False
        self.policy: TimePolicy | None = None
        self.train_reader: DatasetReader | None = None
        self.test_reader: DatasetReader | None = None
        self.quick: PixelLogistic | None = None
        self.head_fitted = False
        self.validation = torch.empty(0, dtype=torch.long)
        self.best_validation = -np.inf
        # Validation scores of the network state the next test() predicts with, and the
        # (validation, test) scores of the recent accepted states.
        self.accepted_validation: np.ndarray | None = None
        self.recent: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=RECENT_PREDICTIONS)
        # Which model the next test() should use: "quick" (pixels), "head" (frozen features),
        # "network" (fine-tuned), or None to keep returning the last prediction.
        self.predict_with: str | None = None
        self.test_seconds = 0.0
        self.last_prediction: np.ndarray | None = None
        self.use_gnn = self.config.transductive_gnn
        self.gnn_train_nodes = torch.empty(0, dtype=torch.long)
        self.gnn_train_features: torch.Tensor | None = None
        self.pace_checked = False
        # What a technique could not do as configured (too slow, unsuitable data): logged and
        # kept, so that a benchmark can report it beside the score.
        self.notes: list[str] = []

    @staticmethod
    def _load_metadata(folder: Path) -> MetaData:
        try:
            return MetaData.load(folder)
        except MetadataError as err:  # a broken file must not cost the run: say so, go on
            logger.error("%s; using the generalist config", err)
            return MetaData()

    @staticmethod
    def _usable(config: TrainConfig) -> TrainConfig:
        """`config`, with the first available backbone when its own weights are missing."""
        available = available_backbones()
        if not available:
            raise RuntimeError("no pretrained backbone in pretrained/ (run `make pretrained`)")
        if config.backbone not in available:
            logger.warning("weights of %s missing: using %s", config.backbone, available[0])
            config = TrainConfig.from_dict({**config.to_dict(), "backbone": available[0]})
        return config

    def _select_config(self, dataset) -> None:
        """Fingerprint a first batch and take the config of the closest known dataset."""
        began = time.monotonic()
        try:
            images = read_fingerprint_batch(dataset)
            name, confidence = self.meta.selector.select(
                self.fingerprinter.fingerprints(images))
        except Exception:  # noqa: BLE001 - the generalist is always a safe answer
            logger.exception("dataset selection failed; using the generalist config")
            return
        seconds = time.monotonic() - began
        if confidence < self.meta.min_confidence:
            logger.info("selector unsure (closest %s, confidence %.2f < %.2f, %.2f s): "
                        "generalist config", name, confidence, self.meta.min_confidence,
                        seconds)
            return
        self.selected = name
        self.config = self._usable(self.meta.configs[name])
        logger.info("selected %s (confidence %.2f, %d samples, %.2f s)", name, confidence,
                    len(images), seconds)

    def _note(self, message: str) -> None:
        if message not in self.notes:
            logger.warning("%s", message)
            self.notes.append(message)

    # -- the platform's API -------------------------------------------------------------------
    def train(self, dataset, remaining_time_budget: float | None = None) -> None:
        try:
            if self.policy is None:
                self.policy = TimePolicy(remaining_time_budget or DEFAULT_TIME_BUDGET)
            if self.train_reader is None:
                self._first_train(dataset)
            elif not self.head_fitted:
                if self.trainer is None:  # kept when a failed head fit is tried again
                    self.trainer = Trainer(self.config, self.output_dim, self.in_channels,
                                           self.multilabel, device=self.device, seed=self.seed)
                self._fit_head()
            else:
                self._fine_tune()
        except Exception:  # noqa: BLE001 - never crash out of train(); see the module doc
            logger.exception("train() failed; the last good prediction stays in use")

    def test(self, dataset, remaining_time_budget: float | None = None) -> np.ndarray:
        began = time.monotonic()
        try:
            prediction = self._predict(dataset)
            if prediction.shape[1] != self.output_dim or not np.isfinite(prediction).all():
                raise ValueError(f"bad prediction of shape {prediction.shape}")
            self.last_prediction = prediction
        except Exception:  # noqa: BLE001 - never crash out of test(); see the module doc
            logger.exception("test() failed; returning the last good prediction")
        # The slowest test so far (a full network pass with TTA) sizes the time kept free.
        self.test_seconds = max(self.test_seconds, time.monotonic() - began)
        if self.policy is not None and not self.policy.can_afford(self.test_seconds):
            self.done_training = True
        if self.last_prediction is None:
            self.last_prediction = np.zeros((self._count(dataset), self.output_dim))
        return self.last_prediction

    # -- stages -------------------------------------------------------------------------------
    def _first_train(self, dataset) -> None:
        if self.meta.configs and not self.meta.serves(self.policy.time_budget):
            # Configs tuned for another budget can do worse than the default (measured: 30-s
            # configs on moving_mnist at 300 s); they wait for a search at this scale.
            self.config = self._usable(GENERALIST)
            logger.info("metadata/ configs were tuned for a %.0f s budget, this run has %.0f s: "
                        "default config", self.meta.tuned_budget, self.policy.time_budget)
        elif self.fingerprinter is not None:
            self._select_config(dataset)
        self.resolution = effective_resolution(self.metadata, self.config.resolution)
        self.frames = self.config.test_frames if self.is_video else 1
        self.use_gnn = self.config.transductive_gnn
        logger.info("config %s", json.dumps(self.config.to_dict(), sort_keys=True))
        logger.info("backbone %s at %d px on %s, %d classes, %s", self.config.backbone,
                    self.resolution, self.device, self.output_dim,
                    "video" if self.is_video else "images")
        self.train_reader = DatasetReader(dataset, self.resolution, self.frames)
        began = time.monotonic()
        self.train_reader.read(max(64, FIRST_READ_COUNT // self.frames),
                               seconds=FIRST_READ_SECONDS)
        if time.monotonic() - began < EXTRA_READ_SECONDS:
            self.train_reader.read(EXTRA_READ_COUNT // self.frames, seconds=EXTRA_READ_SECONDS)
        labels = self.train_reader.labels
        self.multilabel = bool((labels.sum(1) > 1).any())
        if self.config.embedding_loss != "none" and self.multilabel:
            self._note(f"embedding_loss {self.config.embedding_loss} needs one class per "
                       f"example; on this multilabel data the backbone trains with the "
                       f"classifier's loss")
        self.validation = split_validation(len(labels))
        train = complement(self.validation, len(labels))
        self.gnn_train_nodes = graph_nodes(train, self.seed)
        self.quick = PixelLogistic().fit(self.train_reader.images[train], labels[train],
                                         self.multilabel)
        self.predict_with = "quick"
        if len(self.validation):
            self.best_validation = nauc(
                labels[self.validation].numpy(),
                self.quick.predict(self.train_reader.images[self.validation]))
        logger.info("pixel model fitted on %d examples at %.1f s (validation NAUC %.4f)",
                    len(train), self.policy.elapsed(), self.best_validation)

    def _fit_head(self) -> None:
        """Linear head on frozen features of (a prefix of) what the first train() decoded;
        it replaces the pixel model's prediction when its validation NAUC is higher."""
        images, labels = self.train_reader.images, self.train_reader.labels
        # On a slow machine or an almost spent budget, the head learns from what was embedded
        # in its share of the time rather than overrun the budget.
        began = time.monotonic()
        features = self.trainer.features(images[:max(64, FIRST_READ_COUNT // self.frames)],
                                         seconds=HEAD_SHARE * self.policy.remaining())
        embedded = len(features)
        seconds_per_example = (time.monotonic() - began) / embedded
        validation = self.validation[self.validation < embedded]
        train = complement(validation, embedded)
        self.trainer.fit_head(features[train], labels[train])
        if self.use_gnn and bool((self.gnn_train_nodes < embedded).all()):
            self.gnn_train_features = features[self.gnn_train_nodes]
        self.head_fitted = True
        score = pixel_score = np.inf
        if len(validation):  # both models on the same validation examples
            truth = labels[validation].numpy()
            score = nauc(truth, self.trainer.predict_from_features(features[validation]))
            pixel_score = nauc(truth, self.quick.predict(images[validation]))
        logger.info("head fitted on %d frozen examples (%d of %d embedded) at %.1f s "
                    "(validation NAUC %.4f, pixel model %.4f)", len(train), embedded,
                    len(labels), self.policy.elapsed(), score, pixel_score)
        if score >= pixel_score:
            self.best_validation = score
            self.predict_with = "head"
        else:
            logger.info("the pixel model's prediction stays (validation NAUC %.4f)",
                        self.best_validation)
            # No head pass over the test set will time a network prediction: estimate it.
            views = 2 if self.config.flip_tta else 1
            test_count = self.test_reader.count if self.test_reader is not None else 0
            self.test_seconds = max(self.test_seconds,
                                    views * seconds_per_example * test_count)

    def _fine_tune(self) -> None:
        slice_seconds = self.policy.next_slice(self.test_seconds)
        if slice_seconds < self.policy.min_slice_seconds:
            self.done_training = True
            return
        if not self.train_reader.exhausted:
            spent = time.monotonic()
            self.train_reader.read(seconds=max(1.0, 0.3 * slice_seconds))
            slice_seconds -= time.monotonic() - spent
        train = complement(self.validation, self.train_reader.count)
        images, labels = self.train_reader.images, self.train_reader.labels
        steps = self.trainer.train_for(images, labels, max(slice_seconds, 0.5), indices=train)
        # The network moved: the graph's labelled nodes are embedded again, from all decoded.
        self.gnn_train_features = None
        self.gnn_train_nodes = graph_nodes(train, self.seed)
        self._check_embedding_pace()
        score, validation_scores = self._validate(images, labels)
        logger.info("fine-tuned %d steps on %d examples (validation NAUC %.4f, best %.4f); "
                    "%.1f s left", steps, len(train), score, self.best_validation,
                    self.policy.remaining())
        if score >= self.best_validation:
            self.best_validation = score
            self.accepted_validation = validation_scores
            self.predict_with = "network"

    def _check_embedding_pace(self) -> None:
        """After the first slice: say when the budget leaves an embedding loss too few steps."""
        if self.pace_checked:
            return
        self.pace_checked = True
        note = self.trainer.embedding_pace_note(self.policy.remaining())
        if note:
            self._note(note)

    def _validate(self, images: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[float, np.ndarray | None]:
        """The fine-tuned network's validation NAUC (+inf without a validation set) and its
        validation scores."""
        if not len(self.validation):
            return np.inf, None
        scores = self.trainer.predict(images[self.validation], flip=False)
        return nauc(labels[self.validation].numpy(), scores), scores

    def _average_recent(self, prediction: np.ndarray) -> np.ndarray:
        """`prediction`, or its average with the recent network predictions when the same
        average of their validation scores beats the latest state's (snapshot averaging, as
        the AutoDL winners did; used only where validation says it helps)."""
        if self.accepted_validation is None:
            return prediction
        self.recent.append((self.accepted_validation, prediction))
        if len(self.recent) < 2:
            return prediction
        truth = self.train_reader.labels[self.validation].numpy()
        latest = nauc(truth, self.accepted_validation)
        averaged = nauc(truth, np.mean([validation for validation, _ in self.recent], axis=0))
        if averaged <= latest:
            return prediction
        logger.info("averaging the last %d network predictions (validation NAUC %.4f, latest "
                    "alone %.4f)", len(self.recent), averaged, latest)
        return np.mean([test for _, test in self.recent], axis=0)

    def _predict(self, dataset) -> np.ndarray:
        if self.test_reader is None:
            self.test_reader = DatasetReader(dataset, self.resolution, self.frames)
            self.test_reader.read_all()
        use, self.predict_with = self.predict_with, None
        if use == "quick":
            return self.quick.predict(self.test_reader.images)
        if use == "network":
            if self.use_gnn:
                prediction = self._refine(
                    *self.trainer.predict_with_features(self.test_reader.images))
            else:
                prediction = self.trainer.predict(self.test_reader.images)
            return self._average_recent(prediction)
        if use == "head" or self.last_prediction is None:
            began = time.monotonic()
            features = self.trainer.features(self.test_reader.images)
            # A network prediction costs a feature pass per TTA view; expect it from now on.
            views = 2 if self.config.flip_tta else 1
            self.test_seconds = max(self.test_seconds, views * (time.monotonic() - began))
            prediction = self.trainer.predict_from_features(features)
            return self._refine(prediction, features) if self.use_gnn else prediction
        return self.last_prediction

    def _refine(self, prediction: np.ndarray, test_features: torch.Tensor) -> np.ndarray:
        """The transductive step: average `prediction` with a GCN's scores over the current
        embeddings of labelled training and unlabelled test examples."""
        began = time.monotonic()
        if self.gnn_train_features is None:
            self.gnn_train_features = self.trainer.features(
                self.train_reader.images[self.gnn_train_nodes])
        refined = refine_with_gcn(prediction, self.gnn_train_features,
                                  self.train_reader.labels[self.gnn_train_nodes], test_features,
                                  self.multilabel, self.seed)
        seconds = time.monotonic() - began
        if seconds > GNN_MAX_SHARE * self.policy.time_budget:
            self.use_gnn = False
            self._note(f"transductive_gnn took {seconds:.1f} s, more than "
                       f"{GNN_MAX_SHARE:.0%} of the {self.policy.time_budget:.0f}-s budget: "
                       f"switched off for the rest of the run")
        return refined

    def _count(self, dataset) -> int:
        if self.test_reader is not None and self.test_reader.exhausted:
            return self.test_reader.count
        return sum(1 for _ in dataset)
