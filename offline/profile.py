"""Measure the cost table: seconds per training step and per predicted image, per shape.

    python -m offline profile [--backbones efficientnet-lite0 ...] [--resolutions 32 64 96 128]
                              [--batch-sizes 16 32 64 128] [--frozen-fractions 0 0.5 1]
                              [--out results/cost_table.json]

Times the runtime's own Trainer (the default config's optimiser, 10 classes) on random images,
through the loops a run uses: its training steps as `Trainer.train_for` takes them (each batch
gathered from a pool, converted, flipped, then cross-entropy, gradient clipping, mixed precision
on CUDA), with each share of the backbone frozen (TrainConfig.frozen_fraction), and its eval
pass (`Trainer.features`: batches of PREDICT_BATCH images). Each cost is the fastest of
--repeats timed blocks (TRAIN_BLOCK_STEPS steps; a pass over PASS_BATCHES batches) after a
warm-up: other work on a shared machine only ever adds time, so the minimum is the most faithful
reading, and blocks of several batches average what varies from one batch to the next. Entries
already in --out for the same device are kept and the file is rewritten after every
measurement, so an interrupted run goes on where it stopped; --force measures again.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from autodl_meta.backbones import ZOO, available_backbones
from autodl_meta.config import BATCH_SIZES, TrainConfig
from autodl_meta.trainer import PREDICT_BATCH, Trainer, keep_freed_memory
from offline.costs import CostEntry, CostTable, CostTableError
from offline.cli import command_parser, setup_logging

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "results" / "cost_table.json"
NUM_CLASSES = 10
# Shares of the backbone frozen in training that the table prices; in between, linearly.
FROZEN_FRACTIONS = (0.0, 0.5, 1.0)
# A timed block: about this many training steps, drawn from a pool of TRAIN_POOL_BATCHES
# batches of images; an eval pass over PASS_BATCHES batches of PREDICT_BATCH images.
TRAIN_BLOCK_STEPS = 4
TRAIN_POOL_BATCHES = 4
PASS_BATCHES = 4


class ProfileError(RuntimeError):
    """The profile cannot run as asked (e.g. --out holds another device's table)."""


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device, threads: int) -> str:
    """The device string of a table: costs from different ones must never be mixed."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {_cpu_name()}, {threads} threads"


def _random_images(count: int, resolution: int, seed: int) -> torch.Tensor:
    """`count` uint8 images, one frame each, as the runtime's pools hold them."""
    return torch.randint(0, 256, (count, 1, 3, resolution, resolution),
                         generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def time_train_step(trainer: Trainer, resolution: int, repeats: int) -> float:
    """Seconds per step of `Trainer.train_for` (batches of its config's size) on a pool of
    random images, as the trainer counts them (`train_seconds`: the steps, not the call around
    them, which a run's clock leaves at wall time): the fastest of `repeats` blocks of about
    TRAIN_BLOCK_STEPS steps, after one warm-up step."""
    batch_size = trainer.config.batch_size
    images = _random_images(TRAIN_POOL_BATCHES * batch_size, resolution,
                            resolution * 1000 + batch_size)
    labels = nn.functional.one_hot(torch.arange(len(images)) % NUM_CLASSES, NUM_CLASSES).float()

    def block(seconds: float) -> float:
        steps, spent = trainer.steps, trainer.train_seconds
        trainer.train_for(images, labels, seconds)
        return (trainer.train_seconds - spent) / (trainer.steps - steps)

    warm_up = block(0.0)  # one step at this shape: what sizes the blocks
    return min(block(TRAIN_BLOCK_STEPS * warm_up) for _ in range(repeats))


def time_predict(trainer: Trainer, resolution: int, repeats: int) -> float:
    """Seconds per image of `Trainer.features` over PASS_BATCHES batches of random images, as
    the trainer counts them (`forward_seconds`): the fastest of `repeats` passes, after a
    warm-up batch."""
    images = _random_images(PASS_BATCHES * PREDICT_BATCH, resolution, resolution)

    def one_pass(batch: torch.Tensor) -> float:
        count, spent = trainer.forward_images, trainer.forward_seconds
        trainer.features(batch)
        return (trainer.forward_seconds - spent) / (trainer.forward_images - count)

    one_pass(images[:PREDICT_BATCH])
    return min(one_pass(images) for _ in range(repeats))


def _busy(device: torch.device, threads: int) -> bool:
    """Whether other processes compete for the CPU: then threads wait for each other at every
    parallel region and CPU timings grow several-fold. The 1-minute load average counts our own
    threads and lags, so this is a hint, not a measurement."""
    return device.type == "cpu" and os.getloadavg()[0] > threads + 0.5


def run_profile(backbones: Sequence[str], resolutions: Sequence[int],
                batch_sizes: Sequence[int], repeats: int, out: Path, device: torch.device,
                threads: int, force: bool = False,
                frozen_fractions: Sequence[float] = FROZEN_FRACTIONS) -> tuple[CostTable, int]:
    """Measure the shapes missing from `out` (all of them with `force`), rewriting `out` after
    each; return the table and the number of entries measured."""
    torch.set_num_threads(threads)
    keep_freed_memory()  # as the runtime's Learner does
    name = device_description(device, threads)
    table = CostTable.load(out) if out.is_file() else None
    if table is not None and table.device != name:
        if not force:
            raise ProfileError(f"{out} holds costs measured on {table.device!r}, not {name!r}; "
                               f"choose another --out, or --force to replace it")
        table = None
    table = table or CostTable(name, date.today().isoformat(), [])
    pending = [(backbone, frozen, resolution, batch_size) for backbone in backbones
               for frozen in dict.fromkeys(frozen_fractions)
               for resolution in dict.fromkeys(resolutions)
               for batch_size in dict.fromkeys(batch_sizes)
               if force or table.find(backbone, resolution, batch_size, frozen) is None]
    logger.info("%s: %d entries to measure, %d kept, on %s", out, len(pending),
                len(table.entries), name)
    measured = busy = 0
    with logging_redirect_tqdm(), tqdm(total=len(pending), desc="profile", unit="entry") as bar:
        for backbone in dict.fromkeys(b for b, _, _, _ in pending):
            # Prediction depends neither on the training batch size nor on what training
            # freezes: measured once per resolution, or taken from an entry already measured
            # on this device.
            predict: dict[int, float] = {}
            if not force:
                predict = {e.resolution: e.predict_seconds_per_example for e in table.entries
                           if e.backbone == backbone}
            # One trainer per shape of its training step: the batch size is the config's.
            for frozen, batch_size in dict.fromkeys((f, n) for b, f, _, n in pending
                                                    if b == backbone):
                trainer = Trainer(TrainConfig(backbone=backbone, frozen_fraction=frozen,
                                              batch_size=batch_size),
                                  NUM_CLASSES, in_channels=3, multilabel=False, device=device)
                for resolution in (r for b, f, r, n in pending
                                   if (b, f, n) == (backbone, frozen, batch_size)):
                    bar.set_postfix_str(f"{backbone} {resolution} px, batch {batch_size}, "
                                        f"frozen {frozen:g}")
                    busy += _busy(device, threads)
                    train = time_train_step(trainer, resolution, repeats)
                    if resolution not in predict:
                        predict[resolution] = time_predict(trainer, resolution, repeats)
                    table.put(CostEntry(backbone, resolution, batch_size, train,
                                        predict[resolution], frozen))
                    table.save(out)
                    measured += 1
                    logger.info("%s %d px, batch %d, frozen %g: train step %.4f s, predict "
                                "%.3f ms per image", backbone, resolution, batch_size, frozen,
                                train, 1000 * predict[resolution])
                    bar.update()
                # Free one network's weights and optimiser state before building the next.
                del trainer
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if busy:
        logger.warning("%d of %d entries were measured while other processes were using the "
                       "CPU, so their times are inflated (often several-fold); measure again "
                       "with --force on a quiet machine", busy, measured)
    return table, measured


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _resolution(text: str) -> int:
    value = int(text)
    # The same rule as TrainConfig: EfficientNet-Lite pads statically, so sides must stay even
    # down to stride 16.
    if value < 32 or value % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16 from 32 up, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline profile", __doc__)
    parser.add_argument("--backbones", nargs="+", choices=sorted(ZOO), metavar="BACKBONE",
                        default=None,
                        help="backbones to time (default: those with weights in pretrained/: "
                             f"{' '.join(available_backbones()) or 'none'})")
    parser.add_argument("--resolutions", nargs="+", type=_resolution, metavar="PX",
                        default=[32, 64, 96, 128],
                        help="image sides in pixels")
    parser.add_argument("--batch-sizes", nargs="+", type=int, choices=BATCH_SIZES, metavar="N",
                        default=list(BATCH_SIZES),
                        help="training batch sizes, of a config's (%(default)s)")
    parser.add_argument("--frozen-fractions", nargs="+", type=_fraction, metavar="F",
                        default=list(FROZEN_FRACTIONS),
                        help="shares of the backbone frozen in training (TrainConfig."
                             "frozen_fraction); simulated time prices fractions in between "
                             "linearly")
    parser.add_argument("--repeats", type=_positive, default=3, metavar="N",
                        help="timed blocks per entry after a warm-up; the fastest is kept "
                             "(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="the table, read to resume and rewritten after every entry "
                             "(default: results/cost_table.json)")
    parser.add_argument("--threads", type=_positive, default=os.cpu_count() or 1, metavar="N",
                        help="torch threads (default: all cores, %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to time")
    parser.add_argument("--force", action="store_true",
                        help="measure again entries that --out already holds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    backbones = args.backbones or available_backbones()
    missing = [b for b in backbones if b not in available_backbones()]
    if missing or not backbones:
        parser.error(f"no weights in pretrained/ for: {' '.join(missing) or 'any backbone'}")
    began = time.monotonic()
    try:
        table, measured = run_profile(backbones, args.resolutions, args.batch_sizes,
                                      args.repeats, args.out, torch.device(args.device),
                                      args.threads, args.force, args.frozen_fractions)
    except (CostTableError, ProfileError) as err:
        logger.error("%s", err)
        return 1
    print(f"{args.out}: {len(table.entries)} entries, {measured} measured in "
          f"{time.monotonic() - began:.0f} s on {table.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
