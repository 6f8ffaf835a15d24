"""TensorFlow and torchvision import in both orders in this environment (README: with triton
installed, TensorFlow first segfaults; the platform's ingestion imports TensorFlow first)."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("first,second", [("tensorflow", "torchvision"),
                                          ("torchvision", "tensorflow")])
def test_import_order(first, second):
    code = f"import {first}, {second}; import torch; print(torch.ones(2).sum().item())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"import {first} then {second} failed ({result.returncode}):" \
                                   f"\n{result.stderr[-2000:]}"
    assert result.stdout.strip().endswith("2.0")
