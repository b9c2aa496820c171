"""Changed files of commits -> diff sample rows.

One sample per changed file of every non-merge commit::

    repository, commit, parent, date, name, old_name, language, message, before, diff, text

``before`` is the whole file before the commit (``""`` for a new file, which
the text format writes as ``ADDFILE``); ``diff`` is :func:`diffmodel.diff.make.make_diff`
of the file before and after; ``text`` is the row rendered in the edit
format of ``SampleOptions.edit_format`` (:mod:`diffmodel.formats`; default
``carper``, :func:`diffmodel.sample.render_row`). ``old_name`` is the path before a rename, else ``""``.

:func:`mine_commits` turns a batch of commits into rows, reading them
through :mod:`diffmodel.mine.git`; :func:`finish_sample` (shared with
:mod:`diffmodel.mine.convert`) applies the size, change and token filters and
assigns the split; :func:`iter_samples` mines one repository in this process.

Invariants:
- A changed file becomes a sample or is counted under exactly one drop reason
  (:data:`diffmodel.mine.filters.DROP_REASONS`), checked in that order.
- Contents are decoded as strict UTF-8 and never normalised: CRLF endings, a
  missing final newline and a BOM survive byte for byte, so applying ``diff``
  to ``before`` gives the file after the commit exactly.
- Everything here is a function of the repository and the options: the same
  commits give the same rows in the same order, whatever the batching.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from diffmodel.diff.make import make_diff
from diffmodel.errors import DiffModelError
from diffmodel.mine import filters as F
from diffmodel.mine.git import (
    MODE_NONE, MODE_SUBMODULE, MODE_SYMLINK, CatFile, Change, Commit, changed_files, parse_commit,
)
from diffmodel.mine.languages import language_of
from diffmodel.mine.repos import COMMITS_EMPTY, COMMITS_USED, Repository, list_commits, open_repository
from diffmodel.mine.split import assign_split, split_key
from diffmodel import formats

#: Column order of a mined row.
ROW_FIELDS = ("repository", "commit", "parent", "date", "name", "old_name", "language",
              "message", "before", "diff", "text")


@dataclass(frozen=True)
class SampleOptions:
    """How a changed file becomes a sample (everything but the output layout)."""

    context: int = 3
    """Unchanged lines around each change in a hunk (``git diff -U``)."""
    keep_deleted: bool = False
    """Also make samples of deleted files (the diff removes every line)."""
    filters: F.FilterOptions = field(default_factory=F.FilterOptions)
    split_by: str = "commit"
    """``repository`` or ``commit``: the key of the train/validation/test hash."""
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    edit_format: str = "carper"
    """The edit format ``text`` is written in (``diffmodel mine --edit_format``)."""


@dataclass
class Produced:
    """A sample ready to write: its split, dedup key, language and JSON line."""

    split: str
    key: bytes
    language: str
    line: bytes


@dataclass
class ChunkResult:
    """What mining a batch of commits gave: samples in order and drop counts."""

    samples: list[Produced] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    commits: int = 0


def encode_row(row: dict) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


def finish_sample(row: dict, options: SampleOptions, result: ChunkResult, count_tokens=None) -> dict | None:
    """Apply the size, change and token filters to a row holding ``before`` and ``after``;
    on success add ``diff`` and ``text``, record it in ``result`` and return it."""
    filters = options.filters
    before, after = row["before"], row.pop("after")
    if not F.before_size_ok(before, filters.max_before_chars):
        result.counts[F.DROP_BEFORE_CHARS] += 1
        return None
    diff = make_diff(before, after, options.context)
    if not diff:
        result.counts[F.DROP_NO_CHANGE] += 1
        return None
    if not F.diff_size_ok(diff, filters.max_diff_chars):
        result.counts[F.DROP_DIFF_CHARS] += 1
        return None
    row["diff"] = diff
    row["text"] = formats.get(options.edit_format).render(row["name"], before, row["message"], after, diff)
    if count_tokens is not None and filters.max_tokens is not None:
        if not F.token_count_ok(count_tokens(row["text"]), filters.max_tokens):
            result.counts[F.DROP_TOKENS] += 1
            return None
    split = assign_split(split_key(options.split_by, row["repository"], row["commit"]),
                         options.validation_fraction, options.test_fraction)
    key = F.dedup_key(before, diff) if filters.dedup else b""
    result.samples.append(Produced(split=split, key=key, language=row["language"], line=encode_row(row)))
    result.counts["samples"] += 1
    return row


def _structural_reason(change: Change, keep_deleted: bool) -> str | None:
    if MODE_SUBMODULE in (change.old_mode, change.new_mode):
        return F.DROP_SUBMODULE
    if MODE_SYMLINK in (change.old_mode, change.new_mode):
        return F.DROP_SYMLINK
    if change.status == "D" and not keep_deleted:
        return F.DROP_DELETED
    return None


def _is_null(oid: str, mode: str) -> bool:
    return mode == MODE_NONE or set(oid) == {"0"}


def _as_text(obj: tuple[str, bytes] | None) -> tuple[str | None, str | None]:
    """``(text, None)`` or ``(None, drop reason)`` for one side of a change."""
    if obj is None or obj[0] != "blob":
        return None, F.DROP_MISSING_OBJECT
    data = obj[1]
    if F.is_binary(data):
        return None, F.DROP_BINARY
    text = F.decode_utf8(data)
    if text is None:
        return None, F.DROP_NON_UTF8
    return text, None


def _valid_path(path: str) -> bool:
    """The path git gave (decoded with ``surrogateescape``) was valid UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def mine_commits(repo: Repository, commit_ids: list[str], options: SampleOptions,
                 cat: CatFile, count_tokens=None) -> ChunkResult:
    """Samples of a batch of usable (non-merge) commits, in the order given."""
    result = ChunkResult()
    filters = options.filters
    commits = []
    for oid, obj in zip(commit_ids, cat.read_many(commit_ids)):
        if obj is None or obj[0] != "commit":
            raise DiffModelError(f"{repo.path}: commit {oid} could not be read")
        commits.append(parse_commit(oid, obj[1]))
    changes = changed_files(repo.path, commit_ids)

    # First pass: what needs no file contents. The blobs of the files left are then
    # streamed from cat-file in the same order as they are used.
    plan: list[tuple[Commit, list[tuple[Change, str | None]]]] = []
    wanted: list[str] = []
    for commit in commits:
        result.commits += 1
        files = changes.get(commit.id, [])
        if not files:
            result.counts[COMMITS_EMPTY] += 1
            continue
        message_reason = F.message_drop_reason(commit.message, commit.author, filters)
        entries = []
        for change in files:
            result.counts["changed_files"] += 1
            reason = _structural_reason(change, options.keep_deleted) or message_reason
            entries.append((change, reason))
            if reason is None:
                wanted.extend(oid for oid, mode in ((change.old_oid, change.old_mode), (change.new_oid, change.new_mode))
                              if not _is_null(oid, mode))
        plan.append((commit, entries))

    blobs = cat.read_many(wanted)
    try:
        for commit, entries in plan:
            produced_before = len(result.samples)
            for change, reason in entries:
                if reason:
                    result.counts[reason] += 1
                    continue
                sides = []
                for oid, mode in ((change.old_oid, change.old_mode), (change.new_oid, change.new_mode)):
                    sides.append(("", None) if _is_null(oid, mode) else _as_text(next(blobs)))
                (before, reason_before), (after, reason_after) = sides
                reason = reason_before or reason_after
                if not reason and not (_valid_path(change.new_path) and _valid_path(change.old_path)):
                    reason = F.DROP_NON_UTF8  # a file name that is not UTF-8 cannot be written as JSON text
                if reason:
                    result.counts[reason] += 1
                    continue
                name = change.new_path
                language = language_of(name)
                if not F.language_ok(language, filters):
                    result.counts[F.DROP_LANGUAGE] += 1
                    continue
                row = {
                    "repository": repo.name,
                    "commit": commit.id,
                    "parent": commit.parents[0] if commit.parents else "",
                    "date": commit.date,
                    "name": name,
                    "old_name": change.old_path if change.status == "R" else "",
                    "language": language,
                    "message": commit.message.strip(),
                    "before": before,
                    "after": after,
                }
                finish_sample(row, options, result, count_tokens)
            if len(result.samples) > produced_before:
                result.counts[COMMITS_USED] += 1
    finally:  # on an error too: answers already asked for are read, so the pipe stays in step
        blobs.close()
    return result


def iter_samples(path: str | Path, options: SampleOptions | None = None, rev: str = "HEAD",
                 first_parent: bool = False, batch: int = 256, count_tokens=None) -> Iterator[dict]:
    """Mine one repository in this process and yield its rows (newest commit first).

    The library entry point for small jobs and tests; ``diffmodel mine`` adds
    workers, dedup, shards and resume on top (:mod:`diffmodel.mine.run`).
    """
    options = options or SampleOptions()
    repo = open_repository(path, rev=rev)
    commits = list_commits(repo, first_parent=first_parent)
    with CatFile(repo.path) as cat:
        for start in range(0, len(commits.usable), batch):
            chunk = mine_commits(repo, commits.usable[start:start + batch], options, cat, count_tokens)
            for produced in chunk.samples:
                yield json.loads(produced.line)
