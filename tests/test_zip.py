"""The submission zip: contents, size limit, and a run of the unzipped copy on its own."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from autodl_meta.metadata import METADATA_DIR, MetaData
from ingestion_local.run_local_test import run_local_test
from offline.package import ZipTooLargeError, build_zip, shipped_weight_files


@pytest.fixture(scope="module")
def submission_zip(tmp_path_factory):
    return build_zip(tmp_path_factory.mktemp("dist") / "submission.zip")


def test_zip_layout(submission_zip):
    names = set(zipfile.ZipFile(submission_zip).namelist())
    assert "model.py" in names
    assert {"autodl_meta/learner.py", "pretrained/MANIFEST", "pretrained/efficientnet-lite0.pth",
            "efficientnet_lite_pytorch/model.py", "efficientnet_lite_pytorch/LICENSE"} <= names
    # Exactly the weights of the fingerprint network and of the backbones a run can train (the
    # configs of metadata/ and the portfolio configs a zero-shot model picks; see below).
    assert {n for n in names if n.startswith("pretrained/") and n.endswith(".pth")} == {
        f"pretrained/{name}" for name in shipped_weight_files(METADATA_DIR)}
    assert not any("__pycache__" in n for n in names)
    assert submission_zip.stat().st_size < 300 * 2**20


def test_over_the_limit_fails_naming_the_largest_parts(tmp_path):
    with pytest.raises(ZipTooLargeError, match="efficientnet-lite0.pth"):
        build_zip(tmp_path / "small.zip", limit_mb=1)
    assert not list(tmp_path.iterdir()), "no zip is left behind"


@pytest.mark.slow
def test_unzipped_submission_runs_on_its_own(submission_zip, small_image_dataset, tmp_path):
    unzipped = tmp_path / "submission"
    zipfile.ZipFile(submission_zip).extractall(unzipped)
    where = subprocess.run(
        [sys.executable, "-c", "import model, autodl_meta, efficientnet_lite_pytorch as e;"
                               "print(autodl_meta.__file__); print(e.__file__)"],
        cwd=unzipped, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(line.startswith(str(unzipped)) for line in where.stdout.split())
    result = run_local_test(small_image_dataset, unzipped, 30, tmp_path / "run", start_wait=120)
    assert result.ingestion_success
    assert result.alc > 0.5


def test_the_zip_carries_the_weights_its_configs_name(tmp_path):
    from autodl_meta.config import TrainConfig
    from autodl_meta.metadata import CONFIGS_FILE

    meta = MetaData(generalist=TrainConfig(backbone="efficientnet-lite2"))
    (tmp_path / CONFIGS_FILE).write_text(json.dumps(meta.to_json()))
    assert shipped_weight_files(tmp_path) == {"efficientnet-lite2.pth", "efficientnet-lite0.pth"}
    assert shipped_weight_files(tmp_path / "missing") == {"efficientnet-lite0.pth"}


def test_the_zip_leaves_out_the_weights_of_portfolio_configs_no_model_picks(tmp_path):
    from dataclasses import replace

    from autodl_meta.config import GENERALIST
    from autodl_meta.zeroshot import ZEROSHOT_FILE, ZeroShotSelector
    from offline.zeroshot import fixed_model

    configs = {"default": GENERALIST,
               "lite2": replace(GENERALIST, backbone="efficientnet-lite2")}
    ZeroShotSelector(configs, [fixed_model(list(configs), 60.0)]).save(tmp_path / ZEROSHOT_FILE)
    assert shipped_weight_files(tmp_path) == {"efficientnet-lite0.pth"}


RUN_AND_LIST_MODULES = """
import json, os, sys
import model
from ingestion_local import AutoDLDataset
train, test = (AutoDLDataset(os.path.join(sys.argv[1], part)) for part in ("train", "test"))
submission = model.Model(train.get_metadata())
for call in range(3):  # first read and pixel model, head, fine-tuning
    submission.train(train.get_dataset(), 100 - 10 * call)
    submission.test(test.get_dataset(), 95 - 10 * call)
here = os.getcwd()
print(json.dumps(sorted(name for name, module in sys.modules.items()
                        if (getattr(module, "__file__", None) or "").startswith(here))))
"""


@pytest.mark.slow
def test_every_module_in_the_zip_is_imported_by_a_run(submission_zip, small_image_dataset,
                                                      tmp_path):
    unzipped = tmp_path / "submission"
    zipfile.ZipFile(submission_zip).extractall(unzipped)
    shipped = {name[:-3].replace("/", ".").removesuffix(".__init__")
               for name in zipfile.ZipFile(submission_zip).namelist() if name.endswith(".py")}
    run = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES,
         str(small_image_dataset / f"{small_image_dataset.name}.data")],
        cwd=unzipped, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    imported = set(json.loads(run.stdout.strip().splitlines()[-1]))
    assert shipped - imported == set(), "shipped but never imported by a run"
    assert imported <= shipped
