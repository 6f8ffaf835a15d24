"""The cost table: measured training-step and eval-pass times per backbone, input shape and
frozen share.

Timing a run on a shared, noisy machine makes its ALC irreproducible, so (as in the paper) the
time of one training step and of one image through an eval pass is measured per backbone,
resolution and batch size (the step also per share of the backbone left frozen) on a reference
machine (`python -m offline profile`), stored in `results/cost_table.json`, and a run's clock
then charges those prices for its steps and eval images (offline/evaluate.py).
Files are validated on load; errors name the file and the field at fault.
"""
from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import statistics
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import date
from pathlib import Path
from typing import Any

from autodl_meta.config import TrainConfig


class CostTableError(ValueError):
    """Invalid cost table; the message names the file and the field."""


@dataclass(frozen=True)
class CostEntry:
    """The costs of one backbone at one input shape, training all but `frozen_fraction` of it."""

    backbone: str
    resolution: int                      # images are resolution x resolution, 3 channels
    batch_size: int
    train_step_seconds: float            # forward + backward + update of one batch
    predict_seconds_per_example: float   # eval-mode forward, per image, at the predict batch
    frozen_fraction: float = 0.0         # of the backbone, not trained (TrainConfig's field)

    @property
    def key(self) -> tuple[str, int, int, float]:
        return self.backbone, self.resolution, self.batch_size, self.frozen_fraction


_ENTRY_FIELDS = tuple(f.name for f in fields(CostEntry))
# Fields a file may leave out: tables measured before frozen backbones trained everything.
_OPTIONAL_FIELDS = {f.name: f.default for f in fields(CostEntry) if f.default is not MISSING}
_TABLE_FIELDS = ("device", "created", "entries")


def _check_entry(values: Any, where: str) -> CostEntry:
    if not isinstance(values, dict):
        raise CostTableError(f"{where} must be an object")
    missing = [name for name in _ENTRY_FIELDS
               if name not in values and name not in _OPTIONAL_FIELDS]
    if missing:
        raise CostTableError(f"{where}.{missing[0]} is missing")
    unknown = sorted(set(values) - set(_ENTRY_FIELDS))
    if unknown:
        raise CostTableError(f"{where}.{unknown[0]} is not a known field")
    backbone = values["backbone"]
    if not isinstance(backbone, str) or not backbone:
        raise CostTableError(f"{where}.backbone must be a non-empty string")
    for name in ("resolution", "batch_size"):
        value = values[name]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CostTableError(f"{where}.{name} must be a positive integer, got {value!r}")
    for name in ("train_step_seconds", "predict_seconds_per_example"):
        value = values[name]
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not math.isfinite(value) or value <= 0):
            raise CostTableError(f"{where}.{name} must be a positive number, got {value!r}")
    frozen = values.get("frozen_fraction", _OPTIONAL_FIELDS["frozen_fraction"])
    if (not isinstance(frozen, (int, float)) or isinstance(frozen, bool)
            or not 0.0 <= frozen <= 1.0):
        raise CostTableError(f"{where}.frozen_fraction must be a number from 0 to 1, got "
                             f"{frozen!r}")
    return CostEntry(backbone, values["resolution"], values["batch_size"],
                     float(values["train_step_seconds"]),
                     float(values["predict_seconds_per_example"]), float(frozen))


def _interpolate(points: list[tuple[float, float]], x: float) -> float:
    """Cost at `x` pixels from measured (pixels, seconds) points with distinct pixels.

    Piecewise linear in pixels between the two nearest points, because a step's cost is close to
    affine in pixels (a fixed per-step overhead plus work per pixel) and this is exact where
    measured; one least-squares line per backbone is not, as shapes with the same pixel count
    (32 px at batch 64, 64 px at batch 16) cost measurably different amounts. Costs are first
    made non-decreasing in pixels (a running maximum), so timing noise never makes a larger
    shape look cheaper. Beyond the last point the last segment goes on (affine in pixels);
    below the first, the first segment goes on, but never under proportional scaling of the
    first point, which keeps costs positive when the segment's intercept is not. A single
    point scales proportionally to pixels.
    """
    points = sorted(points)
    xs = [p for p, _ in points]
    ys: list[float] = []
    for _, seconds in points:
        ys.append(max(seconds, ys[-1]) if ys else seconds)
    right = bisect.bisect_left(xs, x)
    if right < len(xs) and xs[right] == x:
        return ys[right]
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    if right == 0:
        slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
        return max(ys[0] - slope * (xs[0] - x), ys[0] * x / xs[0])
    right = min(right, len(xs) - 1)
    slope = (ys[right] - ys[right - 1]) / (xs[right] - xs[right - 1])
    return ys[right - 1] + slope * (x - xs[right - 1])


@dataclass
class CostTable:
    """Costs measured on one device; lookups interpolate between the measured shapes."""

    device: str                        # e.g. "cpu: AMD EPYC, 2 threads", "cuda: NVIDIA H100"
    created: str                       # ISO date
    entries: list[CostEntry]

    def find(self, backbone: str, resolution: int, batch_size: int,
             frozen_fraction: float = 0.0) -> CostEntry | None:
        """The measured entry of exactly this shape, if any."""
        key = (backbone, resolution, batch_size, frozen_fraction)
        return next((e for e in self.entries if e.key == key), None)

    def put(self, entry: CostEntry) -> None:
        """Add `entry`, replacing a measurement of the same shape."""
        self.entries = [e for e in self.entries if e.key != entry.key] + [entry]

    def _of(self, backbone: str) -> list[CostEntry]:
        entries = [e for e in self.entries if e.backbone == backbone]
        if not entries:
            known = sorted({e.backbone for e in self.entries})
            raise KeyError(f"backbone {backbone!r} is not in the cost table "
                           f"({self.device}); it has: {', '.join(known) or 'none'}")
        return entries

    def train_step_seconds(self, backbone: str, resolution: int, batch_size: int,
                           frozen_fraction: float = 0.0) -> float:
        """Seconds of one training step of `batch_size` images of `resolution`^2 pixels, with
        `frozen_fraction` of the backbone frozen: linear between the two nearest measured
        fractions (a frozen block saves its backward pass); a fraction outside the measured
        ones is an error."""
        if resolution <= 0 or batch_size <= 0:
            raise ValueError(f"resolution and batch_size must be positive, got {resolution}, "
                             f"{batch_size}")
        measured = sorted({e.frozen_fraction for e in self._of(backbone)})
        if not measured[0] <= frozen_fraction <= measured[-1]:
            raise KeyError(f"frozen_fraction {frozen_fraction:g} of {backbone} is outside the "
                           f"fractions the cost table measured ({self.device}: "
                           f"{', '.join(f'{f:g}' for f in measured)}); python -m offline "
                           f"profile --frozen-fractions")
        # A running minimum: freezing more never costs more, whatever the timing noise or the
        # shapes measured at each fraction.
        costs = list(itertools.accumulate(
            (self._train_step_measured(backbone, resolution, batch_size, fraction)
             for fraction in measured), min))
        right = bisect.bisect_left(measured, frozen_fraction)
        if measured[right] == frozen_fraction:
            return costs[right]
        weight = (frozen_fraction - measured[right - 1]) / (measured[right] - measured[right - 1])
        return (1 - weight) * costs[right - 1] + weight * costs[right]

    def _train_step_measured(self, backbone: str, resolution: int, batch_size: int,
                             frozen_fraction: float) -> float:
        """The step cost from the entries of one frozen fraction alone."""
        by_batch: dict[int, list[tuple[float, float]]] = {}
        for entry in self._of(backbone):
            if entry.frozen_fraction != frozen_fraction:
                continue
            by_batch.setdefault(entry.batch_size, []).append(
                (entry.resolution ** 2 * entry.batch_size, entry.train_step_seconds))
        # First along resolution at each measured batch size, then along batch size: the
        # nearest measured shapes in each direction, exact on the measured grid.
        at_resolution = {batch: _interpolate(points, resolution ** 2 * batch)
                         for batch, points in by_batch.items()}
        if batch_size in at_resolution:
            return at_resolution[batch_size]
        return _interpolate([(resolution ** 2 * batch, seconds)
                             for batch, seconds in at_resolution.items()],
                            resolution ** 2 * batch_size)

    def predict_seconds(self, backbone: str, resolution: int, count: int) -> float:
        """Seconds to predict `count` images of `resolution`^2 pixels."""
        if resolution <= 0 or count < 0:
            raise ValueError(f"resolution must be positive and count non-negative, got "
                             f"{resolution}, {count}")
        by_resolution: dict[int, list[float]] = {}
        for entry in self._of(backbone):
            by_resolution.setdefault(entry.resolution, []).append(
                entry.predict_seconds_per_example)
        # Prediction is measured once per resolution, whatever the training batch size; a
        # merged table may hold several measurements, and the median ignores an outlier.
        points = [(res ** 2, statistics.median(values)) for res, values in by_resolution.items()]
        return count * _interpolate(points, resolution ** 2)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "created": self.created,
                "entries": [asdict(e) for e in sorted(self.entries, key=lambda e: e.key)]}

    @classmethod
    def from_dict(cls, values: Any, source: str = "cost table") -> CostTable:
        if not isinstance(values, dict):
            raise CostTableError(f"{source}: expected a JSON object")
        for name in _TABLE_FIELDS:
            if name not in values:
                raise CostTableError(f"{source}: {name} is missing")
        unknown = sorted(set(values) - set(_TABLE_FIELDS))
        if unknown:
            raise CostTableError(f"{source}: {unknown[0]} is not a known field")
        if not isinstance(values["device"], str) or not values["device"]:
            raise CostTableError(f"{source}: device must be a non-empty string")
        try:
            date.fromisoformat(values["created"])
        except (TypeError, ValueError):
            raise CostTableError(f"{source}: created must be an ISO date (YYYY-MM-DD), got "
                                 f"{values['created']!r}") from None
        if not isinstance(values["entries"], list):
            raise CostTableError(f"{source}: entries must be a list")
        entries: list[CostEntry] = []
        seen: set[tuple[str, int, int, float]] = set()
        for index, raw in enumerate(values["entries"]):
            entry = _check_entry(raw, f"{source}: entries[{index}]")
            if entry.key in seen:
                raise CostTableError(f"{source}: entries[{index}] repeats {entry.backbone} at "
                                     f"resolution {entry.resolution}, batch size "
                                     f"{entry.batch_size}, frozen fraction "
                                     f"{entry.frozen_fraction:g}")
            seen.add(entry.key)
            entries.append(entry)
        return cls(values["device"], values["created"], entries)

    def save(self, path: Path) -> None:
        """Write JSON atomically: readers see the old file or the new one, never half of one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            with temporary.open("w") as stream:
                json.dump(self.to_dict(), stream, indent=1)
                stream.write("\n")
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> CostTable:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CostTableError(f"{path}: not valid JSON: {err}") from err
        return cls.from_dict(values, source=str(path))


def check_prices(table: CostTable, configs: Mapping[str, TrainConfig], source: str) -> None:
    """Raise CostTableError naming each of `configs` whose training steps `table` (read from
    `source`) cannot price, before any run is spent finding it out."""
    unpriced = []
    for name, config in configs.items():
        try:
            table.train_step_seconds(config.backbone, config.resolution, config.batch_size,
                                     config.frozen_fraction)
        except KeyError as err:
            unpriced.append(f"{name}: {err.args[0]}")
    if unpriced:
        raise CostTableError(f"{source} cannot price: " + "; ".join(unpriced))
