"""``diffmodel mine`` on awkward inputs and when stopped: odd file names, wrong output paths, runs that
wrote nothing, SIGTERM and SIGKILL of the main process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffmodel.cli import main as cli_main
from diffmodel.mine.run import MineConfig, mine
from diffmodel.mine.samples import iter_samples
from diffmodel.mine.shards import complete_shards, read_shard
from diffmodel.mine.split import SPLITS
from mine_gitrepo import GitRepo, build_small_repo

SRC = str(Path(__file__).resolve().parents[1] / "src")


def rows_by_split(out: Path) -> dict[str, list[str]]:
    return {s: sorted(json.dumps(r, sort_keys=True) for p in complete_shards(out / s, s) for r in read_shard(p))
            for s in SPLITS}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def end_all(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


class TestFileNamesThatAreNotUtf8:
    @pytest.fixture
    def repo(self, tmp_path):
        r = GitRepo(tmp_path / "names")
        r.write("good.py", "x = 1\n")
        (r.path / os.fsdecode(b"caf\xe9.py")).write_bytes(b"".join(b"y%d = 1\n" % i for i in range(10)))
        r.commit("Add two files with different names")
        return r

    def test_iter_samples_skips_the_file(self, repo):
        assert [row["name"] for row in iter_samples(repo.path)] == ["good.py"]

    def test_counted_as_non_utf8(self, repo, tmp_path):
        manifest = mine(MineConfig(inputs=[str(repo.path)], output=str(tmp_path / "out"), workers=1, progress=False))
        assert manifest["samples"]["total"] == 1
        assert manifest["dropped"]["non_utf8"] == 1
        assert [r["name"] for rows in shard_rows_lists(tmp_path / "out") for r in rows] == ["good.py"]

    def test_renamed_from_a_name_that_is_not_utf8(self, repo):
        repo.git("mv", os.fsdecode(b"caf\xe9.py"), "cafe.py")
        repo.write("cafe.py", "".join(f"y{i} = {2 if i == 4 else 1}\n" for i in range(10)))
        repo.commit("Rename the file and change it")
        assert "R" in repo.git("show", "--name-status", "-M", "--format=", "HEAD")
        assert [row["name"] for row in iter_samples(repo.path)] == ["good.py"]


def shard_rows_lists(out: Path) -> list[list[dict]]:
    return [[r for p in complete_shards(out / s, s) for r in read_shard(p)] for s in SPLITS]


def test_an_output_dir_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    repo = build_small_repo(tmp_path / "proj", 2).path
    (tmp_path / "taken").write_text("mine\n")
    assert cli_main(["mine", str(repo), "-o", str(tmp_path / "taken"), "--no_progress", "--workers", "1"]) == 2
    assert capsys.readouterr().err == (
        "diffmodel mine: error: diffmodel mine cannot start:\n"
        f"  - --output_dir {tmp_path / 'taken'} is a file, not a folder; choose a new or empty folder\n")
    assert (tmp_path / "taken").read_text() == "mine\n"


def test_a_run_that_wrote_nothing_is_rerun_with_looser_filters(tmp_path, capsys):
    repo = build_small_repo(tmp_path / "proj", 3).path
    out = tmp_path / "out"
    common = ["mine", str(repo), "-o", str(out), "--no_progress", "--workers", "1"]
    assert cli_main(common + ["--min_message_words", "50"]) == 2
    assert "Loosen the filters named there" in capsys.readouterr().err
    assert cli_main(common) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"diffmodel mine: warning: {out} holds no samples of its earlier run; "
                            f"starting it again with these options\n"
                            f"diffmodel mine: warning: the validation split got no sample (--validation_fraction 0.05 "
                            f"of 3 sample(s), split by commit): {out} has no validation/ folder for --validation_file "
                            f"or diffmodel eval; mine more history or loosen the filters, or raise "
                            f"--validation_fraction\n")
    assert captured.out.startswith("wrote 3 samples")
    assert json.loads((out / ".state" / "options.json").read_text())["options"]["filters"]["min_message_words"] == 2


def test_other_options_are_still_refused_once_samples_were_written(tmp_path, capsys):
    repo = build_small_repo(tmp_path / "proj", 3).path
    out = tmp_path / "out"
    common = ["mine", str(repo), "-o", str(out), "--no_progress", "--workers", "1"]
    assert cli_main(common) == 0
    capsys.readouterr()
    assert cli_main(common + ["--context", "1"]) == 2
    assert capsys.readouterr().err == (
        f"diffmodel mine: error: {out} was mined with other options (changed: context); use a new --output_dir, "
        f"or pass --overwrite to start that folder again\n")


def test_every_repository_skipped_by_licence_is_named(tmp_path, capsys):
    repo = build_small_repo(tmp_path / "proj", 2).path
    assert cli_main(["mine", str(repo), "-o", str(tmp_path / "out"), "--licenses", "MIT", "--no_progress",
                     "--workers", "1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"diffmodel mine: error: no samples were written to {tmp_path / 'out'}: every repository was skipped "
        f"(proj: licence not allowed (no licence file)). See --licenses, or pass other repositories")


# A worker pool whose first task has come back, so every worker started is initialised and idle;
# then the main process waits to be killed.
KILLED_POOL = """
import multiprocessing, sys, time
sys.path.insert(0, {src!r})
from diffmodel.mine import run
if __name__ == "__main__":
    for _ in run._ordered(iter([("rows", 0, True, [])]), 2, run.SampleOptions(), None, window=1):
        print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
        time.sleep(120)
"""


def test_workers_end_when_the_main_process_is_killed(tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(KILLED_POOL.format(src=SRC))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    workers = [int(p) for p in proc.stdout.readline().split()]
    try:
        assert workers
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in workers if alive(p)] == []
    finally:
        proc.kill()
        end_all(workers)


# Mines with two workers; after the first shard is complete the main process waits (as in a long run).
STOPPED_RUN = """
import multiprocessing, sys, time
sys.path.insert(0, {src!r})
from diffmodel.mine import run
close_shard = run.ShardWriter.close_shard

def close_then_wait(self):
    info = close_shard(self)
    if info is not None:
        print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
        time.sleep(120)
    return info

if __name__ == "__main__":
    run.ShardWriter.close_shard = close_then_wait
    from diffmodel.cli import main
    sys.exit(main(["mine", {repo!r}, "-o", {out!r}, "--workers", "2", "--batch_size", "1", "--shard_size", "1KB",
                   "--no_progress"]))
"""


def test_sigterm_drops_open_shards_stops_the_workers_and_resumes(tmp_path):
    repo = build_small_repo(tmp_path / "proj", 12).path
    out = tmp_path / "out"
    script = tmp_path / "stopped.py"
    script.write_text(STOPPED_RUN.format(src=SRC, repo=str(repo), out=str(out)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    workers = [int(p) for p in proc.stdout.readline().split()]
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        assert err.endswith("diffmodel mine: stopped by SIGTERM; run the same command to resume\n")
        assert sorted(p.name for p in out.rglob("*.tmp")) == []
        assert [p for p in workers if alive(p)] == []
    finally:
        proc.kill()
        end_all(workers)
    assert cli_main(["mine", str(repo), "-o", str(out), "--workers", "1", "--batch_size", "1", "--shard_size", "1KB",
                     "--no_progress"]) == 0
    fresh = tmp_path / "fresh"
    assert cli_main(["mine", str(repo), "-o", str(fresh), "--workers", "1", "--shard_size", "1KB",
                     "--no_progress"]) == 0
    assert rows_by_split(out) == rows_by_split(fresh)
    assert sum(len(v) for v in rows_by_split(out).values()) == 12
