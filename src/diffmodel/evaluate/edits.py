"""Edit accuracy: generate diffs for held-out samples and compare the edited files with the truth.

For a held-out sample (``name``, ``before``, ``message``, reference ``diff``)
the true file is ``after = apply_diff(before, diff, "strict")``, or the row's
own ``after`` column when it has one. The model
writes ``n`` diffs per sample (:meth:`Editor.edit_many`); each is scored:

``parses``           the diff has at least one readable hunk (``parse_diff(...).ok``); in another
                     ``--edit_format``: the output is readable in it (applier status not ``empty``/``bad_format``)
``applies_strict``   it applied at the lines its hunks state
``applies``          it applied, strictly or after the lenient applier relocated hunks
``exact``            the edited file equals ``after`` character for character
``exact_ws``         equal after whitespace normalisation (:func:`normalize_ws`)
``line_similarity``  ``difflib`` ratio between the lines of the edited file and of ``after``
                     (0 when the diff did not apply: no file was produced)

Each metric is a share over all generations (samples x n); ``exact_any`` is the
share of samples with at least one exact generation; ``forced_share`` is the
share of generated tokens that diff-aware decoding forced (fed in chunks, not
decoded; 0 unconstrained, see :func:`forced_share`). Metrics are also given
per language (a ``language`` column, else from the file name).

Anything with an ``edit_many(requests, num_samples=..., ...) -> list[list[Edit]]``
method is an :class:`Editor`: :class:`diffmodel.infer.DiffModel`, and the
calibration editors here, :class:`ReferenceEditor` (writes the true diff) and
:class:`EmptyEditor` (writes nothing); both write in the ``edit_format`` they
are given, as a model trained on it would (:func:`diffmodel.formats.target`).

Cases come from rows with ``name``/``before``/``message``/``diff`` fields (or
``after``), whatever the ``edit_format``; a row with only ``text`` is read as
``carper`` text, and in another format it is skipped and counted
(``skipped_text_not_carper``): the true file is only read back from a unified diff.

A prompt the model cannot take (``too_long``: it does not fit the model's
positions) is scored 0 on every metric, and the summary's ``warning`` counts
such generations.

Invariants:
- A sample without an ``after`` column whose reference diff does not apply
  strictly to its ``before`` has no truth: it is skipped and counted
  (``skipped_reference_does_not_apply``), never scored.
- Metrics are computed from the :class:`Edit` objects alone, so every editor
  is scored by the same code.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from diffmodel import formats
from diffmodel.diff import apply_diff, make_diff, parse_diff
from diffmodel.infer.prompt import Edit, EditRequest, EditStatus, as_request, finish_edit
from diffmodel.mine.languages import language_of
from diffmodel.sample import FIELDS, split

#: The per-generation metrics, in report order.
METRICS = ("parses", "applies_strict", "applies", "exact", "exact_ws", "line_similarity")


@runtime_checkable
class Editor(Protocol):
    """What every evaluation calls: ``result[i][k]`` is sample ``k`` of request ``i``."""

    def edit_many(self, requests: Iterable[Any], num_samples: int = 1, **options) -> list[list[Edit]]: ...


class ReferenceEditor:
    """Writes, for each request, the diff from its file to the answer (None: an empty diff).

    ``answer`` is a function of the request, or a sequence answered by the
    request's position in each ``edit_many`` call. The calibration "oracle":
    it scores what the true fix scores.
    """

    def __init__(self, answer: Callable[[EditRequest], str | None] | Sequence[str | None]):
        self.answer = answer

    def edit_many(self, requests: Iterable[Any], num_samples: int = 1, **options) -> list[list[Edit]]:
        out = []
        for i, item in enumerate(requests):
            req = as_request(item)
            after = self.answer(req) if callable(self.answer) else self.answer[i]
            out.append([written(req, after, options.get("edit_format")) for _ in range(num_samples)])
        return out


class EmptyEditor:
    """Writes an empty diff for every request (scores 0 on anything that needs a change)."""

    def edit_many(self, requests: Iterable[Any], num_samples: int = 1, **options) -> list[list[Edit]]:
        return [[written(as_request(r), None, options.get("edit_format")) for _ in range(num_samples)] for r in requests]


def written(req: EditRequest, after: str | None, edit_format: str | None = None) -> Edit:
    """The :class:`Edit` of a model that writes the change to ``after`` in ``edit_format`` (None: no change)."""
    name = formats.get(edit_format).NAME
    if name == "carper":
        return finish_edit(req.code, "" if after is None else make_diff(req.code, after))
    target = formats.target(req.name, req.code, req.message, req.code if after is None else after, name)
    return finish_edit(req.code, target, edit_format=name)


# -- cases ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditCase:
    """A held-out sample with its true edited file."""

    name: str
    before: str
    message: str
    diff: str
    after: str
    language: str


def language_for(row: dict, name: str) -> str:
    """A row's ``language`` column when present and non-empty, else the language of ``name`` (``other`` if unknown)."""
    lang = row.get("language")
    if isinstance(lang, str) and lang.strip():
        return lang.strip()
    return language_of(name) or "other"


def row_fields(row: dict, text_column: str = "text") -> tuple[str, str, str, str]:
    """(name, before, message, diff) of a structured row, or of its rendered text."""
    if all(f in row and row[f] is not None for f in FIELDS):
        return str(row["name"]), str(row["before"] or ""), str(row["message"] or ""), str(row["diff"] or "")
    text = row.get(text_column)
    if not isinstance(text, str):
        raise ValueError(f"row has neither the fields {', '.join(FIELDS)} nor a {text_column!r} text")
    s = split(text)
    return s.name, s.before, s.message, s.diff


def make_cases(rows: Iterable[dict], text_column: str = "text",
               edit_format: str | None = None) -> tuple[list[EditCase], dict[str, int]]:
    """Cases from rows; returns them and the counts of rows skipped, by reason (see the module docstring)."""
    cases: list[EditCase] = []
    skipped: dict[str, int] = defaultdict(int)
    carper = formats.get(edit_format).NAME == "carper"
    for row in rows:
        if not carper and not all(f in row and row[f] is not None for f in FIELDS):
            skipped["skipped_text_not_carper"] += 1
            continue
        try:
            name, before, message, diff = row_fields(row, text_column)
        except ValueError:
            skipped["skipped_unreadable"] += 1
            continue
        given = row.get("after")
        if isinstance(given, str):
            cases.append(EditCase(name, before, message, diff, given, language_for(row, name)))
            continue
        if not diff.strip():
            skipped["skipped_empty_reference"] += 1
            continue
        result = apply_diff(before, diff, "strict")
        if not result.ok or result.text is None:
            skipped["skipped_reference_does_not_apply"] += 1
            continue
        cases.append(EditCase(name, before, message, diff, result.text, language_for(row, name)))
    return cases, dict(skipped)


# -- scoring -------------------------------------------------------------------------------------


def normalize_ws(text: str) -> list[str]:
    """Lines with every run of whitespace made one space, ends stripped, blank lines dropped.

    Ignores indentation, line endings and trailing whitespace: two files equal
    under it differ only in layout (for Python, possibly in meaning).
    """
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def line_similarity(a: str, b: str) -> float:
    """``difflib.SequenceMatcher`` ratio over the two texts' lines (1.0 for equal texts)."""
    return difflib.SequenceMatcher(None, a.splitlines(), b.splitlines(), autojunk=False).ratio()


def score_edit(edit: Edit, after: str) -> dict[str, float]:
    """The :data:`METRICS` of one generation against the true file."""
    produced = edit.new_code if edit.ok else None
    return {
        "parses": float(parse_diff(edit.diff).ok if edit.edit_format == "carper"
                        else edit.apply_status not in ("", "empty", "bad_format")),
        "applies_strict": float(edit.status is EditStatus.STRICT),
        "applies": float(edit.ok),
        "exact": float(produced is not None and produced == after),
        "exact_ws": float(produced is not None and normalize_ws(produced) == normalize_ws(after)),
        "line_similarity": line_similarity(produced, after) if produced is not None else 0.0,
    }


class _Totals:
    def __init__(self) -> None:
        self.sums = dict.fromkeys(METRICS, 0.0)
        self.generations = 0
        self.samples = 0
        self.any_exact = 0

    def add(self, scores: list[dict[str, float]]) -> None:
        self.samples += 1
        self.generations += len(scores)
        self.any_exact += any(s["exact"] == 1.0 for s in scores)
        for s in scores:
            for m in METRICS:
                self.sums[m] += s[m]

    def result(self) -> dict[str, float | int]:
        g = max(self.generations, 1)
        out: dict[str, float | int] = {"samples": self.samples, "generations": self.generations}
        out.update({m: self.sums[m] / g for m in METRICS})
        out["exact_any"] = self.any_exact / max(self.samples, 1)
        return out


def forced_share(groups: Iterable[Sequence[Edit]]) -> float:
    """Forced tokens over all generated tokens of every edit (0.0 when nothing was generated)."""
    tokens = forced = 0
    for edits in groups:
        for e in edits:
            tokens += e.num_tokens
            forced += e.forced_tokens
    return forced / tokens if tokens else 0.0


def evaluate_edits(
    editor: Editor,
    cases: Sequence[EditCase],
    num_samples: int = 1,
    progress: bool | Callable[[int], None] = False,
    **generate: Any,
) -> tuple[dict, list[dict]]:
    """Score ``num_samples`` generations per case; returns (summary, one row per case).

    ``generate`` goes to ``editor.edit_many`` (``temperature``, ``top_p``,
    ``max_new_tokens``, ``batch_size``, ``seed``).
    """
    requests = [EditRequest(c.before, c.message, c.name) for c in cases]
    results = editor.edit_many(requests, num_samples=num_samples, progress=progress, **generate) if requests else []
    overall = _Totals()
    by_language: dict[str, _Totals] = defaultdict(_Totals)
    statuses: dict[str, int] = defaultdict(int)
    rows = []
    for case, edits in zip(cases, results):
        scores = [score_edit(e, case.after) for e in edits]
        overall.add(scores)
        by_language[case.language].add(scores)
        for e in edits:
            statuses[str(e.status)] += 1
        rows.append({
            "name": case.name,
            "language": case.language,
            "message": case.message,
            "reference_diff": case.diff,
            "exact_any": any(s["exact"] == 1.0 for s in scores),
            "generations": [
                {"diff": e.diff, "status": str(e.status), "apply_status": e.apply_status, "stop": e.stop,
                 "notes": list(e.notes), "num_tokens": e.num_tokens, "forced_tokens": e.forced_tokens,
                 **({"output": e.output} if e.edit_format != "carper" else {}), **s}
                for e, s in zip(edits, scores)
            ],
        })
    summary = {
        "metrics": {**overall.result(), "forced_share": forced_share(results)},
        "by_language": {lang: t.result() for lang, t in sorted(by_language.items())},
        "statuses": dict(sorted(statuses.items())),
    }
    too_long = statuses.get(str(EditStatus.TOO_LONG), 0)
    if too_long:
        summary["warning"] = (
            f"{too_long} of the {overall.generations} generations are too_long: the prompt (file, name and message) "
            "does not fit the model's positions, so nothing was generated and they score 0 on every metric; give "
            "shorter samples (diffmodel mine --tokenizer_name TOKENIZER --max_tokens N) or a model with more positions")
    return summary, rows


__all__ = [
    "METRICS", "EditCase", "Editor", "EmptyEditor", "ReferenceEditor",
    "evaluate_edits", "forced_share", "language_for", "line_similarity", "make_cases", "normalize_ws", "row_fields", "score_edit",
    "written",
]
