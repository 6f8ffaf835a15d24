"""`python -m offline bench`: a row per dataset and model, read from the harness's outputs."""
from __future__ import annotations

import pytest

from offline.bench import BenchRow, run_bench, summary_rows
from offline.tables import markdown_row


@pytest.mark.slow
def test_bench_reports_submission_and_baseline(small_image_dataset, tmp_path):
    rows = run_bench([small_image_dataset.name], small_image_dataset.parent, 20, tmp_path)
    assert [r.model for r in rows] == ["submission", "generalist", "linear"]
    submission, generalist, linear = rows
    assert submission.success and generalist.success and linear.success
    assert generalist.selected == "-"  # AUTODL_META_LEARNING=0 reached the submission
    assert submission.backbone == "efficientnet-lite0"
    assert submission.predictions >= 1 and submission.first_prediction < 20
    assert 0 < submission.alc <= 1 and 0 < submission.final_nauc <= 1
    assert markdown_row(submission.cells()).startswith("| smalldigits | submission | ")
    # A second call finds the finished runs and reuses them (an interrupted bench resumes):
    # a fresh run would not repeat the same timestamps.
    assert run_bench([small_image_dataset.name], small_image_dataset.parent, 20, tmp_path) == rows


def bench_row(dataset, model, alc):
    return BenchRow(dataset, model, alc, alc + 0.05, 1.0, 3, True, 100.0, "-", "-")


def test_the_summary_gives_each_model_its_mean_and_its_wins():
    rows = [bench_row("a", "submission", 0.8), bench_row("a", "generalist", 0.7),
            bench_row("b", "submission", 0.6), bench_row("b", "generalist", 0.6)]
    assert summary_rows(rows) == [["submission", "2", "0.7000", "0.7500", "2"],
                                  ["generalist", "2", "0.6500", "0.7000", "1"]]
