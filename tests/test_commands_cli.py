"""The dispatcher: an unknown command is one error line (with the nearest command), the usage names --version."""

from __future__ import annotations

import pytest

from diffmodel.cli import main as cli_main

COMMANDS = "quickstart, train, inspect, mine, edit, apply, eval, slurm"


@pytest.mark.parametrize(("name", "hint"), [("evl", " (did you mean 'eval'?)"), ("fo", ""), ("-V", "")])
def test_an_unknown_command_is_one_error_line(capsys, name, hint):
    assert cli_main([name, "--help"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"diffmodel: error: unknown command {name!r}{hint}; choose from {COMMANDS} "
                            "(diffmodel --help says what each does)\n")


def test_the_usage_names_the_version_flag(capsys):
    assert cli_main([]) == 0
    usage = capsys.readouterr().out
    assert usage.endswith("Run 'diffmodel COMMAND --help' for the options of a command, 'diffmodel --version' for the version.\n")
    assert cli_main(["--version"]) == 0
    from diffmodel import __version__

    assert capsys.readouterr().out == f"diffmodel {__version__}\n"
