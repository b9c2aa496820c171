"""Deterministic train / validation / test assignment.

A sample goes to a split by a hash of a *key*: the repository name when
several repositories are mined (so no commit of a test repository leaks into
training), or the commit id when there is only one repository (so all files of
one commit land in the same split).

Invariants:
- Pure: the split depends only on the key and the fractions, never on the
  order, the number of workers, or what else was mined. A rerun, a resumed run
  or a run with more repositories puts a repository where it was before.
- The hash is SHA-256 of the UTF-8 key, read as a number in [0, 1): the first
  ``validation`` part of that interval is validation, the next ``test`` part is
  test, the rest train.
"""

from __future__ import annotations

import hashlib

from diffmodel.errors import DiffModelError

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)

#: How to pick the key: ``auto`` is ``repository`` with several repositories, else ``commit``.
SPLIT_BY = ("auto", "repository", "commit")


def unit_interval(key: str) -> float:
    """A number in ``[0, 1)`` fixed by ``key`` (first 8 bytes of its SHA-256)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_fractions(validation: float, test: float) -> None:
    problems = []
    for name, value in (("--validation_fraction", validation), ("--test_fraction", test)):
        if not 0.0 <= value < 1.0:
            problems.append(f"{name} must be in [0, 1), got {value}")
    if not problems and validation + test >= 1.0:
        problems.append(f"--validation_fraction + --test_fraction must be below 1 (got {validation + test}); nothing would be left to train on")
    if problems:
        raise DiffModelError("bad split fractions: " + "; ".join(problems))


def assign_split(key: str, validation: float, test: float) -> str:
    """``train``, ``validation`` or ``test`` for ``key``."""
    u = unit_interval(key)
    if u < validation:
        return VALIDATION
    if u < validation + test:
        return TEST
    return TRAIN


def resolve_split_by(split_by: str, n_repositories: int) -> str:
    """``auto`` becomes ``repository`` for several repositories and ``commit`` for one."""
    if split_by not in SPLIT_BY:
        raise DiffModelError(f"--split_by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    if split_by == "auto":
        return "repository" if n_repositories > 1 else "commit"
    return split_by


def split_key(split_by: str, repository: str, commit: str) -> str:
    """The key :func:`assign_split` hashes, for a resolved ``split_by``."""
    return repository if split_by == "repository" else commit
