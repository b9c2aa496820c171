"""Edit formats: how one change of one file is written as training text, and read back.

Every format is a module with the same functions (the :class:`EditFormat`
protocol below); :data:`FORMATS` maps ``--edit_format`` names to them and
:func:`get` looks one up:

- ``carper`` (default): ``<NME> <BEF> <MSG> <DFF>`` and a unified diff (:mod:`.carper`);
- ``commit``: OctoPack / CommitPack ``<commit_before>…<commit_msg>…<commit_after>`` and the whole new file (:mod:`.commit`);
- ``linediff``: OctoPack's line diff, numbered lines with ``-`` / ``+`` (:mod:`.linediff`);
- ``search_replace``: SEARCH/REPLACE blocks as coding agents write them (:mod:`.search_replace`).

Invariants (checked per format by round-trip property tests):

- ``render(n, b, m, a).startswith(prompt(n, b, m))``: the text is the prompt
  followed by the target, and the prompt ends with the format's ``MARKER``;
- ``loss_start(text)`` is the index of that ``MARKER`` (the part after the
  message carries loss, the marker included), ``-1`` when the text has none;
  ``loss_start(prompt(n, b, m)) == len(prompt) - len(MARKER)``;
- ``message_start(text)`` is the index of the message marker that the
  ``MARKER`` follows (``<MSG>``, ``<commit_msg>``), ``-1`` when the text has
  no ``MARKER``; always ``<= loss_start(text)``. :func:`loss_start` of this
  package is the one rule of ``--loss_on``: ``diff`` starts loss at the
  format's ``loss_start``, ``message+diff`` at its ``message_start``;
- ``is_empty(text, loss_start(text))`` is true when the target holds no change
  (such a sample has nothing to train and is dropped, as an empty diff is);
- ``apply(b, parse(target)).text == a`` and ``apply(b, target)`` is the same;
  ``parse`` and ``apply`` never raise on model output, and ``apply`` returns a
  :class:`diffmodel.diff.ApplyResult` (``text`` is ``None`` when it failed);
- ``NEXT`` is the text that starts a next sample (``<NME>``, ``<commit_before>``,
  ``<file_name>``), at the start of a line when ``NEXT_STARTS_LINE``:
  :func:`next_sample` finds it in model output, where generation is cut
  (:mod:`diffmodel.infer`). A target (:func:`target`) holds it where
  :func:`next_sample` looks only when the files themselves do (``commit``,
  ``linediff``, ``search_replace``); ``carper`` diff lines never start with ``<``.
"""

from __future__ import annotations

from typing import Any, Protocol

from diffmodel import sample
from diffmodel.diff import apply_diff
from diffmodel.errors import DiffModelError
from diffmodel.formats import carper, commit, linediff, search_replace

#: The format used when ``--edit_format`` is not given.
DEFAULT = "carper"

#: The choices of ``--loss_on``: where the loss of a sample starts (:func:`loss_start`).
LOSS_ON = ("diff", "message+diff")


class EditFormat(Protocol):
    """What every format module provides."""

    NAME: str
    #: the text that ends the prompt and starts the part that carries loss
    MARKER: str
    #: what a model trained in the format writes (the model card's words)
    WRITES: str
    #: the text that starts a next sample in model output, and whether it must start a line
    NEXT: str
    NEXT_STARTS_LINE: bool

    def render(self, name: str, before: str, message: str, after: str, diff: str | None = None) -> str: ...
    def prompt(self, name: str, before: str, message: str) -> str: ...
    def loss_start(self, text: str) -> int: ...
    def message_start(self, text: str) -> int: ...
    def is_empty(self, text: str, start: int) -> bool: ...
    def parse(self, output: str) -> Any: ...
    def apply(self, before: str, parsed_or_output: Any): ...


#: ``--edit_format`` name -> format module.
FORMATS: dict[str, EditFormat] = {m.NAME: m for m in (carper, commit, linediff, search_replace)}


def get(name: str | None) -> EditFormat:
    """The format called ``name`` (``None``: the default); an unknown name is a :class:`DiffModelError`."""
    key = DEFAULT if name is None else name
    if key not in FORMATS:
        raise DiffModelError(f"--edit_format {name}: unknown edit format; use one of {', '.join(FORMATS)}")
    return FORMATS[key]


def loss_start(text: str, loss_on: str = "diff", edit_format: str | None = None) -> int:
    """Character index where the loss of ``text`` starts, or -1 when it has no target part.

    The one ``--loss_on`` policy for every format: ``diff`` starts at the
    format's target marker (its ``loss_start``), ``message+diff`` at its
    message marker (its ``message_start``).
    """
    fmt = get(edit_format)
    if loss_on == "diff":
        return fmt.loss_start(text)
    if loss_on == "message+diff":
        return fmt.message_start(text)
    raise ValueError(f"loss_on {loss_on!r} is not one of {', '.join(LOSS_ON)}")


def loss_marker(edit_format: str | None = None, loss_on: str = "diff") -> str:
    """The marker where :func:`loss_start` starts the loss of a text in ``edit_format``, without a trailing newline.

    ``diff``: the format's target marker (``<DFF>``, ``<commit_after>``);
    ``message+diff``: the message marker that target follows (``<MSG>``,
    ``<commit_msg>``). Messages and reports name the markers through this.
    """
    fmt = get(edit_format)
    if loss_on == "diff":
        return fmt.MARKER.rstrip("\n")
    if loss_on == "message+diff":
        # the formats that write carper's prompt (carper, search_replace) have no MESSAGE_MARKER of their own
        return getattr(fmt, "MESSAGE_MARKER", sample.MESSAGE_MARKER)
    raise ValueError(f"loss_on {loss_on!r} is not one of {', '.join(LOSS_ON)}")


def next_sample(output: str, edit_format: str | None = None, whole: bool = True) -> int:
    """Index in model ``output`` where a next sample starts (the format's ``NEXT``), or -1.

    With ``NEXT_STARTS_LINE`` the marker counts only at the start of a line;
    the output's first non-blank text counts as one when ``whole`` (the
    output from its first character, not a window cut from its middle).
    """
    fmt = get(edit_format)
    if not fmt.NEXT_STARTS_LINE:
        return output.find(fmt.NEXT)
    if whole:
        stripped = len(output) - len(output.lstrip())
        if output.startswith(fmt.NEXT, stripped):
            return stripped
    found = output.find("\n" + fmt.NEXT)
    return found + 1 if found >= 0 else -1


def target(name: str, before: str, message: str, after: str, edit_format: str | None = None) -> str:
    """What a model trained on ``edit_format`` writes after its prompt for this change (the text after ``MARKER``)."""
    fmt = get(edit_format)
    return fmt.render(name, before, message, after)[len(fmt.prompt(name, before, message)):]


def after_of(before: str, diff: str, name: str = "") -> str:
    """The file after ``diff`` (a row's unified diff) is applied strictly to ``before``.

    Raises :class:`DiffModelError` naming the row when it does not apply: a
    format that writes the new file cannot be rendered from a broken diff.
    """
    result = apply_diff(before, diff, "strict")
    if result.text is None:
        why = "; ".join(result.notes + [h.describe() for h in result.hunks if h.message]) or str(result.status)
        raise DiffModelError(
            f"row {name!r}: its diff does not apply to its before ({why}); fix the row, drop it, "
            "or train it with --edit_format carper, which uses the diff as written"
        )
    return result.text


def render_row(row: dict, edit_format: str | None = None) -> str:
    """Render a structured row (``name``, ``before``, ``message``, ``diff``; ``before``,
    ``message`` and ``diff`` may be None) in ``edit_format``."""
    fmt = get(edit_format)
    if fmt is carper:
        return sample.render_row(row)
    name, before = str(row["name"]), str(row.get("before") or "")
    return fmt.render(name, before, str(row.get("message") or ""), after_of(before, str(row.get("diff") or ""), name))


__all__ = [
    "DEFAULT", "EditFormat", "FORMATS", "LOSS_ON", "after_of", "get", "loss_marker", "loss_start", "next_sample", "render_row",
    "target",
]
