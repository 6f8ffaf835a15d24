"""Dataset fingerprints: pooled features of a frozen ImageNet network on a batch of samples.

Section 6.1 of the paper: the distribution of a frozen network's features over a batch of a
dataset is its "fingerprint", the meta-features the meta-classifier compares with the known
datasets. The transform here is the one place that defines it, so the offline training of the
meta-classifiers and the runtime see exactly the same numbers: `FINGERPRINT_BATCH` examples,
one frame per clip, resized to `FINGERPRINT_RESOLUTION`, through EfficientNet-Lite0's
pooled second-to-last layer (the paper found that layer better than the class outputs). The
runtime fingerprints a random sample of the records, whatever their order.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import torch

from autodl_meta.backbones import FeatureExtractor
from autodl_meta.data import RecordReader
from autodl_meta.trainer import MEMORY_FORMAT, pick_device, to_float

FINGERPRINT_BACKBONE = "efficientnet-lite0"
FINGERPRINT_RESOLUTION = 64
FINGERPRINT_BATCH = 64


def read_fingerprint_batch(dataset: tf.data.Dataset, count: int = FINGERPRINT_BATCH,
                           positions: np.ndarray | None = None, direct: bool | None = None
                           ) -> torch.Tensor:
    """The examples of `dataset` at `positions` (the first `count` when None; the known
    datasets are stored shuffled) as uint8 `[n, 1, channel, res, res]`; records that cannot be
    decoded are left out. `direct`: as for `RecordReader` (a check already made)."""
    if positions is None:
        positions = np.arange(count)
    decoded = RecordReader(dataset, FINGERPRINT_RESOLUTION, frames=1,
                           direct=direct).decode(positions)
    return torch.from_numpy(decoded.images)


class Fingerprinter:
    """Frozen feature extractor; `fingerprints(images)` gives one row per example."""

    def __init__(self, in_channels: int, device: torch.device | None = None,
                 backbone: str = FINGERPRINT_BACKBONE) -> None:
        self.device = device or pick_device()
        self.backbone = backbone
        self.extractor = FeatureExtractor(backbone, in_channels).eval().to(
            self.device, memory_format=MEMORY_FORMAT)

    @torch.no_grad()
    def fingerprints(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """uint8 `[n, frames, channel, h, w]` to float32 `[n, features]` (first frame)."""
        rows = []
        for start in range(0, len(images), batch_size):
            frames = to_float(images[start:start + batch_size, 0], self.device)
            rows.append(self.extractor(frames).float().cpu())
        if not rows:
            return np.zeros((0, self.extractor.num_features), dtype=np.float32)
        return torch.cat(rows).numpy().astype(np.float32)
