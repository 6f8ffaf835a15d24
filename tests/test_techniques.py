"""Low-data techniques: the losses, the class-balanced batches, the transductive GCN, their
place in the trainer and the config, and the `offline techniques` command's table."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autodl_meta import techniques
from autodl_meta.config import EMBEDDING_LOSSES, ConfigError, TrainConfig
from autodl_meta import trainer as trainer_module
from autodl_meta.trainer import Trainer
from offline.evaluate import Evaluation, evaluate
from offline.store import ResultStore, config_key
from offline.techniques import (BASELINE, TECHNIQUES, TechniqueRun, decode_subsets,
                                markdown_tables, run_technique, technique_configs)


def clustered(count: int, classes: int, spread: float, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised points around `classes` random directions, and their labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, 16, generator=generator), dim=1)
    labels = torch.arange(count) % classes
    points = centres[labels] + spread * torch.randn(count, 16, generator=generator)
    return F.normalize(points, dim=1), labels


def test_cosine_loss_and_scores():
    targets = torch.eye(3)
    assert techniques.cosine_loss(5 * targets, targets).item() == pytest.approx(0.0, abs=1e-6)
    assert techniques.cosine_loss(torch.roll(targets, 1, 0), targets).item() == \
        pytest.approx(1.0)
    scores = techniques.cosine_scores(torch.randn(8, 3))
    assert scores.min() >= 0 and scores.max() <= 1


@pytest.mark.parametrize("kind", ["supcon", "contrastive", "triplet"])
def test_embedding_losses_prefer_embeddings_grouped_by_class(kind):
    loss = techniques.EMBEDDING_LOSSES[kind]
    embeddings, labels = clustered(32, 4, spread=0.05)
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    assert loss(embeddings, labels) < loss(embeddings, shuffled)
    assert set(techniques.EMBEDDING_LOSSES) == set(EMBEDDING_LOSSES) - {"none"}


def test_embedding_losses_without_positives_are_zero_not_nan():
    embeddings, _ = clustered(4, 4, spread=0.1)
    for kind in ("supcon", "triplet"):
        value = techniques.EMBEDDING_LOSSES[kind](embeddings, torch.arange(4))
        assert value.item() == 0.0


def test_class_balanced_batches_give_every_anchor_positives():
    labels = F.one_hot(torch.arange(60) % 10, 10).float()
    groups = techniques.group_by_class(labels)
    batch = techniques.class_balanced_batch(groups, 32, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels[batch].argmax(1), minlength=10)
    assert len(batch) == 32 and set(counts[counts > 0].tolist()) == \
        {techniques.EXAMPLES_PER_CLASS}
    few = techniques.group_by_class(F.one_hot(torch.arange(40) % 4, 4).float())
    batch = techniques.class_balanced_batch(few, 32, torch.Generator().manual_seed(0))
    assert len(batch) == 32  # four classes: eight examples each


def test_similarity_graph_links_closer_than_mean_with_normalised_weights():
    points, _ = clustered(20, 2, spread=0.3)
    graph = techniques.similarity_graph(points)
    assert torch.allclose(graph.sum(1), torch.ones(20))
    distances = torch.cdist(points, points)
    off_diagonal = ~torch.eye(20, dtype=torch.bool)
    far = distances >= distances[off_diagonal].mean()
    assert (graph[far & off_diagonal] == 0).all()
    assert (torch.diagonal(graph) >= techniques.GCN_SELF_WEIGHT).all()


def test_gcn_labels_test_nodes_from_the_train_nodes():
    points, labels = clustered(300, 3, spread=0.3)
    one_hot = F.one_hot(labels, 3).float()
    scores = techniques.gcn_scores(points[:100], one_hot[:100], points[100:], multilabel=False)
    assert scores.shape == (200, 3)
    assert (scores.argmax(1) == labels[100:].numpy()).mean() > 0.9
    multilabel = techniques.gcn_scores(points[:100], one_hot[:100], points[100:], True)
    assert multilabel.min() >= 0 and multilabel.max() <= 1


def test_graph_refinement_embeds_its_nodes_once_per_network_state():
    points, labels = clustered(300, 3, spread=0.3)
    one_hot = F.one_hot(labels, 3).float()
    embedded = []

    def embed(images):
        embedded.append(len(images))
        return images

    refinement = techniques.GraphRefinement(embed, multilabel=False)
    with pytest.raises(ValueError, match="no labelled nodes"):
        refinement(np.zeros((200, 3)), points[100:])
    refinement.use_nodes(points, one_hot, torch.arange(100))  # the first 100 are labelled
    flat = np.full((200, 3), 1 / 3)
    refined = refinement(flat, points[100:])
    assert (refined.argmax(1) == labels[100:].numpy()).mean() > 0.9
    refinement(flat, points[100:])
    assert embedded == [100] and refinement.last_seconds > 0
    refinement.network_moved()
    refinement(flat, points[100:])
    assert embedded == [100, 100]
    assert len(techniques.graph_nodes(torch.arange(2000), 0)) == techniques.GNN_TRAIN_NODES


def test_config_rejects_embedding_loss_with_mixed_targets():
    with pytest.raises(ConfigError, match="'augmentation' must be 'none' with embedding_loss"):
        TrainConfig(embedding_loss="supcon", augmentation="mixup")
    with pytest.raises(ConfigError, match="'loss'"):
        TrainConfig(loss="hinge")
    assert TrainConfig(embedding_loss="triplet").mlp_head
    assert not TrainConfig(embedding_loss="supcon").mlp_head


@pytest.mark.parametrize("fields", [{"loss": "cosine"}, {"embedding_loss": "supcon"},
                                    {"embedding_loss": "contrastive"},
                                    {"embedding_loss": "triplet", "loss": "cosine"}])
def test_trainer_trains_and_predicts_with_each_technique(fields):
    config = TrainConfig(resolution=32, batch_size=16, **fields)
    trainer = Trainer(config, num_classes=4, in_channels=1, multilabel=False,
                      device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 1, 1, 32, 32), dtype=torch.uint8, generator=generator)
    labels = F.one_hot(torch.arange(24) % 4, 4).float()
    before = [p.detach().clone() for p in trainer.model.extractor.parameters()]
    assert trainer.train_for(images, labels, seconds=0.1) >= 1
    moved = any(not torch.equal(a, b) for a, b in
                zip(before, trainer.model.extractor.parameters()))
    assert moved and trainer.embedding_active == (config.embedding_loss != "none")
    scores, features = trainer.predict_with_features(images)
    assert scores.shape == (24, 4) and np.isfinite(scores).all()
    assert features.shape == (24, trainer.model.extractor.num_features)
    assert np.allclose(trainer.predict(images), scores, atol=1e-5)


def test_the_pace_note_compares_the_steps_that_fit_with_what_an_embedding_needs():
    trainer = Trainer(TrainConfig(resolution=32, batch_size=16, embedding_loss="supcon"),
                      num_classes=4, in_channels=1, multilabel=False, device=torch.device("cpu"))
    trainer.steps_by_batch_size[16], trainer.step_seconds = 10, 0.5
    note = trainer.embedding_pace_note(remaining_seconds=25)  # 10 + 50 steps < 300
    assert note.startswith("embedding_loss supcon: about 60 training steps fit")
    trainer.step_seconds = 0.05  # 10 + 500 steps
    assert trainer.embedding_pace_note(remaining_seconds=25) is None


def test_a_run_says_when_the_budget_is_too_short_for_an_embedding(small_image_dataset,
                                                                  monkeypatch):
    # How many steps fit in 25 s depends on the machine: an embedding that needs more steps than
    # any machine takes in 25 s makes the budget too short everywhere.
    monkeypatch.setattr(trainer_module, "EMBEDDING_MIN_STEPS", 10**9)
    config = TrainConfig(resolution=32, batch_size=16, embedding_loss="supcon",
                         transductive_gnn=True)
    # 25 s: the first two stages take up to ~8 s on a loaded machine; fine-tuning must start.
    result = evaluate(config, small_image_dataset, budget=25, seed=0, threads=1)
    assert result.error is None and 0.3 < result.alc < 1.0
    assert any(note.startswith("embedding_loss supcon: about") for note in result.notes)


def test_store_rekeys_rows_written_before_the_config_gained_fields(tmp_path):
    path = tmp_path / "store.sqlite"
    config = TrainConfig(resolution=32)
    old = {k: v for k, v in config.to_dict().items()
           if k not in ("loss", "embedding_loss", "transductive_gnn")}
    evaluation = Evaluation("d", 10.0, 0, 0.5, 0.6, 0.7)
    ResultStore(path).close()
    with sqlite3.connect(path) as connection:
        key = json.dumps(old, sort_keys=True)
        connection.execute("INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           ("d", key, 10.0, 0, "wall", key, 0.5,
                            json.dumps(evaluation.to_dict()), "2026-01-01"))
    assert key != config_key(config)
    with ResultStore(path) as store:
        found = store.get("d", config, 10.0, 0)
    assert found is not None and found.alc == 0.5 and found.notes == []


def test_technique_study_runs_on_a_cached_subset_and_resumes(small_image_dataset, tmp_path,
                                                             monkeypatch):
    # The pace warning must show whatever this machine's speed: no 20-s run reaches 10**6 steps.
    monkeypatch.setattr(trainer_module, "EMBEDDING_MIN_STEPS", 10**6)
    cache = decode_subsets(small_image_dataset, 32, max_train=120, max_test=60,
                           cache_dir=tmp_path)
    assert decode_subsets(small_image_dataset, 32, 120, 60, tmp_path) == cache  # reused
    subsets = torch.load(cache, weights_only=True)
    assert subsets["train"][0].shape == (120, 1, 1, 32, 32) and subsets["test"][1].shape == \
        (60, 10)
    config = TrainConfig(resolution=32, batch_size=16, embedding_loss="supcon",
                         transductive_gnn=True).to_dict()
    run = TechniqueRun(**run_technique(config, str(cache), "smalldigits", "mix", budget=20,
                                       seed=0, threads=1))
    assert run.timestamps == sorted(run.timestamps) and run.timestamps[-1] <= 20 + 5
    assert len(run.scores) >= 3 and 0.0 < run.alc < 1.0 and run.steps > 0
    assert 0.0 <= run.final_accuracy <= 1.0
    assert run.notes and run.notes[0].startswith("embedding_loss supcon: about")


def test_technique_table_reports_every_run_against_the_baseline():
    configs = technique_configs(list(TECHNIQUES))
    assert configs[BASELINE] == TrainConfig(flip_tta=False)  # plain test passes
    assert configs["siamese_triplet"].embedding_loss == "triplet"
    with pytest.raises(KeyError, match="unknown technique"):
        technique_configs(["dropout_magic"])

    def run(name: str, seed: int, alc: float, accuracy: float, notes=()) -> TechniqueRun:
        return TechniqueRun("d", 60, seed, alc, 0.8, accuracy, technique=name, steps=100,
                            notes=list(notes))

    runs = {("d", BASELINE): [run(BASELINE, s, 0.5 + 0.01 * s, 0.6) for s in (0, 1)],
            ("d", "supcon"): [run("supcon", s, 0.6, 0.65, ["embedding_loss supcon: about 90"])
                              for s in (0, 1)]}
    table = markdown_tables(runs, ["d"], [BASELINE, "supcon", "mixup"], 60)
    assert ("| supcon | 0.650 ± 0.000 | 0.800 ± 0.000 | 0.600 ± 0.000 | +0.095 | 100 | 2 | "
            "embedding_loss supcon: too few steps for the budget |") in table
    assert "| mixup | - | - | - | - | - | 0 | not run |" in table
    assert "| supcon | +5.0 | +0.095 | 1 |" in table
