"""The training configuration: one schema for the offline search and the runtime.

A config is a flat mapping of the fields of `TrainConfig`. Files in `metadata/` hold such
mappings; `TrainConfig.from_dict` validates them and names the file and field at fault.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

OPTIMIZERS = ("adam", "sgd")
AUGMENTATIONS = ("none", "mixup", "cutmix")
LOSSES = ("cross_entropy", "cosine")
# Embedding learning of the backbone (autodl_meta/techniques.py); "none" trains it through the
# classifier's loss. The Siamese ones (contrastive, triplet) classify with an MLP head.
EMBEDDING_LOSSES = ("none", "supcon", "contrastive", "triplet")
SIAMESE_LOSSES = ("contrastive", "triplet")
BATCH_SIZES = (16, 32, 64, 128)
# An embedding loss trains the backbone: every zoo backbone has at least 10 blocks, so this
# leaves at least one of them to train.
EMBEDDING_MAX_FROZEN = 0.9


class ConfigError(ValueError):
    """A configuration file or mapping is invalid; the message names the source and field."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer needs to know about how to fine-tune on one dataset."""

    backbone: str = "efficientnet-lite0"
    resolution: int = 64          # images are resized to resolution x resolution
    batch_size: int = 32
    optimizer: str = "sgd"        # sgd: Nesterov momentum 0.9, weight decay 1e-6
    learning_rate: float = 0.01
    dropout: float = 0.2
    augmentation: str = "none"
    augmentation_alpha: float = 0.2
    test_frames: int = 4          # video: frames averaged per clip at test time
    flip_tta: bool = True
    loss: str = "cross_entropy"   # of the classifier; cosine: 1 - cos(output, one-hot)
    embedding_loss: str = "none"  # supcon / contrastive / triplet train the backbone instead
    transductive_gnn: bool = False  # refine test predictions with a GCN over train + test
    # Share of the backbone's blocks, from the input on, that fine-tuning leaves frozen: 0
    # trains them all, 1 only the head. Frozen blocks need no backward pass, so steps are
    # cheaper (at 1, about a forward pass).
    frozen_fraction: float = 0.0

    @property
    def mlp_head(self) -> bool:
        """Siamese embeddings are classified by an MLP head, the rest by a linear one."""
        return self.embedding_loss in SIAMESE_LOSSES

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "config") -> None:
        checks = [
            # EfficientNet-Lite pads statically: sides must stay even down to stride 16.
            ("resolution", 32 <= self.resolution <= 512 and self.resolution % 16 == 0),
            ("batch_size", self.batch_size in BATCH_SIZES),
            ("optimizer", self.optimizer in OPTIMIZERS),
            ("learning_rate", 1e-6 <= self.learning_rate <= 1.0),
            ("dropout", 0.0 <= self.dropout < 1.0),
            ("augmentation", self.augmentation in AUGMENTATIONS),
            ("augmentation_alpha", 0.0 < self.augmentation_alpha <= 10.0),
            ("test_frames", self.test_frames >= 1),
            ("loss", self.loss in LOSSES),
            ("embedding_loss", self.embedding_loss in EMBEDDING_LOSSES),
            ("frozen_fraction", 0.0 <= self.frozen_fraction <= 1.0),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"{source}: field '{name}' has invalid value "
                                  f"{getattr(self, name)!r}")
        if self.embedding_loss != "none" and self.augmentation != "none":
            raise ConfigError(f"{source}: field 'augmentation' must be 'none' with embedding_loss "
                              f"{self.embedding_loss!r}: MixUp and CutMix blend the classes an "
                              f"embedding loss needs")
        if self.embedding_loss != "none" and self.frozen_fraction > EMBEDDING_MAX_FROZEN:
            raise ConfigError(f"{source}: field 'frozen_fraction' must be at most "
                              f"{EMBEDDING_MAX_FROZEN} with embedding_loss "
                              f"{self.embedding_loss!r}, which trains the backbone")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected an object of fields, got {values!r}")
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {sorted(unknown)}")
        converted = {}
        for name, value in values.items():
            expected = type(getattr(cls(), name))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"{source}: field '{name}' must be {expected.__name__}, got "
                                  f"{value!r}")
            converted[name] = value
        try:
            return cls(**converted)
        except ConfigError as err:
            raise ConfigError(str(err).replace("config:", f"{source}:", 1)) from None

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The generalist configuration, used when meta-learning is off or the selector is unsure:
# EfficientNet-Lite0 at 64 px, SGD with a moderate learning rate, no augmentation.
GENERALIST = TrainConfig()
