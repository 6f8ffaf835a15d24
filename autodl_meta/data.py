"""From the platform's tf.data datasets to compact torch tensors.

Examples arrive as float32 `[sequence, row, col, channel]` in [0, 1], of any size. They are
resized inside tf.data (parallel, in C++) to `resolution x resolution`, `frames` of them sampled
uniformly in time, and kept as uint8 `[n, frames, channel, resolution, resolution]`: a quarter of
the memory of floats, converted per batch on the device.
"""
from __future__ import annotations

import time

import numpy as np
import tensorflow as tf
import torch

DECODE_BATCH = 128


def _preprocess(resolution: int, frames: int):
    def preprocess(example: tf.Tensor, labels: tf.Tensor):
        example = tf.where(tf.math.is_nan(example), tf.zeros_like(example), example)
        length = tf.shape(example)[0]
        index = tf.cast(tf.round(tf.linspace(0.0, tf.cast(length - 1, tf.float32), frames)),
                        tf.int32)
        example = tf.image.resize(tf.gather(example, index), (resolution, resolution),
                                  antialias=True)
        example = tf.cast(tf.clip_by_value(example * 255.0 + 0.5, 0.0, 255.0), tf.uint8)
        return tf.transpose(example, (0, 3, 1, 2)), labels
    return preprocess


class DatasetReader:
    """Decodes a dataset in pieces, so the first piece is ready within seconds.

    `read(count, seconds)` decodes up to `count` more examples or until `seconds` pass;
    everything read so far is in `images` (uint8) and `labels` (float32).
    """

    def __init__(self, dataset: tf.data.Dataset, resolution: int, frames: int) -> None:
        pipeline = dataset.map(_preprocess(resolution, frames),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        self._batches = iter(pipeline.batch(DECODE_BATCH).prefetch(2))
        self._images: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self.exhausted = False
        self.count = 0

    def read(self, count: int | None = None, seconds: float | None = None) -> int:
        """Decode more examples; return how many were added."""
        began = time.monotonic()
        added = 0
        while not self.exhausted and (count is None or added < count):
            if seconds is not None and added and time.monotonic() - began > seconds:
                break
            try:
                images, labels = next(self._batches)
            except StopIteration:
                self.exhausted = True
                break
            self._images.append(images.numpy())
            self._labels.append(labels.numpy())
            added += len(images)
        self.count += added
        if len(self._images) > 1:  # keep one array each, so indexing stays cheap
            self._images = [np.concatenate(self._images)]
            self._labels = [np.concatenate(self._labels)]
        return added

    def read_all(self) -> None:
        self.read()

    @property
    def images(self) -> torch.Tensor:
        return torch.from_numpy(self._images[0]) if self._images else torch.empty(0)

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self._labels[0]).float() if self._labels else torch.empty(0)
