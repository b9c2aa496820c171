"""``diffmodel apply``: files changed or left alone, refused names, exit codes."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys

import pytest

from diffmodel.cli import main
from diffmodel.diff.make import make_diff
from mine_gitrepo import GitRepo

BEFORE = "".join(f"line {i}\n" for i in range(1, 11))
AFTER = BEFORE.replace("line 5\n", "five\n")
DIFF = make_diff(BEFORE, AFTER)


def git_patch(name: str, before: str, after: str) -> str:
    return f"diff --git a/{name} b/{name}\n--- a/{name}\n+++ b/{name}\n" + make_diff(before, after)


@pytest.fixture
def work(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "f.txt").write_text(BEFORE)
    return folder


def run(*args: str) -> int:
    return main(["apply", *args])


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


class TestApplies:
    def test_plain_body_and_file(self, work, tmp_path, capsys):
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)
        assert run(str(patch), "f.txt", "-C", str(work)) == 0
        assert (work / "f.txt").read_text() == AFTER
        assert capsys.readouterr().out == "f.txt: applied\n  hunk 1: applied at line 2\n"
        assert leftovers(work) == []

    def test_git_patch_names_the_files(self, work, tmp_path):
        (work / "sub").mkdir()
        (work / "sub" / "g.txt").write_text("a\nb\n")
        patch = tmp_path / "p.patch"
        patch.write_text(git_patch("f.txt", BEFORE, AFTER) + git_patch("sub/g.txt", "a\nb\n", "a\nc\n"))
        assert run(str(patch), "-C", str(work)) == 0
        assert (work / "f.txt").read_text() == AFTER
        assert (work / "sub" / "g.txt").read_text() == "a\nc\n"

    def test_new_and_deleted_files(self, work, tmp_path):
        patch = tmp_path / "p.patch"
        patch.write_text(
            "--- /dev/null\n+++ b/new/n.txt\n@@ -0,0 +1 @@\n+hello\n"
            "--- a/f.txt\n+++ /dev/null\n" + make_diff(BEFORE, "")
        )
        assert run(str(patch), "-C", str(work)) == 0
        assert (work / "new" / "n.txt").read_text() == "hello\n"
        assert not (work / "f.txt").exists()

    def test_new_file_that_exists_fails(self, work, tmp_path):
        patch = tmp_path / "p.patch"
        patch.write_text("--- /dev/null\n+++ b/f.txt\n@@ -0,0 +1 @@\n+hello\n")
        assert run(str(patch), "-C", str(work)) == 1
        assert (work / "f.txt").read_text() == BEFORE

    def test_lenient_reports_offset(self, work, tmp_path, capsys):
        (work / "f.txt").write_text("extra\n" + BEFORE)
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)
        assert run(str(patch), "f.txt", "-C", str(work)) == 1
        assert (work / "f.txt").read_text() == "extra\n" + BEFORE
        assert "try --lenient" in capsys.readouterr().err
        assert run(str(patch), "f.txt", "-C", str(work), "--lenient") == 0
        assert (work / "f.txt").read_text() == "extra\n" + AFTER
        assert "hunk 1: offset at line 3 (offset +1 line)" in capsys.readouterr().out

    def test_header_without_new_range_applies_only_leniently_by_context(self, work, tmp_path, capsys):
        patch = tmp_path / "p.diff"
        patch.write_text("@@ -1,7 @@\n line 4\n-line 5\n+five\n line 6\n")
        assert run(str(patch), "f.txt", "-C", str(work)) == 1
        assert (work / "f.txt").read_text() == BEFORE
        out = capsys.readouterr().out
        assert "hunk 1: FAILED: the hunk header has no +NEW range; only a lenient apply may place it by its context" in out
        assert run(str(patch), "f.txt", "-C", str(work), "--lenient") == 0
        assert (work / "f.txt").read_text() == AFTER
        assert capsys.readouterr().out.endswith("f.txt: relocated\n"
                                                "  note: hunk 1: malformed header '@@ -1,7 @@'\n"
                                                "  note: hunk 1: header has no +NEW range\n"
                                                "  hunk 1: offset at line 4 (offset +3 lines) (the hunk header has no +NEW range)\n")

    def test_header_without_new_range_and_no_context_writes_nothing(self, work, tmp_path):
        patch = tmp_path / "p.diff"
        patch.write_text("@@ -1,7 @@\n" + "".join(f"+junk {i}\n" for i in range(1, 10)))
        for flags in ((), ("--lenient",)):
            assert run(str(patch), "f.txt", "-C", str(work), *flags) == 1
            assert (work / "f.txt").read_text() == BEFORE

    def test_dry_run_writes_nothing(self, work, tmp_path, capsys):
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)
        for spelling in ("--dry-run", "--dry_run", "-n"):
            assert run(str(patch), "f.txt", "-C", str(work), spelling) == 0
            assert (work / "f.txt").read_text() == BEFORE
            assert "dry run: nothing written" in capsys.readouterr().out

    def test_output_file(self, work, tmp_path, capsys):
        patch, out = tmp_path / "p.diff", tmp_path / "out.txt"
        patch.write_text(DIFF)
        assert run(str(patch), "f.txt", "-C", str(work), "--output", str(out)) == 0
        assert out.read_text() == AFTER
        assert capsys.readouterr().out.endswith(f"wrote {out}\n")
        assert (work / "f.txt").read_text() == BEFORE

    def test_output_to_stdout(self, work, tmp_path, capfdbinary):
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)
        assert run(str(patch), "f.txt", "-C", str(work), "-o", "-") == 0
        captured = capfdbinary.readouterr()
        assert captured.out == AFTER.encode()
        assert b"f.txt: applied" in captured.err

    def test_patch_from_stdin(self, work, monkeypatch):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(DIFF.encode())))
        assert run("-", "f.txt", "-C", str(work)) == 0
        assert (work / "f.txt").read_text() == AFTER

    def test_bytes_are_kept_exactly(self, work, tmp_path):
        before = b"caf\xe9\r\nline 2\r\n\xff\xfe\r\n"  # latin-1 and CRLF, not UTF-8
        after = before.replace(b"line 2", b"line two")
        (work / "f.txt").write_bytes(before)
        decode = lambda b: b.decode("utf-8", errors="surrogateescape")  # noqa: E731
        patch = tmp_path / "p.diff"
        patch.write_bytes(make_diff(decode(before), decode(after)).encode("utf-8", errors="surrogateescape"))
        assert run(str(patch), "f.txt", "-C", str(work)) == 0
        assert (work / "f.txt").read_bytes() == after

    def test_permissions_are_kept(self, work, tmp_path):
        os.chmod(work / "f.txt", 0o750)
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)
        assert run(str(patch), "f.txt", "-C", str(work)) == 0
        assert stat.S_IMODE(os.stat(work / "f.txt").st_mode) == 0o750

    def test_symlink_inside_the_folder_is_followed(self, work, tmp_path):
        os.symlink("f.txt", work / "link.txt")
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)
        assert run(str(patch), "link.txt", "-C", str(work)) == 0
        assert os.path.islink(work / "link.txt")
        assert (work / "f.txt").read_text() == AFTER


class TestCrlfPatchFromGit:
    """A patch of CRLF files: strict apply gives the bytes ``git apply`` gives."""

    APP = b"".join(b"def f%d():\r\n    return %d\r\n\r\n" % (i, i) for i in range(8))
    AFTER = APP.replace(b"return 1\r", b"return 10\r").replace(b"return 6\r", b"return 60\r")
    CFG = b"[tool]\r\ndebug = false\r\n"

    @pytest.fixture
    def repo(self, tmp_path):
        repo = GitRepo(tmp_path / "repo")  # core.autocrlf=false: the bytes are stored as they are
        repo.write("app.py", self.APP)
        repo.commit("Add app")
        return repo

    def git_diff(self, repo) -> bytes:
        repo.write("app.py", self.AFTER)
        repo.write("new.cfg", self.CFG)
        repo.git("add", "-A")
        patch = subprocess.run(["git", "diff", "--cached"], cwd=repo.path, env=repo.env(), capture_output=True,
                               check=True).stdout
        repo.git("reset", "-q", "--hard")
        assert (repo.path / "app.py").read_bytes() == self.APP and not (repo.path / "new.cfg").exists()
        return patch

    def files(self, repo) -> dict[str, bytes]:
        return {name: (repo.path / name).read_bytes() for name in ("app.py", "new.cfg")}

    @pytest.mark.parametrize("crlf_everywhere", [False, True], ids=["as-git-wrote-it", "every-line-crlf"])
    def test_same_bytes_as_git_apply(self, repo, tmp_path, crlf_everywhere, capsys):
        patch = self.git_diff(repo)
        # git ends its own lines in LF (the function context too), the file's lines keep CRLF
        assert b"\n@@ -2,7 +2,7 @@ def f0():\n     return 0\r\n \r\n" in patch
        if crlf_everywhere:  # as an editor, or a checkout with eol=crlf, leaves the patch file
            patch = re.sub(rb"(?<!\r)\n", b"\r\n", patch)
            assert b"\r\n@@ -2,7 +2,7 @@ def f0():\r\n     return 0\r\n" in patch and b"\r\r" not in patch
        path = tmp_path / "change.patch"
        path.write_bytes(patch)
        repo.git("apply", "--check", str(path))
        repo.git("apply", str(path))
        by_git = self.files(repo)
        assert by_git == {"app.py": self.AFTER, "new.cfg": self.CFG}
        repo.git("reset", "-q", "--hard")
        (repo.path / "new.cfg").unlink()
        assert run(str(path), "-C", str(repo.path)) == 0
        assert self.files(repo) == by_git
        assert capsys.readouterr().out == (
            "app.py: applied\n  hunk 1: applied at line 2\n  hunk 2: applied at line 17\n"
            "new.cfg: applied\n  hunk 1: applied at line 1\n")


class TestLeavesFilesAlone:
    def test_failed_hunk(self, work, tmp_path, capsys):
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF.replace("-line 5", "-line 55"))
        assert run(str(patch), "f.txt", "-C", str(work)) == 1
        assert (work / "f.txt").read_text() == BEFORE
        out = capsys.readouterr()
        assert "hunk 1: FAILED: lines do not match at line 2" in out.out
        assert "nothing written" in out.err

    def test_one_failing_file_stops_all(self, work, tmp_path):
        (work / "g.txt").write_text("a\nb\n")
        patch = tmp_path / "p.patch"
        patch.write_text(git_patch("f.txt", BEFORE, AFTER) + git_patch("g.txt", "a\nX\n", "a\nc\n"))
        assert run(str(patch), "-C", str(work)) == 1
        assert (work / "f.txt").read_text() == BEFORE
        assert (work / "g.txt").read_text() == "a\nb\n"

    def test_error_while_writing_keeps_the_original(self, work, tmp_path, monkeypatch):
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)

        def broken_replace(src, dst):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", broken_replace)
        with pytest.raises(OSError):
            run(str(patch), "f.txt", "-C", str(work))
        assert (work / "f.txt").read_text() == BEFORE
        assert leftovers(work) == []

    @pytest.mark.parametrize("where", ["output_is_a_folder", "new_file_under_a_file"])
    def test_a_write_that_fails_follows_no_applied_line_and_names_the_path(self, work, tmp_path, capsys, where):
        patch = tmp_path / "p.patch"
        if where == "output_is_a_folder":
            patch.write_text(DIFF)
            target = tmp_path / "out"
            target.mkdir()
            args, reason = ("f.txt", "--output", str(target)), "it is a folder"
        else:
            patch.write_text("--- /dev/null\n+++ b/sub/n.txt\n@@ -0,0 +1 @@\n+hello\n")
            (work / "sub").write_text("a file\n")
            target = work / "sub" / "n.txt"
            args, reason = (), f"{work / 'sub'} is a file, not a folder"
        assert run(str(patch), *args, "-C", str(work)) == 2
        out = capsys.readouterr()
        assert "applied" not in out.out + out.err
        assert out.err.startswith(f"diffmodel apply: error: cannot write {target}: {reason}")
        assert (work / "f.txt").read_text() == BEFORE and leftovers(work) == []

    def test_bad_format_patch(self, work, tmp_path, capsys):
        patch = tmp_path / "p.diff"
        patch.write_text("I could not produce a diff.\n")
        assert run(str(patch), "f.txt", "-C", str(work)) == 1
        assert "f.txt: bad_format" in capsys.readouterr().out


class TestRefused:
    @pytest.fixture
    def outside(self, tmp_path):
        target = tmp_path / "outside.txt"
        target.write_text(BEFORE)
        return target

    def refused(self, capsys, *args: str) -> str:
        assert run(*args) == 2
        return capsys.readouterr().err

    def test_dotdot_in_file_argument(self, work, tmp_path, outside, capsys):
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)
        err = self.refused(capsys, str(patch), "../outside.txt", "-C", str(work))
        assert "refusing file name '../outside.txt': it contains '..'" in err
        assert outside.read_text() == BEFORE

    def test_dotdot_in_patch_header(self, work, tmp_path, outside, capsys):
        patch = tmp_path / "p.patch"
        patch.write_text(git_patch("../outside.txt", BEFORE, AFTER))
        err = self.refused(capsys, str(patch), "-C", str(work))
        assert "contains '..'" in err
        assert outside.read_text() == BEFORE

    def test_dotdot_inside_a_name(self, work, tmp_path, capsys):
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)
        assert "contains '..'" in self.refused(capsys, str(patch), "sub/../f.txt", "-C", str(work))

    def test_absolute_file_argument(self, work, tmp_path, outside, capsys):
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)
        err = self.refused(capsys, str(patch), str(outside), "-C", str(work))
        assert "refusing absolute file name" in err
        assert outside.read_text() == BEFORE

    def test_absolute_name_in_patch_header(self, work, tmp_path, outside, capsys):
        patch = tmp_path / "p.patch"
        patch.write_text(f"--- {outside}\n+++ {outside}\n" + DIFF)
        assert "refusing absolute file name" in self.refused(capsys, str(patch), "-C", str(work))
        assert outside.read_text() == BEFORE

    def test_symlink_to_a_file_outside(self, work, tmp_path, outside, capsys):
        os.symlink(outside, work / "link.txt")
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)
        err = self.refused(capsys, str(patch), "link.txt", "-C", str(work))
        assert "outside the working folder" in err
        assert outside.read_text() == BEFORE

    def test_symlinked_folder_leading_outside(self, work, tmp_path, capsys):
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "f.txt").write_text(BEFORE)
        os.symlink(elsewhere, work / "sub")
        patch = tmp_path / "p.patch"
        patch.write_text(git_patch("sub/f.txt", BEFORE, AFTER))
        assert "outside the working folder" in self.refused(capsys, str(patch), "-C", str(work))
        assert (elsewhere / "f.txt").read_text() == BEFORE

    def test_no_file_named(self, work, tmp_path, capsys):
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)
        assert "give it: diffmodel apply PATCH FILE" in self.refused(capsys, str(patch), "-C", str(work))

    def test_missing_patch(self, work, tmp_path, capsys):
        assert "cannot read PATCH" in self.refused(capsys, str(tmp_path / "nope.diff"), "f.txt")

    def test_empty_patch(self, work, tmp_path, capsys):
        patch = tmp_path / "p.diff"
        patch.write_text("\n")
        assert "is empty" in self.refused(capsys, str(patch), "f.txt", "-C", str(work))

    def test_missing_target(self, work, tmp_path, capsys):
        patch = tmp_path / "p.diff"
        patch.write_text(DIFF)
        assert "no such file" in self.refused(capsys, str(patch), "nope.txt", "-C", str(work))

    def test_file_argument_with_multi_file_patch(self, work, tmp_path, capsys):
        patch = tmp_path / "p.patch"
        patch.write_text(git_patch("f.txt", BEFORE, AFTER) + git_patch("g.txt", "a\n", "b\n"))
        assert "leave out FILE" in self.refused(capsys, str(patch), "f.txt", "-C", str(work))


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        run("--help")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--lenient", "--output", "--dry-run", "--directory", "PATCH", "FILE"):
        assert flag in out


def test_listed_in_top_level_help(capsys):
    assert main(["--help"]) == 0
    assert "apply" in capsys.readouterr().out
