"""Mining real repositories built with the git CLI: exact samples, round trips, edge cases, errors."""

from __future__ import annotations

import subprocess
import warnings
from collections import Counter
from pathlib import Path

import pytest

from diffmodel.errors import DiffModelError
from diffmodel.mine import filters as F
from diffmodel.mine.git import CatFile, parse_commit, parse_diff_tree
from diffmodel.mine.repos import ShallowCloneWarning, find_repositories, list_commits, open_repository
from diffmodel.mine.samples import SampleOptions, iter_samples, mine_commits
from diffmodel.sample import render_row, split
from mine_gitrepo import GitRepo, build_small_repo, build_story_repo

EVERYTHING = SampleOptions(keep_deleted=True, filters=F.FilterOptions(languages=("all",)))


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    base = tmp_path_factory.mktemp("story")
    sub = build_small_repo(base / "lib", 2, prefix="lib")
    ids = build_story_repo(base / "story", submodule_source=sub.path)
    return GitRepo(base / "story", init=False), ids


@pytest.fixture(scope="module")
def story_samples(story):
    repo, _ = story
    return list(iter_samples(repo.path))


def by_commit(samples, commit):
    return [s for s in samples if s["commit"] == commit]


class TestExactSamples:
    def test_edit(self, story, story_samples):
        repo, ids = story
        (row,) = by_commit(story_samples, ids["edit"])
        assert row == {
            "repository": "story",
            "commit": ids["edit"],
            "parent": ids["add"],
            "date": "2023-11-14T23:15:20+01:00",
            "name": "hello.py",
            "old_name": "",
            "language": "Python",
            "message": "Make the greeting friendlier",
            "before": "def greet(name):\n    return 'Hello ' + name\n\n\ndef shout(name):\n    return greet(name).upper()\n",
            "diff": "@@ -1,5 +1,5 @@\n def greet(name):\n-    return 'Hello ' + name\n+    return 'Hello, ' + name + '!'\n \n \n def shout(name):\n",
            "text": (
                "<NME> hello.py\n"
                "<BEF> def greet(name):\n    return 'Hello ' + name\n\n\ndef shout(name):\n    return greet(name).upper()\n"
                "<MSG> Make the greeting friendlier\n"
                "<DFF> @@ -1,5 +1,5 @@\n def greet(name):\n-    return 'Hello ' + name\n+    return 'Hello, ' + name + '!'\n \n \n def shout(name):\n"
            ),
        }

    def test_new_files_of_the_root_commit(self, story, story_samples):
        repo, ids = story
        rows = {r["name"]: r for r in by_commit(story_samples, ids["add"])}
        assert sorted(rows) == ["README.md", "hello.py", "notes.md"]
        notes = rows["notes.md"]
        assert notes["parent"] == ""
        assert notes["before"] == ""
        assert notes["diff"] == "@@ -0,0 +1,2 @@\n+first line\n+second line\n"
        assert notes["text"] == "<NME> notes.md\n<BEF> ADDFILE\n<MSG> Add greeting module and readme\n<DFF> @@ -0,0 +1,2 @@\n+first line\n+second line\n"

    def test_rename_with_edit(self, story, story_samples):
        repo, ids = story
        (row,) = by_commit(story_samples, ids["rename"])
        assert (row["name"], row["old_name"], row["language"]) == ("greetings.py", "hello.py", "Python")
        assert row["before"] == repo.show(ids["edit"], "hello.py").decode()
        assert row["diff"] == (
            "@@ -3,4 +3,4 @@\n \n \n def shout(name):\n-    return greet(name).upper()\n"
            "+    return greet(name).upper() + '!!'\n")
        assert split(row["text"]).name == "greetings.py"

    def test_crlf_is_kept_byte_for_byte(self, story, story_samples):
        repo, ids = story
        (row,) = by_commit(story_samples, ids["crlf_edit"])
        assert row["before"] == "[core]\r\nname = demo\r\ndebug = true\r\n"
        assert row["diff"] == "@@ -1,3 +1,3 @@\n [core]\r\n name = demo\r\n-debug = true\r\n+debug = false\r\n"
        assert row["language"] == "INI"

    def test_missing_final_newline(self, story, story_samples):
        repo, ids = story
        (row,) = by_commit(story_samples, ids["no_newline"])
        assert row["diff"] == (
            "@@ -1,2 +1,2 @@\n first line\n-second line\n+second line changed\n\\ No newline at end of file\n")

    def test_every_text_is_render_row(self, story_samples):
        for row in story_samples:
            assert row["text"] == render_row(row)

    def test_skipped_kinds_make_no_samples(self, story, story_samples):
        repo, ids = story
        for label in ("binary", "delete", "empty", "merge", "submodule", "chmod", "symlink"):
            assert by_commit(story_samples, ids[label]) == [], label
        assert {r["commit"] for r in story_samples} == {
            ids[k] for k in ("add", "edit", "crlf_add", "crlf_edit", "no_newline", "rename", "feature", "main_side")}


def test_drop_counts_of_the_story(story):
    repo, ids = story
    r = open_repository(repo.path)
    listed = list_commits(r)
    assert listed.counts == Counter({"commits": 15, "merge_commits": 1})
    with CatFile(r.path) as cat:
        result = mine_commits(r, listed.usable, SampleOptions(), cat)
    counts = result.counts
    assert counts["samples"] == 10
    assert counts["changed_files"] == 17
    assert {k: counts[k] for k in (F.DROP_BINARY, F.DROP_NON_UTF8, F.DROP_DELETED, F.DROP_SUBMODULE, F.DROP_SYMLINK,
                                   F.DROP_NO_CHANGE, F.DROP_LANGUAGE)} == dict.fromkeys(
        (F.DROP_BINARY, F.DROP_NON_UTF8, F.DROP_DELETED, F.DROP_SUBMODULE, F.DROP_SYMLINK, F.DROP_NO_CHANGE,
         F.DROP_LANGUAGE), 1)
    assert counts["empty_commits"] == 1
    assert counts["commits_with_samples"] == 8


def _git_apply(tmp: Path, name: str, before: str, diff: str, zero_context: bool = False) -> bytes:
    work = tmp / "apply"
    if work.exists():
        subprocess.run(["rm", "-rf", str(work)], check=True)
    target = work / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(before.encode("utf-8"))
    patch = f"--- a/{name}\n+++ b/{name}\n{diff}".encode("utf-8")
    flags = ["--unidiff-zero"] if zero_context else []  # git refuses hunks without context unless told
    proc = subprocess.run(["git", "apply", "--whitespace=nowarn", *flags, "-"], cwd=work, input=patch,
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    return target.read_bytes()


def test_round_trip_git_apply_and_apply_diff(story, tmp_path):
    """Applying every mined diff to its before-file gives the file after the commit, byte for byte."""
    from diffmodel.diff.apply import apply_diff

    repo, ids = story
    samples = list(iter_samples(repo.path, EVERYTHING))
    assert len(samples) == 12  # the 10 default samples, the deleted README and .gitmodules
    for row in samples:
        deleted = row["commit"] == ids["delete"]
        after = b"" if deleted else repo.show(row["commit"], row["name"])
        assert _git_apply(tmp_path, row["name"], row["before"], row["diff"]) == after, row["name"]
        assert apply_diff(row["before"], row["diff"]).text.encode("utf-8") == after, row["name"]


def test_round_trip_with_other_context_sizes(story, tmp_path):
    repo, _ = story
    for context in (0, 1, 5):
        options = SampleOptions(context=context)
        for row in iter_samples(repo.path, options):
            after = repo.show(row["commit"], row["name"])
            assert _git_apply(tmp_path, row["name"], row["before"], row["diff"], context == 0) == after


def test_odd_file_names(tmp_path):
    r = GitRepo(tmp_path / "odd")
    r.write("dir with space/naïve file.py", "x = 1\n")
    r.write("tab\tname.py", "y = 1\n")
    r.commit("Add files with odd names")
    r.write("dir with space/naïve file.py", "x = 2\n")
    r.write("tab\tname.py", "y = 2\n")
    r.commit("Change both odd files")
    names = sorted({row["name"] for row in iter_samples(r.path)})
    assert names == ["dir with space/naïve file.py", "tab\tname.py"]


def test_first_parent_skips_the_side_branch(story):
    repo, ids = story
    rows = list(iter_samples(repo.path, first_parent=True))
    commits = {row["commit"] for row in rows}
    assert ids["feature"] not in commits
    assert ids["main_side"] in commits


def test_batching_does_not_change_the_rows(story, story_samples):
    repo, _ = story
    assert list(iter_samples(repo.path, batch=3)) == story_samples


class TestCommitObjects:
    def test_parse_commit_with_signature_and_encoding(self):
        raw = (b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
               b"parent 1111111111111111111111111111111111111111\n"
               b"author J\xf6rg Z <j@example.com> 1700000000 -0230\n"
               b"committer J <j@example.com> 1700000000 +0000\n"
               b"encoding ISO-8859-1\n"
               b"gpgsig -----BEGIN PGP SIGNATURE-----\n \n abc\n -----END PGP SIGNATURE-----\n"
               b"\n"
               b"Caf\xe9 fix\n\nBody line\n")
        c = parse_commit("2" * 40, raw)
        assert c.parents == ("1" * 40,)
        assert c.date == "2023-11-14T19:43:20-02:30"
        assert c.message == "Café fix\n\nBody line\n"

    def test_parse_diff_tree_rename_and_empty_commit(self):
        out = (b"a" * 40 + b"\0:100644 100644 " + b"1" * 40 + b" " + b"2" * 40 + b" R087\0old.py\0new.py\0"
               + b":000000 100644 " + b"0" * 40 + b" " + b"3" * 40 + b" A\0x.py\0")
        parsed = parse_diff_tree(out)
        (ren, add) = parsed["a" * 40]
        assert (ren.status, ren.old_path, ren.new_path) == ("R", "old.py", "new.py")
        assert (add.status, add.old_mode, add.new_path) == ("A", "000000", "x.py")


class TestErrors:
    def test_not_a_repository(self, tmp_path):
        (tmp_path / "plain").mkdir()
        (tmp_path / "plain" / "file.txt").write_text("x")
        with pytest.raises(DiffModelError, match="is not a git repository"):
            find_repositories(tmp_path / "plain")
        with pytest.raises(DiffModelError, match="is not a git repository"):
            open_repository(tmp_path / "plain")

    def test_missing_path(self, tmp_path):
        with pytest.raises(DiffModelError, match="no such file or directory"):
            find_repositories(tmp_path / "nope")

    def test_subfolder_of_a_repository(self, tmp_path):
        r = build_small_repo(tmp_path / "r", 1)
        (r.path / "sub").mkdir()
        with pytest.raises(DiffModelError, match="inside the git repository"):
            find_repositories(r.path / "sub")

    def test_empty_repository(self, tmp_path):
        GitRepo(tmp_path / "empty")
        with pytest.raises(DiffModelError, match="empty repository"):
            open_repository(tmp_path / "empty")

    def test_unknown_revision(self, tmp_path):
        r = build_small_repo(tmp_path / "r", 1)
        with pytest.raises(DiffModelError, match="does not name a commit"):
            open_repository(r.path, rev="no-such-branch")

    def test_shallow_clone_is_mined_with_a_warning(self, story, tmp_path):
        repo, ids = story
        subprocess.run(["git", "clone", "-q", "--depth", "6", "--no-local", f"file://{repo.path}", str(tmp_path / "sh")],
                       check=True, capture_output=True)
        with pytest.warns(ShallowCloneWarning, match="shallow clone"):
            r = open_repository(tmp_path / "sh")
        listed = list_commits(r)
        assert listed.counts["shallow_boundary_commits"] >= 1
        with pytest.warns(ShallowCloneWarning):
            rows = list(iter_samples(tmp_path / "sh"))
        assert rows and not {row["commit"] for row in rows} & r.shallow
        # No boundary commit is mistaken for a root commit that adds every file.
        full = {(row["commit"], row["name"]): row for row in iter_samples(repo.path)}
        for row in rows:
            assert row == full[(row["commit"], row["name"])] | {"repository": "sh"}

    def test_shallow_clone_of_depth_one_has_no_usable_commits(self, story, tmp_path):
        repo, _ = story
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--no-local", f"file://{repo.path}", str(tmp_path / "d1")],
                       check=True, capture_output=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShallowCloneWarning)
            r = open_repository(tmp_path / "d1")
        with pytest.raises(DiffModelError, match="no usable commits"):
            list_commits(r)
