"""``diffmodel mine`` end to end: manifest, splits, dedup, licences, resume, workers, CLI, training on the output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffmodel.cli import main as cli_main
from diffmodel.errors import DiffModelError
from diffmodel.mine import filters as F
from diffmodel.mine import run as mine_run
from diffmodel.mine.run import MineConfig, mine
from diffmodel.mine.samples import iter_samples
from diffmodel.mine.shards import ShardWriter, complete_shards, read_shard
from diffmodel.mine.split import SPLITS, assign_split
from mine_gitrepo import GitRepo, build_small_repo, build_story_repo

MIT = "MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy of this software\n"
GPL = "GNU GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\n"


def config(inputs, output, **kw) -> MineConfig:
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return MineConfig(inputs=[str(p) for p in inputs], output=str(output), **kw)


def shard_rows(out: Path) -> dict[str, list[dict]]:
    return {s: [row for p in complete_shards(out / s, s) for row in read_shard(p)] for s in SPLITS}


def all_rows(out: Path) -> list[dict]:
    return [row for rows in shard_rows(out).values() for row in rows]


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    base = tmp_path_factory.mktemp("story")
    sub = build_small_repo(base / "lib", 2, prefix="lib")
    build_story_repo(base / "story", submodule_source=sub.path)
    return base / "story"


@pytest.fixture(scope="module")
def forest(tmp_path_factory):
    """A folder of six small repositories (5 samples each) and one empty repository."""
    base = tmp_path_factory.mktemp("forest")
    for i in range(6):
        build_small_repo(base / "org" / f"repo{i}", 5, prefix=f"r{i}")
    GitRepo(base / "org" / "empty")
    return base


class TestStory:
    def test_manifest_counts(self, story, tmp_path):
        manifest = mine(config([story], tmp_path / "out"))
        assert manifest == json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert manifest["samples"]["total"] == 10
        assert manifest["commits"] == {"commits": 15, "merge_commits": 1, "shallow_boundary_commits": 0,
                                       "empty_commits": 1, "commits_with_samples": 8}
        assert manifest["changed_files"] == 17
        assert {k: v for k, v in manifest["dropped"].items() if v} == {
            F.DROP_BINARY: 1, F.DROP_NON_UTF8: 1, F.DROP_DELETED: 1, F.DROP_SUBMODULE: 1, F.DROP_SYMLINK: 1,
            F.DROP_NO_CHANGE: 1, F.DROP_LANGUAGE: 1}
        assert manifest["languages"] == {"Markdown": 4, "Python": 4, "INI": 2}
        assert manifest["split_by"] == "commit"
        assert manifest["options"]["context"] == 3
        assert manifest["sources"][0]["name"] == "story"
        assert sum(sh["samples"] for shards in manifest["shards"].values() for sh in shards) == 10

    def test_shards_hold_the_mined_rows_split_by_commit(self, story, tmp_path):
        manifest = mine(config([story], tmp_path / "out", validation_fraction=0.3, test_fraction=0.3))
        rows = shard_rows(tmp_path / "out")
        for split, split_rows in rows.items():
            assert manifest["samples"][split] == len(split_rows)
            for row in split_rows:
                assert assign_split(row["commit"], 0.3, 0.3) == split
        expected = sorted(json.dumps(r, sort_keys=True) for r in iter_samples(story))
        assert sorted(json.dumps(r, sort_keys=True) for r in all_rows(tmp_path / "out")) == expected

    def test_nothing_left_is_an_error_that_names_the_filters(self, story, tmp_path):
        with pytest.raises(DiffModelError, match=r"no samples were written.*language: 12"):
            mine(config([story], tmp_path / "out", filters=F.FilterOptions(languages=("Rust",))))
        assert json.loads((tmp_path / "out" / "manifest.json").read_text())["samples"]["total"] == 0


class TestSeveralRepositories:
    def test_split_by_repository_never_mixes_a_repository(self, forest, tmp_path):
        manifest = mine(config([forest], tmp_path / "out", validation_fraction=0.3, test_fraction=0.3))
        assert manifest["split_by"] == "repository"
        assert manifest["samples"]["total"] == 30
        where: dict[str, set[str]] = {}
        for split, rows in shard_rows(tmp_path / "out").items():
            for row in rows:
                where.setdefault(row["repository"], set()).add(split)
        assert sorted(where) == [f"repo{i}" for i in range(6)]
        for name, splits in where.items():
            assert splits == {assign_split(name, 0.3, 0.3)}
        assert [s["reason"] for s in manifest["skipped_sources"]] == [
            f"{forest / 'org' / 'empty'} is an empty repository: it has no commits to mine"]
        assert any("skipping" in w and "empty" in w for w in manifest["warnings"])

    def test_an_empty_repository_named_directly_is_an_error(self, forest, tmp_path):
        with pytest.raises(DiffModelError, match="empty repository"):
            mine(config([forest / "org" / "empty"], tmp_path / "out"))

    def test_duplicates_across_repositories(self, tmp_path):
        build_small_repo(tmp_path / "a" / "proj", 4)
        build_small_repo(tmp_path / "b" / "proj", 4)  # same files, same commits' contents
        manifest = mine(config([tmp_path / "a", tmp_path / "b"], tmp_path / "out"))
        assert [s["name"] for s in manifest["sources"]] == ["a/proj", "b/proj"]
        assert manifest["samples"]["total"] == 4
        assert manifest["dropped"][F.DROP_DUPLICATE] == 4
        kept = mine(config([tmp_path / "a", tmp_path / "b"], tmp_path / "out2", filters=F.FilterOptions(dedup=False)))
        assert kept["samples"]["total"] == 8

    def test_licence_allowlist(self, tmp_path):
        build_small_repo(tmp_path / "repos" / "mit", 3, license_text=MIT)
        build_small_repo(tmp_path / "repos" / "gpl", 3, license_text=GPL)
        build_small_repo(tmp_path / "repos" / "none", 3)
        manifest = mine(config([tmp_path / "repos"], tmp_path / "out",
                               filters=F.FilterOptions(licenses=("permissive",))))
        assert [(s["name"], s["license"]) for s in manifest["sources"]] == [("mit", "MIT")]
        assert manifest["samples"]["total"] == 3
        assert sorted(s["reason"] for s in manifest["skipped_sources"]) == [
            "licence not allowed (GPL-3.0)", "licence not allowed (no licence file)"]


class TestResume:
    def test_rerun_skips_finished_repositories(self, forest, tmp_path, capsys):
        out = tmp_path / "out"
        first = mine(config([forest], out, shard_bytes=2048))
        stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl.zst")}
        capsys.readouterr()
        second = mine(config([forest], out, shard_bytes=2048))
        err = capsys.readouterr().err
        assert err.count("already mined, skipped") == 6
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl.zst")} == stamps
        for key in ("samples", "commits", "dropped", "languages", "shards", "sources"):
            assert second[key] == first[key], key

    @pytest.mark.parametrize("also_stopped_while_cleaning", [False, True])
    def test_interrupted_run_resumes_without_loss_or_duplicates(self, forest, tmp_path, monkeypatch,
                                                                 also_stopped_while_cleaning):
        clean = mine(config([forest], tmp_path / "clean", shard_bytes=1024, batch_size=2))
        out = tmp_path / "out"
        real = mine_run._run_task
        calls = {"n": 0}

        def flaky(task):
            calls["n"] += 1
            if calls["n"] == 12:  # in the middle of the fourth repository (3 batches each)
                raise KeyboardInterrupt
            return real(task)

        monkeypatch.setattr(mine_run, "_run_task", flaky)
        with pytest.raises(KeyboardInterrupt):
            mine(config([forest], out, shard_bytes=1024, batch_size=2))
        monkeypatch.setattr(mine_run, "_run_task", real)
        done = list((out / ".state" / "done").glob("*.json"))
        assert 0 < len(done) < 6
        assert not (out / "manifest.json").exists()
        assert not list(out.rglob("*.tmp"))
        # A killed run would also leave the shard it was writing; it must not count as complete.
        (out / "train" / "train-00099.jsonl.zst.tmp").write_bytes(b"half a shard")
        if also_stopped_while_cleaning:
            # A rerun stopped after cutting a shard down to its finished lines, before updating its index.
            done_tags = {json.loads(p.read_text())["tag"] for p in done}
            cut = 0
            for split in SPLITS:
                for shard in complete_shards(out / split, split):
                    runs = json.loads((out / ".state" / "shards" / shard.name.replace(".jsonl.zst", ".json")).read_text())["runs"]
                    tags = [tag for tag, n in runs for _ in range(n)]
                    if set(tags) <= done_tags:
                        continue
                    kept = [row for tag, row in zip(tags, read_shard(shard)) if tag in done_tags]
                    if not kept:
                        continue
                    with ShardWriter(tmp_path / "cut", "x") as w:
                        for row in kept:
                            w.write(json.dumps(row, ensure_ascii=False).encode())
                    (tmp_path / "cut" / "x-00000.jsonl.zst").replace(shard)
                    cut += 1
            assert cut
        resumed = mine(config([forest], out, shard_bytes=1024, batch_size=2))
        assert not list(out.rglob("*.tmp"))
        key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
        assert sorted(map(key, all_rows(out))) == sorted(map(key, all_rows(tmp_path / "clean")))
        for field in ("samples", "commits", "dropped", "languages", "changed_files"):
            assert resumed[field] == clean[field], field
        assert any("unfinished file(s)" in w for w in resumed["warnings"])
        # Complete shards held samples of the repository being mined; they were cut out and mined again.
        trimmed = [w for w in resumed["warnings"] if "held samples of unfinished sources" in w]
        assert len(trimmed) == 1 and trimmed[0].endswith("; the unfinished sources are mined again")  # one line for all shards

    def test_other_options_are_refused_and_overwrite_starts_again(self, forest, tmp_path):
        out = tmp_path / "out"
        mine(config([forest / "org" / "repo0"], out))
        with pytest.raises(DiffModelError, match=r"other options \(changed: context\).*--overwrite"):
            mine(config([forest / "org" / "repo0"], out, context=1))
        manifest = mine(config([forest / "org" / "repo0"], out, context=1, overwrite=True))
        assert manifest["options"]["context"] == 1 and manifest["samples"]["total"] == 5

    def test_a_folder_of_other_files_is_refused(self, forest, tmp_path):
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "notes.txt").write_text("mine")
        with pytest.raises(DiffModelError, match="is not the output of diffmodel mine"):
            mine(config([forest / "org" / "repo0"], tmp_path / "out"))


def test_workers_give_the_same_shards(forest, tmp_path):
    one = mine(config([forest], tmp_path / "one", shard_bytes=1500, batch_size=2))
    two = mine(config([forest], tmp_path / "two", shard_bytes=1500, batch_size=2, workers=2))
    assert one["shards"] == two["shards"]
    assert shard_rows(tmp_path / "one") == shard_rows(tmp_path / "two")


#: The example of docs/mine.md, "From Python", as a script without an ``if __name__ == "__main__":`` guard.
UNGUARDED_EXAMPLE = """\
from diffmodel.mine.run import MineConfig, mine
manifest = mine(MineConfig(inputs=["repos/"], output="out", workers={workers}))
print("samples:", manifest["samples"]["total"])
"""


@pytest.fixture(scope="module")
def example_repos(tmp_path_factory):
    base = tmp_path_factory.mktemp("example") / "repos"
    for i in range(2):
        build_small_repo(base / f"repo{i}", 5, prefix=f"e{i}")
    return base


def run_example(folder: Path, repos: Path, script: str) -> subprocess.CompletedProcess:
    (folder / "repos").symlink_to(repos, target_is_directory=True)
    (folder / "example.py").write_text(script)
    return subprocess.run([sys.executable, "example.py"], cwd=folder, capture_output=True, text=True, timeout=120)


class TestScriptWithoutMainGuard:
    """Worker processes import the main script: one that calls mine() unguarded must not hang."""

    def test_one_worker_mines_in_this_process(self, example_repos, tmp_path):
        proc = run_example(tmp_path, example_repos, UNGUARDED_EXAMPLE.format(workers=1))
        assert (proc.returncode, proc.stdout) == (0, "samples: 10\n"), proc.stderr

    @pytest.mark.parametrize("workers", [2, 4])
    def test_several_workers_stop_with_the_fix(self, example_repos, tmp_path, workers):
        proc = run_example(tmp_path, example_repos, UNGUARDED_EXAMPLE.format(workers=workers))
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.rstrip().splitlines()[-1] == (
            "diffmodel.errors.DiffModelError: a mining worker process stopped before it returned its work "
            f"(workers={workers}). Worker processes start by importing the main script: if mine() is called from "
            "a script, call it under `if __name__ == \"__main__\":` (the worker's own error is above), or pass workers=1")
        # Each worker that got as far as the script's mine() call says why, once: nothing was restarted.
        told = proc.stderr.count("mine() was called while a worker process was importing the main script")
        assert 1 <= told <= workers
        assert not list((tmp_path / "out").rglob("*.jsonl.zst"))

    def test_guarded_script_mines_with_two_workers(self, example_repos, tmp_path):
        body = UNGUARDED_EXAMPLE.format(workers=2).splitlines()
        script = body[0] + "\nif __name__ == \"__main__\":\n" + "".join(f"    {line}\n" for line in body[1:])
        proc = run_example(tmp_path, example_repos, script)
        assert (proc.returncode, proc.stdout) == (0, "samples: 10\n"), proc.stderr


def test_commitpack_rows(tmp_path):
    import zstandard

    rows = []
    for i in range(12):
        rows.append({"commit": f"{i:040x}", "old_file": f"pkg/m{i}.py", "new_file": f"pkg/m{i}.py",
                     "old_contents": f"X = {i}\n", "new_contents": f"X = {i + 1}\n",
                     "subject": f"Increase X of module {i}", "message": f"Increase X of module {i}\n",
                     "lang": "Python", "license": "mit", "repos": f"owner/project{i % 4}"})
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "cp.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    manifest = mine(MineConfig(rows=[str(tmp_path / "cp.jsonl.zst")], output=str(tmp_path / "out"), workers=1,
                               progress=False, validation_fraction=0.25, test_fraction=0.25))
    assert manifest["split_by"] == "repository"
    assert manifest["samples"]["total"] == 12
    assert manifest["rows_converted"] == 12 and manifest["changed_files"] == 12
    for split, split_rows in shard_rows(tmp_path / "out").items():
        for row in split_rows:
            assert assign_split(row["repository"], 0.25, 0.25) == split
            assert row["diff"].startswith("@@ -1 +1 @@\n-X = ")


def test_a_row_file_row_without_new_contents_is_a_bad_row_not_a_deletion(tmp_path):
    good = {"commit": "1" * 40, "old_file": "a.py", "new_file": "a.py", "old_contents": "y = 1\n", "new_contents": "y = 2\n",
            "subject": "Set y to 2", "message": "Set y to 2\n", "lang": "Python", "repos": "o/p"}
    missing = {k: v for k, v in good.items() if k != "new_contents"} | {"commit": "2" * 40}
    (tmp_path / "rows.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(missing) + "\n")
    manifest = mine(MineConfig(rows=[str(tmp_path / "rows.jsonl")], output=str(tmp_path / "out"), workers=1, progress=False,
                               validation_fraction=0, test_fraction=0))
    assert manifest["samples"]["total"] == 1
    assert [r["diff"] for rows in shard_rows(tmp_path / "out").values() for r in rows] == ["@@ -1 +1 @@\n-y = 1\n+y = 2\n"]
    assert manifest["dropped"]["bad_row"] == 1


def test_row_file_mistakes_name_the_file_and_the_fix(tmp_path):
    from diffmodel.mine.convert import read_rows

    (tmp_path / "bad.jsonl").write_text('{"commit": "1"}\n{"commit": \n')
    with pytest.raises(DiffModelError, match=r"bad.jsonl:2: not valid JSON .*\. Fix or remove that row\.$"):
        list(read_rows(tmp_path / "bad.jsonl"))
    with pytest.raises(DiffModelError, match=r"--rows .*: is a folder; give one file of rows"):
        list(read_rows(tmp_path))


ROW = {"old_file": "a.py", "new_file": "a.py", "old_contents": "y = 1\n", "new_contents": "y = 2\n",
       "message": "Set y to 2\n", "repos": "o/p"}


def test_rows_of_one_file_may_differ_in_their_optional_columns(tmp_path):
    other = {k: v for k, v in ROW.items() if k != "message"} | {
        "new_file": "b.py", "old_file": "b.py", "new_contents": "y = 3\n", "subject": "Set y of b to 3", "lang": "Python"}
    (tmp_path / "rows.jsonl").write_text(json.dumps(ROW) + "\n" + json.dumps(other) + "\n")
    manifest = mine(MineConfig(rows=[str(tmp_path / "rows.jsonl")], output=str(tmp_path / "out"), workers=1,
                               progress=False, validation_fraction=0, test_fraction=0))
    assert manifest["samples"]["total"] == 2
    assert sorted((r["name"], r["message"]) for r in all_rows(tmp_path / "out")) == [
        ("a.py", "Set y to 2"), ("b.py", "Set y of b to 3")]


def test_an_empty_row_file_is_named_as_holding_no_rows(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    rows = str(tmp_path / "empty.jsonl")
    with pytest.raises(DiffModelError) as err:
        mine(MineConfig(rows=[rows], output=str(tmp_path / "out"), workers=1, progress=False))
    assert str(err.value) == f"no samples were written to {tmp_path / 'out'}: the row file(s) held no rows (--rows {rows})"


@pytest.mark.parametrize("mistake", ["missing rows", "rows folder", "rev", "rev in a folder", "tokenizer"])
def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_command(tmp_path, capsys, mistake):
    repo = build_small_repo(tmp_path / "repos" / "proj", 3).path
    (tmp_path / "rows.jsonl").write_text(json.dumps(ROW) + "\n")
    (tmp_path / "folder").mkdir()
    out, rows = tmp_path / "out", str(tmp_path / "rows.jsonl")
    wrong, right, message = {
        "missing rows": (["--rows", rows + "x"], ["--rows", rows],
                         f"diffmodel mine cannot start:\n  - --rows {rows}x: no such file"),
        "rows folder": (["--rows", str(tmp_path / "folder")], ["--rows", rows],
                        f"diffmodel mine cannot start:\n  - --rows {tmp_path / 'folder'}: is a folder; give one "
                        f"file of rows (one --rows per file)"),
        "rev": ([str(repo), "--rev", "nosuch"], [str(repo)], f"{repo}: revision 'nosuch' does not name a commit (see --rev)"),
        "rev in a folder": ([str(tmp_path / "repos"), "--rev", "nosuch"], [str(tmp_path / "repos")],
                            f"--rev 'nosuch' names a commit in no repository found in {tmp_path / 'repos'} (see --rev)"),
        "tokenizer": ([str(repo), "--tokenizer_name", str(tmp_path / "nope")], [str(repo)],
                      f"--tokenizer_name {tmp_path / 'nope'}: no such folder"),
    }[mistake]
    common = ["mine", "-o", str(out), "--no_progress", "--workers", "1"]
    assert cli_main(common + wrong) == 2
    assert capsys.readouterr().err.startswith(f"diffmodel mine: error: {message}")
    assert not out.exists()
    assert cli_main(common + right) == 0
    assert capsys.readouterr().out.startswith("wrote ")


class TestCommandLine:
    def test_mine_prints_a_summary(self, story, tmp_path, capsys):
        assert cli_main(["mine", str(story), "-o", str(tmp_path / "out"), "--no-progress", "--workers", "1",
                         "--shard-size", "4KB", "--languages", "python,markdown"]) == 0
        out = capsys.readouterr().out
        assert "wrote 8 samples" in out and "language 3" in out and "binary 1" in out

    def test_errors_are_one_paragraph(self, tmp_path, capsys):
        (tmp_path / "plain").mkdir()
        assert cli_main(["mine", str(tmp_path / "plain"), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "diffmodel mine: error:" in err and "is not a git repository" in err
        assert not (tmp_path / "out").exists()

    def test_unknown_languages_are_refused_with_close_matches(self, story, tmp_path, capsys):
        assert cli_main(["mine", str(story), "-o", str(tmp_path / "o"), "--languages", "python,Pythn,py,all"]) == 2
        assert capsys.readouterr().err == (
            "diffmodel mine: error: diffmodel mine cannot start:\n"
            "  - --languages Pythn: not a known language (did you mean Python, Cython?); the names are listed in "
            "docs/mine.md\n"
            "  - --languages py: not a known language (did you mean Python?); the names are listed in docs/mine.md\n")
        assert not (tmp_path / "o").exists()

    def test_with_rows_an_unknown_language_is_a_warning_and_matches_the_lang_column(self, tmp_path):
        row = ROW | {"old_file": "lib.jsonnet", "new_file": "lib.jsonnet", "lang": "Jsonnet"}
        (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
        manifest = mine(MineConfig(rows=[str(tmp_path / "rows.jsonl")], output=str(tmp_path / "out"), workers=1,
                                   progress=False, filters=F.FilterOptions(languages=("jsonnet",))))
        assert manifest["languages"] == {"Jsonnet": 1}
        assert manifest["warnings"] == [
            "--languages jsonnet: not a known language (did you mean JSON?); the names are listed in docs/mine.md. "
            "With --rows it still matches rows whose lang column says so",
            "the validation and test splits got no sample (--validation_fraction 0.05 and --test_fraction 0.05 of 1 "
            f"sample(s), split by repository): {tmp_path / 'out'} has no validation/ or test/ folder for "
            "--validation_file or diffmodel eval; mine more history or loosen the filters, or raise "
            "--validation_fraction and --test_fraction"]

    def test_max_tokens_needs_a_tokenizer(self, story, tmp_path, capsys):
        assert cli_main(["mine", str(story), "-o", str(tmp_path / "o"), "--max-tokens", "100"]) == 2
        assert "--max_tokens needs --tokenizer_name" in capsys.readouterr().err

    def test_bad_values_are_reported_together(self, story, tmp_path, capsys):
        assert cli_main(["mine", str(story), "-o", str(tmp_path / "o"), "--context", "-1", "--workers", "0",
                         "--test-fraction", "1.5"]) == 2
        err = capsys.readouterr().err
        assert "--context must be >= 0" in err and "--workers must be >= 1" in err and "--test_fraction" in err


def test_token_limit_with_a_tokenizer(story, tmp_path, tiny_gpt2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    lengths = sorted(len(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in iter_samples(story))
    limit = lengths[len(lengths) // 2]
    manifest = mine(config([story], tmp_path / "out", tokenizer=str(tiny_gpt2_dir),
                           filters=F.FilterOptions(max_tokens=limit)))
    assert manifest["samples"]["total"] == sum(n <= limit for n in lengths)
    assert manifest["dropped"][F.DROP_TOKENS] == sum(n > limit for n in lengths)


def test_diffmodel_train_runs_on_mined_output(story, tmp_path, tiny_gpt2_dir):
    from diffmodel.commands.train import main as train_main

    mine(config([story], tmp_path / "mined", validation_fraction=0.0, test_fraction=0.0))
    out = tmp_path / "train_out"
    args = ["--model_name_or_path", str(tiny_gpt2_dir), "--train_file", str(tmp_path / "mined" / "train" / "*.jsonl.zst"),
            "--output_dir", str(out), "--train_diff_model", "--block_size", "256", "--concatenate_texts",
            "--do_train", "--max_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none",
            "--save_strategy", "no", "--validation_split_percentage", "0", "--cache_dir", str(tmp_path / "cache")]
    assert train_main(args) == 0
    results = json.loads((out / "train_results.json").read_text())
    assert results["train_loss"] > 0


def test_a_held_out_split_that_got_no_sample_is_named_with_the_fix(tmp_path, capsys):
    repo = build_small_repo(tmp_path / "proj", 3).path
    out = tmp_path / "out"
    assert cli_main(["mine", str(repo), "-o", str(out), "--no_progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == {"total": 3, "train": 2, "validation": 0, "test": 1}
    warning = (f"the validation split got no sample (--validation_fraction 0.05 of 3 sample(s), split by commit): {out} "
               "has no validation/ folder for --validation_file or diffmodel eval; mine more history or loosen the "
               "filters, or raise --validation_fraction")
    assert manifest["warnings"] == [warning]
    assert capsys.readouterr().err == f"diffmodel mine: warning: {warning}\n"
    assert sorted(p.name for p in out.iterdir()) == [".state", "manifest.json", "test", "train"]
    # splits not asked for (fraction 0) are not warned about
    assert cli_main(["mine", str(repo), "-o", str(tmp_path / "out0"), "--no_progress", "--validation_fraction", "0",
                     "--test_fraction", "0"]) == 0
    assert json.loads((tmp_path / "out0" / "manifest.json").read_text())["warnings"] == []
    assert capsys.readouterr().err == ""
