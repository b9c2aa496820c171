"""The git command-line plumbing that mining reads history through.

No re-implementation of the object store; three git commands do the work:

- :func:`git` runs one command (``rev-list``, ``rev-parse``, ``ls-tree`` ...)
  and turns a failure into a DiffModelError with git's message.
- ``git diff-tree --stdin -r -z --raw -M --root`` lists the changed files of a
  batch of commits in one process, with rename detection and file modes
  (:data:`MODE_SUBMODULE`, :data:`MODE_SYMLINK`): :func:`changed_files`,
  parsed by :func:`parse_diff_tree`.
- One long-lived ``git cat-file --batch`` process per repository reads commit
  objects (parsed by :func:`parse_commit`) and blobs: :class:`CatFile`.

Invariants:
- Every git process runs with :func:`git_env` (``LC_ALL=C``, no prompts, no
  optional locks), so its output does not depend on the user's locale or config.
- Parsers take bytes and return plain data; they never run git themselves.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator

from diffmodel.errors import DiffModelError

#: File modes of ``git diff-tree --raw``: a submodule, a symlink, no file on that side.
MODE_SUBMODULE = "160000"
MODE_SYMLINK = "120000"
MODE_NONE = "000000"


def git_env() -> dict[str, str]:
    """The environment of every git process: the caller's, with the C locale, no prompts, no optional locks."""
    env = dict(os.environ)
    env.update({"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"})
    return env


def git(repo: str | Path, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
    """Run ``git -C repo ARGS`` and return stdout; a failure raises DiffModelError with git's message."""
    proc = subprocess.run(["git", "-C", str(repo), *args], input=input, capture_output=True, env=git_env())
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
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=git_env(),
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
