"""Convert image folders, video folders and numpy arrays into the AutoDL format.

    python -m ingestion_local.convert SRC OUT [--name NAME] [--frames N] [--overwrite]

SRC holds `labels.csv` (columns `FileName,Labels[,subset]`; `Labels` is a space-separated list of
0-based class ids, so multilabel works) and the files it names, either in `SRC/images/` or beside
`labels.csv`; an optional `label.name` gives one class name per line. Images (JPEG and PNG are
stored byte for byte, other formats are re-encoded as PNG) and videos (.avi, .mp4, ...; frames
are re-encoded as JPEG) are told apart by file extension. Without a `subset` column the rows are
split at random (seeded). The dataset lands in `OUT/<name>/`.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ingestion_local.logs import setup_logging
from ingestion_local.writer import AutoDLWriter, ConversionError, Sample

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".avi", ".mp4", ".mov", ".mkv", ".mpg", ".mpeg", ".webm"}
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}
# Formats and modes tf.image.decode_image reads as they are; anything else is re-encoded.
PASSTHROUGH = {("JPEG", "L"), ("JPEG", "RGB"), ("PNG", "1"), ("PNG", "L"), ("PNG", "LA"),
               ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "I;16")}
GRAYSCALE_TOLERANCE = 8
DEFAULT_TRAIN_SIZE = 0.8
DEFAULT_SEED = 42


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    labels: tuple[int, ...]
    subset: str | None
    row: int  # line in labels.csv, for error messages


def read_label_names(src: Path) -> list[str] | None:
    path = src / "label.name"
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_labels_csv(src: Path) -> list[LabelledFile]:
    """Rows of `SRC/labels.csv`, with every named file checked to exist."""
    csv_path = src / "labels.csv"
    if not csv_path.is_file():
        raise ConversionError(f"{csv_path}: not found (SRC needs a labels.csv)")
    file_dir = src / "images" if (src / "images").is_dir() else src
    rows = []
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing_columns = {"FileName", "Labels"} - set(reader.fieldnames or ())
        if missing_columns:
            raise ConversionError(f"{csv_path}: missing column(s) {sorted(missing_columns)}")
        for line, record in enumerate(reader, start=2):
            try:
                labels = tuple(int(token) for token in record["Labels"].split())
            except ValueError as err:
                raise ConversionError(f"{csv_path}:{line}: Labels must be integers, got "
                                      f"{record['Labels']!r}") from err
            subset = (record.get("subset") or "").strip() or None
            if subset not in (None, "train", "test"):
                raise ConversionError(f"{csv_path}:{line}: subset must be train or test, "
                                      f"got {subset!r}")
            rows.append(LabelledFile(file_dir / record["FileName"], labels, subset, line))
    if not rows:
        raise ConversionError(f"{csv_path}: no rows")
    missing = [row for row in rows if not row.path.is_file()]
    if missing:
        shown = ", ".join(f"{row.path} (line {row.row})" for row in missing[:5])
        raise ConversionError(f"{csv_path}: {len(missing)} file(s) not found: {shown}")
    return rows


def split_rows(rows: Sequence[LabelledFile], train_size: float,
               seed: int) -> tuple[list[LabelledFile], list[LabelledFile]]:
    """(test, train): shuffled with `seed`; the `subset` column wins, else a seeded draw."""
    order = np.random.default_rng(seed).permutation(len(rows))
    shuffled = [rows[i] for i in order]
    if all(row.subset is not None for row in shuffled):
        is_train = [row.subset == "train" for row in shuffled]
    else:
        is_train = list(np.random.default_rng(seed + 1).random(len(shuffled)) < train_size)
    test = [row for row, train in zip(shuffled, is_train) if not train]
    train = [row for row, train in zip(shuffled, is_train) if train]
    if not test or not train:
        raise ConversionError(f"the split leaves the {'test' if not test else 'train'} subset "
                              f"empty ({len(rows)} rows, train_size={train_size})")
    return test, train


def image_sample(path: Path, labels: tuple[int, ...]) -> Sample:
    """A compressed one-frame sample; JPEG/PNG bytes are kept as they are."""
    try:
        with Image.open(path) as image:
            image.load()
            fmt, mode, (width, height) = image.format, image.mode, image.size
            if (fmt, mode) in PASSTHROUGH:
                encoded = path.read_bytes()
            else:
                target = "L" if mode in GRAYSCALE_MODES else "RGB"
                buffer = io.BytesIO()
                image.convert(target).save(buffer, format="PNG")
                encoded, mode = buffer.getvalue(), target
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ConversionError(f"{path}: unreadable image: {err}") from err
    channels = 1 if mode in GRAYSCALE_MODES else 3
    return Sample([encoded], (1, height, width, channels), labels, str(path))


def _resize_to_max_side(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    import cv2

    height, width = frame.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return frame
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def video_sample(path: Path, labels: tuple[int, ...], num_frames: int | None = None,
                 max_side: int | None = None, jpeg_quality: int = 90) -> Sample:
    """A compressed multi-frame sample: frames sampled uniformly to `num_frames` (or all kept),
    stored as single-channel JPEGs when the clip is grayscale."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    if not frames:
        raise ConversionError(f"{path}: unreadable video (no frame decoded)")
    if num_frames:
        keep = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
        frames = [frames[i] for i in keep]
    frames = [_resize_to_max_side(frame, max_side) for frame in frames]
    # Codecs leave a few levels of colour noise in grayscale clips, hence the tolerance.
    grayscale = all(int(np.ptp(frame.astype(np.int16), axis=-1).max()) <= GRAYSCALE_TOLERANCE
                    for frame in frames)
    encoded = []
    for frame in frames:
        image = frame[..., 0] if grayscale else frame
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise ConversionError(f"{path}: could not encode a frame as JPEG")
        encoded.append(buffer.tobytes())
    height, width = frames[0].shape[:2]
    return Sample(encoded, (len(frames), height, width, 1 if grayscale else 3), labels, str(path))


def convert_folder(src: str | os.PathLike, out_dir: str | os.PathLike, *, name: str | None = None,
                   num_frames: int | None = None, max_side: int | None = None,
                   train_size: float = DEFAULT_TRAIN_SIZE, seed: int = DEFAULT_SEED,
                   num_channels: int | None = None, overwrite: bool = False,
                   progress: bool = True) -> Path:
    """Convert an image or video folder (see the module docstring); return `OUT/<name>`."""
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"{src}: not a folder")
    name = name or src.resolve().name
    rows = read_labels_csv(src)
    label_names = read_label_names(src)
    output_dim = len(label_names) if label_names else 1 + max(max(r.labels, default=0)
                                                               for r in rows)
    is_video = rows[0].path.suffix.lower() in VIDEO_EXTENSIONS
    test_rows, train_rows = split_rows(rows, train_size, seed)

    def samples(subset_rows: list[LabelledFile]) -> Iterator[Sample]:
        for row in subset_rows:
            if is_video:
                yield video_sample(row.path, row.labels, num_frames, max_side)
            else:
                yield image_sample(row.path, row.labels)

    writer = AutoDLWriter(name, out_dir, output_dim, compressed=True, num_channels=num_channels,
                          label_names=label_names, overwrite=overwrite, progress=progress)
    return writer.write(samples(test_rows), samples(train_rows), n_test=len(test_rows),
                        n_train=len(train_rows))


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, "PNG")
    return buffer.getvalue()


def _as_label_tuples(y: np.ndarray, output_dim: int | None) -> tuple[list[tuple[int, ...]], int]:
    y = np.asarray(y)
    if y.ndim == 1:
        labels = [(int(v),) for v in y]
        return labels, output_dim or int(y.max()) + 1
    if y.ndim == 2:
        return [tuple(int(i) for i in np.flatnonzero(row)) for row in y], y.shape[1]
    raise ConversionError(f"labels must be class ids [n] or multi-hot [n, classes], got shape "
                          f"{y.shape}")


def _array_samples(x: np.ndarray, labels: list[tuple[int, ...]], subset: str,
                   dense: bool) -> Iterator[Sample]:
    for index, (example, label) in enumerate(zip(x, labels)):
        shape = tuple(int(v) for v in example.shape)
        source = f"{subset}[{index}]"
        if dense:
            yield Sample(example.astype(np.float32), shape, label, source)
        else:
            yield Sample([_encode_png(frame) for frame in example], shape, label, source)


def write_arrays(name: str, out_dir: str | os.PathLike, x_train: np.ndarray, y_train: np.ndarray,
                 x_test: np.ndarray, y_test: np.ndarray, *,
                 label_names: Sequence[str] | None = None, output_dim: int | None = None,
                 overwrite: bool = False, progress: bool = False) -> Path:
    """Write numpy arrays as an AutoDL dataset; return `OUT/<name>`.

    x: `[n, row, col]`, `[n, row, col, channel]` or `[n, sequence, row, col, channel]`; uint8
    arrays are stored as PNG frames, float arrays (values in [0, 1]) as dense floats.
    y: class ids `[n]` or a multi-hot matrix `[n, classes]`.
    """
    arrays = []
    for x in (x_train, x_test):
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim == 4:
            x = x[:, None]
        if x.ndim != 5:
            raise ConversionError(f"{name}: examples must be [n, row, col(, channel)] or "
                                  f"[n, sequence, row, col, channel], got shape {x.shape}")
        arrays.append(x)
    x_train, x_test = arrays
    dense = x_train.dtype != np.uint8
    output_dim = output_dim or (len(label_names) if label_names else None)
    train_labels, dim_train = _as_label_tuples(y_train, output_dim)
    test_labels, dim_test = _as_label_tuples(y_test, output_dim)
    writer = AutoDLWriter(name, out_dir, max(dim_train, dim_test), compressed=not dense,
                          label_names=label_names, overwrite=overwrite, progress=progress)
    return writer.write(_array_samples(x_test, test_labels, "x_test", dense),
                        _array_samples(x_train, train_labels, "x_train", dense),
                        n_test=len(x_test), n_train=len(x_train))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ingestion_local.convert",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m ingestion_local.convert raw/mini-kth data/autodl --frames 16")
    parser.add_argument("src", help="folder with labels.csv and the images or videos it names")
    parser.add_argument("out", help="output folder; the dataset is written to OUT/<name>/")
    parser.add_argument("--name", help="dataset name (default: the SRC folder's name)")
    parser.add_argument("--frames", type=int, default=None,
                        help="videos: sample this many frames uniformly (default: keep all)")
    parser.add_argument("--max-side", type=int, default=None,
                        help="videos: downscale frames so the longer side is at most this")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="num_channels to declare (default: 1 if every input is grayscale)")
    parser.add_argument("--train-size", type=float, default=DEFAULT_TRAIN_SIZE,
                        help="fraction drawn into train when labels.csv has no subset column "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of the shuffle and split (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT/<name> if it exists (only once the new one is complete)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        path = convert_folder(args.src, args.out, name=args.name, num_frames=args.frames,
                              max_side=args.max_side, train_size=args.train_size, seed=args.seed,
                              num_channels=args.channels, overwrite=args.overwrite)
    except ConversionError as err:
        logger.error("%s", err)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
