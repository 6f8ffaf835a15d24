"""Every offline command answers --help, through the one parser builder."""
from __future__ import annotations

import importlib

import pytest

from offline.__main__ import COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_answers_help(name, capsys):
    module, _ = COMMANDS[name]
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m offline")
    assert "options:" in text


def test_one_log_format():
    import model
    from conftest import REPO_ROOT
    from ingestion_local.logs import LOG_FORMAT
    from scoring_local import score

    # The submission and the scoring program run without the harness: each spells the format.
    assert model.LOG_FORMAT == score.LOG_FORMAT == LOG_FORMAT
    sources = [REPO_ROOT / "model.py", *(path for folder in ("autodl_meta", "ingestion_local",
                                                            "scoring_local", "offline")
                                         for path in (REPO_ROOT / folder).rglob("*.py"))]
    configured = {path.relative_to(REPO_ROOT).as_posix() for path in sources
                  if "logging.basicConfig" in path.read_text()}
    assert configured == {"model.py", "scoring_local/score.py", "ingestion_local/logs.py"}
