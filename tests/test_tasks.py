"""Derived tasks: the classes, examples, resolution, channels and frames a task asks for."""
from __future__ import annotations

import numpy as np
import pytest

from ingestion_local.convert import write_arrays
from ingestion_local.dataset import AutoDLDataset
from ingestion_local.writer import ConversionError
from offline.tasks import TaskSpec, default_suite, derive_task, source_of


def _images(tmp_path, sequence: int = 1):
    rng = np.random.default_rng(0)
    shape = (40, 40, 3) if sequence == 1 else (sequence, 40, 40, 3)
    y_train, y_test = np.repeat(np.arange(4), 6), np.repeat(np.arange(4), 2)
    x_train = rng.integers(0, 256, (len(y_train), *shape), dtype=np.uint8)
    x_test = rng.integers(0, 256, (len(y_test), *shape), dtype=np.uint8)
    return write_arrays("toy", tmp_path / "src", x_train, y_train, x_test, y_test,
                        label_names=["a", "b", "c", "d"])


def _labels(subset_dir):
    dataset = AutoDLDataset(subset_dir)
    return dataset, [np.asarray(label) for _, label in dataset.get_dataset().as_numpy_iterator()]


def test_a_task_keeps_the_classes_examples_and_pixels_it_asks_for(tmp_path):
    source = _images(tmp_path)
    spec = TaskSpec("toy", classes=2, per_class=3, side=20, grayscale=True)
    task = derive_task(source, spec, tmp_path / "tasks")
    assert task.name == "toy__c2_n3_r20_gray" and source_of(task.name) == "toy"
    assert source_of("toy") == "toy"  # a source is its own
    train, train_labels = _labels(task / f"{task.name}.data" / "train")
    metadata = train.get_metadata()
    assert metadata.get_output_size() == 2
    assert metadata.get_tensor_shape() == (1, 20, 20, 1)
    assert len(train_labels) == 6
    assert (np.stack(train_labels).sum(axis=0) == 3).all()   # 3 examples of each kept class
    solution = np.loadtxt(task / f"{task.name}.solution", ndmin=2)
    assert solution.shape == (4, 2) and (solution.sum(axis=1) == 1).all()
    names = (task / f"{task.name}_label.name").read_text().split()
    assert len(names) == 2 and set(names) <= {"a", "b", "c", "d"}
    with pytest.raises(ConversionError, match="already exists"):
        derive_task(source, spec, tmp_path / "tasks")


def test_a_clip_task_keeps_evenly_spaced_frames(tmp_path):
    source = _images(tmp_path, sequence=8)
    task = derive_task(source, TaskSpec("toy", frames=2), tmp_path / "tasks")
    train, train_labels = _labels(task / f"{task.name}.data" / "train")
    assert train.get_metadata().get_tensor_shape() == (2, 40, 40, 3)
    assert len(train_labels) == 24


def test_bad_task_specs_name_the_field(tmp_path):
    with pytest.raises(ConversionError, match="classes must be at least 2"):
        TaskSpec("toy", classes=1)
    with pytest.raises(ConversionError, match="has 4 classes, 9 asked"):
        derive_task(_images(tmp_path), TaskSpec("toy", classes=9), tmp_path / "tasks")


def test_the_default_suite_derives_a_few_shot_and_a_coarse_task(tmp_path):
    metadata = AutoDLDataset(_images(tmp_path) / "toy.data" / "train").get_metadata()
    few_shot, coarse = default_suite("toy", metadata)
    assert (few_shot.classes, few_shot.per_class) == (None, 10)
    assert (coarse.side, coarse.grayscale, coarse.frames) == (20, True, None)
