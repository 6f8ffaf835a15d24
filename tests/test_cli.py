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
