"""What reading a training set costs, and how soon the examples read cover its classes.

    python -m offline reading --datasets mnist_sorted cifar10_sorted caltech101_sorted

For each prepared dataset, timed in one process (so the figures compare within a row):
- `decode all`: every record through the platform's own dataset and the runtime's resize;
- `decode all, direct`: every record decoded by the runtime's reader itself (the chosen
  frames straight to uint8, `RecordReader.direct`; the platform's parse when it cannot);
- `labels (platform)`: the labels only, through the platform's dataset (tf.data drops the
  decode when only the labels are used; its parallel record reads remain);
- `labels (indexed)`: the runtime's label pass (`RecordReader.read_labels`: the raw records,
  labels parsed a batch at a time);
- `64 picked`: 64 random positions decoded by the indexed reader (the rest read, not decoded);
- coverage: the classes held by the first 768 examples in record order, and by the runtime's
  first chunk (validation + 512 in stratified rounds), out of the classes in the training set.
The table goes to stdout (and `--out`), the figures to `--json`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from autodl_meta.data import RecordReader, with_map_fusion
from autodl_meta.pool import FIRST_CHUNK, ReadPlan
from ingestion_local import AutoDLDataset
from ingestion_local.prepare import DEFAULT_OUT
from offline.cli import command_parser, emit_table
from offline.tables import markdown_row, markdown_table

RESOLUTION = 32
PICKED = 64
COLUMNS = ("dataset", "records", "classes", "decode all (s)", "decode all, direct (s)",
           "labels, platform (s)",
           "labels, indexed (s)", "64 picked (s)", "classes in first 768 read",
           "classes in first chunk")


def _timed(work) -> tuple[float, Any]:
    began = time.monotonic()
    result = work()
    return time.monotonic() - began, result


def measure(dataset_dir: Path) -> dict[str, Any]:
    name = dataset_dir.name
    subset = AutoDLDataset(dataset_dir / f"{name}.data" / "train")
    decode_all, decoded = _timed(lambda: RecordReader(subset.get_dataset(), RESOLUTION, 1,
                                                      direct=False).decode())
    direct_reader = RecordReader(subset.get_dataset(), RESOLUTION, 1)
    decode_direct, decoded_direct = _timed(direct_reader.decode)
    labels_platform, _ = _timed(lambda: sum(
        len(batch) for batch in with_map_fusion(subset.get_dataset().map(
            lambda example, labels: labels).batch(4096))))
    reader = RecordReader(subset.get_dataset(), RESOLUTION, 1)
    labels_indexed, (labels, complete) = _timed(reader.read_labels)
    plan = ReadPlan.from_labels(labels, complete)
    picked, _ = _timed(lambda: reader.decode(plan.sample(PICKED)))
    present = set(np.flatnonzero(labels.sum(0)).tolist())
    first = FIRST_CHUNK + len(plan.validation)
    chunk = np.concatenate([plan.validation, plan.order[:FIRST_CHUNK]])
    return {"dataset": name, "records": len(labels), "classes": len(present),
            "indexed": reader.indexed, "decode_all_seconds": round(decode_all, 3),
            "decoded": len(decoded.positions), "direct": direct_reader.direct,
            "decode_direct_seconds": round(decode_direct, 3),
            "decoded_direct": len(decoded_direct.positions),
            "labels_platform_seconds": round(labels_platform, 3),
            "labels_indexed_seconds": round(labels_indexed, 3),
            "picked_seconds": round(picked, 3),
            "classes_in_first_read": len(set(labels[:first].argmax(1).tolist()) & present),
            "classes_in_first_chunk": len(set(labels[chunk].argmax(1).tolist()) & present),
            "first_read": first}


def cells(row: dict[str, Any]) -> list[object]:
    direct = f"{row['decode_direct_seconds']:.2f}" + ("" if row["direct"] else " (platform)")
    return [row["dataset"], row["records"], row["classes"], f"{row['decode_all_seconds']:.2f}",
            direct,
            f"{row['labels_platform_seconds']:.2f}", f"{row['labels_indexed_seconds']:.2f}",
            f"{row['picked_seconds']:.2f}", row["classes_in_first_read"],
            row["classes_in_first_chunk"]]


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline reading", __doc__)
    parser.add_argument("--datasets", nargs="+", required=True, help="prepared dataset names")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_OUT,
                        help="folder of prepared AutoDL datasets")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rows = []
    for name in tqdm(args.datasets, desc="datasets", unit="dataset"):
        folder = args.data_dir / name
        if not (folder / f"{name}.solution").is_file():
            parser.error(f"{folder}: not prepared (python -m ingestion_local.prepare)")
        rows.append(measure(folder))
        tqdm.write(markdown_row(cells(rows[-1])))
    emit_table(markdown_table(COLUMNS, [cells(row) for row in rows]), args.out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
