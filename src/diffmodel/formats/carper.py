"""The ``carper`` edit format (the default): CarperAI's tags and a unified diff.

::

    <NME> src/stats.py
    <BEF> def mean(xs):
        return sum(xs) / len(xs)
    <MSG> Handle an empty list
    <DFF> @@ -1,2 +1,4 @@
    ...

A thin face over :mod:`diffmodel.sample` (the text, the ``<DFF>`` rule) and
:mod:`diffmodel.diff` (make, parse, apply) in the shape every format has
(:mod:`diffmodel.formats`); nothing here decides anything of its own. Loss
starts at the ``<DFF>`` that starts a line after the last ``<MSG>`` line
(:func:`diffmodel.sample.diff_start`); its message part starts at that
last ``<MSG>`` line (:func:`diffmodel.sample.message_start`, for ``--loss_on
message+diff``).
"""

from __future__ import annotations

from diffmodel import sample
from diffmodel.diff import ApplyResult, ApplyStatus, ParsedDiff, apply_diff, make_diff, parse_diff

NAME = "carper"
#: What a model trained in this format writes (the model card says it).
WRITES = "the unified diff that makes the change"
MARKER = sample.DIFF_MARKER
#: where a next sample starts in model output: a line starting with ``<NME>``
NEXT, NEXT_STARTS_LINE = sample.NAME_MARKER, True

prompt = sample.render_prompt
loss_start = sample.diff_start
message_start = sample.message_start
is_empty = sample.diff_is_empty


def render(name: str, before: str, message: str, after: str, diff: str | None = None) -> str:
    """The training text; ``diff`` (a row's own diff) is used as written when given, else made from ``after``."""
    return sample.render(name, before, message, make_diff(before, after) if diff is None else diff)


def parse(output: str) -> ParsedDiff:
    """The diff a model wrote after ``<DFF>`` (tolerant: see :func:`diffmodel.diff.parse_diff`); never raises."""
    return parse_diff(output)


def apply(before: str, parsed_or_output: ParsedDiff | str) -> ApplyResult:
    """Apply strictly, then leniently when a hunk failed; never raises on model output."""
    parsed = parsed_or_output if isinstance(parsed_or_output, ParsedDiff) else parse(parsed_or_output)
    strict = apply_diff(before, parsed, "strict")
    if strict.ok or strict.status is not ApplyStatus.FAILED:
        return strict
    return apply_diff(before, parsed, "lenient")
