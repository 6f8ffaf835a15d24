"""Ingestion and scoring end to end, with the baselines and the platform's bad submissions."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ingestion_local.baselines import code_dir
from ingestion_local.run_local_test import run_local_test

pytestmark = pytest.mark.slow


def run(dataset: Path, code: Path, budget: float, tmp_path: Path, *extra: str):
    began = time.time()
    result = run_local_test(dataset, code, budget, tmp_path / "run", extra_ingestion_args=extra,
                            start_wait=120)
    return result, time.time() - began


def predictions(result) -> list[Path]:
    return sorted(result.prediction_dir.glob(f"{result.task}.predict_*"))


def test_all_zero_baseline_scores_zero(small_image_dataset, tmp_path):
    result, _ = run(small_image_dataset, code_dir("all_zero"), 30, tmp_path)
    assert result.ingestion_success
    assert result.alc == 0.0
    scores = result.read("scores.txt")
    assert set(scores) >= {"score", "Duration", "timestamps", "nauc_scores", "accuracy"}
    assert result.learning_curve.is_file() and result.detailed_results.is_file()
    html = result.detailed_results.read_text()
    assert "data:image/png;charset=utf-8;base64," in html and "refresh" not in html


def test_linear_baseline_learns_and_rescoring_after_the_fact_agrees(small_image_dataset,
                                                                   tmp_path):
    result, _ = run(small_image_dataset, code_dir("linear"), 60, tmp_path)
    assert result.ingestion_success
    assert result.alc > 0.5, f"the linear baseline should separate digits, ALC {result.alc}"
    files = predictions(result)
    assert len(files) == 8
    start_lines = (result.prediction_dir / "start.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in start_lines[4:]] == [str(i) for i in range(8)]
    assert np.loadtxt(files[0]).shape == (100, 10)
    for copied in ("start.txt", "end.txt", files[-1].name):
        assert (result.score_dir / copied).is_file(), f"{copied} not copied to the score dir"

    rescored = tmp_path / "rescored"
    completed = subprocess.run(
        [sys.executable, "-m", "scoring_local", f"--solution_dir={small_image_dataset}",
         f"--prediction_dir={result.prediction_dir}", f"--score_dir={rescored}"],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    again = dict(line.split(": ", 1) for line in (rescored / "scores.txt").read_text().splitlines())
    assert float(again["score"]) == pytest.approx(result.alc, abs=1e-9)


@pytest.mark.parametrize("baseline,expected_predictions", [
    ("bad_prediction_shape", 0), ("exception_in_model", 1), ("no_train_or_test", 0)])
def test_bad_submissions_fail_ingestion_and_are_scored(small_image_dataset, tmp_path, baseline,
                                                       expected_predictions):
    result, _ = run(small_image_dataset, code_dir(baseline), 30, tmp_path)
    assert not result.ingestion_success
    assert result.read("end.txt")["ingestion_success"] == "0"
    assert len(predictions(result)) == expected_predictions
    assert result.alc is not None, "a score must be written all the same"


def test_model_exceeding_the_budget_is_stopped(small_image_dataset, tmp_path):
    budget = 12
    result, elapsed = run(small_image_dataset, code_dir("exceeds_time_limit"), budget, tmp_path)
    assert not result.ingestion_success
    assert len(predictions(result)) == 1
    end = result.read("end.txt")
    assert budget - 0.5 <= float(end["ingestion_duration"]) <= budget + 3
    timestamps = ast.literal_eval(result.read("scores.txt")["timestamps"])
    assert all(t <= budget for t in timestamps)
    assert elapsed < budget + 60


def write_model(folder: Path, source: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(textwrap.dedent(source))
    return folder


SLOW_INIT_MODEL = """
    import time
    import numpy as np

    class Model:
        def __init__(self, metadata):
            time.sleep({sleep})
            self.output_dim = metadata.get_output_size()
            self.done_training = False

        def train(self, dataset, remaining_time_budget=None):
            self.done_training = True

        def test(self, dataset, remaining_time_budget=None):
            return np.zeros((sum(1 for _ in dataset), self.output_dim))
"""


def test_constructor_is_outside_the_budget_or_inside_it_on_request(small_image_dataset,
                                                                    tmp_path):
    model = write_model(tmp_path / "slow", SLOW_INIT_MODEL.format(sleep=3))
    outside, _ = run(small_image_dataset, model, 30, tmp_path / "outside")
    inside, _ = run(small_image_dataset, model, 30, tmp_path / "inside", "--charge-init-to-budget")
    first_outside = ast.literal_eval(outside.read("scores.txt")["timestamps"])[0]
    first_inside = ast.literal_eval(inside.read("scores.txt")["timestamps"])[0]
    assert outside.ingestion_success and inside.ingestion_success
    assert first_outside < 2.5 <= 3 <= first_inside


def test_constructor_time_limit(small_image_dataset, tmp_path):
    model = write_model(tmp_path / "stuck", SLOW_INIT_MODEL.format(sleep=60))
    result, elapsed = run(small_image_dataset, model, 30, tmp_path, "--init-time-limit=2")
    assert not result.ingestion_success
    assert elapsed < 40


def test_ingestion_reports_a_missing_dataset_and_the_runner_does_not_hang(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.solution").write_text("1 0\n")
    result, elapsed = run(tmp_path / "empty", code_dir("all_zero"), 30, tmp_path)
    assert result.ingestion_returncode == 2
    assert elapsed < 60
