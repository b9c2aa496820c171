"""Writes that cannot happen say which part of the path is in the way; the dispatcher's Ctrl-C and closed pipes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from diffmodel import atomic, cli
from diffmodel.errors import DiffModelError


def test_a_file_where_a_folder_should_be_is_named(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DiffModelError, match=rf"^cannot write {tmp_path}/f.txt/sub/out.json: {tmp_path}/f.txt is a file, "
                                             r"not a folder\. Choose a path in a folder you can write$"):
        atomic.write_json(tmp_path / "f.txt" / "sub" / "out.json", {"a": 1})
    assert (tmp_path / "f.txt").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_a_folder_given_as_the_file_is_refused_and_left_alone(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(DiffModelError, match=r"cannot write .*/out: it is a folder; give the path of a file in it$"):
        atomic.write_text(tmp_path / "out", "x")
    assert list((tmp_path / "out").iterdir()) == []


def test_folder_problem_creates_nothing(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    assert atomic.folder_problem(tmp_path / "new" / "deeper") is None
    assert atomic.folder_problem(tmp_path / "f.txt") == f"{tmp_path / 'f.txt'} is a file, not a folder"
    assert not (tmp_path / "new").exists()


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    from diffmodel.commands import apply

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(apply, "main", interrupted)
    assert cli.main(["apply", "x.diff"]) == 130
    assert capsys.readouterr().err == "\ndiffmodel apply: interrupted\n"


def test_help_with_a_command_is_that_commands_help(capsys):
    with pytest.raises(SystemExit) as done:  # argparse's --help
        cli.main(["help", "apply"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("usage: diffmodel apply")


def test_help_piped_into_a_reader_that_stops_early_ends_quietly():
    proc = subprocess.run(f"{sys.executable} -m diffmodel.cli train --help-all | head -1", shell=True, capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout.startswith("usage:") and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_folder_problem_of_a_name_too_long_to_look_up(tmp_path):
    assert atomic.folder_problem(tmp_path / ("x" * 300)) == "cannot be used (File name too long)"
