"""The grammar of one file's unified diff over the known original file.

A diff model writes, after ``<DFF> ``, one file's diff as
:func:`diffmodel.diff.make.make_diff` writes it. Given the original file,
most of that text is determined: a context (``' '``) or removal (``'-'``)
line must be the next line of the file. :class:`DiffGrammar` knows the file
and answers, character by character, what may come next; it has no model and
no tokenizer (a decoder tests each candidate token's string against it).

    grammar = DiffGrammar(before)
    state = grammar.start()            # an immutable DiffState
    state.allowed_next()               # Next: forced text, a choice, free text, or a number
    state.accepted_prefix("x = 1\\n+")  # how many characters are allowed, O(len(text))
    state = state.feed("x = 1\\n+")     # a new state; DiffRejected if not allowed
    state.try_feed("x = 1\\n+")          # the same, or None if not allowed
    state.can_end                      # the diff may stop here (the decoder's EOS)
    state.finish()                     # the final diff, headers rewritten

What may come where:

- The diff opens with ``@@ -`` (forced). At a line start the choices are
  ``' '`` (context), ``'-'`` (removal), ``'+'`` (added line), ``'@'`` (a new
  hunk), ``'\\\\'`` (a ``\\ No newline at end of file`` line) and the end.
  After ``' '`` or ``'-'`` the rest of the line is forced: exactly the next
  original line with its ending (``"\\r\\n"``, tabs, any character kept), and,
  when that is the file's last line and has no newline, ``"\\n"`` and the
  ``\\ No newline at end of file`` line. After ``'+'`` any text until a
  newline. A file is split with :func:`~diffmodel.diff.make.split_lines`.
- ``'-'`` and ``' '`` need a line left in the file. A ``' '`` on the last line
  of a file without a final newline needs a change earlier in the hunk (else
  the hunk could not get one), and no ``'+'`` may follow it (the new file
  would need that line's missing newline). ``'\\\\'`` may follow a ``'+'`` line
  once every original line is consumed (the new file then ends without a
  newline); after it only the end is allowed. So an added last line without
  newline is written after the removals, as git writes it.
- Every hunk needs at least one change (``'-'`` or ``'+'``) before a new hunk
  or the end: a hunk of context lines alone changes nothing. So the end is
  allowed at a line start once the current hunk has a change; an empty diff
  is never produced.

Hunk headers (the model cannot know the counts when it writes them):

- The form is ``@@ -S[,C] +T[,D] @@`` followed by a newline: digits without
  leading zeros, no text after the closing ``@@``. The forced parts are
  ``@@ -``, `` +`` and `` @@\\n``.
- The old start is binding, read as git writes it: the hunk starts at 0-based
  line ``S`` when the claimed count ``C`` is 0 (git names the line before an
  empty range) and at line ``S - 1`` otherwise (``C`` omitted counts as 1).
  That line must lie at or after the end of the previous hunk (the start of
  the file for the first) and at most at the end of the file (not at the end
  of a file without a final newline: nothing can be appended there without
  changing its last line). The digits of ``S`` and the first digit of ``C``
  are constrained so that every allowed prefix has an allowed completion.
- Otherwise ``C``, ``T`` and ``D`` are only checked for form (at most
  :data:`MAX_DIGITS` digits) and ignored: :meth:`DiffState.finish` rewrites
  every header from the hunk's body (counts) and the previous hunks' line
  deltas (new start), with git's conventions
  (:func:`~diffmodel.diff.make.format_header`), so the final diff parses as
  ``valid`` and applies strictly, giving the file the choices describe.

Invariants:
- No dead ends: from every state reached by allowed text, some continuation
  reaches a state where :attr:`DiffState.can_end` holds.
- States are immutable and cheap to copy (a batch keeps one per row; sampling
  may branch); ``feed``, ``try_feed`` and ``accepted_prefix`` cost O(len(text)). Two states
  with equal :attr:`DiffState.signature` accept exactly the same continuations.
- ``start().feed(make_diff(before, after)).finish() == make_diff(before, after)``
  whenever ``before != after``.
- Text that is not allowed raises :class:`DiffRejected` (a ``ValueError``:
  a decoder's mistake, not a user's), naming the offset and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffmodel.diff.make import NO_NEWLINE, format_header, split_lines

#: the line git writes after a line that has no newline
MARKER_LINE = NO_NEWLINE + "\n"
#: the most digits of a number the grammar only checks for form (C, T, D)
MAX_DIGITS = 9

DIGITS = frozenset("0123456789")
_NUMBER_CHARS = DIGITS | {",", " "}
_HEADER_OPEN = "@@ -"
_RANGE_GAP = " +"
_HEADER_CLOSE = " @@\n"

# What is being written (DiffState.mode).
_FORCED, _LINE, _ADDED, _OLD_START, _OLD_COUNT, _NEW_START, _NEW_COUNT = range(7)
# What completing a forced unit does (DiffState.then).
_TO_OLD_START, _TO_NEW_START, _TO_BODY, _CONTEXT, _REMOVAL, _MARKER = range(6)

_FIELDS = {
    _LINE: "line", _ADDED: "added", _OLD_START: "old_start", _OLD_COUNT: "old_count",
    _NEW_START: "new_start", _NEW_COUNT: "new_count",
}


class DiffRejected(ValueError):
    """Text the grammar does not allow. ``offset``: how many characters were allowed."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"character {offset} of the text fed: {reason}")
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class Next:
    """What may follow a state.

    - ``field == "forced"``: exactly ``forced`` comes next (a non-empty string
      that may run through several lines, e.g. a context line's rest, or
      ``"@@ -"``); ``chars`` is None and ``end`` is False.
    - ``field == "line"``: a line start; ``chars`` holds the line kinds allowed
      (of ``' '``, ``'-'``, ``'+'``, ``'@'``, ``'\\\\'``) and ``end`` says whether
      the diff may end here.
    - ``field == "added"``: the text of a ``'+'`` line; ``chars`` is None: any
      character, ``"\\n"`` ends the line.
    - ``field`` in ``old_start``, ``old_count``, ``new_start``, ``new_count``: a
      number of the hunk header; ``chars`` holds the digits allowed and
      ``','`` or ``' '`` where the number may stop there.

    Only one character of a choice is described; a candidate string of any
    length is checked with :meth:`DiffState.accepted_prefix`.
    """

    field: str
    forced: str = ""
    chars: frozenset[str] | None = None
    end: bool = False


class DiffGrammar:
    """The diff grammar over one original file (``before``, the file's text)."""

    def __init__(self, before: str) -> None:
        self.before = before
        self.lines = split_lines(before)
        self.n = len(self.lines)
        #: the file is empty or its last line ends in a newline
        self.ends_with_newline = not self.lines or self.lines[-1].endswith("\n")
        #: the last 0-based line a hunk may start at (the end only when something may be appended)
        self.last_start = self.n if self.ends_with_newline else self.n - 1
        #: what ' ' or '-' forces for each line: the line, and the marker line after a last line without newline
        self.units = [line if line.endswith("\n") else f"{line}\n{MARKER_LINE}" for line in self.lines]

    def start(self) -> DiffState:
        """The state before the first character of the diff."""
        return DiffState._initial(self)


class DiffState:
    """Where a diff being written stands. Immutable: ``feed`` returns a new state."""

    __slots__ = (
        "grammar", "mode", "unit", "off", "then", "pos", "num", "ndig", "old_start",
        "changed", "last", "new_ended", "hunk_index", "old_len", "new_len", "done",
        "length", "unit_start", "hunk_text_start", "emitted",
    )

    # grammar: the DiffGrammar; mode: what is being written (_FORCED, _LINE, ...)
    # unit, off, then: the forced text, how much of it is written, what its end does
    # pos: 0-based next original line (in a header: where the previous hunk ended)
    # num, ndig: the header number being written; old_start: the S of "-S,C"
    # changed: the current hunk has a '-' or '+'; last: the kind of its last line ('' at its start)
    # new_ended: a '+' line ended the new file without newline
    # hunk_index, old_len, new_len: the current hunk (0-based start, counts of complete lines)
    # done: the finished hunks as a linked list (previous, (index, old_len, new_len))
    # length: characters fed; unit_start, hunk_text_start: where the current line / hunk began
    # emitted: the text fed as a linked list (previous, text)

    @classmethod
    def _initial(cls, grammar: DiffGrammar) -> DiffState:
        s = object.__new__(cls)
        s.grammar = grammar
        s.mode, s.unit, s.off, s.then = _FORCED, _HEADER_OPEN, 0, _TO_OLD_START
        s.pos = s.num = s.ndig = s.old_start = 0
        s.changed, s.last, s.new_ended = False, "", False
        s.hunk_index = s.old_len = s.new_len = 0
        s.done = None
        s.length = s.unit_start = s.hunk_text_start = 0
        s.emitted = None
        return s

    def _copy(self) -> DiffState:
        s = object.__new__(DiffState)  # every slot, spelt out: a decoder copies states at every step
        s.grammar = self.grammar
        s.mode = self.mode
        s.unit = self.unit
        s.off = self.off
        s.then = self.then
        s.pos = self.pos
        s.num = self.num
        s.ndig = self.ndig
        s.old_start = self.old_start
        s.changed = self.changed
        s.last = self.last
        s.new_ended = self.new_ended
        s.hunk_index = self.hunk_index
        s.old_len = self.old_len
        s.new_len = self.new_len
        s.done = self.done
        s.length = self.length
        s.unit_start = self.unit_start
        s.hunk_text_start = self.hunk_text_start
        s.emitted = self.emitted
        return s

    # -- what may come next -------------------------------------------------------------

    @property
    def signature(self) -> tuple:
        """What decides every continuation: states of one grammar with equal signatures accept the same texts.

        The text fed so far and the hunk's line counts (which only
        :meth:`finish` reads) are left out, so a decoder can cache what it
        computed for a state (its allowed tokens) across rows and steps.
        """
        base = (self.grammar, self.mode, self.pos, self.changed, self.last, self.new_ended)
        if self.mode == _FORCED:
            return base + (self.unit, self.off, self.then)
        if self.mode in (_LINE, _ADDED):
            return base
        return base + (self.num, self.ndig, self.old_start)  # a header number

    @property
    def can_end(self) -> bool:
        """The diff may end here: a line start in a hunk that has a change."""
        return self.mode == _LINE and self.changed

    @property
    def next_line(self) -> int:
        """0-based index of the next original line (in a header: the previous hunk's end)."""
        return self.pos

    @property
    def text(self) -> str:
        """Everything fed so far, as fed (headers not yet rewritten)."""
        parts: list[str] = []
        node = self.emitted
        while node is not None:
            node, piece = node
            parts.append(piece)
        return "".join(reversed(parts))

    def _line_chars(self) -> frozenset[str]:
        g = self.grammar
        pos, n = self.pos, g.n
        chars = []
        if pos < n and (pos < n - 1 or g.ends_with_newline or self.changed):
            chars.append(" ")
        if pos < n:
            chars.append("-")
        if not self.new_ended and not (self.last == " " and pos == n and not g.ends_with_newline):
            chars.append("+")
        if self.changed and not self.new_ended and pos <= g.last_start:
            chars.append("@")
        if self.last == "+" and pos == n and not self.new_ended:
            chars.append("\\")
        return frozenset(chars)

    def _number_chars(self) -> frozenset[str]:
        return frozenset(c for c in _NUMBER_CHARS if _header_ok(self, c))

    @property
    def digits_key(self) -> tuple:
        """In a header number: what decides which runs of digits may come next (equal keys accept the same runs).

        Less than the :attr:`signature`: apart from the old start (whose value
        must stay in the file's range), only the digits written so far, whether
        they are a leading zero, and for the old count's first digit where the
        start lies, matter (what :func:`_header_ok` reads for a digit).
        """
        lo, hi = self.pos, self.grammar.last_start + 1
        if self.mode == _OLD_START:
            return (_OLD_START, self.num, self.ndig, lo, hi)
        first = self.mode == _OLD_COUNT and not self.ndig and (self.old_start == lo, self.old_start == hi)
        return (_NEW_START, self.ndig, self.num == 0, first)

    def accepted_digit_runs(self, runs: list[tuple[int, str]]) -> list[int]:
        """In a header number: the ids of ``runs`` ((id, a text of ASCII digits) pairs) that may come next.

        Digits never end a number, so a run is allowed when each of its digits
        is (:func:`_header_ok`); a decoder checks its vocabulary's numbers with
        one scratch state instead of a state per digit.
        """
        s = self._copy()
        out = []
        for i, text in runs:
            s.num, s.ndig = self.num, self.ndig
            for c in text:
                if not _header_ok(s, c):
                    break
                s.num, s.ndig = s.num * 10 + ord(c) - 48, s.ndig + 1
            else:
                out.append(i)
        return out

    def _options(self) -> tuple[frozenset[str] | None, bool]:
        """(characters allowed next, or None for any; whether the diff may end), outside forced text."""
        if self.mode == _LINE:
            return self._line_chars(), self.changed
        if self.mode == _ADDED:
            return None, False
        return self._number_chars(), False

    def allowed_next(self) -> Next:
        """What may follow: the longest forced text, else the choice here (see :class:`Next`)."""
        s = self
        forced: list[str] = []
        while True:
            if s.mode == _FORCED:
                rest = s.unit[s.off:]
                forced.append(rest)
                s = s._copy()
                _walk(s, rest)
                continue
            chars, end = s._options()
            if chars is not None and len(chars) == 1 and not end:
                (c,) = chars
                forced.append(c)
                s = s._copy()
                _walk(s, c)
                continue
            break
        if forced:
            return Next("forced", forced="".join(forced))
        return Next(_FIELDS[self.mode], chars=chars, end=end)

    def accepted_prefix(self, text: str) -> int:
        """How many leading characters of ``text`` are allowed here; O(len(text))."""
        return _walk(self._copy(), text)

    def accepts(self, text: str) -> bool:
        """Whether all of ``text`` is allowed here (it may stop anywhere, even mid-line)."""
        return self.accepted_prefix(text) == len(text)

    def feed(self, text: str) -> DiffState:
        """The state after ``text``; raises :class:`DiffRejected` if it is not allowed."""
        s = self.try_feed(text)
        if s is None:
            k = self.accepted_prefix(text)
            at = self._copy()
            _walk(at, text[:k])
            raise DiffRejected(k, at._why(text[k]))
        return s

    def try_feed(self, text: str) -> DiffState | None:
        """The state after ``text``, or None if it is not allowed (one pass over ``text``)."""
        if not text:
            return self
        s = self._copy()
        if _walk(s, text) < len(text):
            return None
        s.emitted = (self.emitted, text)
        return s

    def _why(self, c: str) -> str:
        g = self.grammar
        if self.mode == _FORCED:
            what = f"expected {self.unit[self.off:]!r}, got {c!r}"
            if self.then in (_CONTEXT, _REMOVAL):
                what += f" (the rest of line {self.pos + 1} of the file)"
            return what
        chars, end = self._options()
        allowed = ", ".join(repr(x) for x in sorted(chars or ()))
        if end:
            allowed = f"{allowed} or the end" if allowed else "only the end"
        if self.mode == _LINE:
            used = f"{self.pos} of the file's {g.n} lines are used"
            return f"a line cannot start with {c!r} here ({used}); allowed: {allowed}"
        where = ""
        if self.mode in (_OLD_START, _OLD_COUNT):
            where = f" (this hunk may start at old line {self.pos + 1}..{g.last_start + 1}, 1-based)"
        return f"{c!r} is not allowed in the hunk header's {_FIELDS[self.mode]}{where}; allowed: {allowed}"

    # -- the final diff -----------------------------------------------------------------

    def finish(self, partial: bool = False) -> str:
        """The diff with every ``@@`` header rewritten from its hunk (see the module docstring).

        Needs :attr:`can_end`; with ``partial=True`` (generation cut short) an
        unfinished line and a last hunk without a change are dropped instead,
        so the result still applies strictly (``""`` when nothing is left).
        """
        text = self.text
        hunks: list[tuple[int, int, int]] = []
        node = self.done
        while node is not None:
            node, hunk = node
            hunks.append(hunk)
        hunks.reverse()
        current = (self.hunk_index, self.old_len, self.new_len)
        if self.can_end:
            hunks.append(current)
        elif not partial:
            raise ValueError(
                "the diff cannot end here: it ends mid-line or its last hunk has no change; "
                "pass partial=True to drop the unfinished part"
            )
        elif self.changed:
            text = text[:self.unit_start]
            hunks.append(current)
        else:
            text = text[:self.hunk_text_start]
        out: list[str] = []
        delta = 0
        headers = iter(hunks)
        for line in split_lines(text):
            if line.startswith("@@"):
                index, old_len, new_len = next(headers)
                out.append(format_header(index + 1, old_len, index + delta + 1, new_len) + "\n")
                delta += new_len - old_len
            else:
                out.append(line)
        return "".join(out)


def _walk(s: DiffState, text: str) -> int:
    """Advance ``s`` (a private copy) over ``text``; return how many characters were allowed."""
    g = s.grammar
    base = s.length
    i, size = 0, len(text)
    while i < size:
        mode = s.mode
        if mode == _FORCED:
            unit, off = s.unit, s.off
            k = min(size - i, len(unit) - off)
            if text[i:i + k] != unit[off:off + k]:
                while text[i] == unit[off]:
                    i, off = i + 1, off + 1
                s.off = off
                break
            i, off = i + k, off + k
            s.off = off
            if off == len(unit):
                _complete(s)
            continue
        if mode == _ADDED:
            j = text.find("\n", i)
            if j < 0:
                i = size
                continue
            i = j + 1
            s.new_len += 1
            s.changed, s.last, s.mode = True, "+", _LINE
            continue
        c = text[i]
        if mode == _LINE:
            if c not in s._line_chars():
                break
            s.unit_start = base + i
            if c == " " or c == "-":
                s.mode, s.unit, s.off = _FORCED, g.units[s.pos], 0
                s.then = _CONTEXT if c == " " else _REMOVAL
            elif c == "+":
                s.mode = _ADDED
            elif c == "@":
                s.done = (s.done, (s.hunk_index, s.old_len, s.new_len))
                s.hunk_text_start = base + i
                s.changed, s.last, s.old_len, s.new_len = False, "", 0, 0
                s.mode, s.unit, s.off, s.then = _FORCED, _HEADER_OPEN, 1, _TO_OLD_START
            else:  # "\\"
                s.mode, s.unit, s.off, s.then = _FORCED, MARKER_LINE, 1, _MARKER
            i += 1
            continue
        if not _header_char(s, c):
            break
        i += 1
    s.length = base + i
    return i


def _viable(prefix: int, lo: int, hi: int) -> bool:
    """Whether some number in ``[lo, hi]`` is written starting with the digits of ``prefix``."""
    if prefix == 0:
        return lo <= 0 <= hi
    scale = 1
    while prefix * scale <= hi:
        if prefix * scale + scale - 1 >= lo:
            return True
        scale *= 10
    return False


def _header_ok(s: DiffState, c: str) -> bool:
    """Whether a header number (or what ends it) may take ``c`` here; ``s`` is not changed."""
    mode = s.mode
    lo, hi = s.pos, s.grammar.last_start + 1  # the range of S (see the module docstring)
    if c in DIGITS:
        d = ord(c) - 48
        if mode == _OLD_START:
            return not (s.ndig and s.num == 0) and _viable(s.num * 10 + d, lo, hi)
        if s.ndig and s.num == 0 or s.ndig >= MAX_DIGITS:
            return False  # a leading zero, or too long
        if mode == _OLD_COUNT and not s.ndig:
            if s.old_start == lo and d != 0:
                return False  # only "S,0" puts the hunk at line S = the previous hunk's end
            if s.old_start == hi and d == 0:
                return False  # "S,0" would start the hunk past the last allowed line
        return True
    if not s.ndig:
        return False
    if c == ",":
        return mode == _OLD_START and lo <= s.num <= hi or mode == _NEW_START
    if c != " ":
        return False
    return mode != _OLD_START or lo + 1 <= s.num <= hi


def _header_char(s: DiffState, c: str) -> bool:
    """Take one character of a header number (or what ends it); False if not allowed."""
    if not _header_ok(s, c):
        return False
    mode = s.mode
    if c in DIGITS:
        s.num, s.ndig = s.num * 10 + ord(c) - 48, s.ndig + 1
        return True
    if c == ",":
        if mode == _OLD_START:
            s.old_start, s.mode = s.num, _OLD_COUNT
        else:
            s.mode = _NEW_COUNT
        s.num = s.ndig = 0
        return True
    if mode == _OLD_START:
        s.old_start = s.num
        _begin_hunk(s, s.num - 1)
    elif mode == _OLD_COUNT:
        _begin_hunk(s, s.old_start if s.num == 0 else s.old_start - 1)
    else:
        s.mode, s.unit, s.off, s.then = _FORCED, _HEADER_CLOSE, 1, _TO_BODY
        return True
    s.mode, s.unit, s.off, s.then = _FORCED, _RANGE_GAP, 1, _TO_NEW_START
    return True


def _begin_hunk(s: DiffState, index: int) -> None:
    s.hunk_index = s.pos = index


def _complete(s: DiffState) -> None:
    """The forced unit is written: do what it leads to."""
    then = s.then
    s.mode = _LINE
    if then == _CONTEXT or then == _REMOVAL:
        s.pos += 1
        s.old_len += 1
        if then == _CONTEXT:
            s.new_len += 1
            s.last = " "
        else:
            s.changed, s.last = True, "-"
    elif then == _MARKER:
        s.new_ended, s.last = True, "\\"
    elif then == _TO_OLD_START:
        s.mode, s.num, s.ndig = _OLD_START, 0, 0
    elif then == _TO_NEW_START:
        s.mode, s.num, s.ndig = _NEW_START, 0, 0
    # _TO_BODY: the hunk's first line start


#: The ``Next.field`` of a hunk header's numbers.
NUMBER_FIELDS = frozenset({"old_start", "old_count", "new_start", "new_count"})

__all__ = ["DIGITS", "DiffGrammar", "DiffRejected", "DiffState", "MARKER_LINE", "MAX_DIGITS", "NUMBER_FIELDS", "Next"]
