"""`python -m offline bench`: a row per dataset and model, read from the harness's outputs."""
from __future__ import annotations

import pytest

from offline.bench import run_bench
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
