"""Parse unified diffs, including the imperfect ones models write.

``parse_diff(text)`` reads one file's diff (the text after ``<DFF>``, a bare
hunk list as :func:`diffmodel.diff.make.make_diff` writes, or a git-style patch
with ``---``/``+++`` headers) into :class:`Hunk` objects;
``parse_patch(text)`` reads every file of a multi-file patch.

Invariants:
- Parsing never raises on any ``str`` or ``bytes`` input: problems become a
  :class:`Status` and human-readable ``notes``.
- ``status`` is ``valid`` only when the text is a well-formed diff with right
  line counts and nothing else; ``repaired`` when hunks were read but
  something had to be fixed or skipped (each fix is one entry in ``notes``);
  ``empty`` for blank text; ``bad_format`` when no hunk could be read.
- The hunk body is trusted over the numbers in its header: line counts are
  always recounted from the body.
- A diff whose first ``@@`` line ends in CRLF has CRLF line ends itself: its
  hunks are read with one CR dropped per line (a diff converted to CRLF on
  the way, or a model writing CRLF for an LF file), and ``verbatim`` holds
  the same diff read byte for byte (a CRLF file's diff in a CRLF patch file,
  which ``git apply`` takes as it is), when both readings give the same
  sections and hunks. The applier tries both.
- Reading stops at a line starting with a sample marker (``<NME>`` and the
  like): a model that runs on into a next sample is cut there.
- ``Hunk.lines`` keep the diff's own lines verbatim (prefix, content, line
  ending), each ending in ``"\\n"``; :meth:`Hunk.old_lines` and
  :meth:`Hunk.new_lines` give the file lines with the no-newline markers
  folded in, so ``"".join`` of them is byte-exact file text.
- Starts are stored as the 1-based number of the first line of the range; for
  an empty range (git writes ``-5,0`` for "after line 5") that is the line
  after the insertion point (``6``), so ``old_start - 1`` is always the
  0-based index where the hunk applies. ``None`` means the header gave none;
  :meth:`Hunk.missing_range` names a missing range (such a hunk is never
  applied strictly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from diffmodel.diff.make import NO_NEWLINE, format_header, split_lines
from diffmodel.sample import DIFF_MARKER, MARKERS


class Status(str, Enum):
    """How well-formed a parsed diff was."""

    VALID = "valid"
    REPAIRED = "repaired"
    EMPTY = "empty"
    BAD_FORMAT = "bad_format"

    def __str__(self) -> str:
        return self.value


@dataclass
class Hunk:
    """One ``@@`` block. ``lines`` start with ``' '``, ``'-'``, ``'+'`` or ``'\\\\'``."""

    old_start: int | None
    old_len: int
    new_start: int | None
    new_len: int
    lines: list[str] = field(default_factory=list)
    #: text after the closing ``@@`` (git's function context), without newline
    section: str = ""

    def missing_range(self) -> str:
        """``""`` when the header stated both ranges, else which one it lacked.

        A hunk whose header lacks a range (``@@ -1,7 @@``) is never applied
        strictly: it can only be placed by its context.
        """
        if self.old_start is None and self.new_start is None:
            return "no line numbers"
        if self.old_start is None:
            return "no -OLD range"
        if self.new_start is None:
            return "no +NEW range"
        return ""

    def ops(self) -> list[tuple[str, str]]:
        """``(tag, file line)`` pairs, tag ``' '``, ``'-'`` or ``'+'``, markers folded in."""
        out: list[tuple[str, str]] = []
        for line in self.lines:
            tag = line[:1]
            if tag == "\\":
                if out and out[-1][1].endswith("\n"):
                    out[-1] = (out[-1][0], out[-1][1][:-1])
            elif tag in (" ", "-", "+"):
                out.append((tag, line[1:]))
        return out

    def _side(self, keep: str) -> list[str]:
        return [line for tag, line in self.ops() if tag in keep]

    def old_lines(self) -> list[str]:
        """The file lines this hunk expects (context and removed), with endings."""
        return self._side(" -")

    def new_lines(self) -> list[str]:
        """The file lines this hunk leaves (context and added), with endings."""
        return self._side(" +")

    def header(self, old_start: int | None = None, new_start: int | None = None) -> str:
        """The canonical ``@@`` line (recounted lengths), without a newline."""
        old = self.old_start if old_start is None else old_start
        new = self.new_start if new_start is None else new_start
        head = format_header(old or 1, self.old_len, new or 1, self.new_len)
        return f"{head}{self.section}" if self.section else head


@dataclass
class ParsedDiff:
    """The hunks of one file's diff, how well-formed it was, and the file names."""

    status: Status
    hunks: list[Hunk] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: names from ``---``/``+++`` (``a/``, ``b/`` stripped; ``/dev/null`` kept)
    old_path: str | None = None
    new_path: str | None = None
    #: for a diff whose lines end in CRLF: the same diff read byte for byte
    #: (the hunks above have one CR dropped per line); else None
    verbatim: ParsedDiff | None = field(default=None, repr=False, compare=False)
    #: git's ``rename from`` name (the file is read there and written at ``new_path``); else None
    renamed_from: str | None = None
    #: a git section that changes no line: a rename without edits, a new empty file, a mode change
    #: (it has no hunk, so its status is ``bad_format``, but there is nothing to apply)
    header_only: bool = False

    @property
    def ok(self) -> bool:
        """True when there are hunks to apply (``valid`` or ``repaired``)."""
        return self.status in (Status.VALID, Status.REPAIRED)

    def to_text(self) -> str:
        """The hunks as a canonical diff body (missing starts guessed in order)."""
        out: list[str] = []
        old_next, delta = 1, 0
        for hunk in self.hunks:
            old = hunk.old_start if hunk.old_start is not None else old_next
            new = hunk.new_start if hunk.new_start is not None else old + delta
            out.append(hunk.header(old, new) + "\n")
            out.extend(hunk.lines)
            old_next = old + hunk.old_len
            delta = new - old + hunk.new_len - hunk.old_len
        return "".join(out)


# -- reading ---------------------------------------------------------------------------------

_STRICT_HEADER = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)\n\Z", re.S)
_OLD_RANGE = re.compile(r"-\s*(\d+)(?:\s*,\s*(\d+))?")
_NEW_RANGE = re.compile(r"\+\s*(\d+)(?:\s*,\s*(\d+))?")
_GIT_EXTENDED = (
    "index ", "new file mode", "deleted file mode", "old mode", "new mode", "similarity index",
    "dissimilarity index", "rename from", "rename to", "copy from", "copy to",
)
_BINARY = ("Binary files ", "GIT binary patch")


@dataclass
class _Header:
    old_start: int | None
    old_claim: int | None
    new_start: int | None
    new_claim: int | None
    section: str
    well_formed: bool


def _read_header(line: str) -> _Header:
    m = _STRICT_HEADER.match(line)
    if m:
        old_claim = int(m.group(2)) if m.group(2) is not None else 1
        new_claim = int(m.group(4)) if m.group(4) is not None else 1
        return _Header(int(m.group(1)), old_claim, int(m.group(3)), new_claim, m.group(5).rstrip("\r\n"), True)
    inner = line.rstrip("\r\n").lstrip("@")
    close = inner.find("@@")
    ranges, section = (inner[:close], inner[close:].lstrip("@")) if close >= 0 else (inner, "")
    starts: list[int | None] = []
    claims: list[int | None] = []
    for pattern in (_OLD_RANGE, _NEW_RANGE):
        r = pattern.search(ranges)
        if r:
            starts.append(int(r.group(1)))
            claims.append(int(r.group(2)) if r.group(2) is not None else 1)
        else:
            starts.append(None)
            claims.append(None)
    return _Header(starts[0], claims[0], starts[1], claims[1], section, False)


def _normalized_start(start: int | None, claim: int | None) -> int | None:
    """Header start -> 1-based first line of the range (see module docstring)."""
    if start is None:
        return None
    return start + 1 if claim == 0 else max(start, 1)


def _is_marker(line: str) -> bool:
    return line.startswith(MARKERS)


def _is_file_header(lines: list[str], i: int) -> bool:
    return lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")


def _is_blank(line: str) -> bool:
    return line in ("\n", "\r\n")


_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _unquote(name: str) -> str:
    """A name git wrote C-style quoted (``"a/na\\303\\257ve.py"``: octal bytes, ``\\t``, ``\\"``) as text
    (bytes that are not UTF-8 as ``surrogateescape``, as the files are read)."""
    out = bytearray()
    i = 0
    while i < len(name):
        ch = name[i]
        if ch == "\\" and i + 1 < len(name):
            nxt = name[i + 1]
            octal = name[i + 1:i + 4]
            if len(octal) == 3 and all(c in "01234567" for c in octal):
                out.append(int(octal, 8) & 0xFF)
                i += 4
                continue
            if nxt in _C_ESCAPES:
                out.append(_C_ESCAPES[nxt])
                i += 2
                continue
        out.extend(ch.encode("utf-8", "surrogateescape"))
        i += 1
    return out.decode("utf-8", "surrogateescape")


def _path(raw: str) -> str:
    name = raw.rstrip("\r\n")
    if len(name.strip()) >= 2 and name.strip()[0] == name.strip()[-1] == '"':
        return _unquote(name.strip()[1:-1])
    if "\t" in name:  # "--- name\t2024-01-01 00:00:00" (timestamps from diff -u)
        name = name.split("\t", 1)[0]
    name = name.strip()
    if len(name) >= 2 and name[0] == '"' and name.rfind('"') > 0:  # quoted, then a tab and a timestamp
        return _unquote(name[1:name.rfind('"')])
    return name


def _strip_prefixes(old: str | None, new: str | None) -> tuple[str | None, str | None]:
    def has(name: str | None, prefix: str) -> bool:
        return name is None or name == "/dev/null" or name.startswith(prefix)

    if has(old, "a/") and has(new, "b/"):
        old = old[2:] if old and old != "/dev/null" else old
        new = new[2:] if new and new != "/dev/null" else new
    return old, new


class _Section:
    def __init__(self) -> None:
        self.hunks: list[Hunk] = []
        self.notes: list[str] = []
        self.old_path: str | None = None
        self.new_path: str | None = None
        self.has_header = False
        self.skipped_after_hunk: list[str] = []
        self.renamed_from: str | None = None
        self.extended = False  # read a git extended header line (rename, new file, mode, index)
        self.binary = False

    def finish(self) -> ParsedDiff:
        if any(line.strip() for line in self.skipped_after_hunk):
            self.notes.append("ignored text after the last hunk")
        if not self.hunks:
            self.notes.append("no @@ hunk found")
            status = Status.BAD_FORMAT
        else:
            status = Status.REPAIRED if self.notes else Status.VALID
        header_only = not self.hunks and self.extended and not self.binary and self.new_path is not None
        return ParsedDiff(status, self.hunks, self.notes, self.old_path, self.new_path,
                          renamed_from=self.renamed_from, header_only=header_only)


def _read_hunk(lines: list[str], i: int, number: int, notes: list[str]) -> tuple[Hunk | None, int]:
    """Read the hunk whose header is ``lines[i]``; return it and the next index."""
    head = _read_header(lines[i])
    if not head.well_formed:
        notes.append(f"hunk {number}: malformed header {lines[i].rstrip()!r}")
    body: list[str] = []
    old = new = 0
    j = i + 1
    blanks_read = False

    def counts_met() -> bool:
        return head.old_claim is not None and head.new_claim is not None and old >= head.old_claim and new >= head.new_claim

    while j < len(lines):
        line = lines[j]
        tag = line[:1]
        if tag in (" ", "-", "+"):
            if _is_file_header(lines, j) and (counts_met() or head.old_claim is None):
                break  # a following file's "--- a/x" / "+++ b/x"
            body.append(line)
            old += tag in " -"
            new += tag in " +"
            j += 1
        elif tag == "\\":
            if body and not body[-1].startswith("\\"):
                body.append(line)
            else:
                notes.append(f"hunk {number}: ignored a stray no-newline marker")
            j += 1
        elif _is_blank(line) and not counts_met():
            # An empty line inside a hunk is usually an empty context line whose
            # leading space was stripped; it is one only if the hunk goes on.
            k = j
            while k < len(lines) and _is_blank(lines[k]):
                k += 1
            if k < len(lines) and lines[k][:1] in (" ", "-", "+", "\\") and not _is_file_header(lines, k):
                for blank in lines[j:k]:
                    body.append(" " + blank)
                    old += 1
                    new += 1
                blanks_read = True
                j = k
            else:
                break
        else:
            break

    if blanks_read:
        notes.append(f"hunk {number}: read empty lines as empty context lines")
    if not any(line[:1] in " -+" for line in body):
        notes.append(f"hunk {number}: dropped a hunk with no lines")
        return None, j
    body = _drop_misplaced_markers(body, number, notes)
    hunk = Hunk(
        old_start=_normalized_start(head.old_start, head.old_claim),
        old_len=old,
        new_start=_normalized_start(head.new_start, head.new_claim),
        new_len=new,
        lines=body,
        section=head.section,
    )
    if hunk.missing_range():
        notes.append(f"hunk {number}: header has {hunk.missing_range()}")
    elif (head.old_claim, head.new_claim) != (old, new):
        notes.append(
            f"hunk {number}: header counts -{head.old_claim} +{head.new_claim} "
            f"recounted from the body as -{old} +{new}"
        )
    return hunk, j


def _drop_misplaced_markers(body: list[str], number: int, notes: list[str]) -> list[str]:
    """Keep a no-newline marker only after the last line of the side(s) it ends."""
    out: list[str] = []
    for k, line in enumerate(body):
        if line.startswith("\\"):
            ended = {" ": "-+", "-": "-", "+": "+"}[out[-1][:1]]  # "-": old side, "+": new side
            later = [other[:1] for other in body[k + 1:]]
            if any(("-" in ended and t in " -") or ("+" in ended and t in " +") for t in later):
                notes.append(f"hunk {number}: ignored a no-newline marker that is not at the end")
                continue
        out.append(line)
    return out


def _line_start_find(text: str, needle: str) -> int:
    """Index of the first ``needle`` at the start of a line, or -1."""
    if text.lstrip().startswith(needle):
        return text.index(needle)
    found = text.find("\n" + needle)
    return found + 1 if found >= 0 else -1


def _prepare(text: str | bytes) -> list[str]:
    """Decode, cut to the diff after ``<DFF>``; return its lines, each ending in a newline."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = str(text)
    # A whole rendered sample (or prompt plus generation): keep what follows
    # its <DFF>. Markers later in a bare diff belong to a next sample.
    if text.lstrip().startswith(MARKERS):
        start = _line_start_find(text, DIFF_MARKER)
        text = text[start + len(DIFF_MARKER):] if start >= 0 else ""
    text = text.lstrip(" \t")  # "<DFF> @@ ..." leaves a space before the first header
    lines = split_lines(text)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"  # generation stopped without a final newline
    return lines


def _scan(text: str | bytes) -> list[ParsedDiff]:
    """Read every file section (at least one); a CRLF diff both ways (see the module docstring)."""
    lines = _prepare(text)
    if not any(line.strip() for line in lines):
        return [ParsedDiff(Status.EMPTY, notes=["diff is empty"])]
    first_header = next((line for line in lines if line.startswith("@@")), "")
    if not first_header.endswith("\r\n"):
        return _read_sections(lines, [])
    # The diff text itself has CRLF line ends (git writes "@@ ... @@\n" even
    # for CRLF files): drop one "\r" per line, and keep the text as it is too.
    dropped = [line[:-2] + "\n" if line.endswith("\r\n") else line for line in lines]
    sections = _read_sections(dropped, ["diff had CRLF line endings"])
    verbatim = _read_sections(lines, [])
    if [len(s.hunks) for s in sections] == [len(s.hunks) for s in verbatim]:
        for section, same in zip(sections, verbatim):
            section.verbatim = same
    return sections


def _read_sections(lines: list[str], first_notes: list[str]) -> list[ParsedDiff]:
    sections = [_Section()]
    sections[0].notes.extend(first_notes)
    i = 0
    number = 0
    while i < len(lines):
        line = lines[i]
        cur = sections[-1]
        if _is_marker(line):
            rest = "".join(lines[i:]).strip()
            cur.notes.append(f"stopped at {rest.split(maxsplit=1)[0]!r}: text after it is not part of the diff")
            break
        if line.startswith("diff --git ") or _is_file_header(lines, i):
            if cur.hunks or (cur.has_header and not line.startswith("--- ")):
                cur = _Section()
                sections.append(cur)
                number = 0
            cur.has_header = True
            if line.startswith("diff --git "):
                parts = line.rstrip("\r\n")[len("diff --git "):].split(" ")
                if len(parts) == 2 and cur.old_path is None:
                    cur.old_path, cur.new_path = _strip_prefixes(_path(parts[0]), _path(parts[1]))
                i += 1
            else:
                cur.old_path, cur.new_path = _strip_prefixes(_path(line[4:]), _path(lines[i + 1][4:]))
                i += 2
            continue
        if line.startswith("@@"):
            number += 1
            if cur.skipped_after_hunk and any(s.strip() for s in cur.skipped_after_hunk):
                cur.notes.append(f"ignored text before hunk {number}")
            cur.skipped_after_hunk = []
            hunk, i = _read_hunk(lines, i, number, cur.notes)
            if hunk is not None:
                cur.hunks.append(hunk)
            continue
        if line.startswith(_BINARY):
            cur.notes.append("binary patches are not supported")
            cur.binary = True
        elif cur.hunks:
            cur.skipped_after_hunk.append(line)
        elif cur.has_header and line.startswith(_GIT_EXTENDED):
            cur.extended = True
            if line.startswith("rename from "):
                cur.renamed_from = cur.old_path = _path(line[len("rename from "):])
            elif line.startswith("rename to "):
                cur.new_path = _path(line[len("rename to "):])
            elif line.startswith("new file mode"):
                cur.old_path = "/dev/null"
            elif line.startswith("deleted file mode"):
                cur.new_path = "/dev/null"
        elif line.strip():
            if "ignored text before the first hunk" not in cur.notes:
                cur.notes.append("ignored text before the first hunk")
        i += 1
    return [s.finish() for s in sections]


def parse_patch(text: str | bytes) -> list[ParsedDiff]:
    """Every file section of a (possibly multi-file) patch; never raises.

    A text without file headers gives one section whose paths are ``None``.
    """
    return _scan(text)


def parse_diff(text: str | bytes) -> ParsedDiff:
    """The first file's diff in ``text`` (model output, a diff body or a patch); never raises."""
    sections = _scan(text)
    first = sections[0]
    if len(sections) > 1:
        first.notes.append(f"ignored {len(sections) - 1} further file(s) in the patch")
        if first.status is Status.VALID:
            first.status = Status.REPAIRED
    return first


__all__ = ["Hunk", "ParsedDiff", "Status", "parse_diff", "parse_patch", "NO_NEWLINE"]
