"""Build the submission zip: model.py at the root, the runtime package, metadata/, pretrained/.

    python -m offline.package [--out dist/submission.zip] [--limit-mb 300]

The EfficientNet-Lite architecture (the Apache-2.0 package efficientnet_lite_pytorch) is copied
in from the installed package with its licence, because competition servers do not have it.
Of the pretrained weights, the zip carries those of the fingerprint network and of the
backbones a run can train with metadata/ (its configs, and the portfolio configs that some
zero-shot model picks): no run could load the others. The build fails, naming
the largest parts, when the zip is over the platform's limit.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from autodl_meta.backbones import ZOO
from autodl_meta.fingerprint import FINGERPRINT_BACKBONE
from autodl_meta.metadata import MetaData, MetadataError
from offline.cli import command_parser, setup_logging
from offline.weights import read_manifest

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 300
VENDORED = ("efficientnet_lite_pytorch",)


class ZipTooLargeError(RuntimeError):
    """The zip is over the size limit."""


def _python_files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*.py")) if "__pycache__" not in p.parts)


def _vendored_files(package: str) -> Iterator[tuple[Path, str]]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed; run `make venv`")
    folder = Path(spec.submodule_search_locations[0])
    for path in _python_files(folder):
        yield path, f"{package}/{path.relative_to(folder)}"
    dist_info = next(folder.parent.glob(f"{package}-*.dist-info"), None)
    licence = dist_info / "LICENSE" if dist_info else None
    if licence and licence.is_file():
        yield licence, f"{package}/LICENSE"


def shipped_weight_files(metadata: Path) -> set[str]:
    """Weight files the runtime can load with the configs of `metadata`."""
    backbones = MetaData.load(metadata).backbones() | {FINGERPRINT_BACKBONE}
    unknown = sorted(backbones - set(ZOO))
    if unknown:  # the runtime replaces them by an available backbone, with a warning
        logger.warning("%s names backbones outside the zoo: %s", metadata, ", ".join(unknown))
    return {ZOO[name].weight_file for name in backbones if name in ZOO}


def submission_files(root: Path = REPO_ROOT) -> list[tuple[Path, str]]:
    """(source, name in the zip) of everything the submission needs."""
    files = [(root / "model.py", "model.py")]
    files += [(p, str(p.relative_to(root))) for p in _python_files(root / "autodl_meta")]
    metadata = root / "metadata"
    if metadata.is_dir():
        files += [(p, str(p.relative_to(root))) for p in sorted(metadata.rglob("*"))
                  if p.is_file()]
    pretrained = root / "pretrained"
    files.append((pretrained / "MANIFEST", "pretrained/MANIFEST"))
    needed = shipped_weight_files(metadata)
    for entry in read_manifest(pretrained):
        if entry.name in needed and entry.path(pretrained).is_file():
            files.append((entry.path(pretrained), f"pretrained/{entry.name}"))
    for package in VENDORED:
        files += list(_vendored_files(package))
    return files


def build_zip(out: Path, root: Path = REPO_ROOT, limit_mb: float = LIMIT_MB) -> Path:
    """Write the zip to `out` (via a temporary file); raise ZipTooLargeError over the limit."""
    files = submission_files(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.partial")
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for source, name in files:
            archive.write(source, name)
    size_mb = temporary.stat().st_size / 2**20
    if size_mb > limit_mb:
        with zipfile.ZipFile(temporary) as archive:
            largest = sorted(archive.infolist(), key=lambda i: i.compress_size, reverse=True)[:5]
        temporary.unlink()
        parts = ", ".join(f"{i.filename} ({i.compress_size / 2**20:.1f} MB)" for i in largest)
        raise ZipTooLargeError(f"submission zip is {size_mb:.1f} MB, over the {limit_mb:.0f} MB "
                               f"limit; largest parts: {parts}")
    temporary.replace(out)
    logger.info("wrote %s: %d files, %.1f MB", out, len(files), size_mb)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline.package", __doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "dist" / "submission.zip")
    parser.add_argument("--limit-mb", type=float, default=LIMIT_MB,
                        help="fail above this size")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        path = build_zip(args.out, limit_mb=args.limit_mb)
    except (ZipTooLargeError, FileNotFoundError, MetadataError) as err:
        logger.error("%s", err)
        return 1
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
