"""Few-shot tasks: image archives decoded into arrays, a seeded class split, and n-way k-shot
task sampling (support set + query set).

An archive is one `<name>.tar` of the shared dataset folder (`../shared/datasets`) holding
`<name>/images/*`, `<name>/labels.csv` (`FileName,Labels,subset`) and `<name>/label.name`.
Few-shot use ignores the csv's train/test column: classes, not images, are split into meta-train
and meta-test.
"""
from __future__ import annotations

import csv
import io
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / "results" / "fewshot" / "cache"

ROTATIONS = 4  # quarter turns: Omniglot's usual "a rotated character is a new class"


def load_archive(path: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image of the archive resized to size x size: (uint8 [n, c, h, w], int64 [n], names).

    Non-square images are squashed rather than cropped: few-shot classes must keep all their
    content. One channel mode per archive (L or RGB), as the archive format guarantees.
    """
    path = Path(path)
    with tarfile.open(path) as archive:
        members = {member.name: member for member in archive.getmembers() if member.isfile()}
        root = path.stem

        def read(name: str) -> bytes:
            return archive.extractfile(members[f"{root}/{name}"]).read()

        rows = list(csv.DictReader(io.StringIO(read("labels.csv").decode())))
        class_names = read("label.name").decode().splitlines()
        images = []
        for row in rows:
            image = Image.open(io.BytesIO(read(f"images/{row['FileName']}")))
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            images.append(np.asarray(image.resize((size, size), Image.LANCZOS)))
    array = np.stack(images)
    array = array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)
    labels = np.array([int(row["Labels"]) for row in rows], dtype=np.int64)
    return np.ascontiguousarray(array), labels, class_names


def cached_archive(path: Path, size: int, cache_dir: Path = CACHE_DIR
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """load_archive, decoded once and kept as an .npz in cache_dir."""
    cache = cache_dir / f"{Path(path).stem}_{size}px.npz"
    if cache.is_file():
        stored = np.load(cache)
        return stored["images"], stored["labels"], stored["class_names"].tolist()
    logger.info("decoding %s at %d px (cached in %s)", path, size, cache)
    images, labels, class_names = load_archive(path, size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, images=images, labels=labels, class_names=np.array(class_names))
    return images, labels, class_names


def split_classes(num_classes: int, num_test: int, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded disjoint (meta-train, meta-test) split of the class ids 0..num_classes-1."""
    order = np.random.default_rng(seed).permutation(num_classes)
    return np.sort(order[num_test:]), np.sort(order[:num_test])


@dataclass
class Task:
    """One n-way k-shot task; labels are 0..n_way-1 in a random order of the drawn classes."""
    support_images: torch.Tensor  # float [n_way * k_shot, c, h, w] in [0, 1], or features
    support_labels: torch.Tensor  # int64 [n_way * k_shot]
    query_images: torch.Tensor
    query_labels: torch.Tensor


class TaskSampler:
    """Draws n-way k-shot tasks from the given classes of an array of examples (uint8 images
    [n, c, h, w] or float features [n, d]), reproducibly by seed.

    With `rotations`, each (class, quarter turn) pair is a class of its own, which multiplies the
    classes by four (meta-training on Omniglot only).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: np.ndarray, seed: int,
                 rotations: bool = False):
        self.images = images
        self.by_class = {int(c): np.flatnonzero(labels == c) for c in classes}
        self.classes = [(int(c), turn) for c in classes
                        for turn in (range(ROTATIONS) if rotations else [0])]
        self.rng = np.random.default_rng(seed)

    def sample(self, n_way: int, k_shot: int, query_per_class: int) -> Task:
        chosen = self.rng.choice(len(self.classes), n_way, replace=False)
        support, support_labels, query, query_labels = [], [], [], []
        for label, index in enumerate(chosen):
            class_id, turn = self.classes[index]
            members = self.by_class[class_id]
            if len(members) < k_shot + query_per_class:
                raise ValueError(f"class {class_id} has {len(members)} images, fewer than "
                                 f"{k_shot} shots + {query_per_class} queries")
            drawn = self.images[self.rng.choice(members, k_shot + query_per_class,
                                                replace=False)]
            if turn:
                drawn = np.rot90(drawn, turn, axes=(2, 3))
            support.append(drawn[:k_shot])
            query.append(drawn[k_shot:])
            support_labels += [label] * k_shot
            query_labels += [label] * query_per_class
        return Task(_to_float(support), torch.tensor(support_labels),
                    _to_float(query), torch.tensor(query_labels))


def _to_float(parts: list[np.ndarray]) -> torch.Tensor:
    """uint8 images to [0, 1]; other arrays (precomputed features) as they are."""
    array = np.ascontiguousarray(np.concatenate(parts))
    tensor = torch.from_numpy(array).float()
    return tensor.div_(255) if array.dtype == np.uint8 else tensor
