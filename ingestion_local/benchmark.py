"""Throughput of the converter and the reader on real archives.

    python -m ingestion_local.benchmark [--datasets cifar10 caltech101] [--shared-dir DIR]

For each `<name>.tar` of the shared dataset folder: unpack it, time the conversion into the
AutoDL format (images/s), then time reading the train subset back through
`AutoDLDataset.get_dataset()` as float tensors, element by element as a model sees them, and
batched (images/s). Prints a table; the figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ingestion_local.convert import convert_folder
from ingestion_local.dataset import AutoDLDataset
from ingestion_local.prepare import DEFAULT_SHARED


def time_reading(subset_dir: Path, batch_size: int | None) -> tuple[int, float]:
    dataset = AutoDLDataset(subset_dir).get_dataset()
    if batch_size:
        dataset = dataset.padded_batch(batch_size)
    began = time.perf_counter()
    count = 0
    for example, _ in dataset:
        count += example.shape[0] if batch_size else 1
    return count, time.perf_counter() - began


def benchmark(archive: Path) -> dict[str, float]:
    name = archive.stem
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as scratch:
        scratch = Path(scratch)
        with tarfile.open(archive) as tar:
            tar.extractall(scratch / "raw", filter="data")
        began = time.perf_counter()
        root = convert_folder(scratch / "raw" / name, scratch / "out", name=name, progress=False)
        convert_seconds = time.perf_counter() - began
        total = sum(1 for _ in (scratch / "raw" / name / "images").iterdir())
        train_dir = root / f"{name}.data" / "train"
        count, single_seconds = time_reading(train_dir, None)
        _, batched_seconds = time_reading(train_dir, 64)
    return {"images": total, "convert": total / convert_seconds, "train": count,
            "read": count / single_seconds, "read_batched": count / batched_seconds}


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = argparse.ArgumentParser(prog="python -m ingestion_local.benchmark",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "caltech101"])
    parser.add_argument("--shared-dir", type=Path, default=DEFAULT_SHARED)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    print(f"{'dataset':14s} {'images':>7s} {'convert img/s':>14s} {'train':>6s} "
          f"{'read img/s':>11s} {'read img/s (batch 64)':>22s}")
    for name in args.datasets:
        archive = args.shared_dir / "datasets" / f"{name}.tar"
        if not archive.is_file():
            print(f"{name:14s} skipped: {archive} not found")
            continue
        row = benchmark(archive)
        print(f"{name:14s} {row['images']:7d} {row['convert']:14.0f} {row['train']:6d} "
              f"{row['read']:11.0f} {row['read_batched']:22.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
