"""The offline pipeline: evaluation, BOHB on a two-worker LocalCluster, cross-evaluation,
selector training and export into a metadata/ folder that the runtime loads and uses."""
from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from autodl_meta.config import GENERALIST, TrainConfig
from offline.costs import CostEntry, CostTable
from autodl_meta.metadata import MetaData
from offline import bohb, export, selector
from offline.crosseval import GENERALIST_NAME, candidate_configs
from offline.evaluate import Evaluation, _Prices, _simulated_now, evaluate, evaluate_task
from offline.store import Incumbent, ResultStore, alc_matrix

SMALL = TrainConfig(resolution=32, batch_size=16, learning_rate=0.01)


def test_evaluate_runs_the_submission_and_scores_its_curve(small_image_dataset):
    table = CostTable(device="test", created="2026-01-01", entries=[
        CostEntry("efficientnet-lite0", 32, 16, 0.05, 0.001),
        CostEntry("efficientnet-lite0", 64, 16, 0.2, 0.004)])
    result = evaluate(SMALL, small_image_dataset, budget=12, seed=0, time_mode="simulated",
                      cost_table=table, threads=1)
    assert result.dataset == "smalldigits" and result.error is None
    assert len(result.timestamps) >= 2 and len(result.scores) == len(result.timestamps)
    assert result.timestamps == sorted(result.timestamps) and max(result.timestamps) <= 12
    assert 0.3 < result.alc < 1.0 and result.final_nauc > 0.5
    # The re-timing keeps what it replaced: one wall-clock time per prediction, in order.
    assert len(result.wall_timestamps) == len(result.timestamps)
    assert result.wall_timestamps == sorted(result.wall_timestamps)


# Images through eval passes priced at 20 ms, several times what a 32-px image costs on a
# starved CPU: the head's feature pass alone puts the priced clock seconds ahead of the wall
# clock. (Training steps are priced too, but a 12-s run predicts before its first fine-tuning
# step: test_the_priced_clock_charges_each_step_at_the_size_of_its_batch covers their price.)
def test_a_simulated_run_sizes_its_work_and_stops_on_the_priced_clock(small_image_dataset):
    """Network work priced far above its wall time: the run is over on the priced clock long
    before the wall clock reaches the budget, so a slow or shared worker does the same work as
    a fast one instead of less in the same wall time."""
    table = CostTable(device="test", created="2026-01-01", entries=[
        CostEntry("efficientnet-lite0", 32, 16, 0.3, 0.02)])
    result = evaluate(SMALL, small_image_dataset, budget=12, seed=0, time_mode="simulated",
                      cost_table=table, threads=1)
    assert result.error is None and max(result.timestamps) <= 12
    assert result.wall_timestamps[-1] < result.timestamps[-1] - 1


def test_a_run_whose_backbone_weights_are_missing_fails_instead_of_running_another(
        small_image_dataset, monkeypatch):
    """The runtime falls back to a backbone it has; offline, that run would be stored as the
    config asked for."""
    monkeypatch.setattr("autodl_meta.learner.available_backbones",
                        lambda: ["efficientnet-lite0"])
    config = TrainConfig.from_dict({**SMALL.to_dict(), "backbone": "efficientnet-lite1"})
    with pytest.raises(RuntimeError, match="weights of efficientnet-lite1 are missing"):
        evaluate(config, small_image_dataset, budget=12)
    result = Evaluation.from_dict(evaluate_task(config.to_dict(), str(small_image_dataset), 12, 0))
    assert "weights of efficientnet-lite1 are missing" in result.error


def test_the_priced_clock_charges_each_step_at_the_size_of_its_batch():
    """Steps on a pool smaller than the configured batch cost what the table says of their own
    size, not of the configured one."""
    table = CostTable(device="test", created="2026-01-01", entries=[
        CostEntry("efficientnet-lite0", 32, 4, 0.25, 0.001),
        CostEntry("efficientnet-lite0", 32, 16, 1.0, 0.001)])
    learner = SimpleNamespace(config=TrainConfig(resolution=32, batch_size=16), resolution=32)
    prices = _Prices.of(learner, table)
    trainer = SimpleNamespace(steps_by_batch_size=Counter({4: 10, 16: 3}), train_seconds=0.0,
                              forward_seconds=0.0, forward_images=1000)
    price = 10 * 0.25 + 3 * 1.0 + 1000 * 0.001
    before = time.monotonic()
    now = _simulated_now(trainer, prices)
    assert before + price <= now <= time.monotonic() + price


@pytest.mark.slow
def test_bohb_on_a_two_worker_local_cluster_resumes(small_image_dataset, tmp_path):
    store_path = tmp_path / "store.sqlite"
    common = ["--datasets", small_image_dataset.name, "--data-dir",
              str(small_image_dataset.parent), "--backbones", "efficientnet-lite0",
              "--min-budget", "4", "--max-budget", "12", "--resolutions", "32",
              "--store", str(store_path), "--workers", "2"]
    assert bohb.main(common + ["--trials", "2"]) == 0
    with sqlite3.connect(store_path) as connection:
        first = connection.execute("SELECT config_key, budget, created FROM evaluations"
                                   ).fetchall()
    assert len(first) == 2
    # A larger trial count continues the same search: the first two are not run again.
    assert bohb.main(common + ["--trials", "4"]) == 0
    with ResultStore(store_path) as store:
        evaluations = store.evaluations("smalldigits")
        incumbents = store.incumbents()
    assert len(evaluations) >= 3  # a proposal may repeat a config at a higher budget
    with sqlite3.connect(store_path) as connection:
        again = connection.execute("SELECT config_key, budget, created FROM evaluations"
                                   ).fetchall()
    assert set(first) <= set(again)
    assert len(incumbents) == 1 and incumbents[0].trials == 4
    best = max(e.alc for _, e in evaluations if e.budget == incumbents[0].budget)
    assert incumbents[0].alc == pytest.approx(best)
    # A 4-s run on a starved CPU may end before its first prediction (ALC 0, as the platform
    # scores it); the search still found a config that predicts.
    assert all(0.0 <= e.alc < 1.0 and e.error is None for _, e in evaluations)
    assert incumbents[0].alc > 0.0


@pytest.mark.parametrize("techniques", [False, True])
def test_configspace_maps_onto_the_runtime_schema(techniques):
    space = bohb.configspace(seed=1, techniques=techniques)
    configs = [bohb.to_train_config(configuration, "efficientnet-lite0")
               for configuration in space.sample_configuration(60)]
    for config in configs:
        assert config.backbone == "efficientnet-lite0"
        assert TrainConfig.from_dict(config.to_dict()) == config
    # With the techniques, every one of them is proposed (and never a forbidden pair).
    assert {c.embedding_loss for c in configs} == ({"none", "supcon", "contrastive", "triplet"}
                                                   if techniques else {"none"})
    assert {c.transductive_gnn for c in configs} == ({False, True} if techniques else {False})


def _three_datasets(small_image_dataset):
    """Three small real-format datasets that look different, side by side: MNIST digits, a
    colour set and sklearn's 8x8 digits."""
    from sklearn.datasets import load_digits

    from ingestion_local.convert import write_arrays

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    colour = np.zeros((150, 32, 32, 3), dtype=np.uint8)
    colour[..., 0] = 200
    colour[np.arange(150), :, :, 2] = (y * 100)[:, None, None]
    colour = (colour + rng.integers(0, 40, colour.shape)).astype(np.uint8)
    digits = load_digits()
    eight = np.round(digits.images[:150] * (255 / 16)).astype(np.uint8)
    out = small_image_dataset.parent
    if not (out / "colour").exists():
        write_arrays("colour", out, colour[:100], y[:100], colour[100:], y[100:])
    if not (out / "eight").exists():
        write_arrays("eight", out, eight[:100], digits.target[:100], eight[100:],
                     digits.target[100:150])
    return [small_image_dataset.name, "colour", "eight"]


def test_selector_and_export_write_a_metadata_folder_the_runtime_uses(
        small_image_dataset, tmp_path, monkeypatch):
    names = _three_datasets(small_image_dataset)
    data_dir = small_image_dataset.parent
    store_path = tmp_path / "results" / "store.sqlite"
    # The search itself is tested above; here the store is filled with a known matrix, so the
    # selector's pricing and the export can be checked exactly. Each config scores 0.9 on its
    # own dataset, except on "eight", where the default config's 0.95 beats its own.
    configs = {name: TrainConfig(learning_rate=0.001 * (i + 1)) for i, name in enumerate(names)}
    with ResultStore(store_path) as store:
        for name, config in configs.items():
            store.set_incumbent(Incumbent(name, config.backbone, config, 0.8, 30.0, 5))
        for i, (source, config) in enumerate([*configs.items(), (GENERALIST_NAME, GENERALIST)]):
            for j, target in enumerate(names):
                value = 0.9 if source == target else 0.5 + 0.01 * i
                if (source, target) == (GENERALIST_NAME, "eight"):
                    value = 0.95
                store.put(config, Evaluation(target, 30.0, 0, value, value, value))
        matrix = alc_matrix(store, candidate_configs(store), names, 30.0)
    assert matrix.shape == (4, 3) and not np.isnan(matrix).any()
    assert selector.main(["--datasets", *names, "--data-dir", str(data_dir), "--store",
                          str(store_path), "--budget", "30", "--max-samples", "100",
                          "--repeats", "3", "--kinds", "nearest_centroid", "mlp_vote"]) == 0
    report = json.loads((store_path.parent / "selector" / selector.REPORT_FILE).read_text())
    assert report["chosen_kind"] in ("nearest_centroid", "mlp_vote")
    for held in report["held_out"]:  # the oracle is the diagonal; the others' configs score less
        assert held["oracle"] == pytest.approx(0.9)
        for picks in held["selections"]["mlp_vote"].values():
            assert all(name != held["dataset"] for name, _, _ in picks)
            # A pick is priced with the picked dataset's best config: "eight" brings the
            # default config (row 3), the others their own incumbents.
            for name, _, alc in picks:
                row = 3 if name == "eight" else names.index(name)
                assert alc == pytest.approx(0.5 + 0.01 * row), (held["dataset"], name)
    identified = report["identification_accuracy"]["nearest_centroid"]
    assert identified["64"] == 1.0, identified  # these three are easy to tell apart
    metadata_dir = tmp_path / "metadata"
    assert export.main(["--store", str(store_path), "--budget", "30", "--out",
                        str(metadata_dir)]) == 0
    meta = MetaData.load(metadata_dir)
    assert set(meta.configs) == set(names) and meta.selector is not None
    assert meta.configs["eight"] == GENERALIST  # the best config on it, not its own incumbent
    assert meta.configs["colour"] == configs["colour"]
    provenance = json.loads((metadata_dir / "provenance.json").read_text())
    assert {"datasets", "commands", "git_commit", "created", "scale"} <= set(provenance)
    assert provenance["scale"]["configs_from"]["eight"] == GENERALIST_NAME

    # The runtime fingerprints the colour set's first batch and takes the colour config.
    from autodl_meta.learner import Learner
    from ingestion_local import AutoDLDataset

    train = AutoDLDataset(data_dir / "colour" / "colour.data" / "train")
    learner = Learner(train.get_metadata(), metadata_dir=metadata_dir)
    learner.train(train.get_dataset(), remaining_time_budget=60)
    assert learner.selected == "colour"
    assert learner.config.learning_rate == configs["colour"].learning_rate
    monkeypatch.setenv("AUTODL_META_LEARNING", "0")
    switched_off = Learner(train.get_metadata(), metadata_dir=metadata_dir)
    switched_off.train(train.get_dataset(), remaining_time_budget=60)
    assert switched_off.selected is None and switched_off.config == meta.generalist


def test_store_rows_with_a_retired_field_are_found_again(tmp_path):
    store_path = tmp_path / "store.sqlite"
    with ResultStore(store_path) as store:
        store.put(SMALL, Evaluation("smalldigits", 30.0, 0, 0.7, 0.8, 0.8))
    old = json.dumps({**SMALL.to_dict(), "train_frames": 1}, sort_keys=True)
    with sqlite3.connect(store_path) as connection:
        connection.execute("UPDATE evaluations SET config_key=?, config=?", (old, old))
    with ResultStore(store_path) as store:
        assert store.get("smalldigits", SMALL, 30.0, 0).alc == pytest.approx(0.7)
        assert [config for config, _ in store.evaluations()] == [SMALL]


def test_an_old_row_that_repeats_a_stored_run_gives_way_to_it(tmp_path):
    store_path = tmp_path / "store.sqlite"
    old = json.dumps({**SMALL.to_dict(), "train_frames": 1}, sort_keys=True)
    with ResultStore(store_path) as store:
        store.put(SMALL, Evaluation("smalldigits", 30.0, 0, 0.7, 0.8, 0.8))
        store.put(GENERALIST, Evaluation("smalldigits", 30.0, 0, 0.5, 0.6, 0.6))
    with sqlite3.connect(store_path) as connection:  # the GENERALIST row, as an old schema's
        connection.execute("UPDATE evaluations SET config_key=?, config=? WHERE alc=0.5",
                           (old, old))
    with ResultStore(store_path) as store:
        assert store.get("smalldigits", SMALL, 30.0, 0).alc == pytest.approx(0.7)
        assert [config for config, _ in store.evaluations()] == [SMALL]
    with sqlite3.connect(store_path) as connection:
        assert connection.execute("SELECT count(*) FROM evaluations").fetchone() == (1,)


def test_an_anytime_run_answers_for_every_shorter_budget(tmp_path):
    from scoring_local.metrics import alc

    times, scores = [1.0, 10.0, 50.0, 120.0, 170.0], [0.2, 0.5, 0.6, 0.7, 0.8]
    long_run = Evaluation("smalldigits", 180.0, 0, alc(times, scores, 180), 0.8, 0.9,
                          timestamps=times, scores=scores,
                          accuracies=[0.3, 0.5, 0.6, 0.8, 0.9], anytime=True,
                          wall_timestamps=[2.0, 16.0, 80.0, 175.0, 179.0])
    with ResultStore(tmp_path / "store.sqlite") as store:
        store.put(SMALL, long_run)
        at_60 = store.get("smalldigits", SMALL, 60.0, 0)
        assert at_60.budget == 60.0 and at_60.timestamps == times[:3]
        assert at_60.alc == pytest.approx(alc(times[:3], scores[:3], 60))
        assert (at_60.final_nauc, at_60.final_accuracy) == (0.6, 0.6)
        assert at_60.wall_timestamps == [2.0, 16.0, 80.0]
        assert store.get("smalldigits", SMALL, 180.0, 0).alc == pytest.approx(long_run.alc)
        assert store.get("smalldigits", SMALL, 300.0, 0) is None
        store.put(GENERALIST, Evaluation("smalldigits", 180.0, 0, 0.5, 0.6, 0.7,
                                         timestamps=times, scores=scores))
        assert store.get("smalldigits", GENERALIST, 60.0, 0) is None  # not an anytime run
    with pytest.raises(ValueError, match="says nothing"):
        long_run.at_budget(200.0)


def test_the_anytime_table_sets_prefixes_beside_real_runs():
    from offline.anytime import prefix_table

    def run(budget, times, scores):
        return Evaluation("d", budget, 0, 0.0, scores[-1], 0.0, timestamps=times,
                          scores=scores, anytime=True)

    runs = {("d", 180.0, 0): run(180.0, [2.0, 30.0, 100.0], [0.5, 0.7, 0.9]),
            ("d", 60.0, 0): run(60.0, [2.0, 30.0], [0.5, 0.7])}
    runs["d", 60.0, 0].alc = runs["d", 180.0, 0].at_budget(60.0).alc - 0.01
    table, records = prefix_table(runs, ["d"], [60.0, 180.0], [0])
    assert "| d | 60 |" in table and "+0.0100" in table
    assert records[0]["prefix_alc"][0] == pytest.approx(records[0]["real_alc"][0] + 0.01)


def test_local_cluster_workers_start_without_a_malloc_trim_threshold():
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 by default; training steps then ran about
    # 2.5 times slower than in the runtime's own process.
    import os

    from offline.cluster import dask_client

    with dask_client(None, 1) as client:
        values = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert list(values.values()) == [None]
