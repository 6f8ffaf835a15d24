"""The training examples of a run: which positions to decode first, and what was decoded.

`ReadPlan` is made from every record's labels before any image is decoded: a stratified
validation split and the training positions in stratified rounds (one example of each class,
then another...), so that the first examples decoded cover the classes however the records are
ordered. `TrainingData` decodes the plan in chunks that grow (an indexed reader reads only what
a chunk asks for; a plain one streams every record) into a `TrainingPool`: the decoded rows, the
validation rows among them, and the rows kept out of training as near-copies of a validation
example. `TestSet` decodes the test set once, in order, and remembers the rows that failed.
With a reader that streams the records in order (not `indexed`), the validation rows are those
of the plan that the first read reached: a split that then stays, so that scores compare.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from autodl_meta.data import Decoded, DecodePass, RecordReader, count_records
from autodl_meta.quick import pixel_features
from autodl_meta.validation import (NEAR_COPY_GROUP, NEAR_COPY_SHARE, choose_validation, class_of,
                                    closest_reference, near_copy_threshold, standardised,
                                    stratified_order)

logger = logging.getLogger(__name__)

FIRST_CHUNK = 512       # training examples decoded (after the validation ones) for the first fit
CHUNK_GROWTH = 2        # each later chunk is this many times the previous one
SMALL_DATASET = 2048    # training records decoded whole, in one pass, by the first read


@dataclass
class ReadPlan:
    """Which record positions to hold out and in which order to decode the others."""

    validation: np.ndarray      # positions held out, sorted
    order: np.ndarray           # training positions, stratified rounds
    labels: np.ndarray          # [known, classes] labels of the positions known
    complete: bool              # False: a label pass cut short, records beyond it unknown

    @classmethod
    def from_labels(cls, labels: np.ndarray, complete: bool, seed: int = 0) -> ReadPlan:
        rng = np.random.default_rng(seed)
        classes = class_of(labels)
        validation = choose_validation(classes, rng)
        train = np.setdiff1d(np.arange(len(labels)), validation, assume_unique=True)
        order = train[stratified_order(classes[train], rng)]
        return cls(validation, order, labels, complete)

    @property
    def classes_present(self) -> int:
        return int((self.labels.sum(axis=0) > 0).sum())

    @property
    def multilabel(self) -> bool:
        return bool((self.labels.sum(axis=1) > 1).any())

    def sample(self, count: int, seed: int = 0) -> np.ndarray:
        """`count` positions drawn at random from every known one, sorted."""
        positions = np.arange(len(self.labels))
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(positions, min(count, len(positions)), replace=False))


class TrainingPool:
    """Decoded training examples, and which of them validate or sit out."""

    def __init__(self, validation_positions: np.ndarray) -> None:
        self._validation_positions = np.asarray(validation_positions, dtype=np.int64)
        self._chunks: list[Decoded] = []
        self._images = self._labels = None
        self.positions = np.zeros(0, dtype=np.int64)
        self.is_validation = torch.zeros(0, dtype=torch.bool)
        self._features = torch.zeros(0, 0)
        # The validation row (an index into the validation rows) each row is a near-copy of,
        # or -1; the threshold is set from the first examples decoded.
        self._copy_of = torch.zeros(0, dtype=torch.long)
        self.near_copy_threshold: float | None = None
        self.validation_version = 0  # grows when validation rows are added
        # Closed: rows decoded from now on train, even at validation positions (a reader that
        # streams the records would otherwise change the split, and the scores, every slice).
        self.validation_open = True

    @classmethod
    def of_examples(cls, images: torch.Tensor, labels: torch.Tensor) -> TrainingPool:
        """Every example a fitting row, none held out (the technique study's pool)."""
        pool = cls(np.zeros(0, dtype=np.int64))
        pool.add(Decoded(images.numpy(), labels.numpy(), np.arange(len(images)),
                         np.zeros(0, dtype=np.int64)))
        return pool

    def __len__(self) -> int:
        return len(self.positions)

    def add(self, decoded: Decoded) -> None:
        if not len(decoded.positions):
            return
        self._chunks.append(decoded)
        self._images = self._labels = None
        new_validation = torch.from_numpy(np.isin(decoded.positions,
                                                  self._validation_positions))
        if not self.validation_open:
            new_validation[:] = False
        features = standardised(pixel_features(torch.from_numpy(decoded.images)))
        if self.near_copy_threshold is None:
            self.near_copy_threshold = near_copy_threshold(features,
                                                           class_of(decoded.labels))
        self.positions = np.concatenate([self.positions, decoded.positions])
        self.is_validation = torch.cat([self.is_validation, new_validation])
        self._features = torch.cat([self._features, features]) if self._features.numel() \
            else features
        if new_validation.any():
            self.validation_version += 1
            # The validation rows are numbered anew: every row is matched again.
            self._copy_of = closest_reference(self._features[self.is_validation],
                                              self._features, self.near_copy_threshold)
        else:
            self._copy_of = torch.cat([self._copy_of, closest_reference(
                self._features[self.is_validation], features, self.near_copy_threshold)])
        self._copy_of[self.is_validation] = -1

    @property
    def excluded(self) -> torch.Tensor:
        """Training rows that are near-copies of a validation row in a small group."""
        linked = self._copy_of >= 0
        if not linked.any():
            return linked
        group = torch.bincount(self._copy_of[linked], minlength=int(self.is_validation.sum()))
        small = torch.zeros_like(linked)
        small[linked] = group[self._copy_of[linked]] <= NEAR_COPY_GROUP
        if small.sum() > NEAR_COPY_SHARE * (~self.is_validation).sum():
            return torch.zeros_like(linked)  # so many look alike: a dense dataset, not copies
        return small

    @property
    def images(self) -> torch.Tensor:
        if self._images is None:
            self._stack()
        return self._images

    @property
    def labels(self) -> torch.Tensor:
        if self._labels is None:
            self._stack()
        return self._labels

    def _stack(self) -> None:
        if len(self._chunks) > 1:
            self._chunks = [Decoded.concatenated(self._chunks)]
        self._images = torch.from_numpy(self._chunks[0].images)
        self._labels = torch.from_numpy(self._chunks[0].labels)

    def validation_rows(self) -> torch.Tensor:
        return torch.nonzero(self.is_validation).squeeze(1)

    def fit_rows(self) -> torch.Tensor:
        """Rows to learn from: neither validation rows nor near-copies of one."""
        return torch.nonzero(~self.is_validation & ~self.excluded).squeeze(1)


class TrainingData:
    """Decodes a ReadPlan into a TrainingPool, chunk by chunk."""

    def __init__(self, reader: RecordReader, plan: ReadPlan) -> None:
        self.reader, self.plan = reader, plan
        self.pool = TrainingPool(plan.validation)
        self.undecodable = 0
        self._next = 0                  # in plan.order, the next position to schedule
        self._chunk = FIRST_CHUNK
        self._tail_done = plan.complete  # records beyond a cut-short label pass
        self._pass = None
        if not reader.indexed:  # one pass streams every record, in record order
            self._pass = reader.decode_pass(None)

    @property
    def decoded_whole(self) -> bool:
        """A small training set: the first pass decodes every record. In record order and
        stopped at a count, it would hold a few classes of a set stored class by class."""
        return self.reader.indexed and len(self.plan.order) <= SMALL_DATASET

    @property
    def exhausted(self) -> bool:
        if not self.reader.indexed:
            return self._pass.exhausted
        return self._pass is None and self._next >= len(self.plan.order) and self._tail_done

    def read(self, seconds: float | None = None, count: int | None = None) -> int:
        """Decode the next examples of the plan for about `seconds` (at least one batch) or up
        to `count` examples, or to the end; return how many were added."""
        deadline = None if seconds is None else time.monotonic() + seconds
        if self.decoded_whole and self._next == 0:
            count = None
        added = 0
        while not self.exhausted and (count is None or added < count):
            if deadline is not None and added and time.monotonic() > deadline:
                break
            if self._pass is None or self._pass.exhausted:
                self._pass = self._next_pass()
                if self._pass is None:
                    break
            decoded = self._pass.read(
                count=None if count is None else count - added,
                seconds=None if deadline is None else max(0.0, deadline - time.monotonic()))
            self.pool.add(decoded)
            self.undecodable += len(decoded.failed)
            added += len(decoded.positions)
            if self._pass.exhausted and self.reader.indexed:
                self._pass = None
        if not self.reader.indexed:
            self.pool.validation_open = False  # the first read's validation rows stay the split
        return added

    def _next_pass(self) -> DecodePass | None:
        if not self.reader.indexed:
            return None
        if self.decoded_whole and self._next == 0:
            self._next = len(self.plan.order)
            return self.reader.decode_pass(np.concatenate([self.plan.validation,
                                                           self.plan.order]))
        if self._next < len(self.plan.order):
            wanted = self.plan.order[self._next:self._next + self._chunk]
            if self._next == 0:
                wanted = np.concatenate([self.plan.validation, wanted])
            self._next += self._chunk
            self._chunk *= CHUNK_GROWTH
            return self.reader.decode_pass(wanted)
        if not self._tail_done:  # the records past a label pass that was cut short
            self._tail_done = True
            return self.reader.decode_pass(None, start=len(self.plan.labels))
        return None


class TestSet:
    """The test set decoded once: examples in record order, and the rows that failed."""

    def __init__(self, images: torch.Tensor, rows: np.ndarray | None = None,
                 count: int | None = None) -> None:
        """`images` of the prediction rows `rows` (by default all, in order) of `count`."""
        self.images = images
        self.rows = np.arange(len(images)) if rows is None else rows
        self.count = len(images) if count is None else count
        self.failed = np.setdiff1d(np.arange(self.count), self.rows)

    @classmethod
    def decode(cls, dataset, resolution: int, frames: int, direct: bool | None = None
               ) -> TestSet:
        """`direct`: the training set's decode check (records of one dataset share their
        layout; None: checked here). Records the direct decode fails on are tried again
        through the platform's parse, so trusting the check loses no row."""
        reader = RecordReader(dataset, resolution, frames, direct=direct)
        reader.count = count_records(dataset)
        decoded = reader.decode()
        if reader.direct and len(decoded.positions) < reader.count:
            missing = np.setdiff1d(np.arange(reader.count), decoded.positions)
            retried = RecordReader(dataset, resolution, frames, direct=False).decode(missing)
            if len(retried.positions):
                decoded = Decoded.concatenated([decoded, retried]).in_position_order()
        return cls(torch.from_numpy(decoded.images), decoded.positions, reader.count)

    def full(self, scores: np.ndarray, fill: np.ndarray) -> np.ndarray:
        """One row per test record: `scores` for the decoded ones, `fill` for the others."""
        prediction = np.tile(np.asarray(fill, dtype=np.float64), (self.count, 1))
        prediction[self.rows] = scores
        return prediction

