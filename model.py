"""AutoDL submission entry point: the platform imports `Model` from here.

Thin on purpose: everything runs in the `autodl_meta` package that sits beside this file.
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from autodl_meta.learner import Learner  # noqa: E402 - needs the path above

# The project's one log format (ingestion_local/logs.py), spelled here: the submission runs on
# the platform without the harness.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


class Model(Learner):
    """Model(metadata) with train(dataset, remaining_time_budget), test(...), done_training."""
