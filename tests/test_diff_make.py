"""make_diff: exact hunks for hand-made cases, and the same bytes as ``git diff``."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import time

import pytest

from diffmodel.diff.apply import apply_diff
from diffmodel.diff.make import format_header, make_diff, split_lines


def numbered(*numbers: int) -> str:
    return "".join(f"line {i}\n" for i in numbers)


PY_BEFORE = """import os


def a():
    return 1


def b():
    if x:
        return 2
    return 3
"""

# (id, before, after); every case is compared with git at several context sizes.
CASES = [
    ("change-middle", "a\nb\nc\n", "a\nB\nc\n"),
    ("no-newline-both", "a\nb", "a\nc"),
    ("add-final-newline", "a\nb", "a\nb\n"),
    ("remove-final-newline", "a\nb\n", "a\nb"),
    ("no-newline-grow", "a\nb", "a\nb\nc\n"),
    ("no-newline-context", "a\nb", "x\nb"),
    ("crlf", "a\r\nb\r\nc\r\n", "a\r\nB\r\nc\r\n"),
    ("crlf-to-lf", "a\r\nb\r\n", "a\nb\n"),
    ("lone-cr", "a\rb\nc\n", "a\rB\nc\n"),
    ("new-file", "", "x\ny\n"),
    ("new-file-no-newline", "", "x"),
    ("delete-all", "x\ny\n", ""),
    ("delete-all-no-newline", "x\ny", ""),
    ("insert-at-start", numbered(1, 2, 3, 4, 5), numbered(0, 1, 2, 3, 4, 5)),
    ("insert-at-end", numbered(1, 2, 3, 4, 5), numbered(1, 2, 3, 4, 5, 6)),
    ("two-hunks", numbered(*range(20)), numbered(*[i for i in range(20) if i not in (3, 15)])),
    ("gap-6-merges", numbered(*range(20)), numbered(*[i for i in range(20) if i not in (5, 12)])),
    ("gap-7-splits", numbered(*range(20)), numbered(*[i for i in range(20) if i not in (5, 13)])),
    ("repeated-line-deleted", "a\nx\nx\nx\nb\n", "a\nx\nx\nb\n"),
    ("unicode", "héllo\nwörld\n", "héllo\nwelt\n"),
    ("py-add-function", PY_BEFORE, PY_BEFORE.replace("def b():", "def c():\n    return 5\n\n\ndef b():")),
    ("py-add-branch", PY_BEFORE, PY_BEFORE.replace("        return 2\n", "        return 2\n    if y:\n        return 4\n")),
    ("py-append", PY_BEFORE, PY_BEFORE + "\n\ndef d():\n    pass\n"),
    ("py-remove-function", PY_BEFORE, PY_BEFORE.replace("\n\ndef a():\n    return 1\n", "")),
]


def git_diff(tmp_path, before: str, after: str, context: int) -> str:
    """The hunks of ``git diff --no-index -U<context>``, function context removed."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(before.encode())
    new.write_bytes(after.encode())
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    proc = subprocess.run(
        ["git", "-c", "core.autocrlf=false", "diff", "--no-index", "--no-color", "--no-ext-diff",
         f"-U{context}", str(old), str(new)],
        capture_output=True, env=env, cwd=tmp_path,
    )
    assert proc.returncode in (0, 1), proc.stderr
    out = proc.stdout.decode()
    start = out.find("\n@@")
    if start < 0:
        return ""
    # git may write a function name after the closing "@@"; make_diff never does.
    return re.sub(r"^(@@ [^@]* @@).*$", r"\1", out[start + 1:], flags=re.M)


@pytest.mark.skipif(shutil.which("git") is None, reason="git CLI not installed")
@pytest.mark.parametrize("context", [0, 1, 3])
@pytest.mark.parametrize("case_id,before,after", CASES, ids=[c[0] for c in CASES])
def test_same_bytes_as_git(tmp_path, case_id, before, after, context):
    assert make_diff(before, after, context) == git_diff(tmp_path, before, after, context)


class TestExactOutput:
    def test_identical_is_empty(self):
        assert make_diff("a\nb\n", "a\nb\n") == ""
        assert make_diff("", "") == ""

    def test_single_line_counts_are_omitted(self):
        assert make_diff("a\n", "b\n") == "@@ -1 +1 @@\n-a\n+b\n"

    def test_new_file(self):
        assert make_diff("", "x\ny\n") == "@@ -0,0 +1,2 @@\n+x\n+y\n"

    def test_delete_everything(self):
        assert make_diff("x\ny\n", "") == "@@ -1,2 +0,0 @@\n-x\n-y\n"

    def test_no_newline_markers(self):
        assert make_diff("a\nb", "a\nc") == (
            "@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n"
        )

    def test_no_newline_on_context_line(self):
        assert make_diff("a\nb", "x\nb") == "@@ -1,2 +1,2 @@\n-a\n+x\n b\n\\ No newline at end of file\n"

    def test_empty_range_names_line_before(self):
        assert make_diff("a\nb\n", "a\nb\nc\n", context=0) == "@@ -2,0 +3 @@\n+c\n"
        assert make_diff("a\nb\nc\n", "a\nc\n", context=0) == "@@ -2 +1,0 @@\n-b\n"

    def test_crlf_is_byte_exact(self):
        assert make_diff("a\r\nb\r\n", "a\r\nc\r\n") == "@@ -1,2 +1,2 @@\n a\r\n-b\r\n+c\r\n"

    def test_context_size(self):
        before = numbered(*range(10))
        after = before.replace("line 5\n", "five\n")
        assert make_diff(before, after, context=1) == "@@ -5,3 +5,3 @@\n line 4\n-line 5\n+five\n line 6\n"

    def test_negative_context_is_an_error(self):
        with pytest.raises(ValueError):
            make_diff("a\n", "b\n", context=-1)


class TestHelpers:
    @pytest.mark.parametrize("text", ["", "a", "a\n", "a\r\nb", "\n\n", "a\rb\x0bc\x0cd\u2028e\n"])
    def test_split_lines_round_trips_and_splits_on_newline_only(self, text):
        lines = split_lines(text)
        assert "".join(lines) == text
        assert all(line.endswith("\n") for line in lines[:-1])
        assert sum("\n" in line for line in lines) == text.count("\n")

    def test_format_header(self):
        assert format_header(1, 1, 1, 1) == "@@ -1 +1 @@"
        assert format_header(1, 0, 1, 3) == "@@ -0,0 +1,3 @@"
        assert format_header(12, 7, 12, 8) == "@@ -12,7 +12,8 @@"


class TestLargeFiles:
    def test_many_repeated_lines_stay_fast_and_apply(self):
        rng = random.Random(0)
        lines = [rng.choice(["\n", "    }\n", "    return x;\n"]) if rng.random() < 0.3 else f"stmt{rng.randint(0, 3000)};\n"
                 for _ in range(20000)]
        edited = list(lines)
        for _ in range(50):
            edited[rng.randrange(len(edited))] = "changed\n"
        for _ in range(20):
            start = rng.randrange(len(edited))
            del edited[start:start + 30]
        before, after = "".join(lines), "".join(edited)
        started = time.perf_counter()
        diff = make_diff(before, after)
        assert time.perf_counter() - started < 2.0
        assert apply_diff(before, diff).text == after

    def test_no_unique_lines_at_all(self):
        before = "a\nb\n\n" * 2000
        after = "b\na\n\n" * 1500 + "a\n" * 700
        assert apply_diff(before, make_diff(before, after)).text == after
