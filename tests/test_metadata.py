"""metadata/ is validated on load: every error names the file and the field; the runtime never
crashes on a broken folder but falls back to the generalist config."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autodl_meta.config import GENERALIST, TrainConfig
from autodl_meta.metadata import (MetaData, MetadataError, fingerprint_spec,
                                  read_provenance)
from offline.meta_classifiers import build, save_selector


@pytest.fixture
def metadata_dir(tmp_path):
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(i, 1, (40, 1280)) for i in range(2)]).astype("f4")
    selector = build("nearest_centroid").fit(features, np.repeat([0, 1], 40), ["a", "b"])
    save_selector(selector, tmp_path / "selector.npz")
    meta = MetaData(configs={"a": GENERALIST, "b": TrainConfig(learning_rate=0.1)},
                    min_confidence=0.5)
    (tmp_path / "configs.json").write_text(json.dumps(meta.to_json()))
    return tmp_path


def edit(folder, change):
    path = folder / "configs.json"
    values = json.loads(path.read_text())
    change(values)
    path.write_text(json.dumps(values))


def test_a_valid_folder_loads_and_an_empty_one_means_generalist(metadata_dir, tmp_path_factory):
    meta = MetaData.load(metadata_dir)
    assert meta.selector.names == ["a", "b"] and meta.configs["b"].learning_rate == 0.1
    assert meta.min_confidence == 0.5
    empty = MetaData.load(tmp_path_factory.mktemp("empty"))
    assert empty.selector is None and empty.configs == {} and empty.generalist == GENERALIST


@pytest.mark.parametrize("change,message", [
    (lambda v: v.pop("generalist"), r"configs.json: missing field 'generalist'"),
    (lambda v: v.update(min_confidence=2), r"configs.json: field 'min_confidence'"),
    (lambda v: v.update(tuned_budget=-1), r"configs.json: field 'tuned_budget'"),
    (lambda v: v.pop("tuned_budget"), r"configs.json: missing field 'tuned_budget'"),
    (lambda v: v["fingerprint"].update(resolution=128), r"configs.json: field 'fingerprint'"),
    (lambda v: v["datasets"]["b"].update(batch_size=48),
     r"configs.json: datasets.b: field 'batch_size'"),
    (lambda v: v["generalist"].update(optimizer="rmsprop"),
     r"configs.json: generalist: field 'optimizer'"),
    (lambda v: v["datasets"].pop("b"), r"configs.json: field 'datasets' has no config for \['b'\]"),
])
def test_errors_name_the_file_and_the_field(metadata_dir, change, message):
    edit(metadata_dir, change)
    with pytest.raises(MetadataError, match=message):
        MetaData.load(metadata_dir)


def test_a_missing_or_broken_selector_is_named(metadata_dir):
    (metadata_dir / "selector.npz").write_text("not an npz")
    with pytest.raises(MetadataError, match="selector.npz"):
        MetaData.load(metadata_dir)
    (metadata_dir / "selector.npz").unlink()
    with pytest.raises(MetadataError, match="selector.npz"):
        MetaData.load(metadata_dir)


def test_provenance_fields_are_checked(tmp_path):
    (tmp_path / "provenance.json").write_text(json.dumps({"datasets": [], "commands": []}))
    with pytest.raises(MetadataError, match=r"provenance.json: missing field 'git_commit'"):
        read_provenance(tmp_path)


def test_the_runtime_survives_a_broken_folder(metadata_dir, small_image_dataset, caplog):
    from autodl_meta.learner import Learner
    from ingestion_local import AutoDLDataset

    edit(metadata_dir, lambda v: v.update(fingerprint={**fingerprint_spec(), "batch_size": 1}))
    train = AutoDLDataset(small_image_dataset / "smalldigits.data" / "train")
    learner = Learner(train.get_metadata(), metadata_dir=metadata_dir)
    assert learner.config == GENERALIST and learner.fingerprinter is None
    assert any("configs.json: field 'fingerprint'" in r.message for r in caplog.records)


@pytest.mark.parametrize("budget,selects", [(60, True), (300, False)])
def test_configs_serve_only_budgets_near_the_one_they_were_tuned_for(
        metadata_dir, small_image_dataset, budget, selects):
    from autodl_meta.learner import Learner
    from ingestion_local import AutoDLDataset

    edit(metadata_dir, lambda v: v.update(tuned_budget=30, min_confidence=0.0))
    train = AutoDLDataset(small_image_dataset / "smalldigits.data" / "train")
    learner = Learner(train.get_metadata(), metadata_dir=metadata_dir)
    learner.train(train.get_dataset(), remaining_time_budget=budget)
    assert (learner.selected in ("a", "b")) == selects
    if not selects:
        assert learner.config == GENERALIST
