"""The shipped artifacts in `metadata/`, produced by `python -m offline export`, validated on load.

    metadata/configs.json     the generalist config, one config per known dataset, the
                              selector's confidence threshold, the fingerprint transform and
                              the time budget the configs were tuned for
    metadata/selector.npz     the meta-classifier (autodl_meta.selector)
    metadata/provenance.json  how the files were made: datasets, commands, commit, date, scale
    metadata/zeroshot.json    the portfolio and its zero-shot selector (autodl_meta.zeroshot),
                              which serves every budget; optional

Every error names the file and the field at fault. A folder without configs.json means "no
meta-learning": the runtime then uses the generalist config.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autodl_meta.config import GENERALIST, ConfigError, TrainConfig

# Configs tuned for a budget T serve runs whose budget is within this factor of T: the best
# resolution, learning rate and batch size for the first 30 s of a run are not those for 20 min.
BUDGET_FACTOR = 3.0
from autodl_meta.fingerprint import (FINGERPRINT_BACKBONE, FINGERPRINT_BATCH,
                                     FINGERPRINT_RESOLUTION)
from autodl_meta.selector import MetaClassifier, SelectorError, load_selector
from autodl_meta.zeroshot import ZEROSHOT_FILE, ZeroShotError, ZeroShotSelector

METADATA_DIR = Path(__file__).resolve().parents[1] / "metadata"
CONFIGS_FILE = "configs.json"
SELECTOR_FILE = "selector.npz"
PROVENANCE_FILE = "provenance.json"
PROVENANCE_FIELDS = ("datasets", "commands", "git_commit", "created", "scale")


class MetadataError(ValueError):
    """A file in metadata/ is invalid; the message names the file and the field."""


def fingerprint_spec() -> dict[str, Any]:
    """The fingerprint transform this runtime applies; the selector must have been trained on it."""
    return {"backbone": FINGERPRINT_BACKBONE, "resolution": FINGERPRINT_RESOLUTION,
            "batch_size": FINGERPRINT_BATCH}


@dataclass
class MetaData:
    """What the runtime needs to pick a config for a new dataset."""

    generalist: TrainConfig = GENERALIST
    configs: dict[str, TrainConfig] = field(default_factory=dict)
    selector: MetaClassifier | None = None
    min_confidence: float = 0.0
    tuned_budget: float = 1200.0  # seconds: the time budget the configs were tuned for
    zeroshot: ZeroShotSelector | None = None

    def serves(self, time_budget: float) -> bool:
        """Whether the meta-learned configs were tuned for a budget close to `time_budget`."""
        return self.tuned_budget / BUDGET_FACTOR <= time_budget <= self.tuned_budget * BUDGET_FACTOR

    def backbones(self) -> set[str]:
        """The backbones a run with this metadata can fine-tune."""
        portfolio = self.zeroshot.selectable_configs().values() if self.zeroshot else ()
        return {self.generalist.backbone,
                *(config.backbone for config in [*self.configs.values(), *portfolio])}

    def to_json(self) -> dict[str, Any]:
        """The contents of configs.json."""
        return {"generalist": self.generalist.to_dict(), "min_confidence": self.min_confidence,
                "tuned_budget": self.tuned_budget, "fingerprint": fingerprint_spec(),
                "datasets": {name: config.to_dict() for name, config in self.configs.items()}}

    @classmethod
    def load(cls, folder: Path = METADATA_DIR) -> "MetaData":
        """Read and validate `folder`; no configs.json gives the generalist alone."""
        zeroshot = None
        if (folder / ZEROSHOT_FILE).is_file():
            try:
                zeroshot = ZeroShotSelector.load(folder / ZEROSHOT_FILE)
            except ZeroShotError as err:
                raise MetadataError(str(err)) from err
        path = folder / CONFIGS_FILE
        if not path.is_file():
            return cls(zeroshot=zeroshot)
        values = _read_json(path)
        for name in ("generalist", "min_confidence", "tuned_budget", "fingerprint", "datasets"):
            if name not in values:
                raise MetadataError(f"{path}: missing field '{name}'")
        if values["fingerprint"] != fingerprint_spec():
            raise MetadataError(f"{path}: field 'fingerprint' is {values['fingerprint']}, but "
                                f"this runtime fingerprints with {fingerprint_spec()}")
        confidence = values["min_confidence"]
        if not isinstance(confidence, (int, float)) or not 0.0 <= confidence <= 1.0:
            raise MetadataError(f"{path}: field 'min_confidence' must be in [0, 1]")
        tuned_budget = values["tuned_budget"]
        if isinstance(tuned_budget, bool) or not isinstance(tuned_budget, (int, float)) \
                or not tuned_budget > 0:
            raise MetadataError(f"{path}: field 'tuned_budget' must be a positive number of "
                                f"seconds")
        if not isinstance(values["datasets"], dict):
            raise MetadataError(f"{path}: field 'datasets' must be an object")
        try:
            generalist = TrainConfig.from_dict(values["generalist"], f"{path}: generalist")
            configs = {name: TrainConfig.from_dict(config, f"{path}: datasets.{name}")
                       for name, config in values["datasets"].items()}
        except (ConfigError, TypeError) as err:
            raise MetadataError(str(err)) from err
        selector = None
        if configs:
            selector_path = folder / SELECTOR_FILE
            try:
                selector = load_selector(selector_path)
            except SelectorError as err:
                raise MetadataError(str(err)) from err
            missing = sorted(set(selector.names) - set(configs))
            if missing:
                raise MetadataError(f"{path}: field 'datasets' has no config for {missing}, "
                                    f"which {selector_path} can select")
        return cls(generalist, configs, selector, float(confidence), float(tuned_budget),
                   zeroshot)


def read_provenance(folder: Path = METADATA_DIR) -> dict[str, Any]:
    """provenance.json, checked for the fields every export writes."""
    path = folder / PROVENANCE_FILE
    values = _read_json(path)
    for name in PROVENANCE_FIELDS:
        if name not in values:
            raise MetadataError(f"{path}: missing field '{name}'")
    return values


def _read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise MetadataError(f"{path}: file missing") from err
    except json.JSONDecodeError as err:
        raise MetadataError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise MetadataError(f"{path}: expected a JSON object")
    return values
