"""Apply a unified diff to the text of one file.

``apply_diff(before, diff, mode)`` returns an :class:`ApplyResult` with the new
text (or ``None``), an overall status and one :class:`HunkOutcome` per hunk.

Modes:
- ``strict``: every hunk's context and removed lines must equal the file's
  lines exactly at the line numbers its header states (``patch`` with no
  fuzz and no offset); hunks must be in order and must not overlap. A hunk
  whose header lacks a range (``@@ -1,7 @@``) fails: it does not say where
  its lines go.
- ``lenient``: line numbers are only a hint. Each hunk is looked up by its
  context and removed lines, nearest to where it is expected (the stated line
  shifted by the offset the previous hunk was found at), trying in turn: exact
  lines, lines compared without their line endings, lines compared with runs
  of whitespace collapsed, and then that last comparison with up to two
  context lines dropped from each end (``fuzz``). Lines matched loosely keep
  the file's own text; added lines then take the file's line ending.
  A hunk whose header lacks a range is placed only by its whole context
  (no fuzz), never at ``applied``, and not at all when it has no context or
  removed lines (except into an empty file).

Invariants:
- Never raises on model output (any ``str`` diff or :class:`ParsedDiff`);
  only an unknown ``mode`` (a programming error) raises ``ValueError``.
- ``text`` is ``None`` exactly when a hunk failed or no hunk could be read;
  then nothing is half-applied.
- ``apply_diff(b, make_diff(b, a), mode) .text == a`` for both modes.
- A diff with CRLF line ends is tried in both of its readings
  (:attr:`ParsedDiff.verbatim`): first the one whose line ends agree with the
  file (byte for byte for a CRLF or empty file, as ``git apply`` reads it;
  one CR dropped per line for an LF file), then the other; the first that
  applies is the result, else the first reading's failure.
- A new file is ``before == ""`` (``"ADDFILE"``, the prompt's stand-in for an
  empty file, is read as ``""`` too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

from diffmodel.diff.make import split_lines
from diffmodel.diff.parse import Hunk, ParsedDiff, Status, parse_diff
from diffmodel.sample import NEW_FILE

MODES = ("strict", "lenient")
MAX_FUZZ = 2


class HunkStatus(str, Enum):
    """What happened to one hunk."""

    APPLIED = "applied"  # exact lines at the stated line number
    OFFSET = "offset"  # exact lines, found elsewhere (or the header lacked a range)
    FUZZY = "fuzzy"  # found only with line endings / whitespace / context ignored
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class ApplyStatus(str, Enum):
    """What happened to the whole diff."""

    APPLIED = "applied"  # every hunk applied at its stated place
    RELOCATED = "relocated"  # every hunk applied, some offset or fuzzy
    FAILED = "failed"  # at least one hunk failed
    EMPTY = "empty"  # the diff had no text: the file is unchanged
    BAD_FORMAT = "bad_format"  # the diff had text but no readable hunk

    def __str__(self) -> str:
        return self.value


@dataclass
class HunkOutcome:
    status: HunkStatus
    #: 1-based line of ``before`` where the hunk's first line went (None if failed)
    line: int | None = None
    #: ``line`` minus the stated line (0 when at the stated place or none was stated)
    offset: int = 0
    #: how lines were compared: exact, line-endings, whitespace, fuzz1, fuzz2
    match: str = "exact"
    message: str = ""

    def describe(self) -> str:
        if self.status is HunkStatus.FAILED:
            return f"FAILED: {self.message}"
        text = f"{self.status} at line {self.line}"
        if self.offset:
            text += f" (offset {self.offset:+d} line{'s' if abs(self.offset) != 1 else ''})"
        if self.match != "exact":
            text += f" (matched by {self.match})"
        if self.message:
            text += f" ({self.message})"
        return text


@dataclass
class ApplyResult:
    text: str | None
    status: ApplyStatus
    hunks: list[HunkOutcome] = field(default_factory=list)
    #: how well-formed the diff was, and what the parser repaired
    parse_status: Status = Status.VALID
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every hunk applied (``applied`` or ``relocated``)."""
        return self.status in (ApplyStatus.APPLIED, ApplyStatus.RELOCATED)


# -- matching ----------------------------------------------------------------------------------

def _same(line: str) -> str:
    return line


def _no_eol(line: str) -> str:
    return line.rstrip("\r\n")


def _squeezed(line: str) -> str:
    return " ".join(line.split())


@dataclass
class _Level:
    name: str
    key: Callable[[str], str]
    fuzz: int = 0


_LEVELS = (
    _Level("exact", _same),
    _Level("line-endings", _no_eol),
    _Level("whitespace", _squeezed),
    *(_Level(f"fuzz{f}", _squeezed, f) for f in range(1, MAX_FUZZ + 1)),
)


class _Index:
    """Positions of each line key in the file, built once per comparison."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self._keys: dict[str, list[str]] = {}
        self._where: dict[str, dict[str, list[int]]] = {}

    def keys(self, level: _Level) -> list[str]:
        name = level.key.__name__
        if name not in self._keys:
            keys = [level.key(line) for line in self.lines]
            where: dict[str, list[int]] = {}
            for pos, k in enumerate(keys):
                where.setdefault(k, []).append(pos)
            self._keys[name], self._where[name] = keys, where
        return self._keys[name]

    def starts(self, level: _Level, first: str) -> list[int]:
        self.keys(level)
        return self._where[level.key.__name__].get(first, [])


def _free(start: int, end: int, taken: list[tuple[int, int]]) -> bool:
    for s, e in taken:
        if start == end:  # an insertion may sit at either edge of a taken range
            if s < start < e:
                return False
        elif start < e and s < end:
            return False
    return True


def _trim(ops: list[tuple[str, str]], fuzz: int) -> tuple[list[tuple[str, str]], int]:
    """Drop up to ``fuzz`` context lines from each end; return ops and lines dropped in front."""
    lead = 0
    while lead < fuzz and lead < len(ops) and ops[lead][0] == " ":
        lead += 1
    tail = 0
    while tail < fuzz and tail < len(ops) - lead and ops[len(ops) - 1 - tail][0] == " ":
        tail += 1
    return ops[lead:len(ops) - tail], lead


def _find(index: _Index, old: list[str], level: _Level, expected: int, taken: list[tuple[int, int]]) -> int | None:
    n = len(index.lines)
    if not old:
        pos = min(max(expected, 0), n)
        for s, e in sorted(taken):
            if s < pos < e:
                pos = e
        return pos
    keys = index.keys(level)
    want = [level.key(line) for line in old]
    best: int | None = None
    for q in index.starts(level, want[0]):
        if q + len(want) > n or keys[q:q + len(want)] != want:
            continue
        if not _free(q, q + len(want), taken):
            continue
        if best is None or abs(q - expected) < abs(best - expected):
            best = q
    return best


def _eol_style(lines: list[str]) -> str:
    crlf = sum(line.endswith("\r\n") for line in lines)
    lf = sum(line.endswith("\n") for line in lines) - crlf
    return "\r\n" if crlf > lf else "\n"


def _with_eol(line: str, eol: str) -> str:
    stripped = line.rstrip("\r\n")
    return stripped + eol if stripped != line else line


# -- applying ----------------------------------------------------------------------------------

@dataclass
class _Placement:
    start: int
    end: int
    lines: list[str]
    order: int


def _strict_hunk(a: list[str], hunk: Hunk, prev_end: int) -> tuple[HunkOutcome, _Placement | None]:
    missing = hunk.missing_range()
    if missing:
        message = f"the hunk header has {missing}; only a lenient apply may place it by its context"
        return HunkOutcome(HunkStatus.FAILED, message=message), None
    start = hunk.old_start - 1
    old, new = hunk.old_lines(), hunk.new_lines()
    end = start + len(old)
    if start < prev_end:
        return HunkOutcome(HunkStatus.FAILED, message=f"hunk at line {start + 1} overlaps or precedes the previous hunk"), None
    if start < 0 or end > len(a) or a[start:end] != old:
        return HunkOutcome(HunkStatus.FAILED, message=f"lines do not match at line {start + 1}"), None
    if new and not new[-1].endswith("\n") and end != len(a):
        return HunkOutcome(HunkStatus.FAILED, message="a line marked 'No newline at end of file' is not at the end"), None
    return HunkOutcome(HunkStatus.APPLIED, line=start + 1), _Placement(start, end, new, 0)


def _lenient_hunk(index: _Index, hunk: Hunk, expected: int, taken: list[tuple[int, int]], eol: str) -> tuple[HunkOutcome, _Placement | None]:
    a = index.lines
    stated = hunk.old_start - 1 if hunk.old_start is not None else None
    missing = hunk.missing_range()
    if missing and a and not hunk.old_lines():
        message = f"the hunk header has {missing} and the hunk has no context or removed lines to find it by"
        return HunkOutcome(HunkStatus.FAILED, message=message), None
    for level in _LEVELS:
        if level.fuzz and missing:
            break  # without the header's word on where it goes, all of the context must match
        ops, lead = _trim(hunk.ops(), level.fuzz) if level.fuzz else (hunk.ops(), 0)
        if level.fuzz and lead == 0 and len(ops) == len(hunk.ops()):
            continue  # no context to drop: same search as before
        old = [line for tag, line in ops if tag in " -"]
        if level.fuzz and not old:
            continue  # dropping all context would place the hunk anywhere
        q = _find(index, old, level, expected + lead, taken)
        if q is None:
            continue
        lines: list[str] = []
        k = q
        for tag, line in ops:
            if tag == " ":
                lines.append(a[k])
                k += 1
            elif tag == "-":
                k += 1
            else:
                lines.append(line if level.name == "exact" else _with_eol(line, eol))
        first = q - lead
        offset = 0 if stated is None else first - stated
        status = HunkStatus.APPLIED if offset == 0 and not missing else HunkStatus.OFFSET
        if level.name != "exact":
            status = HunkStatus.FUZZY
        message = f"the hunk header has {missing}" if missing else ""
        return HunkOutcome(status, line=first + 1, offset=offset, match=level.name, message=message), _Placement(q, k, lines, 0)
    where = f"near line {expected + 1}"
    return HunkOutcome(HunkStatus.FAILED, message=f"context and removed lines not found {where}"), None


def apply_diff(before: str, diff: str | bytes | ParsedDiff, mode: str = "strict") -> ApplyResult:
    """Apply ``diff`` to ``before``; see the module docstring for the modes."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    parsed = diff if isinstance(diff, ParsedDiff) else parse_diff(diff)
    notes = list(parsed.notes)
    if before in (NEW_FILE, NEW_FILE + "\n"):
        before = ""
    if not parsed.hunks:
        if parsed.status is Status.EMPTY:
            return ApplyResult(before, ApplyStatus.EMPTY, [], parsed.status, notes)
        return ApplyResult(None, ApplyStatus.BAD_FORMAT, [], parsed.status, notes)

    a = split_lines(before)
    readings = [parsed] if parsed.verbatim is None else [parsed.verbatim, parsed]
    if a and _eol_style(a) == "\n":
        readings.reverse()
    first = _apply_hunks(a, readings[0], mode)
    if first.ok or len(readings) == 1:
        return first
    other = _apply_hunks(a, readings[1], mode)
    return other if other.ok else first


def _apply_hunks(a: list[str], parsed: ParsedDiff, mode: str) -> ApplyResult:
    """Apply the hunks of one reading of a diff to the lines ``a``."""
    notes = list(parsed.notes)
    index = _Index(a)
    eol = _eol_style(a)
    outcomes: list[HunkOutcome] = []
    placements: list[_Placement] = []
    prev_end, drift = 0, 0
    for order, hunk in enumerate(parsed.hunks):
        if mode == "strict":
            outcome, place = _strict_hunk(a, hunk, prev_end)
        else:
            stated = hunk.old_start - 1 if hunk.old_start is not None else None
            expected = stated + drift if stated is not None else prev_end
            taken = [(p.start, p.end) for p in placements]
            outcome, place = _lenient_hunk(index, hunk, expected, taken, eol)
        outcomes.append(outcome)
        if place is not None:
            place.order = order
            placements.append(place)
            prev_end = place.end
            if outcome.line is not None and hunk.old_start is not None:
                drift = outcome.offset

    if any(o.status is HunkStatus.FAILED for o in outcomes):
        return ApplyResult(None, ApplyStatus.FAILED, outcomes, parsed.status, notes)

    out: list[str] = []
    pos = 0
    for place in sorted(placements, key=lambda p: (p.start, p.order)):
        out.extend(a[pos:place.start])
        out.extend(place.lines)
        pos = max(pos, place.end)
    out.extend(a[pos:])
    if mode == "lenient":
        out = [line if line.endswith("\n") or i == len(out) - 1 else line + eol for i, line in enumerate(out)]
    status = ApplyStatus.APPLIED if all(o.status is HunkStatus.APPLIED for o in outcomes) else ApplyStatus.RELOCATED
    return ApplyResult("".join(out), status, outcomes, parsed.status, notes)


__all__ = ["ApplyResult", "ApplyStatus", "HunkOutcome", "HunkStatus", "MODES", "apply_diff"]
