"""Mining speed: ``diffmodel mine`` against ``git log -p`` (the floor) and PyDriller, one repository.

    python benchmarks/mine_speed.py REPO [--workers 1 2] [--pydriller-python PY] [--pydriller-commits 600]

Prints one Markdown table. Each tool walks the non-merge history of HEAD:

- ``git log -p --no-merges``: git alone writing every patch (to /dev/null);
  the speed no tool built on git can beat by much.
- ``diffmodel mine``: the whole job (filters, dedup, split, compressed shards),
  into a fresh folder, for each ``--workers`` value.
- PyDriller: for each modified file, the file before and the diff (what a
  diff sample needs), for the first ``--pydriller-commits`` commits (it is
  slow; its rate is steady over a run). ``--pydriller-python`` is a Python
  that has PyDriller installed (it is not a dependency of diffmodel).

Rates are commits/s (non-merge commits walked) and changed files/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

PYDRILLER_SCRIPT = r"""
import sys, time, json
from pydriller import Repository
path, limit = sys.argv[1], int(sys.argv[2])
start = time.perf_counter()
commits = files = 0
for commit in Repository(path, only_no_merge=True).traverse_commits():
    for m in commit.modified_files:
        _ = m.source_code_before, m.diff
        files += 1
    commits += 1
    if commits >= limit:
        break
print(json.dumps({"seconds": time.perf_counter() - start, "commits": commits, "files": files}))
"""


def git_count(repo: str, *args: str) -> int:
    return int(subprocess.run(["git", "-C", repo, "rev-list", "--count", *args, "HEAD"], check=True,
                              capture_output=True, text=True).stdout)


def time_git_log(repo: str) -> float:
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run(["git", "-C", repo, "log", "-p", "--no-merges", "HEAD"], stdout=null, check=True)
    return time.perf_counter() - start


def time_mine(repo: str, workers: int) -> tuple[float, dict]:
    out = tempfile.mkdtemp(prefix="mine_bench_")
    try:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "diffmodel.cli", "mine", repo, "-o", os.path.join(out, "o"),
                        "--workers", str(workers), "--no_progress"], check=True, capture_output=True)
        seconds = time.perf_counter() - start
        with open(os.path.join(out, "o", "manifest.json")) as fh:
            return seconds, json.load(fh)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def time_pydriller(python: str, repo: str, limit: int) -> dict:
    proc = subprocess.run([python, "-c", PYDRILLER_SCRIPT, repo, str(limit)], check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("repo")
    p.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    p.add_argument("--pydriller-python", default=None)
    p.add_argument("--pydriller-commits", type=int, default=600)
    args = p.parse_args()

    non_merge = git_count(args.repo, "--no-merges")
    rows = []
    git_s = time_git_log(args.repo)
    rows.append(("git log -p --no-merges", git_s, non_merge, None, "1.0x"))
    for workers in dict.fromkeys(args.workers):
        seconds, manifest = time_mine(args.repo, workers)
        rows.append((f"diffmodel mine --workers {workers}", seconds, non_merge, manifest["changed_files"],
                     f"{seconds / git_s:.1f}x"))
        samples = manifest["samples"]["total"]
    if args.pydriller_python:
        r = time_pydriller(args.pydriller_python, args.repo, args.pydriller_commits)
        est = r["seconds"] / r["commits"] * non_merge
        rows.append((f"PyDriller (first {r['commits']} commits)", r["seconds"], r["commits"], r["files"],
                     f"{est / git_s:.1f}x (est. {est:.0f} s for all)"))

    print(f"Repository: {args.repo} ({non_merge} non-merge commits; diffmodel mine wrote {samples} samples)  ")
    print(f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{subprocess.run(['git', '--version'], capture_output=True, text=True).stdout.strip()}\n")
    print("| tool | seconds | commits/s | changed files/s | time vs git log -p (whole history) |")
    print("|---|---:|---:|---:|---|")
    for name, seconds, commits, files, ratio in rows:
        files_rate = f"{files / seconds:.0f}" if files is not None else "-"
        print(f"| {name} | {seconds:.1f} | {commits / seconds:.0f} | {files_rate} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
