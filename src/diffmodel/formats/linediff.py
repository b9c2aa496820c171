"""The ``linediff`` edit format: OctoPack's line diff (numbered lines with ``-`` / ``+``).

::

    <file_name>
    stats.py
    <commit_before>
      1 def mean(xs):
      2     return sum(xs) / len(xs)
    <commit_msg>
    Handle an empty list
    <commit_after>
    -  2     return sum(xs) / len(xs)
    +  2     if not xs:
    +  3         return 0.0
    +  4     return sum(xs) / len(xs)

What OctoPack defines (``finetuning/santacoder/finetune.py`` of
github.com/bigcode-project/octopack, ``generate_line_diff`` and ``--line_diff``,
the defaults of ``finetune.sh``; the README calls it "the line diff format,
as described in the Appendix H" of the OctoPack paper, arXiv:2308.07124):

- every line of the old and of the new file is numbered as ``f"{n:3d} {line}"``
  (the 1-based number right-aligned in three columns, one space, the line);
- the target is the lines of a unified diff of the two numbered texts that
  start with ``-`` or ``+`` (file headers, ``@@`` lines and context dropped),
  joined by newlines. Since the numbers are part of the lines, a line counts
  as unchanged only when it keeps its number: after a line is inserted or
  removed, every later line is written as removed and added again;
- the prompt, with ``--add_file_name`` (on in ``finetune.sh``), is
  ``<file_name>\\n{base name}\\n<commit_before>\\n{numbered old file}\\n<commit_msg>\\n{message}\\n<commit_after>\\n``.

Where this module differs, so that the target applies back exactly:

- OctoPack strips both files (and splits on every kind of line break); here
  lines are split on ``"\\n"`` only and nothing is stripped, so ``"\\r"`` and
  leading or trailing blank lines survive;
- a line without a final newline (the last line of a file) is followed by
  git's ``\\ No newline at end of file`` line, in the target only.

Loss starts at the ``<commit_after>`` line: the first line starting with
``<commit_after>`` after the last line starting with ``<commit_msg>`` (the
rule of :func:`diffmodel.sample.diff_start`), and its message part at that
last ``<commit_msg>`` line (:func:`diffmodel.sample.message_start`); exact because no numbered line
and no target line starts with ``<``. A target with no line (no change) has
nothing to train.

Applying: line ``n`` of the new file is the ``+ n`` line, else line ``n`` of the
old file when no ``- n`` line removed it; every ``- n`` line must match line
``n`` of the old file, and the numbers must run 1..N without a gap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from diffmodel import sample
from diffmodel.diff import ApplyResult, ApplyStatus, Status, split_lines
from diffmodel.diff.make import NO_NEWLINE
from diffmodel.formats.commit import AFTER_MARKER, BEFORE_MARKER, MESSAGE_MARKER

NAME = "linediff"
#: What a model trained in this format writes (the model card says it).
WRITES = "the numbered lines that the change removes and adds"
FILE_MARKER = "<file_name>"
MARKER = AFTER_MARKER + "\n"
#: where a next sample starts in model output: a ``<file_name>`` anywhere (the target ends without a
#: newline, so a next sample written instead of EOS starts on its last line)
NEXT, NEXT_STARTS_LINE = FILE_MARKER, False

_LINE = re.compile(r"([+-]) *(\d+)(?: (.*))?\Z", re.S)


def _numbered(number: int, line: str) -> str:
    """``f"{number:3d} {line}"`` for a line without its newline."""
    return f"{number:3d} {line}"


def prompt(name: str, before: str, message: str) -> str:
    """File base name, numbered old file and message, ending in ``<commit_after>\\n``."""
    block = "\n".join(_numbered(i, line.removesuffix("\n")) for i, line in enumerate(split_lines(before), 1))
    base = name.rsplit("/", 1)[-1]
    return f"{FILE_MARKER}\n{base}\n{BEFORE_MARKER}\n{block}\n{MESSAGE_MARKER}\n{message.strip()}\n{MARKER}"


def _target_line(sign: str, number: int, line: str) -> str:
    text = sign + _numbered(number, line.removesuffix("\n"))
    return text if line.endswith("\n") else f"{text}\n{NO_NEWLINE}"


def target(before: str, after: str) -> str:
    """The ``-`` / ``+`` lines that turn ``before`` into ``after`` (see the module docstring)."""
    a, b = split_lines(before), split_lines(after)
    n = max(len(a), len(b))
    same = [i < len(a) and i < len(b) and a[i] == b[i] for i in range(n)]
    out: list[str] = []
    i = 0
    while i < n:
        if same[i]:
            i += 1
            continue
        j = i
        while j < n and not same[j]:
            j += 1
        out += [_target_line("-", k + 1, a[k]) for k in range(i, min(j, len(a)))]
        out += [_target_line("+", k + 1, b[k]) for k in range(i, min(j, len(b)))]
        i = j
    return "\n".join(out)


def render(name: str, before: str, message: str, after: str, diff: str | None = None) -> str:
    """The prompt followed by the line diff (``diff`` is not used)."""
    del diff
    return prompt(name, before, message) + target(before, after)


def loss_start(text: str) -> int:
    """Index of the ``<commit_after>`` line after the last ``<commit_msg>`` line, or -1."""
    return sample.diff_start(text, MESSAGE_MARKER, AFTER_MARKER)


def message_start(text: str) -> int:
    """Index of the last ``<commit_msg>`` line (the one :func:`loss_start` follows), or -1 when there is no target."""
    return sample.message_start(text, MESSAGE_MARKER, AFTER_MARKER)


def is_empty(text: str, start: int) -> bool:
    """True when nothing but whitespace follows the ``<commit_after>`` at ``start``."""
    return sample.diff_is_empty(text, start, AFTER_MARKER)


@dataclass
class LineDiff:
    """The lines a model removed and added, by 1-based line number, each with its line ending."""

    status: Status
    removed: dict[int, str] = field(default_factory=dict)
    added: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def parse(output: str) -> LineDiff:
    """Read ``-`` / ``+`` numbered lines; other lines are skipped (and noted), a line
    starting with ``<`` (a next sample) ends the diff. Never raises."""
    output = output if isinstance(output, str) else str(output)
    parsed = LineDiff(Status.VALID)
    last: tuple[dict[int, str], int] | None = None
    for raw in output.split("\n"):
        if raw.startswith("<"):
            parsed.notes.append(f"stopped at {raw.split(maxsplit=1)[0]!r}: text after it is not part of the diff")
            break
        if raw == NO_NEWLINE:
            if last is not None:
                side, number = last
                side[number] = side[number].removesuffix("\n")
            continue
        match = _LINE.match(raw)
        if match is None:
            if raw.strip():
                parsed.notes.append(f"skipped a line that is not a numbered -/+ line: {raw[:40]!r}")
            last = None
            continue
        sign, number, content = match.group(1), int(match.group(2)), match.group(3) or ""
        side = parsed.removed if sign == "-" else parsed.added
        if number in side:
            parsed.notes.append(f"line {number} given twice with {sign}; kept the first")
            last = None
            continue
        side[number] = content + "\n"
        last = (side, number)
    if not parsed.removed and not parsed.added:
        parsed.status = Status.BAD_FORMAT if output.strip() else Status.EMPTY
    elif parsed.notes:
        parsed.status = Status.REPAIRED
    return parsed


def _failed(parsed: LineDiff, why: str) -> ApplyResult:
    return ApplyResult(None, ApplyStatus.FAILED, [], parsed.status, parsed.notes + [why])


def apply(before: str, parsed_or_output: LineDiff | str) -> ApplyResult:
    """The new file, or ``failed`` / ``empty`` / ``bad_format`` with the reason; never raises."""
    parsed = parsed_or_output if isinstance(parsed_or_output, LineDiff) else parse(parsed_or_output)
    if parsed.status is Status.EMPTY:
        return ApplyResult(before, ApplyStatus.EMPTY, [], parsed.status, list(parsed.notes))
    if parsed.status is Status.BAD_FORMAT:
        return ApplyResult(None, ApplyStatus.BAD_FORMAT, [], parsed.status, list(parsed.notes))
    old = split_lines(before)
    for number, line in sorted(parsed.removed.items()):
        if number > len(old):
            return _failed(parsed, f"- line {number}: the file has {len(old)} lines")
        if old[number - 1].rstrip() != line.rstrip():
            return _failed(parsed, f"- line {number} is not line {number} of the file ({old[number - 1][:40]!r})")
    kept = {i: line for i, line in enumerate(old, 1) if i not in parsed.removed}
    clash = sorted(set(kept) & set(parsed.added))
    if clash:
        return _failed(parsed, f"+ line {clash[0]} replaces line {clash[0]} of the file, which no - line removed")
    new = {**kept, **parsed.added}
    numbers = sorted(new)
    if numbers != list(range(1, len(numbers) + 1)):
        gap = next(i for i, n in enumerate(numbers, 1) if n != i)
        return _failed(parsed, f"the new file has no line {gap}: the numbers must run from 1 without a gap")
    lines = [new[n] for n in numbers]
    lines = [line if line.endswith("\n") or i == len(lines) - 1 else line + "\n" for i, line in enumerate(lines)]
    return ApplyResult("".join(lines), ApplyStatus.APPLIED, [], parsed.status, list(parsed.notes))
