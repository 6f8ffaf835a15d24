"""The AutoDL model API over the runtime's phases: read, pixel model, frozen head, fine-tuning.

`Learner(metadata)` is what model.py exposes as `Model`. Each `train()` call runs the current
phase (`Phase`):
- READ (first call): every training record's labels (no image decoded), a stratified validation
  split and a stratified first chunk of examples (`pool.ReadPlan`), whatever the record order;
  the fingerprint of a random sample picks the config of the closest known dataset (the
  generalist's when the selector is unsure, when metadata/ holds none or serves another budget,
  or when AUTODL_META_LEARNING=0); then PIXEL in the same call: logistic regression on pixels,
  so the first `test()` returns a real prediction within seconds.
- HEAD: the network is built and a linear head fitted on its frozen features.
- FINE_TUNE: the network (but the blocks the config's `frozen_fraction` freezes) trains for a
  slice sized by the TimePolicy, while more of the training set is decoded.
Every model is a candidate of the `Blend`: it joins the prediction only when the blend's
validation NAUC rises, so `test()` computes a new prediction only then and otherwise returns the
last one at no cost. No exception escapes `train`/`test`: a failure is logged once (then
counted), a failing phase is retried once and then skipped, and when nothing is left to run the
run says `done_training`. Undecodable records are skipped; their test rows get the class prior.
A JSON run record (autodl_meta/record.py) is written after every call.
"""
from __future__ import annotations

import enum
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

# The first torch optimiser imports torch._dynamo (1-2 s on a CPU): importing it with this
# module, before the budget starts, keeps that time away from the first prediction.
import torch._dynamo  # noqa: F401

from autodl_meta.backbones import available_backbones
from autodl_meta.config import GENERALIST, TrainConfig
from autodl_meta.data import RecordReader, count_records
from autodl_meta.fingerprint import FINGERPRINT_BATCH, Fingerprinter, read_fingerprint_batch
from autodl_meta.metadata import METADATA_DIR, MetaData, MetadataError
from autodl_meta.policy import TimePolicy
from autodl_meta.pool import FIRST_CHUNK, ReadPlan, TestSet, TrainingData
from autodl_meta.record import ErrorLog, PredictionEntry, RunRecord, TimeLedger, run_record_path
from autodl_meta.stages import (HEAD_SECONDS, HEAD_SHARE, Blend, Candidate, FineTuneStage,
                                HeadStage, PixelStage)
from autodl_meta.techniques import GraphRefinement
from autodl_meta.trainer import Trainer, keep_freed_memory, pick_device, usable_cores
from autodl_meta.validation import nauc
from autodl_meta.zeroshot import meta_features

logger = logging.getLogger("autodl_meta")

# The label pass stops after this long (a huge dataset); the rest is decoded in record order.
LABEL_PASS_SECONDS = 5.0
# The first chunk (validation + FIRST_CHUNK examples) may take this long.
FIRST_READ_SECONDS = 4.0
# Before the head is fitted, the pool is read up to MIN_FIT_PER_CLASS fitting examples per class
# (for at most HEAD_READ_SECONDS): with many classes the first chunk holds 2-4 of each, and a
# head (then the network started from it) fitted on 2 examples of each of 242 classes stayed
# behind for the whole run. When the first chunk took less than CHEAP_READ_SECONDS (small
# images), at least EXTRA_READ_COUNT more are read then. Whenever the pool grew, the pixel model
# is fitted again on it. Neither read is in the first call: the first prediction would wait for
# it (0.3-0.5 s).
MIN_FIT_PER_CLASS = 8
HEAD_READ_SECONDS = 2.0
EXTRA_READ_COUNT = 1536
CHEAP_READ_SECONDS = 0.5
READ_SHARE = 0.3             # of a fine-tuning slice, for decoding more training examples
DEFAULT_TIME_BUDGET = 1200.0
# Set to 0 (or off/false/no) to skip the dataset selection and run the generalist config.
META_LEARNING_ENV = "AUTODL_META_LEARNING"
GNN_MAX_SHARE = 0.1          # of the time budget one refinement may take
MAX_FAILURES = 2             # consecutive failures of a phase before it is given up
VALIDATION_SLICE_FACTOR = 4  # a slice trains at least this many times its validation pass
TEST_SLICE_FACTOR = 2        # ... and this many times a network test pass (up to the time
                             # elapsed: early predictions weigh most)
READ_AHEAD = 2               # decoded examples per example that training draws


class Selection(enum.Enum):
    """How a run's config is chosen."""

    FORCED = "forced"            # the caller passed one
    OFF = "off"                  # META_LEARNING_ENV switched meta-learning off: the generalist
    ZERO_SHOT = "zero-shot"      # metadata/zeroshot.json, from the metadata's meta-features
    FINGERPRINT = "fingerprint"  # the meta-classifier on a fingerprinted sample of records
    GENERALIST = "generalist"    # metadata/ ships no selector


class Phase(enum.Enum):
    READ = "read"
    PIXEL = "pixel"
    HEAD = "head"
    FINE_TUNE = "fine_tune"
    DONE = "done"


# What a phase that is given up leads to (reading failed: nothing to learn from).
NEXT_PHASE = {Phase.READ: Phase.DONE, Phase.PIXEL: Phase.HEAD, Phase.HEAD: Phase.FINE_TUNE,
              Phase.FINE_TUNE: Phase.DONE}


def meta_learning_enabled() -> bool:
    return os.environ.get(META_LEARNING_ENV, "1").strip().lower() not in ("0", "off", "false",
                                                                           "no")


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
                 metadata_dir: Path = METADATA_DIR,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`config` forces a configuration (no selection); otherwise `metadata_dir` decides.
        `clock` times the budget and what is planned within it (seconds, monotonic): the
        wall clock, unless an offline harness prices the network's work (offline/evaluate.py)."""
        self.done_training = False
        self.clock = clock
        self.metadata = metadata
        self.seed = seed
        self.output_dim = metadata.get_output_size()
        self.in_channels = metadata.get_num_channels()
        self.is_video = metadata.get_sequence_size() != 1
        self.device = pick_device()
        if self.device.type == "cpu":
            torch.set_num_threads(usable_cores())
        keep_freed_memory()
        self.record = RunRecord()
        self.ledger = TimeLedger()
        self.errors = ErrorLog()
        self.record_path = run_record_path()
        self.meta = MetaData() if config is not None else self._load_metadata(metadata_dir)
        self.selection = self._selection(config)
        self.fingerprinter = (Fingerprinter(self.in_channels, self.device)
                              if self.selection is Selection.FINGERPRINT else None)
        self.selection_reason = {Selection.FORCED: "forced config",
                                 Selection.OFF: f"meta-learning switched off ({META_LEARNING_ENV})"
                                 }.get(self.selection, "generalist")
        if self.selection is Selection.OFF:
            logger.info("meta-learning switched off (%s): generalist config", META_LEARNING_ENV)
        self.selected: str | None = None
        self.config = self._usable(config or self.meta.generalist)
        self.resolution = effective_resolution(metadata, self.config.resolution)
        self.frames = self.config.test_frames if self.is_video else 1
        self.phase = Phase.READ
        self.failures = 0           # consecutive failures of the current phase
        self.test_failures = 0
        self.policy: TimePolicy | None = None
        self.plan: ReadPlan | None = None
        self.data: TrainingData | None = None
        self.test_set: TestSet | None = None
        self.multilabel = False
        self.cheap_decoding = False  # the first chunk took under CHEAP_READ_SECONDS
        # Built by the second train() call: the first prediction (the pixel model's) does not
        # wait for the backbone.
        self.trainer: Trainer | None = None
        self.pixel = PixelStage(multilabel=False, seed=seed)
        self.head: HeadStage | None = None
        self.fine_tune: FineTuneStage | None = None
        self.head_candidate: Candidate | None = None
        self.blend = Blend()
        self.predicted_version = 0  # the blend version of the last prediction
        self.last_prediction: np.ndarray | None = None
        # What a network test pass is expected to take (kept free at the end of the budget):
        # estimated from the head's feature pass, then from each network validation pass,
        # then measured by each network test pass; the latest figure holds.
        self.test_seconds = 0.0
        self.review_seconds = 0.0   # validating and weighing the last network state
        self.use_gnn = self.config.transductive_gnn
        self.refinement: GraphRefinement | None = None  # the transductive step, when used
        self.pace_checked = False
        # What a technique could not do as configured (too slow, unsuitable data): logged and
        # kept, so that a benchmark can report it beside the score.
        self.notes: list[str] = self.record.notes

    def _selection(self, config: TrainConfig | None) -> Selection:
        if config is not None:
            return Selection.FORCED
        if self.meta.zeroshot is None and self.meta.selector is None:
            return Selection.GENERALIST
        if not meta_learning_enabled():
            return Selection.OFF
        return Selection.ZERO_SHOT if self.meta.zeroshot is not None else Selection.FINGERPRINT

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

    def _note(self, message: str) -> None:
        if message not in self.notes:
            logger.warning("%s", message)
            self.notes.append(message)

    # -- the platform's API -------------------------------------------------------------------
    def train(self, dataset, remaining_time_budget: float | None = None) -> None:
        if self.policy is None:
            self.policy = TimePolicy(remaining_time_budget or DEFAULT_TIME_BUDGET,
                                     clock=self.clock)
        if self.phase is Phase.DONE:
            self.done_training = True
            return
        try:
            self._run(dataset)
            self.failures = 0
        except Exception as err:  # noqa: BLE001 - never crash out of train(); see the doc
            self._failed(err)
        if self.phase is Phase.DONE:
            self.done_training = True
        self._write_record()

    def test(self, dataset, remaining_time_budget: float | None = None) -> np.ndarray:
        new = False
        try:
            if self.test_set is None:
                with self.ledger.timed("read_test"):
                    self.test_set = TestSet.decode(dataset, self.resolution, self.frames,
                                                   direct=self._direct_decode())
                self._count_undecodable("test", len(self.test_set.failed))
            if self.blend.version != self.predicted_version and self.blend.candidates:
                self.last_prediction = self._predict()
                new = True
            self.predicted_version = self.blend.version
            self.test_failures = 0
        except Exception as err:  # noqa: BLE001 - never crash out of test(); see the doc
            self.errors.report("test", err)
            self.predicted_version = self.blend.version  # not tried again until it changes
            self.test_failures += 1
            if self.test_failures >= MAX_FAILURES:
                self.phase = Phase.DONE
        if self.last_prediction is None:
            self.last_prediction = self._prior_prediction(dataset)
        if self.policy is not None and not self.policy.can_afford(self.test_seconds):
            self.done_training = True
        if self.phase is Phase.DONE:
            self.done_training = True
        self._record_prediction(new)
        return self.last_prediction

    # -- phases -------------------------------------------------------------------------------
    def _run(self, dataset) -> None:
        """The current phase (READ and PIXEL in one call: the first prediction comes from
        it), each timed in the run record."""
        if self.phase is Phase.READ:
            self._timed(Phase.READ, lambda: self._read(dataset), then=Phase.PIXEL)
        if self.phase is Phase.PIXEL:
            self._timed(Phase.PIXEL, self._fit_pixel, then=Phase.HEAD)
        elif self.phase is Phase.HEAD:
            self._timed(Phase.HEAD, self._fit_head, then=Phase.FINE_TUNE)
        elif self.phase is Phase.FINE_TUNE:
            if self.trainer is None:  # no network was built: nothing left to train
                self.phase = Phase.DONE
                return
            self._timed(Phase.FINE_TUNE, self._fine_tune, then=Phase.FINE_TUNE)

    def _timed(self, phase: Phase, work, then: Phase) -> None:
        entry = self.record.stage(phase.value)
        if entry.started is None:
            entry.started = round(self.policy.elapsed(), 3)
        began = time.monotonic()
        try:
            work()
        finally:
            entry.seconds = round(entry.seconds + time.monotonic() - began, 3)
        if self.phase is phase:  # the work may have ended the run
            self.phase = then
        entry.status = "running" if self.phase is phase else "done"

    def _failed(self, error: Exception) -> None:
        """The current phase failed: retried at the next call, given up after MAX_FAILURES."""
        phase = self.phase
        entry = self.record.stage(phase.value)
        self.errors.report(f"train ({phase.value})", error)
        self.failures += 1
        entry.failures += 1
        if self.failures >= MAX_FAILURES:
            entry.status = "failed"
            self.phase, self.failures = NEXT_PHASE[phase], 0
            logger.warning("phase %s given up after %d failures; next: %s", phase.value,
                           entry.failures, self.phase.value)

    def _read(self, dataset) -> None:
        reader = RecordReader(dataset, self.resolution, self.frames)
        began = time.monotonic()
        with self.ledger.timed("read_labels"):
            labels, complete = reader.read_labels(seconds=self._cap(LABEL_PASS_SECONDS))
        if not len(labels):
            raise ValueError("the training set holds no readable record")
        self.plan = ReadPlan.from_labels(labels, complete, self.seed)
        self.multilabel = self.plan.multilabel
        self.pixel.multilabel = self.multilabel
        self.record.dataset = {
            "train_records": reader.count if complete else f">= {len(labels)}",
            "classes": self.output_dim, "classes_in_train": self.plan.classes_present,
            "multilabel": self.multilabel, "video": self.is_video,
            "reader": "indexed" if reader.indexed else "stream",
            "label_pass_seconds": round(time.monotonic() - began, 3),
            "validation_examples": len(self.plan.validation)}
        logger.info("labels of %d training records read in %.2f s (%s reader, %d of %d classes "
                    "present, %d held out for validation)", len(labels),
                    time.monotonic() - began, self.record.dataset["reader"],
                    self.plan.classes_present, self.output_dim, len(self.plan.validation))
        self._choose_config(reader)
        self.data = TrainingData(reader.with_resolution(self.resolution, self.frames), self.plan)
        began = time.monotonic()
        with self.ledger.timed("read_train"):
            self.data.read(count=len(self.plan.validation) + FIRST_CHUNK,
                           seconds=self._cap(FIRST_READ_SECONDS))
        self.cheap_decoding = time.monotonic() - began < CHEAP_READ_SECONDS
        self._count_undecodable("train", self.data.undecodable)
        pool = self.data.pool
        self.record.dataset["first_read"] = {
            "examples": len(pool), "seconds": round(time.monotonic() - began, 3),
            "classes": int((pool.labels.sum(0) > 0).sum()) if len(pool) else 0,
            "near_copies_excluded": int(pool.excluded.sum())}

    def _cap(self, seconds: float) -> float:
        """`seconds`, or less when the budget is short: a tenth of what remains."""
        return min(seconds, max(0.1, 0.1 * self.policy.remaining()))

    def _choose_config(self, reader: RecordReader) -> None:
        """The zero-shot selector's config for this dataset and budget, or the config of the
        known dataset the fingerprint of a random sample resembles."""
        if self.selection is Selection.ZERO_SHOT:
            self._select_zero_shot()
        elif self.meta.configs and not self.meta.serves(self.policy.time_budget):
            # Configs tuned for another budget can do worse than the default (measured: 30-s
            # configs on moving_mnist at 300 s); they wait for a search at this scale.
            self.config = self._usable(GENERALIST)
            self.selection_reason = (f"configs tuned for {self.meta.tuned_budget:.0f} s, "
                                     f"run of {self.policy.time_budget:.0f} s: default config")
            logger.info("metadata/ configs were tuned for a %.0f s budget, this run has %.0f s: "
                        "default config", self.meta.tuned_budget, self.policy.time_budget)
        elif self.selection is Selection.FINGERPRINT:
            self._select_config(reader)
        self.resolution = effective_resolution(self.metadata, self.config.resolution)
        self.frames = self.config.test_frames if self.is_video else 1
        self.use_gnn = self.config.transductive_gnn
        self.record.selection = {"selected": self.selected, "reason": self.selection_reason,
                                 **self.record.selection}
        self.record.config = {**self.config.to_dict(), "effective_resolution": self.resolution}
        logger.info("config %s", json.dumps(self.config.to_dict(), sort_keys=True))
        logger.info("backbone %s at %d px on %s, %d classes, %s", self.config.backbone,
                    self.resolution, self.device, self.output_dim,
                    "video" if self.is_video else "images")

    def _select_zero_shot(self) -> None:
        budget = self.policy.time_budget
        began = time.monotonic()
        try:
            features = meta_features(self.metadata)
            name, scores = self.meta.zeroshot.select(features, budget)
        except Exception as err:  # noqa: BLE001 - the generalist is always a safe answer
            self.errors.report("zero-shot selection", err)
            self.selection_reason = "zero-shot selection failed: generalist config"
            return
        model = self.meta.zeroshot.model_for(budget)
        trained_at = model.budget
        self.selected = name
        self.selection_reason = f"zero-shot, the {model.kind} selector of {trained_at:g} s"
        self.config = self._usable(self.meta.zeroshot.configs[name])
        self.record.selection = {"zero_shot": name, "kind": model.kind, "trained_at": trained_at,
                                 "scores": [round(float(v), 4) for v in scores],
                                 "seconds": round(time.monotonic() - began, 6)}
        logger.info("zero-shot: %s (%s selector of %g s, run of %.0f s)", name, model.kind,
                    trained_at, budget)

    def _select_config(self, reader: RecordReader) -> None:
        began = time.monotonic()
        try:
            with self.ledger.timed("fingerprint"):
                # A plain reader decodes every record up to the last position asked for: it
                # takes the first ones instead.
                positions = (self.plan.sample(FINGERPRINT_BATCH, self.seed) if reader.indexed
                             else np.arange(min(FINGERPRINT_BATCH, len(self.plan.labels))))
                images = read_fingerprint_batch(reader.dataset, positions=positions,
                                                direct=reader.direct)
                name, confidence = self.meta.selector.select(
                    self.fingerprinter.fingerprints(images))
        except Exception as err:  # noqa: BLE001 - the generalist is always a safe answer
            self.errors.report("dataset selection", err)
            self.selection_reason = "selection failed: generalist config"
            return
        seconds = time.monotonic() - began
        self.record.selection = {"closest": name, "confidence": round(confidence, 4),
                                 "seconds": round(seconds, 3), "samples": len(images)}
        if confidence < self.meta.min_confidence:
            self.selection_reason = "selector unsure: generalist config"
            logger.info("selector unsure (closest %s, confidence %.2f < %.2f, %.2f s): "
                        "generalist config", name, confidence, self.meta.min_confidence,
                        seconds)
            return
        self.selected = name
        self.selection_reason = "selected"
        self.config = self._usable(self.meta.configs[name])
        logger.info("selected %s (confidence %.2f, %d samples, %.2f s)", name, confidence,
                    len(images), seconds)

    def _fit_pixel(self) -> None:
        pool = self.data.pool
        with self.ledger.timed("fit"):
            candidate = self.pixel.fit(pool)
        self._consider(candidate)
        logger.info("pixel model fitted on %d examples at %.1f s (validation NAUC %.4f)",
                    len(pool.fit_rows()), self.policy.elapsed(), self.blend.score)

    def _fit_head(self) -> None:
        if self.trainer is None:  # kept when a failed head fit is tried again
            self.trainer = Trainer(self.config, self.output_dim, self.in_channels,
                                   self.multilabel, device=self.device, seed=self.seed,
                                   clock=self.clock)
            refine = None
            if self.use_gnn:
                self.refinement = GraphRefinement(self.trainer.features, self.multilabel,
                                                  self.seed, clock=self.clock)
                refine = self._refine
            self.head = HeadStage(self.trainer, self.seed, refine)
            self.fine_tune = FineTuneStage(self.trainer, refine)
        if self._read_for_head() and self.pixel.model is not None:
            self._fit_pixel()
        pool = self.data.pool
        self._place_graph_nodes()
        with self.ledger.timed("fit"):
            candidate = self.head.fit(pool, seconds=min(HEAD_SECONDS,
                                                        HEAD_SHARE * self.policy.remaining()))
        self.head_candidate = candidate
        accepted = self._consider(candidate)
        # A network prediction costs a feature pass per TTA view: expect it from now on.
        views = 2 if self.config.flip_tta else 1
        self.test_seconds = views * self.head.seconds_per_example * self._test_count()
        logger.info("head fitted on %d frozen examples at %.1f s (validation NAUC %.4f, blend "
                    "%s)", self.head.examples, self.policy.elapsed(),
                    _own_score(pool, candidate), "takes it" if accepted else "keeps its models")

    def _read_for_head(self) -> bool:
        """Decode up to MIN_FIT_PER_CLASS fitting examples per class, and EXTRA_READ_COUNT
        more when decoding is cheap (see the constants); return whether the pool grew."""
        fitting = len(self.data.pool.fit_rows())
        missing = MIN_FIT_PER_CLASS * max(1, self.plan.classes_present) - fitting
        if self.cheap_decoding:
            missing = max(missing, EXTRA_READ_COUNT)
        if missing <= 0 or self.data.exhausted:
            return False
        with self.ledger.timed("read_train"):
            self.data.read(count=missing, seconds=self._cap(HEAD_READ_SECONDS))
        self._count_undecodable("train", self.data.undecodable)
        return len(self.data.pool.fit_rows()) > fitting

    def _fine_tune(self) -> None:
        slice_seconds = self.policy.next_slice(self.test_seconds)
        # Training, not validating or predicting, must fill most of the time.
        room = (self.policy.remaining() - self.test_seconds - self.policy.safety_seconds -
                self.review_seconds)
        slice_seconds = min(max(slice_seconds,
                                VALIDATION_SLICE_FACTOR * self.fine_tune.validation_seconds,
                                min(TEST_SLICE_FACTOR * self.test_seconds,
                                    self.policy.elapsed())), room)
        if slice_seconds < self.policy.min_slice_seconds:
            self.phase = Phase.DONE
            return
        if self.head_candidate is not None:  # fine-tuning changes the frozen network
            if self.head_candidate.test_scores is None:
                self.head_candidate.score_test = None
            self.head_candidate = None
        began = self.clock()
        if not self.data.exhausted and self._needs_examples(slice_seconds):
            with self.ledger.timed("read_train"):
                self.data.read(seconds=max(1.0, READ_SHARE * slice_seconds))
            self._count_undecodable("train", self.data.undecodable)
        pool = self.data.pool
        with self.ledger.timed("train"):
            steps = self.fine_tune.train(pool, max(slice_seconds - (self.clock() - began), 0.5))
        self.blend.drop_untestable()
        self._place_graph_nodes()  # the pool grew and the network moved: embedded anew
        self._check_embedding_pace()
        reviewed = self.clock()
        with self.ledger.timed("validate"):
            candidate = self.fine_tune.candidate(pool)
            accepted = self._consider(candidate)
        self.review_seconds = self.clock() - reviewed
        validated = len(pool.validation_rows())
        if validated:
            self.test_seconds = (self.fine_tune.validation_seconds * self._test_count() /
                                 validated)
        logger.info("fine-tuned %d steps on %d examples (validation NAUC %.4f, blend %.4f%s); "
                    "%.1f s left", steps, len(pool.fit_rows()), _own_score(pool, candidate),
                    self.blend.score, ", new prediction" if accepted else "",
                    self.policy.remaining())

    def _needs_examples(self, slice_seconds: float) -> bool:
        """Whether training would soon draw each decoded example more than 1 / READ_AHEAD
        times: decoding more than that costs time that training would not use."""
        step_seconds = self.trainer.step_seconds or 0.1
        draws = self.config.batch_size * (self.trainer.steps + slice_seconds / step_seconds)
        return len(self.data.pool.fit_rows()) < READ_AHEAD * draws

    def _consider(self, candidate: Candidate) -> bool:
        pool = self.data.pool
        self.blend.drop_stale(pool.validation_version)
        truth = pool.labels[pool.validation_rows()].numpy()
        return self.blend.consider(candidate, truth)

    def _check_embedding_pace(self) -> None:
        """After the first slice: say when the budget leaves an embedding loss too few steps."""
        if self.pace_checked:
            return
        self.pace_checked = True
        note = self.trainer.embedding_pace_note(self.policy.remaining())
        if note:
            self._note(note)

    # -- prediction ---------------------------------------------------------------------------
    def _predict(self) -> np.ndarray:
        with self.ledger.timed("predict"):
            try:
                scores = self.blend.predict(self.test_set)
            except Exception as err:  # noqa: BLE001 - the models with test scores remain
                self.errors.report("prediction", err)
                for candidate in self.blend.candidates:
                    if candidate.test_scores is None:
                        candidate.score_test = None
                self.blend.drop_untestable()
                if not self.blend.candidates:
                    raise
                scores = self.blend.predict(self.test_set)
        latest = self.fine_tune.latest if self.fine_tune is not None else None
        if latest is not None and latest in self.blend.candidates and latest.test_seconds:
            self.test_seconds = latest.test_seconds
        prediction = self.test_set.full(scores, self._prior())
        if prediction.shape != (self.test_set.count, self.output_dim) or \
                not np.isfinite(prediction).all():
            raise ValueError(f"bad prediction of shape {prediction.shape}")
        return prediction

    def _direct_decode(self) -> bool | None:
        """The training set's decode check, for the test set (None: none made)."""
        return self.data.reader.direct if self.data is not None else None

    def _prior(self) -> np.ndarray:
        """Class frequencies of the training examples read: the scores of an unseen example."""
        if self.data is None or not len(self.data.pool):
            return np.full(self.output_dim, 1.0 / self.output_dim)
        return self.data.pool.labels.mean(0).double().numpy()

    def _prior_prediction(self, dataset) -> np.ndarray:
        """The class prior for every test record: the answer when nothing else is."""
        count = self.test_set.count if self.test_set is not None else None
        if count is None:
            try:
                count = count_records(dataset)
            except Exception as err:  # noqa: BLE001 - no count, no prediction of the right shape
                self.errors.report("counting the test records", err)
                count = 0
        return np.tile(self._prior(), (count, 1))

    def _test_count(self) -> int:
        return self.test_set.count if self.test_set is not None else 0

    def _refine(self, prediction: np.ndarray, test_features: torch.Tensor) -> np.ndarray:
        """The transductive step (`GraphRefinement`), switched off for the rest of the run
        once it takes more than GNN_MAX_SHARE of the budget."""
        if not self.use_gnn:
            return prediction
        refined = self.refinement(prediction, test_features)
        seconds = self.refinement.last_seconds
        if seconds > GNN_MAX_SHARE * self.policy.time_budget:
            self.use_gnn = False
            self._note(f"transductive_gnn took {seconds:.1f} s, more than "
                       f"{GNN_MAX_SHARE:.0%} of the {self.policy.time_budget:.0f}-s budget: "
                       f"switched off for the rest of the run")
        return refined

    def _place_graph_nodes(self) -> None:
        """The graph's labelled nodes: a sample of the fitting rows as they are now."""
        if self.refinement is None:
            return
        pool = self.data.pool
        self.refinement.use_nodes(pool.images, pool.labels, pool.fit_rows())

    # -- the run record -----------------------------------------------------------------------
    def _count_undecodable(self, subset: str, count: int) -> None:
        if count > self.record.undecodable[subset]:
            logger.warning("%d %s record(s) could not be decoded and are skipped%s", count,
                           subset, "; their rows get the class prior" if subset == "test"
                           else "")
            self.record.undecodable[subset] = count

    def _record_prediction(self, new: bool) -> None:
        if self.policy is None:
            return
        self.record.predictions.append(PredictionEntry(
            index=len(self.record.predictions), seconds=round(self.policy.elapsed(), 3),
            models=self.blend.described(),
            validation_nauc=None if np.isnan(self.blend.score) else round(self.blend.score, 5),
            new=new))
        self._write_record()

    def _write_record(self) -> None:
        if self.record_path is None or self.policy is None:
            return
        self.record.elapsed = round(self.policy.elapsed(), 3)
        self.record.done_training = self.done_training
        self.record.write(self.record_path, self.ledger, self.errors)


def _own_score(pool, candidate: Candidate) -> float:
    """A candidate's own validation NAUC (NaN when undefined)."""
    return nauc(pool.labels[pool.validation_rows()].numpy(), candidate.validation_scores)
