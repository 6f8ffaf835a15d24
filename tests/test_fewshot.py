"""Few-shot module: task sampling, REPTILE, the conv net, MetaNAS's supernet and pruning, CLI."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from offline.fewshot import convnet, metanas
from offline.fewshot.reptile import (MetaSchedule, TaskLearner, count_parameters, meta_test,
                                     meta_train, reptile_update)
from offline.fewshot.tasks import Task, TaskSampler, cached_archive, split_classes
from tests.conftest import shared_path


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def omniglot(tmp_path_factory):
    path = shared_path("datasets", "omniglot.tar")
    return cached_archive(path, 28, tmp_path_factory.mktemp("cache"))


def synthetic(classes: int = 6, per_class: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (classes * per_class, 1, 8, 8), dtype=np.uint8)
    return images, np.repeat(np.arange(classes), per_class)


def test_omniglot_archive(omniglot):
    images, labels, names = omniglot
    assert images.shape == (4840, 1, 28, 28) and images.dtype == np.uint8
    assert len(names) == 242 and np.bincount(labels).tolist() == [20] * 242


def test_sampler_shapes_labels_and_seed():
    images, labels = synthetic()
    sampler = TaskSampler(images, labels, np.arange(6), seed=3)
    task = sampler.sample(n_way=4, k_shot=2, query_per_class=3)
    assert task.support_images.shape == (8, 1, 8, 8) and task.query_images.shape == (12, 1, 8, 8)
    assert task.support_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert 0 <= task.support_images.min() and task.support_images.max() <= 1
    again = TaskSampler(images, labels, np.arange(6), seed=3).sample(4, 2, 3)
    assert torch.equal(task.support_images, again.support_images)
    assert torch.equal(task.query_images, again.query_images)
    other = TaskSampler(images, labels, np.arange(6), seed=4).sample(4, 2, 3)
    assert not torch.equal(task.support_images, other.support_images)
    # Support and query of a class never share an image.
    for label in range(4):
        support = task.support_images[task.support_labels == label].flatten(1)
        query = task.query_images[task.query_labels == label].flatten(1)
        assert not (support[:, None] == query[None]).all(-1).any()


def test_rotations_quadruple_the_classes():
    images, labels = synthetic()
    assert len(TaskSampler(images, labels, np.arange(6), 0, rotations=True).classes) == 24


def test_class_split_is_disjoint_and_seeded():
    train, test = split_classes(242, 80)
    assert len(train) == 162 and len(test) == 80 and not set(train) & set(test)
    assert set(train) | set(test) == set(range(242))
    assert np.array_equal(test, split_classes(242, 80)[1])
    images, labels = synthetic(classes=10)
    train, test = split_classes(10, 4)
    label_of = {image.tobytes(): label for image, label in zip(images, labels)}
    sampler = TaskSampler(images, labels, test, seed=0)
    drawn = set()
    for _ in range(20):
        task = sampler.sample(3, 1, 2)
        for image in torch.cat([task.support_images, task.query_images]):
            drawn.add(label_of[(image * 255).round().byte().numpy().tobytes()])
    assert drawn <= set(test.tolist()) and not drawn & set(train.tolist())


def test_conv_net_parameter_targets():
    for target in (30_000, 100_000):
        channels = convnet.channels_for_budget(target, 1, 20, 28)
        count = count_parameters(convnet.conv_net(channels, 1, 20, 28))
        assert abs(count - target) / target < 0.05


def test_reptile_outer_update_is_epsilon_times_mean_delta():
    model = nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    tasks = [Task(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.randn(2, 3),
                  torch.tensor([0, 1])) for _ in range(2)]
    learner = TaskLearner(steps=3, batch_size=4, lr=0.1)
    adapted = [learner.adapt(copy.deepcopy(model), t.support_images, t.support_labels,
                             torch.Generator().manual_seed(0)) for t in tasks]
    reptile_update(model, learner, tasks, 0.5, torch.Generator().manual_seed(0))
    for index, parameter in enumerate(model.parameters()):
        # Full-batch steps make each adaptation independent of the generator's state.
        mean = sum(list(a.parameters())[index].detach() for a in adapted) / 2
        expected = before[index] + 0.5 * (mean - before[index])
        assert torch.allclose(parameter, expected, atol=1e-6)


def test_epsilon_is_annealed_linearly():
    schedule = MetaSchedule(iterations=10, meta_batch=1, meta_step=1.0, meta_step_final=0.0)
    assert schedule.epsilon(0) == 1.0 and schedule.epsilon(5) == 0.5


def test_reptile_beats_random_init_on_omniglot(omniglot):
    images, labels, names = omniglot
    train, test = split_classes(len(names), 80)
    torch.manual_seed(0)
    network = convnet.conv_net(16, 1, 20, 28)
    learner = TaskLearner(steps=5, batch_size=20, lr=3e-3)

    def accuracy(model: nn.Module) -> float:
        results = meta_test(model, learner, TaskSampler(images, labels, test, 1), 20, 20, 1, 5, 0)
        return float(np.mean([r["accuracy"] for r in results]))

    before = accuracy(network)
    meta_train(network, learner, TaskSampler(images, labels, train, 0, rotations=True),
               MetaSchedule(iterations=100, meta_batch=2), 20, 5, 0)
    after = accuracy(network)
    # 20-way 1-shot; fine-tuning a random init already beats chance (0.05) with transductive
    # BatchNorm, so REPTILE must beat that, not just chance.
    assert after > before + 0.05, (before, after)


def small_supernet() -> metanas.MetaNASNetwork:
    torch.manual_seed(0)
    return metanas.MetaNASNetwork(channels=8, in_channels=1, num_classes=5)


def test_supernet_forward_backward_reach_weights_and_architecture():
    network = small_supernet()
    logits = network(torch.rand(6, 1, 28, 28))
    assert logits.shape == (6, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in network.architecture_parameters())
    assert network.cells[0].edges["0->0"][4][1].weight.grad is not None
    assert len(network.architecture_parameters()) + len(network.weight_parameters()) == len(
        list(network.parameters()))


def test_input_pairs_are_all_2_combinations():
    assert metanas.input_combinations(0) == [(0, 1)]
    assert len(metanas.input_combinations(1)) == 3 and len(metanas.input_combinations(2)) == 6


def test_temperature_annealing_sharpens_the_mixture():
    learner = metanas.MetaNASTaskLearner(steps=5, batch_size=5, lr=1e-3, arch_lr=1e-2,
                                         temperature_start=1.0, temperature_end=0.1)
    assert [round(learner.temperature(s), 3) for s in range(5)] == [1.0, 0.775, 0.55, 0.325,
                                                                     0.1]
    network = small_supernet()
    with torch.no_grad():
        network.alpha["normal"].copy_(torch.arange(7.0).repeat(9, 1) * 0.1)
    network.temperature = 1.0
    soft = network.mixture_weights("normal")[0][0].max().item()
    network.temperature = 0.1
    sharp = network.mixture_weights("normal")[0][0].max().item()
    assert sharp > soft and sharp > 0.6


def test_pruning_keeps_exactly_the_weights_above_threshold():
    network = small_supernet()
    with torch.no_grad():
        for logits in network.alpha.values():
            logits.copy_(torch.randn_like(logits) * 3)
        for logits in network.beta.values():
            logits.copy_(torch.randn_like(logits) * 3)
    network.temperature = 0.5
    images = torch.rand(5, 1, 28, 28)
    before = {t: network.mixture_weights(t) for t in ("normal", "reduction")}
    network.prune(0.01)
    after = {t: network.mixture_weights(t) for t in ("normal", "reduction")}
    for cell_type in before:
        for old, new in zip(before[cell_type][0] + before[cell_type][1],
                            after[cell_type][0] + after[cell_type][1]):
            assert torch.equal(new, torch.where(old > 0.01, old, torch.zeros_like(old)))
    kept = network.architecture().kept()
    assert all(len(node["pairs"]) >= 1 for nodes in kept.values() for node in nodes)
    assert network.pruned_parameter_count() < count_parameters(network)
    assert network(images).shape == (5, 5)  # the pruned network runs as it is


def test_metanas_task_learner_adapts_architecture_and_anneals():
    network = small_supernet()
    learner = metanas.MetaNASTaskLearner(steps=3, batch_size=10, lr=1e-3, arch_lr=1e-2,
                                         temperature_start=1.0, temperature_end=0.2)
    alpha = network.alpha["normal"].detach().clone()
    learner.adapt(network, torch.rand(10, 1, 28, 28), torch.arange(10) % 5,
                  torch.Generator().manual_seed(0))
    assert network.temperature == pytest.approx(0.2)
    assert not torch.equal(alpha, network.alpha["normal"])


def test_metanas_width_matches_the_pruned_target():
    channels = metanas.channels_for_budget(30_000, 1, 20)
    expected = metanas.expected_pruned_parameters(channels, 1, 20)
    assert abs(expected - 30_000) / 30_000 < 0.15
    # Tasks measured to keep 3x the expectation: a narrower network has the target pruned size.
    narrow = metanas.channels_for_budget(30_000, 1, 20, kept_ratio=3.0)
    assert narrow < channels
    assert abs(3.0 * metanas.expected_pruned_parameters(narrow, 1, 20) - 30_000) / 30_000 < 0.2


def test_cli_help(capsys):
    from offline.fewshot.command import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--scale" in capsys.readouterr().out


def test_cli_tiny_run_writes_and_resumes(tmp_path, monkeypatch, omniglot):
    from offline.fewshot import command

    arguments = ["table", "--scale", "tiny", "--seeds", "0", "--methods", "reptile",
                 "--results", str(tmp_path / "results"), "--out", str(tmp_path / "fewshot.md")]
    assert command.main(arguments) == 0
    files = list((tmp_path / "results").glob("table-reptile-30k-*-seed0.json"))
    assert len(files) == 1
    result = json.loads(files[0].read_text())
    assert set(result["evaluations"]) == {"1shot", "5shot"}
    assert "| 30k | REPTILE conv net |" in (tmp_path / "fewshot.md").read_text()

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(command, "run_one", fail)
    assert command.main(arguments) == 0
