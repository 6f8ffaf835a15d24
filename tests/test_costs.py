"""The cost table: validation on load, interpolation between measured shapes, and a real (tiny)
`python -m offline profile` run that resumes instead of measuring again."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from offline.costs import CostEntry, CostTable, CostTableError

RESOLUTIONS = (32, 64, 96, 128)
BATCH_SIZES = (16, 32, 64, 128)


def _seconds(resolution: int, batch_size: int) -> float:
    """A plausible, not quite affine cost: overhead per step and per image, work per pixel."""
    return 0.02 + 0.001 * batch_size + 2e-7 * resolution ** 2 * batch_size * (1 + resolution / 512)


def _table() -> CostTable:
    entries = [CostEntry(backbone, r, b, _seconds(r, b) * scale, 1e-5 * r ** 2 * scale + 1e-3)
               for backbone, scale in (("efficientnet-lite0", 1.0), ("efficientnet-lite2", 2.5))
               for r in RESOLUTIONS for b in BATCH_SIZES]
    return CostTable("cpu: test, 2 threads", "2024-05-01", entries)


def test_round_trip(tmp_path):
    table = _table()
    assert CostTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table
    path = tmp_path / "metadata" / "cost_table.json"
    table.save(path)
    assert CostTable.load(path) == table
    assert [p.name for p in path.parent.iterdir()] == ["cost_table.json"]  # no temporary left


def _write(tmp_path: Path, change) -> Path:
    values = _table().to_dict()
    change(values)
    path = tmp_path / "cost_table.json"
    path.write_text(json.dumps(values))
    return path


@pytest.mark.parametrize("change, field", [
    (lambda v: v["entries"][3].update(train_step_seconds=-0.5),
     "entries[3].train_step_seconds must be a positive number"),
    (lambda v: v["entries"][3].update(predict_seconds_per_example=0),
     "entries[3].predict_seconds_per_example must be a positive number"),
    (lambda v: v["entries"][1].update(train_step_seconds="0.5"),
     "entries[1].train_step_seconds must be a positive number"),
    (lambda v: v["entries"][2].update(resolution=64.0),
     "entries[2].resolution must be a positive integer"),
    (lambda v: v["entries"][0].pop("batch_size"), "entries[0].batch_size is missing"),
    (lambda v: v["entries"][0].update(colour="red"), "entries[0].colour is not a known field"),
    (lambda v: v["entries"].append(dict(v["entries"][5])), "entries[32] repeats"),
    (lambda v: v["entries"][4].update(frozen_fraction=1.5),
     "entries[4].frozen_fraction must be a number from 0 to 1"),
    (lambda v: v.pop("device"), "device is missing"),
    (lambda v: v.update(created="last May"), "created must be an ISO date"),
    (lambda v: v.update(entries={}), "entries must be a list"),
])
def test_load_names_file_and_field(tmp_path, change, field):
    path = _write(tmp_path, change)
    with pytest.raises(CostTableError, match=f"^{re.escape(str(path))}: ") as err:
        CostTable.load(path)
    assert field in str(err.value)


def test_load_rejects_bad_json(tmp_path):
    path = tmp_path / "cost_table.json"
    path.write_text('{"device": "cpu", ')
    with pytest.raises(CostTableError, match=f"^{re.escape(str(path))}: not valid JSON"):
        CostTable.load(path)


def test_exact_at_measured_shapes():
    table = _table()
    for entry in table.entries:
        assert table.train_step_seconds(entry.backbone, entry.resolution, entry.batch_size) \
            == entry.train_step_seconds
        assert table.predict_seconds(entry.backbone, entry.resolution, 10) \
            == pytest.approx(10 * entry.predict_seconds_per_example)


def test_interpolation_is_positive_and_monotone():
    table = _table()
    resolutions = range(16, 257, 16)  # below, between and beyond the measured 32..128
    for batch_size in (8, 16, 24, 32, 48, 128, 256):
        costs = [table.train_step_seconds("efficientnet-lite0", r, batch_size)
                 for r in resolutions]
        assert all(c > 0 for c in costs)
        assert costs == sorted(costs), batch_size
    for resolution in (16, 48, 80, 128, 224):
        costs = [table.train_step_seconds("efficientnet-lite0", resolution, b)
                 for b in (1, 8, 16, 24, 32, 100, 128, 200)]
        assert all(c > 0 for c in costs)
        assert costs == sorted(costs), resolution
    predict = [table.predict_seconds("efficientnet-lite2", r, 1) for r in resolutions]
    assert all(c > 0 for c in predict) and predict == sorted(predict)
    assert table.predict_seconds("efficientnet-lite2", 64, 0) == 0


def test_interpolation_stays_close_between_measured_shapes():
    table = _table()
    for resolution, batch_size in ((48, 16), (80, 32), (112, 64), (64, 48), (96, 100)):
        assert table.train_step_seconds("efficientnet-lite0", resolution, batch_size) \
            == pytest.approx(_seconds(resolution, batch_size), rel=0.05)


def test_noisy_costs_never_make_a_larger_shape_cheaper():
    table = _table()
    slow = table.find("efficientnet-lite0", 64, 32)
    table.put(CostEntry(slow.backbone, 64, 32, 10 * slow.train_step_seconds,
                        slow.predict_seconds_per_example))
    costs = [table.train_step_seconds("efficientnet-lite0", r, 32) for r in range(32, 161, 16)]
    assert costs == sorted(costs)


def test_a_table_without_frozen_fractions_loads_as_training_everything():
    values = _table().to_dict()
    for entry in values["entries"]:
        del entry["frozen_fraction"]
    table = CostTable.from_dict(values)
    assert table == _table()
    with pytest.raises(KeyError, match="outside the fractions the cost table measured.*"
                                       "--frozen-fractions"):
        table.train_step_seconds("efficientnet-lite0", 64, 32, frozen_fraction=0.5)


def test_frozen_fractions_in_between_are_priced_linearly():
    table = _table()
    for entry in list(table.entries):  # a fully frozen backbone at 40 % of the full step
        table.put(CostEntry(entry.backbone, entry.resolution, entry.batch_size,
                            0.4 * entry.train_step_seconds, entry.predict_seconds_per_example,
                            frozen_fraction=1.0))
    full = table.train_step_seconds("efficientnet-lite0", 80, 32)
    assert table.train_step_seconds("efficientnet-lite0", 80, 32, 1.0) == pytest.approx(0.4 * full)
    assert table.train_step_seconds("efficientnet-lite0", 80, 32, 0.25) == \
        pytest.approx(0.85 * full)
    # Timing noise never makes freezing more cost more.
    noisy = table.find("efficientnet-lite0", 64, 32, 1.0)
    table.put(CostEntry(noisy.backbone, 64, 32, 2 * full, noisy.predict_seconds_per_example,
                        frozen_fraction=1.0))
    assert table.train_step_seconds("efficientnet-lite0", 64, 32, 1.0) == \
        table.train_step_seconds("efficientnet-lite0", 64, 32)
    # Prediction is the same whatever training froze.
    assert table.predict_seconds("efficientnet-lite0", 64, 10) == \
        pytest.approx(_table().predict_seconds("efficientnet-lite0", 64, 10))


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(KeyError, match="efficientnet-lite0, efficientnet-lite2"):
        _table().train_step_seconds("resnet18", 64, 32)


def test_profile_writes_a_table_and_resumes(tmp_path, caplog):
    from offline import profile

    caplog.set_level(logging.INFO, logger=profile.__name__)
    out = tmp_path / "cost_table.json"
    argv = ["--device", "cpu", "--backbones", "efficientnet-lite0", "--resolutions", "32",
            "--batch-sizes", "16", "--frozen-fractions", "0", "1", "--repeats", "1",
            "--out", str(out)]
    assert profile.main(argv) == 0
    table = CostTable.load(out)
    assert table.device.startswith("cpu: ")
    assert [e.key for e in table.entries] == [("efficientnet-lite0", 32, 16, 0.0),
                                              ("efficientnet-lite0", 32, 16, 1.0)]
    trained, frozen = (table.train_step_seconds("efficientnet-lite0", 32, 16, f)
                       for f in (0.0, 1.0))
    assert trained > 0 and frozen > 0
    assert table.train_step_seconds("efficientnet-lite0", 32, 16, 0.5) == \
        pytest.approx((trained + frozen) / 2)
    assert table.predict_seconds("efficientnet-lite0", 32, 100) > 0

    written = out.stat().st_mtime_ns
    caplog.clear()
    assert profile.main(argv) == 0
    assert "0 entries to measure, 2 kept" in caplog.text
    assert out.stat().st_mtime_ns == written

    # A table of another device is never extended nor silently replaced.
    out.write_text(json.dumps({**table.to_dict(), "device": "cuda: elsewhere"}))
    assert profile.main(argv) == 1
    assert "measured on 'cuda: elsewhere'" in caplog.text


def test_the_shipped_table_is_valid_and_lite0_is_the_cheapest_backbone():
    """Over all its shapes: single entries are noisy (Lite1 and Lite2 cost about the same at
    these sizes, and either can come out ahead at one shape)."""
    table = CostTable.load(Path(__file__).resolve().parents[1] / "results" / "cost_table.json")
    assert all(e.train_step_seconds > 0 and e.predict_seconds_per_example > 0
               for e in table.entries)
    total = {backbone: sum(e.train_step_seconds for e in table.entries if e.backbone == backbone)
             for backbone in ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")}
    assert total["efficientnet-lite0"] < min(total["efficientnet-lite1"],
                                             total["efficientnet-lite2"])


def test_a_config_the_table_cannot_price_is_named_before_any_run(tmp_path, capsys):
    from autodl_meta.config import TrainConfig
    from offline import crosseval
    from offline.costs import check_prices
    from offline.portfolio import save_portfolio

    configs = {"trained": TrainConfig(), "frozen": TrainConfig(frozen_fraction=1.0),
               "resnet": TrainConfig(backbone="resnet18")}
    with pytest.raises(CostTableError, match="cannot price: frozen: .*outside the fractions.*; "
                                             "resnet: .*'resnet18' is not in the cost table"):
        check_prices(_table(), configs, "table.json")
    table, portfolio = tmp_path / "table.json", tmp_path / "portfolio.json"
    _table().save(table)
    save_portfolio(configs, portfolio, {})
    with pytest.raises(SystemExit):
        crosseval.main(["--portfolio", str(portfolio), "--datasets", "cifar10", "--store",
                        str(tmp_path / "store.sqlite"), "--time", "simulated",
                        "--cost-table", str(table)])
    assert "cannot price: frozen" in capsys.readouterr().err


def test_the_shipped_table_prices_every_portfolio_config():
    from offline.costs import check_prices
    from offline.portfolio import DEFAULT_PORTFOLIO, load_portfolio

    shipped = Path(__file__).resolve().parents[1] / "results" / "cost_table.json"
    check_prices(CostTable.load(shipped), load_portfolio(DEFAULT_PORTFOLIO), str(shipped))
