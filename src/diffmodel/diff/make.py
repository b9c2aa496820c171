"""Make the unified diff body between two versions of one file.

``make_diff(before, after)`` writes what ``git diff -U<context>`` writes after
its file header: only hunks, each opening with ``@@ -a,b +c,d @@``.

Invariants:
- Lines are split on ``"\\n"`` only and keep their ending, so ``"\\r\\n"``
  endings, lone ``"\\r"`` and other characters pass through byte-exact.
- A line without a trailing newline (only ever the last line of a side) is
  followed by git's ``\\ No newline at end of file`` marker; every emitted line
  ends with ``"\\n"``.
- Hunk headers follow git: a count of 1 is omitted (``@@ -3 +3 @@``) and an
  empty range names the line before it (``-0,0`` for a new file).
- Changes closer than ``2 * context`` unchanged lines share one hunk, as in git.
- No function-name text after the closing ``@@``.
- ``before == after`` gives ``""``; a new file is ``before == ""``.

Matching trims the common prefix and suffix, anchors on lines that occur
once on each side (as patience diff does), and runs
:class:`difflib.SequenceMatcher` in the gaps; ambiguous runs are then slid
down as git slides them. On ambiguous inputs the chosen lines may still
differ from git's Myers diff, but the result always applies.
"""

from __future__ import annotations

import bisect
import difflib
from collections import Counter

NO_NEWLINE = "\\ No newline at end of file"


def split_lines(text: str) -> list[str]:
    """Split ``text`` into lines on ``"\\n"`` only, keeping each line's ending.

    ``"".join(split_lines(t)) == t`` for every string ``t``.
    """
    if not text:
        return []
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def format_range(start: int, count: int) -> str:
    """One side of a hunk header the way git writes it.

    ``start`` is the 1-based number of the first line in the range; for an
    empty range git names the line before it (so ``start - 1``).
    """
    shown = start if count else start - 1
    return f"{shown}" if count == 1 else f"{shown},{count}"


def format_header(old_start: int, old_len: int, new_start: int, new_len: int) -> str:
    """``@@ -a,b +c,d @@`` (with git's conventions), without a newline.

    Starts are 1-based first-line numbers even for empty ranges.
    """
    return f"@@ -{format_range(old_start, old_len)} +{format_range(new_start, new_len)} @@"


def _body_line(prefix: str, line: str) -> str:
    if line.endswith("\n"):
        return prefix + line
    return f"{prefix}{line}\n{NO_NEWLINE}\n"


#: A gap with no unique anchor line is matched by difflib without its
#: popularity heuristic up to this many line pairs, with it above (fast, and the
#: diff still applies, but it may be longer than needed).
EXACT_MATCH_LIMIT = 4_000_000


def _unique_anchors(a: list[str], b: list[str], alo: int, ahi: int, blo: int, bhi: int) -> list[tuple[int, int]]:
    """Pairs of lines that occur exactly once in both ranges, longest in-order chain."""
    count_a = Counter(a[alo:ahi])
    count_b = Counter(b[blo:bhi])
    where_b = {b[j]: j for j in range(blo, bhi) if count_b[b[j]] == 1 and count_a.get(b[j]) == 1}
    pairs = [(i, where_b[a[i]]) for i in range(alo, ahi) if a[i] in where_b]
    # Longest increasing subsequence of the b positions (patience sorting).
    tails: list[int] = []  # tails[k]: b position ending the best chain of length k + 1
    tail_at: list[int] = []  # index into pairs of that chain end
    back: list[int] = [-1] * len(pairs)
    for n, (_, j) in enumerate(pairs):
        k = bisect.bisect_left(tails, j)
        if k == len(tails):
            tails.append(j)
            tail_at.append(n)
        else:
            tails[k] = j
            tail_at[k] = n
        back[n] = tail_at[k - 1] if k else -1
    chain: list[tuple[int, int]] = []
    n = tail_at[-1] if tail_at else -1
    while n >= 0:
        chain.append(pairs[n])
        n = back[n]
    return chain[::-1]


def _matched_pairs(a: list[str], b: list[str]) -> list[tuple[int, int]]:
    """Equal line pairs ``(i, j)``, increasing in both, that the diff keeps.

    Common prefix and suffix first, then lines unique to both sides as anchors
    (recursively, in the gaps between them), then difflib inside what is left.
    """
    out: list[tuple[int, int]] = []
    stack: list[tuple[int, int, int, int] | tuple[int, int]] = [(0, len(a), 0, len(b))]
    while stack:
        task = stack.pop()
        if len(task) == 2:
            out.append(task)  # an anchor or suffix pair, emitted in order
            continue
        alo, ahi, blo, bhi = task
        while alo < ahi and blo < bhi and a[alo] == b[blo]:
            out.append((alo, blo))
            alo, blo = alo + 1, blo + 1
        suffix: list[tuple[int, int]] = []
        while alo < ahi and blo < bhi and a[ahi - 1] == b[bhi - 1]:
            ahi, bhi = ahi - 1, bhi - 1
            suffix.append((ahi, bhi))
        stack.extend(suffix)  # popped last-first: in increasing order
        if alo == ahi or blo == bhi:
            continue
        anchors = _unique_anchors(a, b, alo, ahi, blo, bhi)
        if anchors:
            later: list[tuple[int, int, int, int] | tuple[int, int]] = []
            i0, j0 = alo, blo
            for i, j in anchors:
                later += [(i0, i, j0, j), (i, j)]
                i0, j0 = i + 1, j + 1
            later.append((i0, ahi, j0, bhi))
            stack.extend(reversed(later))
            continue
        fast = (ahi - alo) * (bhi - blo) > EXACT_MATCH_LIMIT
        matcher = difflib.SequenceMatcher(None, a[alo:ahi], b[blo:bhi], autojunk=fast)
        for block in matcher.get_matching_blocks():
            out.extend((alo + block.a + k, blo + block.b + k) for k in range(block.size))
    return out


def _changes(a: list[str], b: list[str]) -> list[tuple[int, int, int, int]]:
    """Non-equal regions ``(i1, i2, j1, j2)`` in order, between equal runs."""
    changes: list[list[int]] = []
    i0 = j0 = 0
    for i, j in [*_matched_pairs(a, b), (len(a), len(b))]:
        if i > i0 or j > j0:
            changes.append([i0, i, j0, j])
        i0, j0 = i + 1, j + 1
    _slide_down(a, b, changes)
    merged: list[tuple[int, int, int, int]] = []
    for i1, i2, j1, j2 in changes:
        if merged and merged[-1][1] == i1:  # slid up against the next change
            merged[-1] = (merged[-1][0], i2, merged[-1][2], j2)
        else:
            merged.append((i1, i2, j1, j2))
    return merged


def _slide_down(a: list[str], b: list[str], changes: list[list[int]]) -> None:
    """Move each pure insertion or deletion as far down as equal lines allow.

    A run like ``x x x`` losing one ``x`` can be shown deleting any of them;
    git shows the last, and so does this (it never crosses the next change).
    """
    for k, change in enumerate(changes):
        i1, i2, j1, j2 = change
        stop_i = changes[k + 1][0] if k + 1 < len(changes) else len(a)
        if j1 == j2:  # deletion: a[i1:i2] removed
            while i2 < stop_i and a[i1] == a[i2]:
                i1, i2, j1, j2 = i1 + 1, i2 + 1, j1 + 1, j2 + 1
        elif i1 == i2:  # insertion: b[j1:j2] added
            while i2 < stop_i and b[j1] == b[j2]:
                i1, i2, j1, j2 = i1 + 1, i2 + 1, j1 + 1, j2 + 1
        change[:] = [i1, i2, j1, j2]


def make_diff(before: str, after: str, context: int = 3) -> str:
    """The unified diff body (hunks only) turning ``before`` into ``after``.

    ``context`` is the number of unchanged lines shown around each change
    (``git diff -U<context>``); it must be ``>= 0``.
    """
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if before == after:
        return ""
    a = split_lines(before)
    b = split_lines(after)
    changes = _changes(a, b)

    # Group changes whose gap of equal lines is at most 2 * context.
    groups: list[list[tuple[int, int, int, int]]] = []
    for change in changes:
        if groups and change[0] - groups[-1][-1][1] <= 2 * context:
            groups[-1].append(change)
        else:
            groups.append([change])

    out: list[str] = []
    for group in groups:
        first, last = group[0], group[-1]
        lead = min(context, first[0])  # equal runs have the same length on both sides
        trail = min(context, len(a) - last[1])
        i_start, j_start = first[0] - lead, first[2] - lead
        i_end, j_end = last[1] + trail, last[3] + trail
        out.append(format_header(i_start + 1, i_end - i_start, j_start + 1, j_end - j_start) + "\n")
        i = i_start
        for i1, i2, j1, j2 in group:
            out.extend(_body_line(" ", line) for line in a[i:i1])
            out.extend(_body_line("-", line) for line in a[i1:i2])
            out.extend(_body_line("+", line) for line in b[j1:j2])
            i = i2
        out.extend(_body_line(" ", line) for line in a[i:i_end])
    return "".join(out)
