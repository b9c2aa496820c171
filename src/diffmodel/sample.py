"""The diff-sample text format, in one place.

One text per changed file::

    <NME> path/to/file.py
    <BEF> ...whole file before the commit (ADDFILE for a new file)...
    <MSG> the commit message
    <DFF> @@ -12,7 +12,8 @@ ...unified diff of that file...

Invariants:
- ``render`` is the only function that builds this text; mining, training,
  inference and evaluation all call it.
- ``split(render(s))`` gives back the four fields of ``s`` (for fields that
  do not themselves contain a marker at the start of a line).
- Only the text from ``<DFF>`` on carries loss when training.
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


def split(text: str) -> Sample:
    """Parse a rendered text back into its fields (the inverse of ``render``)."""
    positions = []
    start = 0
    for marker in MARKERS:
        idx = text.find(marker, start)
        if idx < 0:
            raise ValueError(f"text has no {marker} marker")
        positions.append(idx)
        start = idx + len(marker)
    parts = []
    for i, (marker, pos) in enumerate(zip(MARKERS, positions)):
        end = positions[i + 1] if i + 1 < len(positions) else len(text)
        parts.append(text[pos + len(marker):end])
    name = parts[0].strip("\n").removeprefix(" ")
    before = parts[1].removeprefix(" ")
    message = parts[2].removeprefix(" ").removesuffix("\n")
    diff = parts[3].removeprefix(" ")
    if before == NEW_FILE + "\n":
        before = ""
    return Sample(name=name, before=before, message=message, diff=diff)
