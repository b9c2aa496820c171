"""Requests and results of a diff model, and the plain text steps around generation.

- :class:`EditRequest` (file, instruction, name) and :func:`as_request`, which
  reads one from a tuple or a dict;
- :func:`cut_generation`: generated text -> the diff (cut before a line
  starting with ``<NME>``, the one space after ``<DFF>`` removed); in another
  ``edit_format``, cut where its next sample starts (:func:`diffmodel.formats.next_sample`);
- :func:`finish_edit`: generated text -> :class:`Edit` (parse once, apply
  strictly, then leniently; another format: its own ``parse`` and ``apply``,
  and ``diff`` made from the file before and the edited file);
- :func:`decoding`: whether diff-aware decoding runs for an ``edit_format``
  (``carper`` only), and why not.

Invariants:
- No torch here: these are functions over strings, used by the model
  (:mod:`diffmodel.infer.model`), by the evaluations and by the reference editors.
- :func:`finish_edit` never raises on what a model writes; ``new_code`` is
  the edited file exactly when ``status`` is ``strict`` or ``lenient``, and
  ``None`` otherwise; an empty diff (no change) counts as ``failed``.
- Whatever the format, ``Edit.diff`` is a unified diff: the model's own in
  ``carper``; in the other formats ``make_diff(code, new_code)`` when the edit
  applied, else empty (``Edit.output`` keeps what the model wrote).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from diffmodel import formats
from diffmodel.diff import ApplyStatus, apply_diff, make_diff, parse_diff
from diffmodel.errors import DiffModelError

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
    #: the edit format the model wrote in (``--edit_format``)
    edit_format: str = formats.DEFAULT
    #: what the model wrote after its prompt, cut at a next sample ("": the same as ``diff``, as in carper)
    output: str = ""

    @property
    def ok(self) -> bool:
        """True when the diff applied (strictly or leniently) and ``new_code`` is the edited file."""
        return self.status in (EditStatus.STRICT, EditStatus.LENIENT)


# -- plain functions over text ---------------------------------------------------------------


def _text_problem(label: str, value: Any) -> str | None:
    """Why ``value`` cannot be the request's ``label`` text (a string that is valid Unicode), else None."""
    if not isinstance(value, str):
        hint = " (decode bytes first, e.g. data.decode('utf-8'))" if isinstance(value, (bytes, bytearray)) else ""
        return f"{label} must be a string, got {type(value).__name__}{hint}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"{label} is not valid Unicode: a lone surrogate \\u{ord(value[err.start]):04x} at character {err.start} "
                "(text decoded with errors='surrogateescape'?); decode the file as UTF-8 text")
    return None


def _checked(code: Any, message: Any, name: Any, labels: tuple[str, str, str]) -> EditRequest:
    problems = [p for p in map(_text_problem, labels, (code, message, name)) if p]
    if problems:
        raise DiffModelError("bad edit request: " + "; ".join(problems))
    return EditRequest(code=code, message=message, name=name)


def as_request(item: Any) -> EditRequest:
    """An :class:`EditRequest` from a request, a ``(code, message, name)`` tuple or a dict.

    A dict takes ``name`` (or ``path``), ``before`` (or ``code``) and ``message``.
    Each must be a string of valid Unicode (``""`` for ``code`` is a new file);
    anything else is a :class:`~diffmodel.errors.DiffModelError` naming the field.
    """
    if isinstance(item, EditRequest):
        _checked(item.code, item.message, item.name, ("code", "message", "name"))
        return item
    if isinstance(item, dict):
        name_key = "name" if "name" in item else "path"
        code_key = "before" if "before" in item else "code"
        name, code, message = item.get(name_key), item.get(code_key), item.get("message")
        missing = [k for k, v in (("name/path", name), ("before/code", code), ("message", message)) if v is None]
        if missing:
            raise DiffModelError(f"request {sorted(item)!r} lacks {', '.join(missing)}")
        return _checked(code, message, name, (repr(code_key), "'message'", repr(name_key)))
    if isinstance(item, (tuple, list)) and len(item) == 3:
        code, message, name = item
        return _checked(code, message, name, ("code (item 0 of the tuple)", "message (item 1)", "name (item 2)"))
    raise DiffModelError(f"cannot read an edit request from {type(item).__name__}: give EditRequest, (code, message, name) or a dict")


def marker_line(text: str) -> int:
    """Index of the first ``<NME>`` that starts a line of ``text`` (or its first non-blank text), else -1."""
    return formats.next_sample(text, "carper")


def cut_generation(text: str, edit_format: str | None = None) -> tuple[str, bool]:
    """The part of a generation that is the edit: cut where a next sample starts.

    Returns ``(text, cut)``; ``cut`` says whether a next sample's marker was
    found (``carper``: a line starting with ``<NME>``; the others:
    :func:`diffmodel.formats.next_sample`). In ``carper`` the one space the
    sample format puts after ``<DFF>`` is removed.
    """
    fmt = formats.get(edit_format)
    at = formats.next_sample(text, fmt.NAME)
    cut = at >= 0
    if cut:
        text = text[:at]
    return (text.removeprefix(" ") if fmt.NAME == "carper" else text), cut


#: Why diff-aware decoding is off for a format other than ``carper`` (reports' ``constrained_note``).
UNCONSTRAINED_FORMAT = ("diff-aware decoding follows the unified-diff grammar of --edit_format carper; "
                        "--edit_format {name} is decoded unconstrained")


def decoding(edit_format: str | None, constrained: bool = True) -> tuple[bool, str | None]:
    """``(constrained, note)``: diff-aware decoding runs only for ``carper``; ``note`` says why it is off
    for another format when it was asked for (None otherwise)."""
    name = formats.get(edit_format).NAME
    if constrained and name != "carper":
        return False, UNCONSTRAINED_FORMAT.format(name=name)
    return constrained, None


def _finish_format(code: str, output: str, stop: str, num_tokens: int, name: str) -> Edit:
    """An :class:`Edit` from the output of a model that writes ``name`` (not ``carper``): the format's
    parse and apply; ``applied`` is ``strict``, ``relocated`` is ``lenient``. An output the token limit cut
    (``stop == "length"``) is ``failed``: these formats have no grammar-guided decoding, and a cut ``commit``
    output is a part of the new file that would apply cleanly (and, written, lose the rest of the file)."""
    if stop == STOP_LENGTH:  # cut by the token limit: the new file (commit) or the last edit may be part-written
        return Edit("", None, EditStatus.FAILED,
                    [f"generation hit the token limit before the {name} output ended (no end-of-text or next-sample "
                     "marker): it may be cut short, so it is not applied; raise max_new_tokens (--max_new_tokens)"],
                    "failed", stop, num_tokens, edit_format=name, output=output)
    result = formats.get(name).apply(code, output)
    notes = list(result.notes)
    if result.text is not None and result.status in (ApplyStatus.APPLIED, ApplyStatus.RELOCATED):
        status = EditStatus.STRICT if result.status is ApplyStatus.APPLIED else EditStatus.LENIENT
        return Edit(make_diff(code, result.text), result.text, status, notes, str(result.status), stop, num_tokens,
                    edit_format=name, output=output)
    if result.status is ApplyStatus.EMPTY:
        notes.append("the model wrote no change")
    return Edit("", None, EditStatus.FAILED, notes, str(result.status), stop, num_tokens, edit_format=name, output=output)


def finish_edit(code: str, generated: str, stop: str = STOP_NONE, num_tokens: int = 0,
                edit_format: str | None = None) -> Edit:
    """Turn generated text into an :class:`Edit`: cut, parse, apply strictly, then leniently
    (another ``edit_format``: its own parse and apply).

    Never raises on ``generated``.
    """
    name = formats.get(edit_format).NAME
    diff, cut = cut_generation(generated, name)
    if cut and stop != STOP_MARKER:
        stop = STOP_MARKER
    try:
        if name != "carper":
            return _finish_format(code, diff, stop, num_tokens, name)
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
        return Edit("" if name != "carper" else diff, None, EditStatus.FAILED,
                    [f"internal error while applying: {type(err).__name__}: {err}"], "failed", stop, num_tokens,
                    edit_format=name, output="" if name == "carper" else diff)


__all__ = [
    "STOP_EOS", "STOP_LENGTH", "STOP_MARKER", "STOP_NONE",
    "UNCONSTRAINED_FORMAT", "Edit", "EditRequest", "EditStatus", "as_request", "cut_generation", "decoding",
    "finish_edit", "marker_line",
]
