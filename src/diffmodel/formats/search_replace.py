"""The ``search_replace`` edit format: SEARCH/REPLACE blocks, as coding agents write edits.

The prompt is the ``carper`` prompt (``<NME> <BEF> <MSG>`` up to ``<DFF>``);
after ``<DFF>`` come a newline and one block per changed region, in file
order, each as aider documents its "diff" edit format (the file path on the
line before a fenced block; aider.chat/docs/more/edit-formats.html)::

    <DFF>
    src/stats.py
    ```
    <<<<<<< SEARCH
    def mean(xs):
        return sum(xs) / len(xs)
    =======
    def mean(xs):
        if not xs:
            return 0.0
        return sum(xs) / len(xs)
    >>>>>>> REPLACE
    ```

Precisely: block = ``{name}\\n```\\n<<<<<<< SEARCH\\n{search}=======\\n{replace}>>>>>>> REPLACE\\n```\\n``,
where ``search`` and ``replace`` are whole lines with their line endings. A
last line without a newline is written with one and followed by git's
``\\ No newline at end of file`` line. The blocks are the hunks of
:func:`diffmodel.diff.make_diff` (three lines of context), each grown upwards
until its SEARCH text first occurs, from the end of the previous block, at
its own place; an empty SEARCH (a new file) inserts at that point.

Loss starts at ``<DFF>`` as in ``carper`` (:func:`diffmodel.sample.diff_start`),
which is exact when no block line starts with ``<MSG>``; the message part
starts at the last ``<MSG>`` line before it, as in ``carper``
(:func:`diffmodel.sample.message_start`). A text with no block
after ``<DFF>`` has nothing to train.

Reading model output: lines outside blocks (file names, fences, prose) are
skipped; a line starting with ``<NME>`` outside a block ends the output; an
unfinished last block is dropped (and noted). Applying: each block's SEARCH
lines are looked up from where the previous block ended, first exactly, then
ignoring trailing whitespace (status ``relocated``); a block found nowhere
fails the whole edit. File lines equal to a block marker line
(``=======``, ``>>>>>>> REPLACE``, ``\\ No newline at end of file``) cannot be
written in this format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from diffmodel import sample
from diffmodel.diff import ApplyResult, ApplyStatus, Status, make_diff, parse_diff, split_lines
from diffmodel.diff.make import NO_NEWLINE

NAME = "search_replace"
#: What a model trained in this format writes (the model card says it).
WRITES = "the SEARCH/REPLACE blocks that make the change"
MARKER = sample.DIFF_MARKER
#: where a next sample starts in model output: a line starting with ``<NME>`` (as in ``carper``)
NEXT, NEXT_STARTS_LINE = sample.NAME_MARKER, True
SEARCH, DIVIDER, REPLACE, FENCE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE", "```"

_SEARCH = re.compile(r"<{5,9} ?SEARCH\s*\Z")
_DIVIDER = re.compile(r"={5,9}\s*\Z")
_REPLACE = re.compile(r">{5,9} ?REPLACE\s*\Z")

prompt = sample.render_prompt
loss_start = sample.diff_start
message_start = sample.message_start
is_empty = sample.diff_is_empty


def _section(lines: list[str]) -> str:
    text = "".join(lines)
    return text if not text or text.endswith("\n") else f"{text}\n{NO_NEWLINE}\n"


def _find(lines: list[str], needle: list[str], start: int, key=lambda line: line) -> int:
    """First index >= ``start`` where ``needle`` occurs in ``lines`` (compared by ``key``), or -1."""
    want = [key(line) for line in needle]
    for i in range(start, len(lines) - len(needle) + 1):
        if [key(line) for line in lines[i:i + len(needle)]] == want:
            return i
    return -1


@dataclass
class Block:
    search: list[str]
    replace: list[str]


def blocks(before: str, after: str) -> list[Block]:
    """The blocks that turn ``before`` into ``after`` (see the module docstring)."""
    old = split_lines(before)
    out: list[Block] = []
    end = 0
    for hunk in parse_diff(make_diff(before, after)).hunks:
        search, replace = hunk.old_lines(), hunk.new_lines()
        start = hunk.old_start - 1 if search else end
        while _find(old, search, end) != start:
            start -= 1
            search, replace = [old[start]] + search, [old[start]] + replace
        out.append(Block(search, replace))
        end = start + len(search)
    return out


def render(name: str, before: str, message: str, after: str, diff: str | None = None) -> str:
    """The ``carper`` prompt, a newline and the blocks (``diff`` is not used)."""
    del diff
    body = "".join(
        f"{name}\n{FENCE}\n{SEARCH}\n{_section(b.search)}{DIVIDER}\n{_section(b.replace)}{REPLACE}\n{FENCE}\n"
        for b in blocks(before, after)
    )
    return prompt(name, before, message) + ("\n" + body if body else "")


@dataclass
class SearchReplace:
    """The complete blocks a model wrote, how well-formed its output was, and what was skipped."""

    status: Status
    blocks: list[Block] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse(output: str) -> SearchReplace:
    """Read the SEARCH/REPLACE blocks of model output; never raises."""
    output = output if isinstance(output, str) else str(output)
    parsed = SearchReplace(Status.VALID)
    phase = ""  # "", "search" or "replace": where the current line belongs
    search: list[str] = []
    replace: list[str] = []
    for line in split_lines(output):
        bare = line.rstrip("\r\n")
        if not phase:
            if _SEARCH.match(bare):
                phase, search, replace = "search", [], []
            elif line.startswith(sample.NAME_MARKER):
                parsed.notes.append(f"stopped at {sample.NAME_MARKER!r}: text after it is not part of the edit")
                break
            continue
        part = search if phase == "search" else replace
        if bare == NO_NEWLINE and part:
            part[-1] = part[-1].removesuffix("\n")
        elif phase == "search" and _DIVIDER.match(bare):
            phase = "replace"
        elif phase == "replace" and _REPLACE.match(bare):
            parsed.blocks.append(Block(search, replace))
            phase = ""
        else:
            part.append(line if line.endswith("\n") else line + "\n")
    if phase:
        parsed.notes.append("dropped an unfinished last block")
    if not parsed.blocks:
        parsed.status = Status.BAD_FORMAT if output.strip() else Status.EMPTY
    elif parsed.notes:
        parsed.status = Status.REPAIRED
    return parsed


def apply(before: str, parsed_or_output: SearchReplace | str) -> ApplyResult:
    """Apply the blocks in order (see the module docstring); never raises on model output."""
    parsed = parsed_or_output if isinstance(parsed_or_output, SearchReplace) else parse(parsed_or_output)
    notes = list(parsed.notes)
    if not parsed.blocks:
        status = ApplyStatus.EMPTY if parsed.status is Status.EMPTY else ApplyStatus.BAD_FORMAT
        return ApplyResult(before if status is ApplyStatus.EMPTY else None, status, [], parsed.status, notes)
    old = split_lines(before)
    out: list[str] = []
    pos, loose = 0, False
    for number, block in enumerate(parsed.blocks, 1):
        at = _find(old, block.search, pos)
        if at < 0:
            at = _find(old, block.search, pos, key=str.rstrip)
            loose = loose or at >= 0
        if at < 0:
            notes.append(f"block {number}: its SEARCH lines were not found after line {pos}")
            return ApplyResult(None, ApplyStatus.FAILED, [], parsed.status, notes)
        out += old[pos:at] + block.replace
        pos = at + len(block.search)
    out += old[pos:]
    out = [line if line.endswith("\n") or i == len(out) - 1 else line + "\n" for i, line in enumerate(out)]
    return ApplyResult("".join(out), ApplyStatus.RELOCATED if loose else ApplyStatus.APPLIED, [], parsed.status, notes)
