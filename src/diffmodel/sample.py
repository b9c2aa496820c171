"""The diff-sample text format, in one place.

One text per changed file::

    <NME> path/to/file.py
    <BEF> ...whole file before the commit (ADDFILE for a new file)...
    <MSG> the commit message
    <DFF> @@ -12,7 +12,8 @@ ...unified diff of that file...

Where the diff starts (:func:`diff_start`, the one place that decides it for
training labels, streaming, eval loss, inspection and :func:`split`): the
file body follows ``<BEF> `` and may hold any marker anywhere, even at the
start of one of its lines; a diff body never has a line that starts with
``<`` (unified diff lines start with ' ', '+', '-', '@' or '\\'). So the diff
starts at the ``<DFF>`` that starts a line (at position 0 or right after
"\n") and follows the *last* ``<MSG>`` that starts a line. A message may hold
markers mid-line; a message line that starts with ``<MSG>`` or ``<DFF>`` is
the one thing the format cannot tell apart from the structure.

Invariants:
- ``render`` is the only function that builds this text; mining, training,
  inference and evaluation all call it.
- ``diff_start(render_prompt(n, b, m)) == len(render_prompt(n, b, m)) - len("<DFF>")``.
- ``split(render(s))`` gives back the four fields of ``s`` when the name is
  one line, the file ends with a newline (and is not ``ADDFILE``), the
  message is stripped and has no line starting with ``<MSG>`` or ``<DFF>``,
  and no diff line starts with ``<``; the file may hold any marker anywhere.
- Only the text from ``<DFF>`` on carries loss when training (``--loss_on
  diff``), or from the ``<MSG>`` line that precedes it (``--loss_on
  message+diff``, :func:`message_start`); the choice is made in one place for
  every edit format, :func:`diffmodel.formats.loss_start`. A text whose diff
  is empty (nothing but whitespace after the marker) has nothing to train and
  is dropped (:func:`diff_is_empty`), whichever the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

NAME_MARKER = "<NME>"
BEFORE_MARKER = "<BEF>"
MESSAGE_MARKER = "<MSG>"
DIFF_MARKER = "<DFF>"
MARKERS = (NAME_MARKER, BEFORE_MARKER, MESSAGE_MARKER, DIFF_MARKER)
NEW_FILE = "ADDFILE"

#: Column names of a structured sample row.
FIELDS = ("name", "before", "message", "diff")


@dataclass(frozen=True)
class Sample:
    name: str
    before: str
    message: str
    diff: str = ""


def _line(marker: str, value: str) -> str:
    return f"{marker} {value}" if value else marker


def render_prompt(name: str, before: str, message: str) -> str:
    """The text a model is given at inference: everything up to and including ``<DFF>``."""
    before = before if before != "" else NEW_FILE
    before = before if before.endswith("\n") else before + "\n"
    return f"{_line(NAME_MARKER, name)}\n{_line(BEFORE_MARKER, before)}{_line(MESSAGE_MARKER, message.strip())}\n{DIFF_MARKER}"


def render(name: str, before: str, message: str, diff: str) -> str:
    """Render one sample as training text (prompt followed by the diff)."""
    prompt = render_prompt(name, before, message)
    return f"{prompt} {diff}" if diff else prompt


def render_row(row: dict) -> str:
    """Render a structured row (``name``, ``before``, ``message``, ``diff``)."""
    return render(str(row["name"]), str(row.get("before") or ""), str(row.get("message") or ""), str(row.get("diff") or ""))


def _last_line_start(text: str, marker: str, end: int) -> int:
    """Index of the last ``marker`` that starts a line of ``text[:end]``, or -1."""
    found = text.rfind("\n" + marker, 0, end)
    if found >= 0:
        return found + 1
    return 0 if text.startswith(marker) and len(marker) <= end else -1


def _first_line_start(text: str, marker: str, start: int) -> int:
    """Index of the first ``marker`` that starts a line of ``text``, at or after ``start``, or -1."""
    if start == 0 and text.startswith(marker):
        return 0
    found = text.find("\n" + marker, max(start - 1, 0))
    return found + 1 if found >= 0 else -1


def diff_start(text: str, message_marker: str = MESSAGE_MARKER, diff_marker: str = DIFF_MARKER) -> int:
    """Character index of the ``<DFF>`` where the diff starts, or -1 (see the module docstring).

    It is the first ``<DFF>`` that starts a line after the last ``<MSG>`` that
    starts a line. Other line-based formats (:mod:`diffmodel.formats.linediff`)
    use the same rule with their own two markers.
    """
    msg = _last_line_start(text, message_marker, len(text))
    if msg < 0:
        return -1
    return _first_line_start(text, diff_marker, msg + len(message_marker))


def message_start(text: str, message_marker: str = MESSAGE_MARKER, diff_marker: str = DIFF_MARKER) -> int:
    """Character index of the ``<MSG>`` line whose message precedes the diff, or -1 when the text has no diff.

    It is the last ``<MSG>`` that starts a line (the one :func:`diff_start`
    follows); other line-based formats pass their own two markers, as to
    :func:`diff_start`.
    """
    if diff_start(text, message_marker, diff_marker) < 0:
        return -1
    return _last_line_start(text, message_marker, len(text))


def diff_is_empty(text: str, start: int, diff_marker: str = DIFF_MARKER) -> bool:
    """True when nothing but whitespace follows the ``<DFF>`` at ``start`` (a sample with nothing to train)."""
    return not text[start + len(diff_marker):].strip()


def split(text: str) -> Sample:
    """Parse a rendered text back into its fields (the inverse of ``render``).

    The diff is found by :func:`diff_start`; the message is the text between
    the ``<MSG>`` line that precedes it and that ``<DFF>``; the name is the
    rest of the first ``<NME>`` line; the file is everything between the
    ``<BEF>`` that follows the name line and the message. Raises ValueError
    when the text lacks that structure.
    """
    dff = diff_start(text)
    if dff < 0:
        raise ValueError(f"text has no {DIFF_MARKER} line after a {MESSAGE_MARKER} line")
    msg = _last_line_start(text, MESSAGE_MARKER, dff)
    nme = text.find(NAME_MARKER)
    if nme < 0 or nme > msg:
        raise ValueError(f"text has no {NAME_MARKER} marker before its {MESSAGE_MARKER} line")
    name_end = text.find("\n", nme)
    bef = text.find(BEFORE_MARKER, name_end) if 0 <= name_end < msg else -1
    if bef < 0 or bef > msg:
        raise ValueError(f"text has no {BEFORE_MARKER} line between its {NAME_MARKER} line and its {MESSAGE_MARKER} line")
    name = text[nme + len(NAME_MARKER):name_end].removeprefix(" ")
    before = text[bef + len(BEFORE_MARKER):msg].removeprefix(" ")
    message = text[msg + len(MESSAGE_MARKER):dff].removeprefix(" ").removesuffix("\n")
    diff = text[dff + len(DIFF_MARKER):].removeprefix(" ")
    if before == NEW_FILE + "\n":
        before = ""
    return Sample(name=name, before=before, message=message, diff=diff)
