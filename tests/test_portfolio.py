"""The portfolio: greedy incumbents on the cross-evaluation, then diversified configs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autodl_meta.config import ConfigError, TrainConfig
from offline import crosseval
from offline.evaluate import Evaluation
from offline.portfolio import (DIVERSIFIED, build_portfolio, greedy_members, load_portfolio,
                               save_portfolio)
from offline.store import REPO_ROOT, Incumbent, ResultStore, provenance_path


def test_greedy_members_add_what_the_chosen_ones_lack():
    matrix = np.array([[0.9, 0.9, 0.1],    # strong on two datasets
                       [0.8, 0.8, 0.2],    # like the first, a little worse: adds nothing
                       [0.1, 0.1, 0.9],    # the only one good on the third
                       [np.nan, 0.5, 0.5]])
    assert greedy_members(["a", "b", "c", "d"], matrix, 2) == ["a", "c"]
    assert greedy_members(["a", "b", "c", "d"], matrix, 9)[:2] == ["a", "c"]


def test_build_portfolio_takes_incumbents_then_the_diversified_configs(tmp_path):
    configs = {name: TrainConfig(learning_rate=0.001 * (i + 1))
               for i, name in enumerate(["x", "y", "z"])}
    with ResultStore(tmp_path / "store.sqlite") as store:
        for i, (name, config) in enumerate(configs.items()):
            store.set_incumbent(Incumbent(name, config.backbone, config, 0.8, 30.0, 5))
            for target in configs:
                value = 0.9 if target == name else 0.3 + 0.1 * i
                store.put(config, Evaluation(target, 30.0, 0, value, value, value))
        portfolio = build_portfolio(store, 30.0, incumbents=2)
        with pytest.raises(ConfigError, match="no cross-evaluation at 60 s"):
            build_portfolio(store, 60.0, incumbents=2)
    # z is second best everywhere else (mean 0.633); x and y then tie, and x is listed first.
    assert list(portfolio)[:2] == ["incumbent-z", "incumbent-x"]
    assert list(portfolio)[2:] == list(DIVERSIFIED)
    assert len({json.dumps(config.to_dict(), sort_keys=True)
                for config in portfolio.values()}) == len(portfolio)


def test_a_portfolio_file_is_validated_when_loaded(tmp_path):
    path = tmp_path / "portfolio.json"
    save_portfolio(DIVERSIFIED, path, {"budget": 30.0})
    assert load_portfolio(path) == DIVERSIFIED
    values = json.loads(path.read_text())
    values["configs"]["lite1-64px"]["resolution"] = 33
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match=r"portfolio.json: configs.lite1-64px: field "
                                          r"'resolution'"):
        load_portfolio(path)
    path.write_text("{}")
    with pytest.raises(ConfigError, match="field 'configs'"):
        load_portfolio(path)


def test_crosseval_reports_a_portfolio_file_from_the_store(tmp_path):
    path, store_path, out = (tmp_path / name for name in ("p.json", "s.sqlite", "m.md"))
    save_portfolio(DIVERSIFIED, path, {})
    with ResultStore(store_path) as store:  # every run stored: the matrix costs no evaluation
        for i, config in enumerate(DIVERSIFIED.values()):
            store.put(config, Evaluation("a", 30.0, 0, 0.5 + 0.01 * i, 0.9, 0.8))
    assert crosseval.main(["--portfolio", str(path), "--datasets", "a", "--store",
                           str(store_path), "--budget", "30", "--workers", "1",
                           "--out", str(out)]) == 0
    table = out.read_text()
    for i, name in enumerate(DIVERSIFIED):
        assert f"| {name} | {0.5 + 0.01 * i:.3f} |" in table


def test_crosseval_of_a_portfolio_asks_for_the_tasks(tmp_path, capsys):
    path = tmp_path / "p.json"
    save_portfolio(DIVERSIFIED, path, {})
    with pytest.raises(SystemExit):
        crosseval.main(["--portfolio", str(path), "--store", str(tmp_path / "s.sqlite")])
    assert "--portfolio runs on the tasks that --datasets names" in capsys.readouterr().err


def test_provenance_records_paths_inside_the_repository_relative_to_it(tmp_path):
    assert provenance_path(REPO_ROOT / "results" / "offline.sqlite") == "results/offline.sqlite"
    assert provenance_path(tmp_path / "store.sqlite") == str(tmp_path / "store.sqlite")
