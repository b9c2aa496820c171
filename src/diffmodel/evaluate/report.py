"""Evaluation reports: one JSON file and one Markdown table per run, and a side-by-side comparison.

A report is a dict::

    {"kind": "loss" | "edits" | "humanevalfix",
     "model": "runs/model/checkpoint-500",
     "created": "2025-01-01T12:00:00Z",
     "settings": {...},                 # the options that shaped the numbers
     "warning": "...",                  # only when the numbers speak for a part of the data (most of it skipped)
     "metrics": {"loss": 1.23, ...},    # headline numbers (flat)
     "<breakdown>": {"Python": {...}},  # tables: by_language, by_operator, ...
     ...}

:func:`write_report` writes ``X.json`` and ``X.md`` side by side, each through
a temporary file renamed into place (:mod:`diffmodel.atomic`), so a reader
never sees half a report.
:func:`compare` lines two reports up metric by metric (headline metrics and
every breakdown row), with the difference B - A, under the data and settings
of each and a note naming what differs besides the model (:func:`differences`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from diffmodel.atomic import write_text
from diffmodel.errors import DiffModelError

#: Sections of a report rendered as tables (in this order) when present.
BREAKDOWNS = ("by_language", "by_operator")
#: Sections rendered as one-row count tables when present.
COUNTS = ("outcomes", "statuses", "skipped")


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def fmt(value: Any) -> str:
    """A number as a table cell: integers plainly, floats to 4 significant places."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4f}"
    if value is None:
        return "-"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """The report as Markdown: what was run, the headline metrics, then each breakdown."""
    kind = report.get("kind", "eval")
    parts = [f"# diffmodel eval {kind}", "", f"model: `{report.get('model', '?')}`  "]
    if report.get("data"):
        parts.append(f"data: `{report['data']}`  ")
    if report.get("created"):
        parts.append(f"created: {report['created']}  ")
    if report.get("seconds") is not None:
        parts.append(f"wall time: {report['seconds']:.1f} s  ")
    resumed = report.get("resumed")
    if resumed:
        parts.append(f"resumed: {resumed['requests_kept']} of {resumed['requests']} requests' generations were kept from an "
                     "earlier run of the same command (the wall time is this run's)  ")
    if report.get("warning"):
        parts.append(f"warning: {report['warning']}  ")
    settings = report.get("settings") or {}
    if settings:
        parts.append("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    parts.append("")
    metrics = report.get("metrics") or {}
    if metrics:
        parts += [_table(["metric", "value"], [[k, v] for k, v in metrics.items()]), ""]
    for section in BREAKDOWNS:
        table = report.get(section)
        if not table:
            continue
        columns: list[str] = []
        for row in table.values():
            for k in row:
                if k not in columns:
                    columns.append(k)
        first = section.removeprefix("by_")
        parts += [f"## {first}", "", _table([first, *columns], [[name, *[row.get(c) for c in columns]] for name, row in table.items()]), ""]
    for section in COUNTS:
        counts = report.get(section)
        if counts:
            parts += [f"## {section}", "", _table(list(counts), [list(counts.values())]), ""]
    return "\n".join(parts).rstrip() + "\n"


def finite(value: Any) -> Any:
    """``value`` with NaN and infinite floats made None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_report(report: dict, json_path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report`` as JSON at ``json_path`` and as Markdown beside it (``.md``); returns both paths.

    NaN and infinite numbers (a perplexity past float range) are written as null.
    """
    json_path = Path(json_path)
    md_path = json_path.with_suffix(".md")
    write_text(json_path, json.dumps(finite(report), indent=2, ensure_ascii=False) + "\n")
    write_text(md_path, markdown(report))
    return json_path, md_path


def read_report(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        raise DiffModelError(f"report {str(path)!r} is a folder; give the NAME.json that diffmodel eval wrote in it")
    if not path.is_file():
        raise DiffModelError(f"report {str(path)!r} does not exist (diffmodel eval writes NAME.json and NAME.md)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DiffModelError(f"report {str(path)!r} is not JSON ({err})") from None
    if not isinstance(data, dict) or "metrics" not in data:
        raise DiffModelError(f"{str(path)!r} is not a diffmodel eval report (no 'metrics'); give the .json that diffmodel eval wrote")
    return data


def flatten(report: dict) -> dict[str, Any]:
    """``metric -> value`` over the headline metrics and every breakdown row (``by_language/Python/loss``)."""
    out: dict[str, Any] = dict(report.get("metrics") or {})
    for section in BREAKDOWNS:
        for name, row in (report.get(section) or {}).items():
            for k, v in row.items():
                out[f"{section.removeprefix('by_')}/{name}/{k}"] = v
    for section in COUNTS:
        for k, v in (report.get(section) or {}).items():
            out[f"{section}/{k}"] = v
    return out


#: Settings that do not change a report's numbers (batching, how decoding passes are launched).
NEUTRAL_SETTINGS = ("batch_size", "cuda_graphs")


def differences(a: dict, b: dict) -> list[str]:
    """What, besides the model, differs between two reports: ``data`` and each setting that shapes the numbers."""
    out = ["data"] if a.get("data") != b.get("data") else []
    sa, sb = a.get("settings") or {}, b.get("settings") or {}
    out += [k for k in [*sa, *(k for k in sb if k not in sa)] if k not in NEUTRAL_SETTINGS and sa.get(k) != sb.get(k)]
    return out


def compare(a: dict, b: dict, label_a: str = "A", label_b: str = "B") -> str:
    """Two reports side by side as a Markdown table (metric, A, B, B - A)."""
    if a.get("kind") != b.get("kind"):
        raise DiffModelError(f"cannot compare a {a.get('kind')!r} report with a {b.get('kind')!r} report; give two reports of the same eval")
    fa, fb = flatten(a), flatten(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    rows = []
    for k in keys:
        va, vb = fa.get(k), fb.get(k)
        delta = None
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool) and not isinstance(vb, bool):
            delta = vb - va
            if isinstance(delta, float) and delta == 0:
                delta = 0.0
        rows.append([k, va, vb, delta])
    head = [
        f"# diffmodel eval {a.get('kind')}: {label_a} vs {label_b}",
        "",
        f"A: `{a.get('model', '?')}`  ",
        f"B: `{b.get('model', '?')}`",
        "",
    ]
    for side, rep in (("A", a), ("B", b)):
        if rep.get("data"):
            head.append(f"data {side}: `{rep['data']}`  ")
    for side, rep in (("A", a), ("B", b)):
        if rep.get("settings"):
            head.append(f"settings {side}: " + ", ".join(f"{k}={v}" for k, v in rep["settings"].items()) + "  ")
    differ = differences(a, b)
    if differ:
        head.append(f"note: the two reports differ in {', '.join(differ)}, so B - A is not the models' difference alone  ")
    head.append("")
    return "\n".join(head) + "\n" + _table(["metric", label_a, label_b, f"{label_b} - {label_a}"], rows) + "\n"


__all__ = ["NEUTRAL_SETTINGS", "compare", "differences", "finite", "flatten", "fmt", "markdown", "read_report", "write_jsonl_atomic", "write_report"]
