"""Run a mining job into an output folder: workers, dedup, split, shards, resume, manifest.

Output layout::

    OUT/train/train-00000.jsonl.zst        complete shards (size-bounded)
    OUT/validation/validation-00000.jsonl.zst
    OUT/test/test-00000.jsonl.zst
    OUT/manifest.json                      counts, languages, repositories, shards, options
    OUT/.state/options.json                the options the folder was mined with
    OUT/.state/done/<id>.json              one per finished source (repository or rows file)
    OUT/.state/shards/<shard>.json         which source wrote which lines of a shard

Sources (repositories, CommitPack-style row files) are cut into batches of
commits (rows) that worker processes turn into samples; the main process
takes the results back *in order*, drops exact duplicates, and writes each
sample to the shard of its split. Only a bounded window of batches is in
flight, so memory is bounded by the batch size, not by the history.

Workers are ``spawn`` processes (no fork of a process that may hold threads),
which import the main script before they start. A worker that dies is never
replaced: the run stops with a :class:`DiffModelError`. A script that calls
:func:`mine` without an ``if __name__ == "__main__":`` guard would call it
again in every worker while it imports; that call raises at once, before it
touches the output folder, naming the fix. A worker ends itself once the
main process is gone (even after SIGKILL), and ignores SIGTERM: the main
process turns SIGTERM into :class:`Terminated` (exit status 143), dropping the
open shards and stopping the pool, so the same command resumes.

Resume invariants:
- A source's done-marker is written only once every shard holding its samples
  is complete on disk; a rerun skips sources with a marker.
- An interrupted shard only exists as ``*.tmp`` and is deleted by the rerun.
- A complete shard that holds samples of a source without a marker (the run
  stopped while that source was being mined) is rewritten without them, so
  the rerun mines that source again without duplicating it.
- The options that change the output are stored; a rerun with other options
  is refused (use a new ``--output_dir`` or ``--overwrite``). So the inputs
  (row files, ``--rev``, the tokenizer, language names) are checked before
  the output folder is touched.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from diffmodel import formats
from diffmodel.errors import DiffModelError, raise_if_problems
from diffmodel.mine import filters as F
from diffmodel.mine.convert import DROP_BAD_ROW, convert_rows, read_rows, row_file_problem
from diffmodel.mine.git import CatFile
from diffmodel.mine.languages import unknown_languages
from diffmodel.mine.repos import (
    COMMITS_EMPTY, COMMITS_LISTED, COMMITS_MERGE, COMMITS_SHALLOW, COMMITS_USED,
    Repository, ShallowCloneWarning, find_repositories, list_commits, open_repository, read_license,
    repository_names, resolve_commit,
)
from diffmodel.mine.samples import ChunkResult, SampleOptions, mine_commits
from diffmodel.mine.shards import (
    DEFAULT_SHARD_BYTES, ShardWriter, complete_shards, count_lines, read_shard, remove_tmp_files,
    shard_index, write_json_atomic,
)
from diffmodel.mine.split import SPLITS, check_fractions, resolve_split_by

STATE_DIR = ".state"
MANIFEST = "manifest.json"
FORMAT = "diffmodel-mine/1"


@dataclass
class MineConfig:
    """Everything ``diffmodel mine`` needs; see ``diffmodel mine --help`` for each option."""

    inputs: list[str] = field(default_factory=list)
    """Git repositories, or folders searched for them."""
    output: str = "mined"
    rows: list[str] = field(default_factory=list)
    """CommitPack-style row files (``.jsonl``, ``.jsonl.zst``, ``.json``, ``.parquet``) to convert too."""
    rev: str = "HEAD"
    first_parent: bool = False
    context: int = 3
    keep_deleted: bool = False
    filters: F.FilterOptions = field(default_factory=F.FilterOptions)
    tokenizer: str | None = None
    split_by: str = "auto"
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    shard_bytes: int = DEFAULT_SHARD_BYTES
    workers: int = 1
    batch_size: int = 64
    """Commits (or rows) per batch handed to a worker."""
    overwrite: bool = False
    progress: bool = True
    edit_format: str = "carper"
    """The edit format each sample's ``text`` is written in."""

    def output_options(self) -> dict:
        """The options that change what is written (compared on resume)."""
        return {
            "rev": self.rev, "first_parent": self.first_parent, "context": self.context,
            "keep_deleted": self.keep_deleted, "filters": self.filters.to_dict(),
            "tokenizer": self.tokenizer, "split_by": self.split_by,
            "validation_fraction": self.validation_fraction, "test_fraction": self.test_fraction,
            "shard_bytes": self.shard_bytes,
            # only when not the default, so outputs written before the flag existed still resume
            **({"edit_format": self.edit_format} if self.edit_format != "carper" else {}),
        }

    def problems(self) -> list[str]:
        """Every problem with these options, each naming its flag (empty when they are fine)."""
        problems = []
        if not self.inputs and not self.rows:
            problems.append("nothing to mine: pass git repositories (or folders of them) and/or --rows FILE")
        problems.extend(filter(None, map(row_file_problem, self.rows)))
        if os.path.exists(self.output) and not os.path.isdir(self.output):
            problems.append(f"--output_dir {self.output} is a file, not a folder; choose a new or empty folder")
        if self.context < 0:
            problems.append(f"--context must be >= 0, got {self.context}")
        try:
            formats.get(self.edit_format)
        except DiffModelError as err:
            problems.append(str(err))
        if self.workers < 1:
            problems.append(f"--workers must be >= 1, got {self.workers}")
        if self.batch_size < 1:
            problems.append(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.shard_bytes < 1024:
            problems.append(f"--shard_size must be at least 1 KB, got {self.shard_bytes} bytes")
        f = self.filters
        for lo, hi, flag in ((f.min_message_chars, f.max_message_chars, "message_chars"),
                             (f.min_message_words, f.max_message_words, "message_words")):
            if lo < 0 or hi < lo:
                problems.append(f"--min_{flag} ({lo}) must be >= 0 and <= --max_{flag} ({hi})")
        for value, flag in ((f.max_before_chars, "--max_before_chars"), (f.max_diff_chars, "--max_diff_chars")):
            if value < 1:
                problems.append(f"{flag} must be >= 1, got {value}")
        if f.max_tokens is not None and f.max_tokens < 1:
            problems.append(f"--max_tokens must be >= 1, got {f.max_tokens}")
        if not self.rows:  # a row's lang column may name any language
            problems.extend(unknown_languages(f.languages or ()))
        try:
            check_fractions(self.validation_fraction, self.test_fraction)
        except DiffModelError as err:
            problems.append(str(err))
        return problems

    def validate(self) -> None:
        """Raise one DiffModelError listing every problem (see :meth:`problems`)."""
        raise_if_problems(self.problems(), "diffmodel mine cannot start")


# ------------------------------------------------------------------ sources

@dataclass
class Source:
    """One thing to mine: a repository or a file of CommitPack-style rows."""

    kind: str  # "git" | "rows"
    name: str
    path: Path
    repo: Repository | None = None
    commits: list[str] = field(default_factory=list)
    list_counts: Counter = field(default_factory=Counter)
    license_file: str = ""
    license: str = ""

    @property
    def tag(self) -> str:
        return f"{self.kind}:{self.name}" if self.kind == "git" else f"rows:{self.path}"

    @property
    def marker_id(self) -> str:
        return hashlib.sha256(self.tag.encode("utf-8")).hexdigest()[:20]


def _discover(config: MineConfig) -> list[tuple[Path, bool]]:
    """Repository paths (absolute, each once) with whether the user named them directly."""
    found: list[tuple[Path, bool]] = []
    for item in config.inputs:
        path = Path(item)
        repos = find_repositories(path)
        explicit = len(repos) == 1 and repos[0] == path
        found.extend((Path(os.path.abspath(r)), explicit) for r in repos)
    unique: dict[Path, bool] = {}
    for path, explicit in found:
        unique[path] = unique.get(path, False) or explicit
    return list(unique.items())


# ------------------------------------------------------------------ worker side

_WORKER: dict = {}


def _load_token_counter(tokenizer: str | None):
    if not tokenizer:
        return None
    from diffmodel.checkpoint import check_tokenizer_source

    check_tokenizer_source(tokenizer, "--tokenizer_name")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
    except Exception as err:  # any loading problem is the user's path or name
        raise DiffModelError(f"--tokenizer_name {tokenizer}: could not load a tokenizer ({err})") from None
    tok.model_max_length = 1 << 62  # counting only: no "sequence too long" warnings

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return count


def _exit_with_parent(parent: int, every: float = 0.5) -> None:
    """End this worker process once its parent is gone (killed, or ended without shutting the pool
    down): an idle worker waits on the task queue forever and would otherwise outlive the run."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="diffmodel-mine-parent-watch", daemon=True).start()


def _init_pool_worker(options: SampleOptions, tokenizer: str | None, parent: int) -> None:
    # SIGTERM sent to the whole process group (timeout, a scheduler) is the main process's to handle:
    # it stops the pool; a worker that died of it first would look like a broken worker.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _exit_with_parent(parent)
    _init_worker(options, tokenizer)


def _init_worker(options: SampleOptions, tokenizer: str | None) -> None:
    _WORKER.clear()
    _WORKER.update(options=options, count_tokens=_load_token_counter(tokenizer), cat=None)


def _close_worker() -> None:
    cat = _WORKER.get("cat")
    if cat is not None:
        cat[1].close()
    _WORKER.clear()


def _run_task(task: tuple) -> tuple[int, bool, ChunkResult]:
    kind, index, last, payload = task
    options, count_tokens = _WORKER["options"], _WORKER["count_tokens"]
    if kind == "rows":
        return index, last, convert_rows(payload, options, count_tokens)
    repo, commit_ids = payload
    cached = _WORKER.get("cat")
    if cached is None or cached[0] != repo.path:
        if cached is not None:
            cached[1].close()
        cached = (repo.path, CatFile(repo.path))
        _WORKER["cat"] = cached
    return index, last, mine_commits(repo, commit_ids, options, cached[1], count_tokens)


def _ordered(tasks: Iterable[tuple], workers: int, options: SampleOptions, tokenizer: str | None,
             window: int) -> Iterator[tuple[int, bool, ChunkResult]]:
    """Run tasks on ``workers`` processes (in-process for 1), yielding results in task order,
    with at most ``window`` tasks in flight."""
    if workers == 1:
        _init_worker(options, tokenizer)
        try:
            for task in tasks:
                yield _run_task(task)
        finally:
            _close_worker()
        return
    # A concurrent.futures pool, not multiprocessing.Pool: Pool replaces a worker
    # that dies while starting, forever; this one fails the pending work instead.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_pool_worker, initargs=(options, tokenizer, os.getpid()))
    pending: deque[Future] = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(_run_task, task))
            if len(pending) >= window:
                yield _result(pending.popleft(), workers)
        while pending:
            yield _result(pending.popleft(), workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(future: Future, workers: int) -> tuple[int, bool, ChunkResult]:
    try:
        return future.result()
    except BrokenProcessPool:
        raise DiffModelError(
            f"a mining worker process stopped before it returned its work (workers={workers}). Worker processes "
            f"start by importing the main script: if mine() is called from a script, call it under "
            f"`if __name__ == \"__main__\":` (the worker's own error is above), or pass workers=1") from None


def _refuse_in_starting_worker() -> None:
    """Raise when called while this process is a worker importing the main script.

    That happens when a script calls :func:`mine` without a ``__main__``
    guard; going on would mine (and clean the output folder) once per worker.
    """
    # The flag multiprocessing sets while a spawned process imports the main
    # script (its own "bootstrapping phase" check reads it too).
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise DiffModelError(
            "mine() was called while a worker process was importing the main script: the script calls mine() "
            "without a guard. Put the call under `if __name__ == \"__main__\":` (worker processes import the "
            "script), or pass workers=1")


class Terminated(SystemExit):
    """SIGTERM stopped the run; it exits with 143 (128 + SIGTERM) once the open shards are dropped and
    the workers stopped. Rerunning the same command resumes."""


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """While mining, SIGTERM raises :class:`Terminated` (so unfinished shards are dropped and the worker
    processes stopped) instead of ending the process on the spot; a second SIGTERM ends it at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN or previous is None:
        yield
        return

    def on_sigterm(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print("\ndiffmodel mine: stopped by SIGTERM; run the same command to resume", file=sys.stderr)
        raise Terminated(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------ the run

class MineRun:
    """One ``diffmodel mine`` invocation (see the module docstring)."""

    def __init__(self, config: MineConfig) -> None:
        config.validate()
        self.config = config
        self.out = Path(config.output)
        self.state = self.out / STATE_DIR
        self.warnings: list[str] = []
        self.skipped: list[dict] = []
        self.seen: set[bytes] = set()
        self.done: dict[str, dict] = {}
        self.pending: dict[str, dict] = {}
        self.writers: dict[str, ShardWriter] = {}
        self.split_by = config.split_by
        self.discovered: list[tuple[Path, bool]] = []

    # -- messages
    def warn(self, message: str) -> None:
        self.warnings.append(message)
        print(f"diffmodel mine: warning: {message}", file=sys.stderr)

    # -- output folder
    def _check_start(self) -> None:
        """Fail before the output folder is touched, so that the corrected command is not refused for
        other options: a repository named directly that cannot be mined at --rev, a --rev naming a
        commit in no repository found in folders, a tokenizer that does not load. Warn for
        --languages names that only a row's lang column can match."""
        rev = self.config.rev
        for path, explicit in self.discovered:
            if explicit:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ShallowCloneWarning)  # warned when it is mined
                    open_repository(path, rev=rev)
        found = [path for path, explicit in self.discovered if not explicit]
        # HEAD names no commit only in an empty repository, which is skipped with a warning
        if found and rev != "HEAD" and not any(resolve_commit(path, rev) for path in found):
            raise DiffModelError(f"--rev {rev!r} names a commit in no repository found in "
                                 f"{', '.join(self.config.inputs)} (see --rev)")
        _load_token_counter(self.config.tokenizer)
        if self.config.rows:
            for message in unknown_languages(self.config.filters.languages or ()):
                self.warn(f"{message}. With --rows it still matches rows whose lang column says so")

    def _prepare_output(self, n_git: int) -> None:
        options = self.config.output_options()
        options_path = self.state / "options.json"
        if self.out.exists() and self.config.overwrite:
            self._clear_output()
        if options_path.is_file():
            stored = json.loads(options_path.read_text("utf-8"))
            if stored.get("options") == options:
                self.split_by = stored["split_by"]
                return
            if any(complete_shards(self.out / s, s) for s in SPLITS):
                changed = sorted(k for k in set(options) | set(stored.get("options", {}))
                                 if options.get(k) != stored.get("options", {}).get(k))
                raise DiffModelError(
                    f"{self.out} was mined with other options (changed: {', '.join(changed)}); "
                    f"use a new --output_dir, or pass --overwrite to start that folder again")
            # No sample was written with the old options (e.g. a run whose filters left nothing and that
            # asked for looser ones): nothing to keep, so the corrected command starts the folder again.
            self.warn(f"{self.out} holds no samples of its earlier run; starting it again with these options")
            self._clear_output()
        if self.out.exists() and any(self.out.iterdir()):
            raise DiffModelError(
                f"{self.out} exists and is not the output of diffmodel mine (no {STATE_DIR}/options.json); "
                f"choose an empty or new --output_dir folder")
        # Converted rows name many repositories, so "auto" splits them by repository.
        self.split_by = resolve_split_by(self.config.split_by, 2 if self.config.rows else n_git)
        (self.state / "done").mkdir(parents=True, exist_ok=True)
        (self.state / "shards").mkdir(parents=True, exist_ok=True)
        write_json_atomic(options_path, {"format": FORMAT, "options": options, "split_by": self.split_by})

    def _clear_output(self) -> None:
        """Delete what diffmodel mine wrote in the output folder (splits, state, manifest)."""
        for sub in (*SPLITS, STATE_DIR):
            if (self.out / sub).is_dir():
                shutil.rmtree(self.out / sub)
        for name in (MANIFEST, MANIFEST + ".tmp"):
            if (self.out / name).exists():
                (self.out / name).unlink()

    def _sidecar(self, shard: Path) -> Path:
        return self.state / "shards" / (shard.name.removesuffix(".jsonl.zst") + ".json")

    def _resume(self) -> None:
        """Delete ``*.tmp`` files, load done-markers, clean shards of unfinished sources."""
        removed = remove_tmp_files(self.out)
        if removed:
            self.warn(f"removed {len(removed)} unfinished file(s) left by an interrupted run "
                      f"({', '.join(p.name for p in removed[:3])}{', ...' if len(removed) > 3 else ''})")
        done_dir = self.state / "done"
        for marker in sorted(done_dir.glob("*.json")) if done_dir.is_dir() else []:
            data = json.loads(marker.read_text("utf-8"))
            self.done[data["tag"]] = data
        trimmed: list[tuple[str, int]] = []
        for split in SPLITS:
            for shard in complete_shards(self.out / split, split):
                sidecar = self._sidecar(shard)
                runs = json.loads(sidecar.read_text("utf-8"))["runs"] if sidecar.is_file() else None
                if runs is not None and all(tag in self.done for tag, _ in runs):
                    if self.config.filters.dedup:
                        self.seen.update(F.dedup_key(r["before"], r["diff"]) for r in read_shard(shard))
                    continue
                trimmed.append((shard.name, self._drop_unfinished(shard, runs)))
        if trimmed:
            kept = sum(n for _, n in trimmed)
            names = ", ".join(name for name, _ in trimmed[:3]) + (f" and {len(trimmed) - 3} more" if len(trimmed) > 3 else "")
            self.warn(f"{len(trimmed)} shard(s) held samples of unfinished sources ({names}): kept {kept} sample(s) of "
                      "finished sources; the unfinished sources are mined again")

    def _drop_unfinished(self, shard: Path, runs: list | None) -> int:
        """Rewrite ``shard`` keeping only the lines of finished sources; returns how many it kept.

        The shard is replaced first and its index second; a run stopped in
        between leaves a shard holding exactly the finished lines of its old
        index, which is recognised by its line count and completed here.
        """
        import zstandard

        if runs is None:
            raise DiffModelError(f"{shard} has no index in {self.state / 'shards'}; the folder was changed by "
                                 f"hand or is damaged: pass --overwrite to mine it again")
        keep_runs: list[list] = []
        for tag, n in runs:
            if tag in self.done:
                if keep_runs and keep_runs[-1][0] == tag:
                    keep_runs[-1][1] += n
                else:
                    keep_runs.append([tag, n])
        kept = sum(n for _, n in keep_runs)
        lines = count_lines(shard)
        dedup = self.config.filters.dedup
        if lines == kept and kept < sum(n for _, n in runs):  # rewritten before, index not yet updated
            if dedup:
                self.seen.update(F.dedup_key(r["before"], r["diff"]) for r in read_shard(shard))
        elif lines != sum(n for _, n in runs):
            raise DiffModelError(f"{shard} has {lines} lines but its index lists {sum(n for _, n in runs)}; "
                                 f"pass --overwrite to mine the folder again")
        elif kept:
            tmp = shard.with_name(shard.name + ".rewrite.tmp")
            tags = (tag for tag, n in runs for _ in range(n))
            with open(tmp, "wb") as fh:
                with zstandard.ZstdCompressor(level=3).stream_writer(fh, closefd=False) as zw:
                    for tag, row in zip(tags, read_shard(shard)):
                        if tag in self.done:
                            zw.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
                            if dedup:
                                self.seen.add(F.dedup_key(row["before"], row["diff"]))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, shard)
        if kept:
            write_json_atomic(self._sidecar(shard), {"runs": keep_runs})
        else:
            shard.unlink()
            self._sidecar(shard).unlink(missing_ok=True)
        return kept

    # -- sources
    def _collect_sources(self) -> list[Source]:
        discovered = self.discovered
        names = repository_names([p for p, _ in discovered])
        sources: list[Source] = []
        for (path, explicit), name in zip(discovered, names):
            source = Source(kind="git", name=name, path=path)
            if source.tag in self.done:
                head = self.done[source.tag].get("head")
                sources.append(source)
                try:
                    now = open_repository(path, name=name, rev=self.config.rev).head
                except DiffModelError:
                    now = head
                if now != head:
                    self.warn(f"{name} was mined at {str(head)[:12]} and is now at {now[:12]}; it is not "
                              f"mined again (use a new --output_dir to include its new commits)")
                continue
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ShallowCloneWarning)
                    source.repo = open_repository(path, name=name, rev=self.config.rev)
                for w in caught:
                    self.warn(str(w.message))
                listed = list_commits(source.repo, first_parent=self.config.first_parent)
            except DiffModelError as err:
                if explicit:
                    raise
                self.warn(f"skipping {path}: {err}")
                self.skipped.append({"path": str(path), "reason": str(err)})
                continue
            source.commits, source.list_counts = listed.usable, listed.counts
            source.license_file, source.license = read_license(source.repo)
            if not F.license_ok(source.license, self.config.filters.licenses):
                found = source.license or (f"unrecognised licence in {source.license_file}" if source.license_file
                                           else "no licence file")
                print(f"diffmodel mine: {name}: skipped, licence not in --licenses ({found})", file=sys.stderr)
                self.skipped.append({"path": str(path), "name": name, "reason": f"licence not allowed ({found})"})
                continue
            sources.append(source)
        for item in self.config.rows:
            path = Path(os.path.abspath(item))
            sources.append(Source(kind="rows", name=path.name, path=path))
        return sources

    def _tasks(self, sources: list[Source]) -> Iterator[tuple]:
        size = self.config.batch_size
        for index, source in enumerate(sources):
            if source.tag in self.done:
                continue
            if source.kind == "git":
                commits = source.commits
                starts = range(0, len(commits), size)
                for k, start in enumerate(starts):
                    yield "git", index, k == len(starts) - 1, (source.repo, commits[start:start + size])
            else:
                batch: list[dict] = []
                for row in read_rows(source.path):
                    batch.append(row)
                    if len(batch) >= size * 4:
                        yield "rows", index, False, batch
                        batch = []
                yield "rows", index, True, batch

    # -- shards and markers
    def _writer(self, split: str) -> ShardWriter:
        if split not in self.writers:
            existing = [shard_index(p, split) for p in complete_shards(self.out / split, split)]
            self.writers[split] = ShardWriter(
                self.out / split, split, max_bytes=self.config.shard_bytes,
                first_index=max(existing, default=-1) + 1,
                before_publish=lambda info: write_json_atomic(self._sidecar(info.path), {"runs": info.runs}),
                on_close=lambda info: self._finalize_pending())
        return self.writers[split]

    def _finalize_pending(self) -> None:
        open_tags = set().union(*(w.open_tags for w in self.writers.values())) if self.writers else set()
        for tag in [t for t in self.pending if t not in open_tags]:
            marker = self.pending.pop(tag)
            write_json_atomic(self.state / "done" / f"{marker['id']}.json", marker)
            self.done[tag] = marker

    def _marker(self, source: Source, stats: dict) -> dict:
        return {
            "id": source.marker_id, "tag": source.tag, "kind": source.kind, "name": source.name,
            "path": str(source.path), "head": source.repo.head if source.repo else "",
            "shallow": bool(source.repo and source.repo.is_shallow),
            "license": source.license, "license_file": source.license_file,
            "counts": dict(stats["counts"]), "languages": dict(stats["languages"]),
            "splits": dict(stats["splits"]),
        }

    # -- main loop
    def run(self) -> dict:
        _refuse_in_starting_worker()
        config = self.config
        self.discovered = _discover(config)
        self._check_start()
        self._prepare_output(len(self.discovered))
        self._resume()
        sources = self._collect_sources()
        if self.split_by == "repository" and len([s for s in sources if s.kind == "git"]) == 1 and not config.rows:
            self.warn("--split_by repository with one repository puts every sample in one split")
        options = SampleOptions(context=config.context, keep_deleted=config.keep_deleted, filters=config.filters,
                                split_by=self.split_by, validation_fraction=config.validation_fraction,
                                test_fraction=config.test_fraction, edit_format=config.edit_format)
        todo = [s for s in sources if s.tag not in self.done]
        for s in sources:
            if s.tag in self.done:
                print(f"diffmodel mine: {s.name}: already mined, skipped", file=sys.stderr)
        total = sum(len(s.commits) for s in todo) if all(s.kind == "git" for s in todo) else None
        bar = None
        if config.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="commit", desc="mining", dynamic_ncols=True, file=sys.stderr)
        stats = {i: {"counts": Counter(s.list_counts), "languages": Counter(), "splits": Counter()}
                 for i, s in enumerate(sources)}
        written = 0
        dedup = config.filters.dedup
        try:
            for index, last, result in _ordered(self._tasks(sources), config.workers, options,
                                                config.tokenizer, window=4 * config.workers):
                source, st = sources[index], stats[index]
                st["counts"].update(result.counts)
                for sample in result.samples:
                    if dedup:
                        if sample.key in self.seen:
                            st["counts"][F.DROP_DUPLICATE] += 1
                            continue
                        self.seen.add(sample.key)
                    self._writer(sample.split).write(sample.line, source.tag)
                    st["languages"][sample.language] += 1
                    st["splits"][sample.split] += 1
                    written += 1
                if bar is not None:
                    bar.update(result.commits)
                    bar.set_postfix(samples=written, refresh=False)
                if last:
                    self.pending[source.tag] = self._marker(source, st)
                    self._finalize_pending()
            for writer in self.writers.values():
                writer.close()
            self._finalize_pending()
        except BaseException:
            for writer in self.writers.values():
                writer.abandon()
            raise
        finally:
            if bar is not None:
                bar.close()
        manifest = self.manifest()
        self._warn_empty_splits(manifest["samples"])  # in the manifest too: its warnings are self.warnings
        write_json_atomic(self.out / MANIFEST, manifest)
        if manifest["samples"]["total"] == 0:
            if config.rows and not manifest["rows_converted"] and not manifest["changed_files"]:
                raise DiffModelError(f"no samples were written to {self.out}: the row file(s) held no rows "
                                     f"(--rows {', '.join(config.rows)})")
            if self.skipped and not manifest["sources"]:
                skipped = "; ".join(f"{item.get('name', item['path'])}: {item['reason']}" for item in self.skipped)
                raise DiffModelError(f"no samples were written to {self.out}: every repository was skipped "
                                     f"({skipped}). See --licenses, or pass other repositories")
            dropped = ", ".join(f"{k}: {v}" for k, v in sorted(manifest["dropped"].items(), key=lambda kv: -kv[1]) if v)
            raise DiffModelError(
                f"no samples were written to {self.out} ({manifest['commits'].get(COMMITS_LISTED, 0)} commits "
                f"listed, {manifest['changed_files']} changed files; dropped: {dropped or 'none'}). "
                f"Loosen the filters named there (see diffmodel mine --help)")
        return manifest

    def _warn_empty_splits(self, samples: dict) -> None:
        """A held-out split that was asked for (fraction above 0) but got no sample has no folder, so the
        command the docs give next (``--validation_file 'OUT/validation/*'``, ``diffmodel eval --data
        'OUT/test/*'``) would match no file: say so here, with the way out."""
        config = self.config
        asked = (("validation", config.validation_fraction, "--validation_fraction"),
                 ("test", config.test_fraction, "--test_fraction"))
        empty = [(split, fraction, flag) for split, fraction, flag in asked if fraction > 0 and not samples.get(split)]
        if not samples.get("total") or not empty:
            return
        names = " and ".join(split for split, _, _ in empty)
        shares = " and ".join(f"{flag} {fraction:g}" for _, fraction, flag in empty)
        folders = " or ".join(f"{split}/" for split, _, _ in empty)
        self.warn(f"the {names} split{'s' if len(empty) > 1 else ''} got no sample ({shares} of {samples['total']} "
                  f"sample(s), split by {self.split_by}): {self.out} has no {folders} folder for --validation_file "
                  f"or diffmodel eval; mine more history or loosen the filters, or raise "
                  f"{' and '.join(flag for _, _, flag in empty)}")

    def manifest(self) -> dict:
        counts: Counter = Counter()
        languages: Counter = Counter()
        splits: Counter = Counter()
        sources = []
        for marker in sorted(self.done.values(), key=lambda m: m["tag"]):
            counts.update(marker["counts"])
            languages.update(marker["languages"])
            splits.update(marker["splits"])
            sources.append({k: marker[k] for k in ("kind", "name", "path", "head", "shallow", "license",
                                                     "license_file")} | {"samples": sum(marker["splits"].values())})
        shards = {}
        for split in SPLITS:
            shards[split] = []
            for shard in complete_shards(self.out / split, split):
                sidecar = self._sidecar(shard)
                lines = sum(n for _, n in json.loads(sidecar.read_text("utf-8"))["runs"]) if sidecar.is_file() else None
                shards[split].append({"file": f"{split}/{shard.name}", "samples": lines, "bytes": shard.stat().st_size})
        commit_keys = (COMMITS_LISTED, COMMITS_MERGE, COMMITS_SHALLOW, COMMITS_EMPTY, COMMITS_USED)
        reasons = (*F.DROP_REASONS, DROP_BAD_ROW)
        return {
            "format": FORMAT,
            "samples": {"total": sum(splits.values()), **{s: splits.get(s, 0) for s in SPLITS}},
            "commits": {k: counts.get(k, 0) for k in commit_keys},
            "rows_converted": counts.get("rows", 0),
            "changed_files": counts.get("changed_files", 0),
            "dropped": {r: counts.get(r, 0) for r in reasons},
            "languages": dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))),
            "sources": sources,
            "skipped_sources": self.skipped,
            "split_by": self.split_by,
            "shards": shards,
            "options": self.config.output_options(),
            "warnings": self.warnings,
        }


def mine(config: MineConfig) -> dict:
    """Run a mining job (see :class:`MineRun`); returns the manifest.

    SIGTERM during the job raises :class:`Terminated` (a ``SystemExit`` with status 143) after the
    unfinished shards are dropped; the same call resumes."""
    run = MineRun(config)
    with _stop_on_sigterm():
        return run.run()
