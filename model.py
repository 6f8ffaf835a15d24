"""AutoDL submission entry point: the platform imports `Model` from here.

Thin on purpose: everything runs in the `autodl_meta` package that sits beside this file.
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from autodl_meta.learner import Learner  # noqa: E402 - needs the path above

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class Model(Learner):
    """Model(metadata) with train(dataset, remaining_time_budget), test(...), done_training."""
