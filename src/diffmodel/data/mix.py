"""Weighted mixing of training sources: ``--train_file a.jsonl.zst:0.7 'b/*.jsonl.zst:0.3'``.

A source is one ``--train_file`` value: a file or a glob, with an optional
``:WEIGHT`` at its end. Only a final ``:NUMBER`` is a weight (the text after
the last ``:`` parses as a number), so a path that holds ``:`` elsewhere is
read as it is. In a YAML/JSON arguments file a source may also be written
``{path: b/*.jsonl.zst, weight: 0.3}`` (:func:`spec_of`). Either every
source has a weight or none has (then the files are simply read in order).
Weights are positive numbers; a source's *share* is its weight over the sum.

The rule for a loaded (not streamed) train split, with seed ``S``
(``--seed``); the validation split is cut first, from all sources together,
as without weights, so it keeps the sources' natural proportions:

- ``N``, the size of the mix, is ``--mix_size`` or, by default, the largest
  size at which no row repeats: ``floor(min_i rows_i / share_i)`` (the mix
  stops when its first source is used up).
- Source ``i`` gives ``N * share_i`` rows, rounded down, the rows left over
  going one each to the sources with the largest remainders (ties: the
  earlier source) (:func:`mix_counts`).
- Source ``i``'s rows are taken in passes: pass ``k`` is the permutation
  ``numpy.random.default_rng([S, 0, i, k]).permutation(rows_i)``, so a row
  repeats only when ``--mix_size`` asks for more rows than the source has.
- The rows of all sources (source 0's first) are put in the order of
  ``default_rng([S, 1]).permutation(N)`` (:func:`mix_indices`).

With ``--streaming`` each reader draws its sources by weight, draw ``k``
being ``default_rng([S, 2, reader, k // 1024]).random(1024)[k % 1024]``
against the cumulative shares (:class:`WeightedChoice`), and reads its share
of each source's files, a source starting its next pass when it ends; the
stream state holds the number of draws and each source's pass and position,
so a resumed stream draws and reads exactly what follows.

Invariants: every function here is deterministic for its arguments; weights
are kept as exact fractions of the text given (``0.7`` is 7/10), so counts
never depend on float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

#: Column that marks each loaded row's source while the train split is mixed (removed afterwards).
SOURCE_COLUMN = "__diffmodel_source"
_DRAW_BLOCK = 1024


@dataclass(frozen=True)
class Source:
    """One ``--train_file`` value: its file or glob and its weight (None: not weighted)."""

    pattern: str
    weight: Fraction | None = None
    spec: str = ""


def parse_source(spec: str) -> tuple[Source, str | None]:
    """The source a ``--train_file`` value names, and the problem of its weight (None if fine)."""
    head, sep, tail = spec.rpartition(":")
    if not sep or not head:
        return Source(spec, None, spec), None
    try:
        number = float(tail)
    except ValueError:
        return Source(spec, None, spec), None  # not a weight: part of the path
    if not math.isfinite(number) or number <= 0:
        return Source(head, None, spec), f"--train_file {spec}: the weight {tail} must be a positive number (e.g. {head}:0.5)"
    return Source(head, Fraction(repr(number)), spec), None


def parse_sources(specs: Sequence[str] | None) -> tuple[list[Source], list[str]]:
    """The sources of ``--train_file`` and every problem of their weights (mixing weighted and plain values is one)."""
    sources, problems = [], []
    for spec in specs or []:
        source, problem = parse_source(spec)
        sources.append(source)
        if problem:
            problems.append(problem)
    seen: set[str] = set()
    for source in sources:
        if source.pattern in seen:
            problems.append(
                f"--train_file {source.pattern} is given twice (its rows would be read twice); give it once"
                + (", with the sum of its weights" if source.weight is not None else "")
            )
        seen.add(source.pattern)
    weighted = [s for s in sources if s.weight is not None]
    if weighted and len(weighted) < len(sources) and not problems:
        plain = ", ".join(s.spec for s in sources if s.weight is None)
        problems.append(
            f"--train_file {plain}: no :WEIGHT while other --train_file values have one; give every source a weight "
            "(e.g. a.jsonl:0.7 'b/*.jsonl:0.3') or none"
        )
    return sources, problems


def is_weighted(sources: Sequence[Source]) -> bool:
    return bool(sources) and all(s.weight is not None for s in sources)


def spec_of(item, where: str) -> str:
    """A ``--train_file`` value from an arguments-file entry: a string, or ``{path: P, weight: W}`` (as ``P:W``)."""
    if not isinstance(item, dict):
        return item
    from diffmodel.errors import DiffModelError

    if set(item) - {"path", "weight"} or not isinstance(item.get("path"), str):
        raise DiffModelError(f"{where}train_file entry {item!r}: write a source as {{path: FILE_OR_GLOB, weight: NUMBER}} (weight optional)")
    return item["path"] if item.get("weight") is None else f"{item['path']}:{item['weight']}"


def shares(sources: Sequence[Source]) -> list[Fraction]:
    """Each source's weight over the sum of the weights."""
    total = sum(s.weight for s in sources)
    return [s.weight / total for s in sources]


def mix_counts(sizes: Sequence[int], share: Sequence[Fraction], mix_size: int | None = None) -> list[int]:
    """Rows taken from each source (see the module docstring): ``N * share`` by largest remainder."""
    if mix_size is None:
        mix_size = math.floor(min(Fraction(n) / p for n, p in zip(sizes, share)))
    exact = [mix_size * p for p in share]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(share)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: mix_size - sum(counts)]:
        counts[i] += 1
    return counts


def mix_indices(source_of_row: Sequence[int], share: Sequence[Fraction], seed: int, mix_size: int | None = None) -> tuple[list[int], list[int]]:
    """The rows of the mix (indices into ``source_of_row``, in mix order) and the rows taken per source."""
    source_of_row = np.asarray(source_of_row)
    rows = [np.flatnonzero(source_of_row == i) for i in range(len(share))]
    counts = mix_counts([len(r) for r in rows], share, mix_size)
    chosen = []
    for i, (own, count) in enumerate(zip(rows, counts)):
        passes = -(-count // len(own)) if len(own) else 0
        order = np.concatenate([np.random.default_rng([seed, 0, i, k]).permutation(len(own)) for k in range(passes)] or [np.zeros(0, dtype=np.int64)])
        chosen.append(own[order[:count]])
    mixed = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    order = np.random.default_rng([seed, 1]).permutation(len(mixed))
    return mixed[order].tolist(), counts


def source_report(sources: Sequence[Source], files: Sequence[int], rows: Sequence[int] | None, taken: Sequence[int]) -> list[dict]:
    """Per source, for the data report: the value given, files, weight and share, rows available (None: unknown) and taken."""
    total = sum(taken)
    out = []
    for source, share, n_files, n_rows, n_taken in zip(sources, shares(sources), files, rows or [None] * len(sources), taken):
        entry = {"train_file": source.pattern, "files": n_files, "weight": float(source.weight), "share": float(share), "rows_mixed": n_taken, "effective_share": n_taken / total if total else 0.0}
        if n_rows is not None:
            entry["rows"] = n_rows
        out.append(entry)
    return out


class WeightedChoice:
    """Which source a reader's ``k``-th draw picks: counter-based, so any draw can be recomputed from ``k`` alone."""

    def __init__(self, share: Sequence[Fraction], seed: int, reader: int):
        self.bounds = np.cumsum([float(p) for p in share])
        self.seed, self.reader = seed, reader
        self._block, self._values = -1, None

    def __call__(self, k: int) -> int:
        block = k // _DRAW_BLOCK
        if block != self._block:
            self._block = block
            self._values = np.random.default_rng([self.seed, 2, self.reader, block]).random(_DRAW_BLOCK)
        u = self._values[k % _DRAW_BLOCK] * self.bounds[-1]
        return min(int(np.searchsorted(self.bounds, u, side="right")), len(self.bounds) - 1)
