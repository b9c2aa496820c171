"""Requests and results of a diff model, and the plain text steps around generation.

- :class:`EditRequest` (file, instruction, name) and :func:`as_request`, which
  reads one from a tuple or a dict;
- :func:`cut_generation`: generated text -> the diff (cut before a line
  starting with ``<NME>``, the one space after ``<DFF>`` removed);
- :func:`finish_edit`: generated text -> :class:`Edit` (parse once, apply
  strictly, then leniently).

Invariants:
- No torch here: these are functions over strings, used by the model
  (:mod:`diffmodel.infer.model`), by the evaluations and by the reference editors.
- :func:`finish_edit` never raises on what a model writes; ``new_code`` is
  the edited file exactly when ``status`` is ``strict`` or ``lenient``, and
  ``None`` otherwise; an empty diff counts as ``failed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from diffmodel.diff import ApplyStatus, apply_diff, parse_diff
from diffmodel.errors import DiffModelError
from diffmodel.sample import NAME_MARKER

#: Stop reasons in :attr:`Edit.stop`.
STOP_EOS, STOP_MARKER, STOP_LENGTH, STOP_NONE = "eos", "marker", "length", "none"


class EditStatus(str, Enum):
    """What became of one generated diff."""

    STRICT = "strict"  # applied exactly at the lines its hunks state
    LENIENT = "lenient"  # strict apply failed; the lenient applier placed every hunk
    FAILED = "failed"  # empty or unreadable diff, or a hunk matched nowhere
    TOO_LONG = "too_long"  # the prompt does not fit the model's positions; nothing generated

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class EditRequest:
    """One file to edit: its text, the instruction, and its name (path) in the prompt."""

    code: str
    message: str
    name: str


@dataclass
class Edit:
    """One generated diff and what applying it gave."""

    diff: str
    new_code: str | None
    status: EditStatus
    #: what the parser repaired and why applying failed, one entry each
    notes: list[str] = field(default_factory=list)
    #: the last applier outcome (applied, relocated, failed, empty, bad_format; "" if never applied)
    apply_status: str = ""
    #: why generation stopped: eos, marker (a line starting with <NME>), length, none (not generated)
    stop: str = STOP_NONE
    #: tokens generated for this edit (up to and including EOS or the <NME> marker)
    num_tokens: int = 0
    #: of those, tokens the diff grammar forced (fed in chunks, not decoded); 0 unconstrained
    forced_tokens: int = 0

    @property
    def ok(self) -> bool:
        """True when the diff applied (strictly or leniently) and ``new_code`` is the edited file."""
        return self.status in (EditStatus.STRICT, EditStatus.LENIENT)


# -- plain functions over text ---------------------------------------------------------------


def as_request(item: Any) -> EditRequest:
    """An :class:`EditRequest` from a request, a ``(code, message, name)`` tuple or a dict.

    A dict takes ``name`` (or ``path``), ``before`` (or ``code``) and ``message``.
    """
    if isinstance(item, EditRequest):
        return item
    if isinstance(item, dict):
        name = item.get("name", item.get("path"))
        code = item.get("before", item.get("code"))
        message = item.get("message")
        missing = [k for k, v in (("name/path", name), ("before/code", code), ("message", message)) if v is None]
        if missing:
            raise DiffModelError(f"request {sorted(item)!r} lacks {', '.join(missing)}")
        return EditRequest(code=str(code), message=str(message), name=str(name))
    if isinstance(item, (tuple, list)) and len(item) == 3:
        code, message, name = item
        return EditRequest(code=str(code), message=str(message), name=str(name))
    raise DiffModelError(f"cannot read an edit request from {type(item).__name__}: give EditRequest, (code, message, name) or a dict")


def marker_line(text: str) -> int:
    """Index of the first ``<NME>`` that starts a line of ``text`` (or its first non-blank text), else -1."""
    stripped = len(text) - len(text.lstrip())
    if text.startswith(NAME_MARKER, stripped):
        return stripped
    found = text.find("\n" + NAME_MARKER)
    return found + 1 if found >= 0 else -1


def cut_generation(text: str) -> tuple[str, bool]:
    """The diff part of a generation: cut before a line starting with ``<NME>``.

    Returns ``(diff, cut)``; the one space the sample format puts after
    ``<DFF>`` is removed. ``cut`` says whether a marker was found.
    """
    at = marker_line(text)
    cut = at >= 0
    if cut:
        text = text[:at]
    return text.removeprefix(" "), cut


def finish_edit(code: str, generated: str, stop: str = STOP_NONE, num_tokens: int = 0) -> Edit:
    """Turn generated text into an :class:`Edit`: cut, parse, apply strictly, then leniently.

    Never raises on ``generated``.
    """
    diff, cut = cut_generation(generated)
    if cut and stop != STOP_MARKER:
        stop = STOP_MARKER
    try:
        parsed = parse_diff(diff)
        strict = apply_diff(code, parsed, "strict")
        if strict.ok:
            return Edit(diff, strict.text, EditStatus.STRICT, list(strict.notes), str(strict.status), stop, num_tokens)
        if strict.status in (ApplyStatus.EMPTY, ApplyStatus.BAD_FORMAT):
            notes = list(strict.notes)
            if strict.status is ApplyStatus.EMPTY:
                notes.append("the model wrote an empty diff")
            return Edit(diff, None, EditStatus.FAILED, notes, str(strict.status), stop, num_tokens)
        lenient = apply_diff(code, parsed, "lenient")
        if lenient.ok:
            return Edit(diff, lenient.text, EditStatus.LENIENT, list(lenient.notes), str(lenient.status), stop, num_tokens)
        notes = list(lenient.notes) + [f"hunk {i}: {h.describe()}" for i, h in enumerate(lenient.hunks, 1) if h.message]
        return Edit(diff, None, EditStatus.FAILED, notes, str(lenient.status), stop, num_tokens)
    except Exception as err:  # the contract: model output never raises
        return Edit(diff, None, EditStatus.FAILED, [f"internal error while applying: {type(err).__name__}: {err}"], "failed", stop, num_tokens)


__all__ = [
    "STOP_EOS", "STOP_LENGTH", "STOP_MARKER", "STOP_NONE",
    "Edit", "EditRequest", "EditStatus", "as_request", "cut_generation", "finish_edit", "marker_line",
]
