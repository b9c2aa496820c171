"""Git history -> diff samples, through the ``git`` command line.

One sample per changed file of every non-merge commit::

    repository, commit, parent, date, name, old_name, language, message, before, diff, text

``before`` is the whole file before the commit (``""`` for a new file, which
the text format writes as ``ADDFILE``); ``diff`` is :func:`diffmodel.diff.make.make_diff`
of the file before and after; ``text`` is :func:`diffmodel.sample.render_row`
of the row. ``old_name`` is the path before a rename, else ``""``.

How git is read (no re-implementation of the object store):

- ``git rev-list --parents REV`` lists the commits (``--first-parent`` optional);
  merges and commits at a shallow clone's boundary are left out there.
- ``git diff-tree --stdin -r -z --raw -M --root`` lists the changed files of a
  batch of commits in one process, with rename detection and file modes
  (``160000`` is a submodule, ``120000`` a symlink).
- One long-lived ``git cat-file --batch`` process per repository reads commit
  objects and blobs, one request at a time.

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
import os
import re
import subprocess
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator

from diffmodel.mine import filters as F
from diffmodel.mine.languages import language_of
from diffmodel.mine.split import assign_split, split_key
from diffmodel.diff.make import make_diff
from diffmodel.errors import DiffModelError
from diffmodel.sample import render_row

#: Column order of a mined row.
ROW_FIELDS = ("repository", "commit", "parent", "date", "name", "old_name", "language",
              "message", "before", "diff", "text")

MODE_SUBMODULE = "160000"
MODE_SYMLINK = "120000"
MODE_NONE = "000000"

#: Commit-level counters (the rest of a report counts changed files).
COMMITS_LISTED = "commits"
COMMITS_MERGE = "merge_commits"
COMMITS_SHALLOW = "shallow_boundary_commits"
COMMITS_EMPTY = "empty_commits"
COMMITS_USED = "commits_with_samples"


class ShallowCloneWarning(UserWarning):
    """The repository is a shallow clone: only the history that is there is mined."""


# ------------------------------------------------------------------ git plumbing

def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"})
    return env


def git(repo: str | Path, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
    """Run ``git -C repo ARGS`` and return stdout; a failure raises DiffModelError with git's message."""
    proc = subprocess.run(["git", "-C", str(repo), *args], input=input, capture_output=True, env=_git_env())
    if check and proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        raise DiffModelError(f"git {' '.join(args[:2])} failed in {repo}: {message}")
    return proc.stdout


class CatFile:
    """A long-lived ``git cat-file --batch`` process: ``read(oid)`` -> ``(type, bytes)`` or ``None``."""

    def __init__(self, repo: str | Path) -> None:
        self.repo = str(repo)
        self._proc = subprocess.Popen(
            ["git", "-C", self.repo, "cat-file", "--batch"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_git_env(),
        )

    #: Requests written ahead of the responses read. Small enough (64 x 41 bytes) that the
    #: unread requests always fit in a pipe buffer, so neither process can block the other.
    WINDOW = 64

    def _send(self, oid: str) -> None:
        self._proc.stdin.write(oid.encode("ascii") + b"\n")

    def _receive(self, oid: str) -> tuple[str, bytes] | None:
        stdout = self._proc.stdout
        header = stdout.readline()
        if not header:
            raise DiffModelError(f"git cat-file stopped unexpectedly in {self.repo}")
        parts = header.split()
        if len(parts) != 3:  # "<oid> missing" / "<oid> ambiguous"
            return None
        size = int(parts[2])
        data = stdout.read(size + 1)
        if len(data) != size + 1:
            raise DiffModelError(f"git cat-file returned a short read for {oid} in {self.repo}")
        return parts[1].decode("ascii"), data[:size]

    def read(self, oid: str) -> tuple[str, bytes] | None:
        """The object's type and contents, or ``None`` when the object is missing."""
        self._send(oid)
        self._proc.stdin.flush()
        return self._receive(oid)

    def read_many(self, oids: list[str]) -> Iterator[tuple[str, bytes] | None]:
        """``read`` for each of ``oids``, in order, with up to :attr:`WINDOW` requests in flight
        (git answers the next request while this process handles the last answer)."""
        sent = received = 0
        try:
            while received < len(oids):
                while sent < len(oids) and sent - received < self.WINDOW:
                    self._send(oids[sent])
                    sent += 1
                self._proc.stdin.flush()
                response = self._receive(oids[received])
                received += 1
                yield response
        finally:  # a consumer that stops early must not leave answers in the pipe
            while received < sent:
                self._receive(oids[received])
                received += 1

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout:
            self._proc.stdout.close()

    def __enter__(self) -> "CatFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Commit:
    """What a commit object says: id, parents, author name, author date (ISO 8601), message."""

    id: str
    parents: tuple[str, ...]
    author: str
    date: str
    message: str


_PERSON = re.compile(rb"^(?P<name>.*?) ?<[^>]*> (?P<ts>-?\d+) (?P<tz>[+-]\d{4})$")


def _iso_date(timestamp: int, tz: bytes) -> str:
    sign = -1 if tz[:1] == b"-" else 1
    offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[3:5])) * sign
    try:
        return datetime.fromtimestamp(timestamp, timezone(offset)).isoformat()
    except (OverflowError, OSError, ValueError):
        return ""


def parse_commit(oid: str, raw: bytes) -> Commit:
    """Parse a raw commit object (headers, a blank line, the message)."""
    head, _, body = raw.partition(b"\n\n")
    parents: list[str] = []
    author = b""
    date = ""
    encoding = "utf-8"
    for line in head.split(b"\n"):
        if line.startswith(b" "):  # continuation of a multi-line header (gpgsig, mergetag)
            continue
        key, _, value = line.partition(b" ")
        if key == b"parent":
            parents.append(value.decode("ascii"))
        elif key == b"author":
            m = _PERSON.match(value)
            if m:
                author = m.group("name")
                date = _iso_date(int(m.group("ts")), m.group("tz"))
            else:
                author = value
        elif key == b"encoding":
            encoding = value.decode("ascii", "replace").strip() or "utf-8"
    try:
        message = body.decode(encoding, "replace")
    except LookupError:  # an encoding name Python does not know
        message = body.decode("utf-8", "replace")
    return Commit(id=oid, parents=tuple(parents), author=author.decode("utf-8", "replace"), date=date, message=message)


@dataclass(frozen=True)
class Change:
    """One entry of ``git diff-tree --raw``: a changed path with its modes and blob ids."""

    status: str  # A, M, D, R, T, C (copy is never asked for), U, X
    old_mode: str
    new_mode: str
    old_oid: str
    new_oid: str
    old_path: str
    new_path: str


def parse_diff_tree(output: bytes) -> dict[str, list[Change]]:
    """Parse ``git diff-tree --stdin -r -z --raw`` output into commit id -> changes.

    Each commit's block is its id followed by raw entries
    ``:old_mode new_mode old_oid new_oid STATUS\\0path\\0[new_path\\0]``; a
    commit without changes prints nothing at all.
    """
    fields = output.split(b"\0")
    out: dict[str, list[Change]] = {}
    current: list[Change] | None = None
    i = 0
    n = len(fields)
    while i < n:
        token = fields[i]
        i += 1
        if not token:
            continue
        if token.startswith(b":"):
            meta = token[1:].split(b" ")
            old_mode, new_mode, old_oid, new_oid, status = (m.decode("ascii") for m in meta[:5])
            letter = status[:1]
            old_path = fields[i].decode("utf-8", "surrogateescape")
            i += 1
            new_path = old_path
            if letter in ("R", "C"):
                new_path = fields[i].decode("utf-8", "surrogateescape")
                i += 1
            if current is None:
                raise ValueError("git diff-tree output has an entry before any commit id")
            current.append(Change(letter, old_mode, new_mode, old_oid, new_oid, old_path, new_path))
        else:
            current = out.setdefault(token.decode("ascii").strip(), [])
    return out


def changed_files(repo: str | Path, commits: Iterable[str]) -> dict[str, list[Change]]:
    """Changed files of each (non-merge) commit against its parent, renames detected (``-M``).

    A root commit is compared with the empty tree. Commits without changes are
    absent from the result.
    """
    ids = list(commits)
    if not ids:
        return {}
    out = git(repo, "diff-tree", "--stdin", "-r", "-z", "--raw", "-M", "--root", "--no-ext-diff",
              input=("\n".join(ids) + "\n").encode("ascii"))
    return parse_diff_tree(out)


# ------------------------------------------------------------------ repositories

@dataclass(frozen=True)
class Repository:
    """A validated repository, ready to mine."""

    path: Path
    name: str
    head: str
    shallow: frozenset[str] = frozenset()

    @property
    def is_shallow(self) -> bool:
        return bool(self.shallow)


def _is_bare_layout(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def looks_like_repository(path: Path) -> bool:
    """``path`` is the top of a work tree (has ``.git``) or a bare repository."""
    return (path / ".git").exists() or _is_bare_layout(path)


def find_repositories(path: str | Path, max_depth: int = 3) -> list[Path]:
    """``[path]`` when it is a repository, else the repositories found below it (sorted).

    Folders are searched ``max_depth`` levels deep; a repository's own folders
    are not searched (so submodules are part of their superproject).
    """
    root = Path(path)
    if not root.exists():
        raise DiffModelError(f"{path}: no such file or directory")
    if not root.is_dir():
        raise DiffModelError(f"{path} is not a directory; pass a git repository or a folder of them")
    if looks_like_repository(root):
        return [root]
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
        except PermissionError:
            return
        for child in children:
            if child.name.startswith(".") and child.name != ".git":
                continue
            if looks_like_repository(child):
                found.append(child)
            elif depth < max_depth:
                walk(child, depth + 1)

    walk(root, 1)
    if not found:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"],
                             capture_output=True, env=_git_env())
        if top.returncode == 0:
            toplevel = top.stdout.decode("utf-8", "replace").strip()
            raise DiffModelError(
                f"{path} is inside the git repository {toplevel} but is not its top folder; "
                f"pass {toplevel} to mine that repository")
        raise DiffModelError(
            f"{path} is not a git repository (no .git) and no git repository was found "
            f"within {max_depth} folder levels below it")
    return found


def repository_names(paths: list[Path]) -> list[str]:
    """Short unique names: the folder name (``.git`` suffix dropped), with parent folders
    added only where two repositories would otherwise share a name."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    depth = [1] * len(paths)

    def name(i: int) -> str:
        ps = list(parts[i][-depth[i]:])
        ps[-1] = ps[-1].removesuffix(".git") or ps[-1]
        return "/".join(ps)

    while True:
        names = [name(i) for i in range(len(paths))]
        seen = Counter(names)
        clashes = [i for i, n in enumerate(names) if seen[n] > 1 and depth[i] < len(parts[i])]
        if not clashes:
            return names
        for i in clashes:
            depth[i] += 1


def read_shallow(path: Path) -> frozenset[str]:
    """Commit ids at the boundary of a shallow clone (their parents are not there)."""
    shallow_path = git(path, "rev-parse", "--git-path", "shallow").decode("utf-8", "replace").strip()
    shallow_file = Path(shallow_path) if os.path.isabs(shallow_path) else path / shallow_path
    if not shallow_file.is_file():
        return frozenset()
    return frozenset(line.strip() for line in shallow_file.read_text("ascii", "replace").splitlines() if line.strip())


def open_repository(path: str | Path, name: str | None = None, rev: str = "HEAD") -> Repository:
    """Validate ``path`` as a repository with commits at ``rev``.

    Raises DiffModelError for a path that is not a git repository and for an
    empty repository; warns (:class:`ShallowCloneWarning`) for a shallow clone.
    """
    path = Path(path)
    if not path.is_dir():
        raise DiffModelError(f"{path}: not a directory")
    probe = subprocess.run(["git", "-C", str(path), "rev-parse", "--git-dir"], capture_output=True, env=_git_env())
    if probe.returncode != 0:
        detail = probe.stderr.decode("utf-8", "replace").strip()
        raise DiffModelError(f"{path} is not a git repository ({detail})")
    name = name or repository_names([path])[0]
    resolved = subprocess.run(["git", "-C", str(path), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                              capture_output=True, env=_git_env())
    if resolved.returncode != 0:
        any_commit = git(path, "rev-list", "--all", "--max-count=1", check=False).strip()
        if not any_commit:
            raise DiffModelError(f"{path} is an empty repository: it has no commits to mine")
        raise DiffModelError(f"{path}: revision {rev!r} does not name a commit (see --rev)")
    head = resolved.stdout.decode("ascii").strip()
    shallow = read_shallow(path)
    if shallow:
        warnings.warn(
            f"{path} is a shallow clone: only the commits that are there are mined, and the "
            f"{len(shallow)} commit(s) at its boundary are skipped (their parents are missing). "
            f"Run 'git fetch --unshallow' for the full history.",
            ShallowCloneWarning, stacklevel=2)
    return Repository(path=path, name=name, head=head, shallow=shallow)


@dataclass
class CommitList:
    """Commits of a repository to mine, and the ones left out while listing."""

    usable: list[str]
    counts: Counter = field(default_factory=Counter)


def list_commits(repo: Repository, first_parent: bool = False) -> CommitList:
    """Non-merge commits reachable from ``repo.head`` (newest first), minus the shallow boundary.

    Raises DiffModelError when none is left ("no usable commits").
    """
    args = ["rev-list", "--parents"]
    if first_parent:
        args.append("--first-parent")
    out = git(repo.path, *args, repo.head)
    usable: list[str] = []
    counts: Counter = Counter()
    for line in out.decode("ascii").splitlines():
        ids = line.split()
        if not ids:
            continue
        counts[COMMITS_LISTED] += 1
        if ids[0] in repo.shallow:
            counts[COMMITS_SHALLOW] += 1
        elif len(ids) > 2:
            counts[COMMITS_MERGE] += 1
        else:
            usable.append(ids[0])
    if not usable:
        raise DiffModelError(
            f"{repo.path}: no usable commits at {repo.head[:12]} ({counts[COMMITS_LISTED]} listed: "
            f"{counts[COMMITS_MERGE]} merges, {counts[COMMITS_SHALLOW]} at a shallow boundary)")
    return CommitList(usable=usable, counts=counts)


def read_license(repo: Repository) -> tuple[str, str]:
    """``(file name, SPDX id)`` of the licence file at the top of ``repo.head``; ``("", "")`` if none."""
    listing = git(repo.path, "ls-tree", "-z", repo.head)
    candidates: list[tuple[int, str, str]] = []
    for entry in listing.split(b"\0"):
        if not entry:
            continue
        meta, _, fname = entry.partition(b"\t")
        parts = meta.split()
        if len(parts) != 3 or parts[1] != b"blob":
            continue
        name = fname.decode("utf-8", "replace")
        lower = name.lower()
        if lower in F.LICENSE_FILE_NAMES:
            candidates.append((F.LICENSE_FILE_NAMES.index(lower), name, parts[2].decode("ascii")))
    for _, name, oid in sorted(candidates):
        data = git(repo.path, "cat-file", "blob", oid)
        spdx = F.detect_license(data.decode("utf-8", "replace"))
        if spdx:
            return name, spdx
    return (sorted(candidates)[0][1], "") if candidates else ("", "")


# ------------------------------------------------------------------ samples

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
    row["text"] = render_row(row)
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
    for _ in blobs:  # nothing should be left; keep the pipe in step regardless
        pass
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
