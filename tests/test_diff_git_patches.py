"""``diffmodel apply`` on what ``git diff`` writes: renames, header-only changes, quoted file names."""

from __future__ import annotations

import subprocess

import pytest

from diffmodel.cli import main
from diffmodel.diff.parse import parse_patch
from mine_gitrepo import GitRepo

TEN = "".join(f"line {i}\n" for i in range(1, 11))


def git_diff(repo: GitRepo) -> bytes:
    """``git diff HEAD~1 HEAD`` with rename detection, as ``git diff`` writes it by default."""
    return subprocess.run(["git", "-c", "core.quotePath=true", "diff", "-M", "HEAD~1", "HEAD"], cwd=repo.path,
                          capture_output=True, check=True, env=repo.env()).stdout


def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def repo(tmp_path):
    r = GitRepo(tmp_path / "repo")
    r.write("old.py", TEN)
    r.write("keep.py", "k = 1\n")
    r.write("gone.txt", "")
    r.commit("Start")
    return r


def apply_last_commit(repo: GitRepo, tmp_path, capsys) -> tuple[int, str, str]:
    """Apply the last commit's ``git diff`` to a copy of the tree before it; rc, stdout, stderr."""
    patch = tmp_path / "change.patch"
    patch.write_bytes(git_diff(repo))
    repo.git("checkout", "-q", "HEAD~1")
    capsys.readouterr()
    rc = main(["apply", "-C", str(repo.path), str(patch)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_rename_with_an_edit(repo, tmp_path, capsys):
    repo.git("mv", "old.py", "new name.py")
    repo.write("new name.py", TEN.replace("line 5\n", "five\n"))
    repo.commit("Rename and edit")
    rc, out, err = apply_last_commit(repo, tmp_path, capsys)
    assert (rc, err) == (0, "")
    assert out == "new name.py: applied\n  note: renamed from old.py\n  hunk 1: applied at line 2\n"
    assert files(repo.path) == {"gone.txt": b"", "keep.py": b"k = 1\n",
                                "new name.py": TEN.replace("line 5\n", "five\n").encode()}


def test_pure_rename_and_new_empty_file(repo, tmp_path, capsys):
    repo.git("mv", "old.py", "moved.py")
    repo.write("empty.py", "")
    repo.commit("Move, add an empty file")
    rc, out, err = apply_last_commit(repo, tmp_path, capsys)
    assert (rc, err) == (0, "")
    assert out == "empty.py: applied\nmoved.py: applied\n  note: renamed from old.py\n"
    assert files(repo.path) == {"empty.py": b"", "gone.txt": b"", "keep.py": b"k = 1\n", "moved.py": TEN.encode()}


def test_deleted_empty_file(repo, tmp_path, capsys):
    repo.git("rm", "-q", "gone.txt")
    repo.commit("Delete an empty file")
    rc, out, err = apply_last_commit(repo, tmp_path, capsys)
    assert (rc, out, err) == (0, "gone.txt: applied\n", "")
    assert files(repo.path) == {"keep.py": b"k = 1\n", "old.py": TEN.encode()}


def test_rename_onto_an_existing_file_writes_nothing(repo, tmp_path, capsys):
    repo.git("mv", "old.py", "moved.py")
    repo.commit("Move")
    patch = tmp_path / "change.patch"
    patch.write_bytes(git_diff(repo))
    repo.git("checkout", "-q", "HEAD~1")
    (repo.path / "moved.py").write_text("mine\n")
    capsys.readouterr()
    assert main(["apply", "-C", str(repo.path), str(patch)]) == 1
    out, err = capsys.readouterr()
    assert out == ("moved.py: failed\n  note: the patch renames old.py to this file, but it already exists\n")
    assert err == "nothing written: not every hunk applied\n"
    assert (repo.path / "moved.py").read_text() == "mine\n" and (repo.path / "old.py").read_text() == TEN


def test_quoted_names(repo, tmp_path, capsys):
    repo.write("naïve.py", "a = 1\n")
    repo.write("tab\tname.py", "b = 1\n")
    repo.commit("Add files with quoted names")
    repo.write("naïve.py", "a = 2\n")
    repo.write("tab\tname.py", "b = 2\n")
    repo.commit("Change them")
    patch = git_diff(repo)
    assert b'--- "a/na\\303\\257ve.py"' in patch and b'--- "a/tab\\tname.py"' in patch
    rc, out, err = apply_last_commit(repo, tmp_path, capsys)
    assert (rc, err) == (0, "")
    assert (repo.path / "naïve.py").read_text() == "a = 2\n"
    assert (repo.path / "tab\tname.py").read_text() == "b = 2\n"


def test_parse_patch_reads_quoted_and_renamed_names():
    patch = ('diff --git "a/na\\303\\257ve.py" "b/caf\\303\\251 x.py"\nsimilarity index 90%\n'
             'rename from "na\\303\\257ve.py"\nrename to "caf\\303\\251 x.py"\n'
             '--- "a/na\\303\\257ve.py"\n+++ "b/caf\\303\\251 x.py"\n@@ -1 +1 @@\n-a\n+b\n')
    [section] = parse_patch(patch)
    assert (section.old_path, section.new_path, section.renamed_from, section.header_only) == (
        "naïve.py", "café x.py", "naïve.py", False)


def test_a_binary_patch_is_not_sent_to_lenient(repo, tmp_path, capsys):
    repo.write("data.bin", b"\0\1\2")
    repo.commit("Add binary data")
    rc, out, err = apply_last_commit(repo, tmp_path, capsys)
    assert rc == 1
    assert out == "data.bin: bad_format\n  note: binary patches are not supported\n  note: no @@ hunk found\n"
    assert err == "nothing written: not every hunk applied\n"
