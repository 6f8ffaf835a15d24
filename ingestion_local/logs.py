"""The one log format of the project's command lines: the ingestion program, the local test
runner, the converters and every `python -m offline` command.

The submission (`model.py`) and the scoring program run on the platform without this package,
so each spells the same format itself; tests/test_cli.py checks that they agree.
"""
from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT)
