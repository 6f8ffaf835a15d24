"""The zero-shot selector: meta-features from the metadata, models that pick a config, a file
validated on load, leave-one-source-out that never trains on the held-out source, and a runtime
that serves every budget with it."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from autodl_meta.config import GENERALIST
from autodl_meta.zeroshot import (FEATURES, ZEROSHOT_FILE, ZeroShotError, ZeroShotSelector,
                                  meta_features)
from offline import zeroshot
from offline.evaluate import Evaluation
from offline.portfolio import save_portfolio
from offline.store import ResultStore

CONFIGS = {"default": GENERALIST, "small": replace(GENERALIST, resolution=32),
           "large": replace(GENERALIST, resolution=128)}


class FakeMetadata:
    def __init__(self, classes=10, size=1000, side=(28, 28), channels=1, frames=1):
        self.classes, self.count, self.side = classes, size, side
        self.channels, self.frames = channels, frames

    def get_output_size(self):
        return self.classes

    def size(self):
        return self.count

    def get_matrix_size(self):
        return self.side

    def get_num_channels(self):
        return self.channels

    def get_sequence_size(self):
        return self.frames


def test_meta_features_read_the_metadata_and_stand_in_for_unknown_sizes():
    features = meta_features(FakeMetadata(classes=10, size=1000, side=(28, 32), channels=3,
                                          frames=8))
    assert features.shape == (len(FEATURES),)
    assert np.allclose(features, [math.log(10), math.log(1000), math.log(100), math.log(32), 3,
                                  math.log(8)])
    variable = meta_features(FakeMetadata(side=(-1, -1), frames=-1, channels=-1))
    assert variable[3] == math.log(256) and variable[5] == math.log(16) and variable[4] == 1


def matrix_where_resolution_decides(sides):
    """ALC of (default, small, large) on tasks of these image sides: small images want 32 px,
    large ones 128 px, the default is second everywhere."""
    alc = []
    for side in sides:
        large = side >= 64
        alc.append([0.60, 0.50 if large else 0.70, 0.72 if large else 0.45])
    return np.array(alc)


def features_of(sides):
    return np.array([meta_features(FakeMetadata(side=(s, s))) for s in sides])


@pytest.mark.parametrize("kind", ["linear", "ranking", "nearest", "tree"])
def test_a_selector_learns_which_config_wins_where(kind):
    sides = [16, 24, 28, 32, 96, 128, 160, 224]
    model = zeroshot.fit(kind, features_of(sides), matrix_where_resolution_decides(sides), 60.0,
                         zeroshot.GRIDS[kind][-2])
    names = list(CONFIGS)
    assert names[int(np.argmax(model.scores(features_of([20])[0])))] == "small"
    assert names[int(np.argmax(model.scores(features_of([200])[0])))] == "large"


def test_the_ranking_kind_learns_the_order_not_the_size_of_the_gaps():
    # On small images `small` wins by a hair; on large ones `large` wins by a mile. A regression
    # on ALC sees mostly the large gaps; the ranking loss weighs both orders alike.
    sides = [16, 20, 24, 28, 32, 96, 128, 160, 192, 224]
    alc = np.array([[0.70, 0.701, 0.40] if side < 64 else [0.70, 0.40, 0.90] for side in sides])
    model = zeroshot.fit("ranking", features_of(sides), alc, 60.0, 0.001)
    names = list(CONFIGS)
    assert names[int(np.argmax(model.scores(features_of([22])[0])))] == "small"
    assert names[int(np.argmax(model.scores(features_of([180])[0])))] == "large"
    assert model.weights.shape == (3, len(FEATURES)) and model.bias.shape == (3,)
    # every config tied everywhere: nothing to learn, every score is 0
    tied = zeroshot.fit("ranking", features_of(sides), np.full((len(sides), 3), 0.5), 60.0, 0.1)
    assert not tied.weights.any() and not tied.bias.any()


def test_a_ranking_model_round_trips(tmp_path):
    sides = [16, 24, 28, 32, 96, 128, 160, 224]
    model = zeroshot.fit("ranking", features_of(sides), matrix_where_resolution_decides(sides),
                         60.0, 0.01)
    ZeroShotSelector(CONFIGS, [model]).save(tmp_path / ZEROSHOT_FILE)
    loaded = ZeroShotSelector.load(tmp_path / ZEROSHOT_FILE)
    assert loaded.models[0].kind == "ranking" and loaded.models[0].selectable() == {0, 1, 2}
    assert loaded.select(features_of([200])[0], 60)[0] == "large"
    values = json.loads((tmp_path / ZEROSHOT_FILE).read_text())
    values["models"][0]["weights"] = [[0.0] * len(FEATURES)]
    (tmp_path / ZEROSHOT_FILE).write_text(json.dumps(values))
    with pytest.raises(ZeroShotError, match=r"field 'models\[0\].weights' must be 3 x 6"):
        ZeroShotSelector.load(tmp_path / ZEROSHOT_FILE)


def test_the_single_kind_is_the_best_mean_config_whatever_the_features():
    sides = [16, 24, 28, 32, 40, 96, 128, 160]
    model = zeroshot.fit("single", features_of(sides), matrix_where_resolution_decides(sides),
                         60.0, 0)
    # mean ALC: default 0.600, small 0.625, large 0.551: small, even for a large image
    assert list(CONFIGS)[int(np.argmax(model.scores(features_of([200])[0])))] == "small"
    assert np.array_equal(model.scores(features_of([20])[0]), model.scores(features_of([200])[0]))
    result = zeroshot.leave_one_source_out("single", [f"s{i}" for i in range(len(sides))],
                                           list(CONFIGS), features_of(sides),
                                           matrix_where_resolution_decides(sides), 60.0)
    assert result["selected"] == pytest.approx(result["generalist"])


def judged(selected, default, without_a_source=None):
    """A report entry; judged again with each source removed, as well as on every task unless
    told."""
    mean = selected / default if without_a_source is None else without_a_source
    return {"selected": selected, "default": default,
            "over_default_without_a_source": {"mean": mean, "min": mean, "max": mean,
                                              "worst_without": "s0"}}


def test_auto_export_ships_the_kind_judged_best_held_out_and_single_on_ties():
    report = {"budgets": {"30": {"linear": judged(0.70, 0.6), "nearest": judged(0.72, 0.6),
                                 "single": judged(0.71, 0.6)},
                          "180": {"linear": judged(0.80, 0.7), "single": judged(0.80, 0.7)}}}
    assert zeroshot.export_kinds(report, [30.0, 180.0], zeroshot.AUTO) == {
        30.0: "nearest", 180.0: "single"}
    assert zeroshot.export_kinds(report, [30.0], "linear") == {30.0: "linear"}


def test_auto_export_ships_the_fixed_default_where_no_kind_clearly_beat_it_held_out():
    report = {"budgets": {"60": {"linear": judged(0.80, 0.82), "single": judged(0.81, 0.82)},
                          "180": {"nearest": judged(0.85, 0.85), "single": judged(0.84, 0.85)},
                          "300": {"nearest": judged(0.853, 0.85)},
                          "400": {"tree": judged(0.87, 0.85, without_a_source=1.003)},
                          "500": {"tree": judged(0.87, 0.85, without_a_source=1.003),
                                  "ranking": judged(0.86, 0.85, without_a_source=1.007)}}}
    # 300 s: 0.35 % better, within the noise; 400 s: 2.4 % better on every task, 0.3 % on
    # average with a source removed; 500 s: the best kind that clears both; 600 s: not judged
    # (too few sources)
    assert zeroshot.export_kinds(report, [60.0, 180.0, 300.0, 400.0, 500.0, 600.0],
                                 zeroshot.AUTO) == {
        60.0: "fixed", 180.0: "fixed", 300.0: "fixed", 400.0: "fixed", 500.0: "ranking",
        600.0: "fixed"}
    assert zeroshot.export_kinds(report, [300.0], zeroshot.AUTO, min_gain=0.002) == {
        300.0: "nearest"}


def test_judging_again_without_each_source_finds_a_gain_one_source_carries():
    # The features decide on sources a and b; c and d run the default config whatever the
    # features say, so without a or b, the large-image rule has one source left to learn from.
    tasks = ["a", "a__n10", "b", "b__n10", "c", "d"]
    sides = [16, 20, 200, 180, 64, 72]
    features = features_of(sides)
    alc = np.array([[0.6, 0.9, 0.5], [0.6, 0.9, 0.5], [0.6, 0.5, 0.9], [0.6, 0.5, 0.9],
                    [0.8, 0.7, 0.7], [0.8, 0.7, 0.7]])
    removed = zeroshot.without_each_source("nearest", tasks, list(CONFIGS), features, alc, 60.0)
    assert set(removed) == {"mean", "min", "max", "worst_without"}
    assert removed["min"] <= removed["mean"] <= removed["max"]
    assert removed["worst_without"] in {"a", "b", "c", "d"}
    whole = zeroshot.leave_one_source_out("nearest", tasks, list(CONFIGS), features, alc, 60.0)
    assert removed["min"] < whole["selected"] / whole["default"]


def test_the_fixed_kind_runs_the_default_config_whatever_the_features(tmp_path):
    model = zeroshot.fixed_model(list(CONFIGS), 180.0)
    ZeroShotSelector(CONFIGS, [model]).save(tmp_path / ZEROSHOT_FILE)
    loaded = ZeroShotSelector.load(tmp_path / ZEROSHOT_FILE)
    assert loaded.models[0].kind == "fixed"
    assert {loaded.select(features_of([side])[0], 180)[0] for side in (16, 200)} == {"default"}
    with pytest.raises(ValueError, match="'default' config"):
        zeroshot.fixed_model(["small", "large"], 180.0)


def test_leave_one_source_out_beats_the_single_best_config_when_features_decide():
    sides = [16, 20, 24, 28, 32, 96, 128, 160, 192, 224]
    tasks = [f"s{i}" if i % 2 else f"s{i - 1}__coarse" for i in range(1, len(sides) + 1)]
    result = zeroshot.leave_one_source_out("nearest", tasks, list(CONFIGS), features_of(sides),
                                           matrix_where_resolution_decides(sides), 60.0)
    assert result["sources"] == 5 and result["tasks"] == 10 and result["configs"] == 3
    assert result["selected"] > result["generalist"]
    assert result["oracle"] >= result["selected"] and result["default"] == pytest.approx(0.60)
    # the best mean over all ten tasks, held-out ones included: default and small tie at 0.600
    # (large 0.585)
    assert result["single_best_config"] in ("default", "small")
    assert result["single_best"] == pytest.approx(0.60)
    assert result["selected_over_single_best"] == pytest.approx(result["selected"] / 0.60)


def test_the_held_out_source_is_never_in_the_training():
    trained_on = []
    original = zeroshot.fit

    def spy(kind, features, alc, budget, strength):
        trained_on.append({tuple(np.round(row, 6)) for row in features})
        return original(kind, features, alc, budget, strength)

    sides = [16, 24, 96, 160]
    tasks = ["a", "a__r8", "b", "b__r8"]
    features = features_of(sides)
    zeroshot.fit = spy
    try:
        zeroshot.leave_one_source_out("linear", tasks, list(CONFIGS), features,
                                      matrix_where_resolution_decides(sides), 60.0)
    finally:
        zeroshot.fit = original
    rows_a = {tuple(np.round(row, 6)) for row in features[:2]}
    rows_b = {tuple(np.round(row, 6)) for row in features[2:]}
    # every model trained saw one source only (with two sources, none of the other's rows)
    assert trained_on and all(seen <= rows_a or seen <= rows_b for seen in trained_on)


def selector_file(tmp_path, budgets=(30.0, 180.0)):
    sides = [16, 24, 28, 32, 96, 128, 160, 224]
    models = [zeroshot.fit("linear", features_of(sides), matrix_where_resolution_decides(sides),
                           budget, 1.0) for budget in budgets]
    ZeroShotSelector(CONFIGS, models).save(tmp_path / ZEROSHOT_FILE)
    return tmp_path / ZEROSHOT_FILE


def test_a_single_model_round_trips(tmp_path):
    sides = [16, 24, 96, 160]
    model = zeroshot.fit("single", features_of(sides), matrix_where_resolution_decides(sides),
                         90.0, 0)
    ZeroShotSelector(CONFIGS, [model]).save(tmp_path / ZEROSHOT_FILE)
    loaded = ZeroShotSelector.load(tmp_path / ZEROSHOT_FILE)
    assert loaded.models[0].kind == "single" and loaded.models[0].weights.shape == (0, 6)
    assert loaded.select(features_of([20])[0], 90)[0] == model_choice(model)


def test_a_tree_splits_on_the_image_side_and_round_trips(tmp_path):
    sides = [16, 24, 28, 32, 96, 128, 160, 224]
    model = zeroshot.fit("tree", features_of(sides), matrix_where_resolution_decides(sides),
                         60.0, 1)
    # one split, on log_side, into two leaves that each hold one config's tasks only; at the
    # root each task weighs its spread: 0.25 where small wins, 0.22 where large does
    assert model.weights.shape == (3, 4) and model.weights[0, 0] == FEATURES.index("log_side")
    assert model.bias[0].tolist() == pytest.approx([0.0, 1.0 / 1.88, 0.88 / 1.88])
    assert sorted(model.bias[1:].max(axis=1).tolist()) == [1.0, 1.0]
    ZeroShotSelector(CONFIGS, [model]).save(tmp_path / ZEROSHOT_FILE)
    loaded = ZeroShotSelector.load(tmp_path / ZEROSHOT_FILE)
    assert loaded.models[0].kind == "tree"
    assert [loaded.select(features_of([side])[0], 60)[0] for side in (20, 40, 64, 200)] == [
        "small", "small", "large", "large"]


def test_a_tree_whose_child_points_back_is_refused(tmp_path):
    sides = [16, 24, 96, 160]
    model = zeroshot.fit("tree", features_of(sides), matrix_where_resolution_decides(sides),
                         60.0, 1)
    ZeroShotSelector(CONFIGS, [model]).save(tmp_path / ZEROSHOT_FILE)
    values = json.loads((tmp_path / ZEROSHOT_FILE).read_text())
    values["models"][0]["weights"][0][2] = 0  # the root's left child: the root itself
    (tmp_path / ZEROSHOT_FILE).write_text(json.dumps(values))
    with pytest.raises(ZeroShotError, match=r"field 'models\[0\].weights' node 0 must split"):
        ZeroShotSelector.load(tmp_path / ZEROSHOT_FILE)


def test_the_configs_a_selector_can_pick_are_those_its_models_pick_somewhere():
    sides = [16, 24, 28, 32, 96, 128, 160, 224]
    features, alc = features_of(sides), matrix_where_resolution_decides(sides)
    tree = zeroshot.fit("tree", features, alc, 60.0, 1)
    fixed = zeroshot.fixed_model(list(CONFIGS), 180.0)
    linear = zeroshot.fit("linear", features, alc, 30.0, 1.0)
    assert tree.selectable() == {1, 2} and fixed.selectable() == {0}
    assert linear.selectable() == {0, 1, 2}
    assert list(ZeroShotSelector(CONFIGS, [fixed]).selectable_configs()) == ["default"]
    assert list(ZeroShotSelector(CONFIGS, [tree, fixed]).selectable_configs()) == list(CONFIGS)


def model_choice(model):
    return list(CONFIGS)[int(np.argmax(model.bias))]


def test_the_file_round_trips_and_picks_the_model_of_the_nearest_budget(tmp_path):
    selector = ZeroShotSelector.load(selector_file(tmp_path))
    assert list(selector.configs) == list(CONFIGS)
    assert selector.model_for(20).budget == 30 and selector.model_for(1200).budget == 180
    assert selector.model_for(70).budget == 30 and selector.model_for(80).budget == 180
    assert selector.select(features_of([200])[0], 600)[0] == "large"


@pytest.mark.parametrize("change,message", [
    (lambda v: v.pop("models"), r"missing field 'models'"),
    (lambda v: v.update(features=["log_classes"]), r"field 'features'"),
    (lambda v: v.update(format_version=9), r"field 'format_version'"),
    (lambda v: v["configs"]["small"].update(batch_size=48), r"configs.small: field 'batch_size'"),
    (lambda v: v["models"][1].update(kind="forest"), r"field 'models\[1\].kind'"),
    (lambda v: v["models"][0].update(budget=0), r"field 'models\[0\].budget'"),
    (lambda v: v["models"][0].update(budget=float("inf")), r"field 'models\[0\].budget'"),
    (lambda v: v["models"][1].update(budget=30.0), r"field 'models' holds two models of one"),
    (lambda v: v["models"][0].update(neighbours=None), r"'models\[0\].neighbours' must be an"),
    (lambda v: v["models"][0].update(neighbours=3), r"'models\[0\].neighbours' must be 0"),
    (lambda v: v["configs"].update(small=[]), r"configs.small: expected an object"),
    (lambda v: v["models"][0].update(weights=[[0.0] * 6]), r"field 'models\[0\].weights'"),
    (lambda v: v["models"][0].update(scale=[0.0] * 6), r"field 'models\[0\].scale'"),
    (lambda v: v["models"][0].update(bias=[float("nan")] * 3), r"field 'models\[0\].bias'"),
    (lambda v: v["models"][0].update(kind="single"), r"field 'models\[0\].weights' must be empty"),
    (lambda v: v["models"][0].update(kind="fixed", weights=[], bias=[0.5, 0.5, 0.0]),
     r"field 'models\[0\].bias' must be 1 for the fixed config"),
])
def test_errors_name_the_file_and_the_field(tmp_path, change, message):
    path = selector_file(tmp_path)
    values = json.loads(path.read_text())
    change(values)
    path.write_text(json.dumps(values))
    with pytest.raises(ZeroShotError, match=f"{ZEROSHOT_FILE}: .*{message}"):
        ZeroShotSelector.load(path)


def test_the_command_reports_leave_one_source_out_from_the_store(tmp_path, small_image_dataset):
    """Tasks as folders of the same small dataset under several names; the store holds their
    matrix. The report and the exported file come from the command as a user runs it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    names = ["a", "a__n10", "b", "b__n10", "c", "c__n10"]
    for name in names:
        (data_dir / name).mkdir()
        for part in ("data", "solution"):
            (data_dir / name / f"{name}.{part}").symlink_to(
                small_image_dataset / f"smalldigits.{part}")
    portfolio, store_path = tmp_path / "portfolio.json", tmp_path / "store.sqlite"
    save_portfolio(CONFIGS, portfolio, {})
    with ResultStore(store_path) as store:
        for j, name in enumerate(names):
            for i, config in enumerate(CONFIGS.values()):
                store.put(config, Evaluation(name, 60.0, 0, 0.5 + 0.1 * i + 0.01 * j, 0.9, 0.8,
                                             time_mode="simulated"))
    report = tmp_path / "lodo.json"
    assert zeroshot.main(["--data-dir", str(data_dir), "--store", str(store_path),
                          "--portfolio", str(portfolio), "--budgets", "60", "--report",
                          str(report), "--export", str(tmp_path / "meta")]) == 0
    result = json.loads(report.read_text())["budgets"]["60"]["linear"]
    assert result["tasks"] == 6 and result["sources"] == 3
    assert result["generalist"] == pytest.approx(result["oracle"])  # "large" wins everywhere
    assert "| 60 | linear | 6 | 3 | 3 |" in report.with_suffix(".md").read_text()
    matrix = json.loads(report.read_text())["matrix"]["60"]
    assert matrix["tasks"] == names and len(matrix["alc"][0]) == len(CONFIGS)
    assert matrix["alc"][1][2] == pytest.approx(0.5 + 0.1 * 2 + 0.01 * 1)
    assert "| a__n10 | 0.510 | 0.610 | **0.710** |" in report.with_suffix(".md").read_text()
    shipped = ZeroShotSelector.load(tmp_path / "meta" / ZEROSHOT_FILE).models
    assert [model.budget for model in shipped] == [60]
    # "large" wins everywhere: no kind beats the single best config, so auto ships it
    assert json.loads(report.read_text())["exported"] == {"60": "single"}
    assert shipped[0].kind == "single"


def test_the_command_says_why_it_could_judge_nothing(tmp_path):
    """A matrix run on the wall clock, asked for in simulated time: an error that names what
    the store holds and how to fill it, and no report written."""
    portfolio, store_path = tmp_path / "portfolio.json", tmp_path / "store.sqlite"
    save_portfolio(CONFIGS, portfolio, {})
    with ResultStore(store_path) as store:
        for name in ("a", "b", "c"):
            for config in CONFIGS.values():
                store.put(config, Evaluation(name, 60.0, 0, 0.5, 0.9, 0.8, time_mode="wall"))
    report = tmp_path / "lodo.json"
    with pytest.raises(SystemExit, match="holds 9 in wall time.*--time simulated"):
        zeroshot.main(["--store", str(store_path), "--portfolio", str(portfolio), "--budgets",
                       "60", "--report", str(report)])
    assert not report.exists()


@pytest.mark.parametrize("budget", [60, 1200])
def test_the_runtime_serves_every_budget_with_the_zero_shot_selector(tmp_path, budget,
                                                                     small_image_dataset):
    from autodl_meta.learner import Learner, Selection
    from ingestion_local import AutoDLDataset

    selector_file(tmp_path)
    train = AutoDLDataset(small_image_dataset / "smalldigits.data" / "train")
    learner = Learner(train.get_metadata(), metadata_dir=tmp_path)
    assert learner.selection is Selection.ZERO_SHOT and learner.fingerprinter is None
    learner.train(train.get_dataset(), remaining_time_budget=budget)
    assert learner.selected == "small"  # 28-px digits: the small-image config
    assert learner.config == CONFIGS["small"]
    assert learner.record.selection["trained_at"] == (30 if budget == 60 else 180)
    assert learner.record.selection["seconds"] >= 0


def test_meta_learning_off_keeps_the_generalist(tmp_path, small_image_dataset, monkeypatch):
    from autodl_meta.learner import Learner, Selection
    from ingestion_local import AutoDLDataset

    monkeypatch.setenv("AUTODL_META_LEARNING", "0")
    selector_file(tmp_path)
    train = AutoDLDataset(small_image_dataset / "smalldigits.data" / "train")
    learner = Learner(train.get_metadata(), metadata_dir=tmp_path)
    learner.train(train.get_dataset(), remaining_time_budget=60)
    assert learner.selection is Selection.OFF and learner.selected is None
    assert learner.config == GENERALIST


def test_the_matrix_counts_a_task_where_every_config_ran_every_seed_at_their_mean(tmp_path):
    with ResultStore(tmp_path / "store.sqlite") as store:
        for name in ("a", "b"):
            for i, config in enumerate(CONFIGS.values()):
                for seed in (0, 1):
                    if name == "b" and seed == 1 and i == 0:
                        continue  # b lacks one run of seed 1
                    store.put(config, Evaluation(name, 60.0, seed, 0.5 + 0.1 * i + 0.1 * seed,
                                                 0.9, 0.8, time_mode="simulated"))
        one_seed = zeroshot.complete_matrix(store, CONFIGS, ["a", "b"], 60.0, "simulated")
        both = zeroshot.complete_matrix(store, CONFIGS, ["a", "b"], 60.0, "simulated", (0, 1))
    assert one_seed[0] == ["a", "b"] and np.allclose(one_seed[1][0], [0.5, 0.6, 0.7])
    assert both[0] == ["a"] and np.allclose(both[1], [[0.55, 0.65, 0.75]])
