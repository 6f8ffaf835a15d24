"""Every command answers --help (one parser builder) and the README's command lines parse."""
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


def _readme_commands() -> list[str]:
    """Every `python -m ...` line of the README's shell blocks, its comment cut off."""
    from conftest import REPO_ROOT

    commands, in_shell = [], False
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_shell = line.strip() == "```bash" and not in_shell
            continue
        if in_shell and line.startswith("python -m "):
            commands.append(line.split("  #")[0].strip())
    return commands


def _readme_parser(module: str, words: list[str]):
    """The parser `python -m module words...` runs, and the arguments it gets."""
    if module == "offline":
        return importlib.import_module(COMMANDS[words[0]][0]).build_parser(), words[1:]
    entry = {"ingestion_local": "ingestion_local.ingestion",
             "scoring_local": "scoring_local.score"}
    return importlib.import_module(entry.get(module, module)).build_parser(), words


def test_readme_commands_parse():
    commands = _readme_commands()
    assert len(commands) >= 15
    for command in commands:
        # "[--opt V]" marks what may be left out, "..." more of the same: both parse as written.
        words = [w for w in command.replace("[", "").replace("]", "").split()[2:] if w != "..."]
        parser, arguments = _readme_parser(words[0], words[1:])
        try:
            parser.parse_args(arguments)
        except SystemExit as error:
            raise AssertionError(f"README command does not parse: {command}") from error
