"""Repositories to mine: discovery, names, validation, the commits to mine, the licence.

- :func:`find_repositories` turns a path into the repositories at or below it;
  :func:`repository_names` gives them short unique names.
- :func:`open_repository` validates one (not a repository, empty, unknown
  revision: DiffModelError; a shallow clone: :class:`ShallowCloneWarning`).
- :func:`list_commits` lists the non-merge commits to mine, counting the
  ones left out under the ``COMMITS_*`` counters.
- :func:`read_license` recognises the licence file at the top of the revision.

Invariants:
- Merges and commits at a shallow clone's boundary are never mined: they are
  left out here, while listing.
- A repository's name depends only on the paths mined together, never on the
  order they were found in.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from diffmodel.errors import DiffModelError
from diffmodel.mine import filters as F
from diffmodel.mine.git import git, git_env

#: Commit-level counters (the rest of a report counts changed files).
COMMITS_LISTED = "commits"
COMMITS_MERGE = "merge_commits"
COMMITS_SHALLOW = "shallow_boundary_commits"
COMMITS_EMPTY = "empty_commits"
COMMITS_USED = "commits_with_samples"


class ShallowCloneWarning(UserWarning):
    """The repository is a shallow clone: only the history that is there is mined."""


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
                             capture_output=True, env=git_env())
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


def resolve_commit(path: str | Path, rev: str) -> str | None:
    """The id of the commit ``rev`` names in the repository at ``path``; None if it names none."""
    resolved = subprocess.run(["git", "-C", str(path), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                              capture_output=True, env=git_env())
    return resolved.stdout.decode("ascii").strip() if resolved.returncode == 0 else None


def open_repository(path: str | Path, name: str | None = None, rev: str = "HEAD") -> Repository:
    """Validate ``path`` as a repository with commits at ``rev``.

    Raises DiffModelError for a path that is not a git repository and for an
    empty repository; warns (:class:`ShallowCloneWarning`) for a shallow clone.
    """
    path = Path(path)
    if not path.is_dir():
        raise DiffModelError(f"{path}: not a directory")
    probe = subprocess.run(["git", "-C", str(path), "rev-parse", "--git-dir"], capture_output=True, env=git_env())
    if probe.returncode != 0:
        detail = probe.stderr.decode("utf-8", "replace").strip()
        raise DiffModelError(f"{path} is not a git repository ({detail})")
    name = name or repository_names([path])[0]
    head = resolve_commit(path, rev)
    if head is None:
        any_commit = git(path, "rev-list", "--all", "--max-count=1", check=False).strip()
        if not any_commit:
            raise DiffModelError(f"{path} is an empty repository: it has no commits to mine")
        raise DiffModelError(f"{path}: revision {rev!r} does not name a commit (see --rev)")
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
