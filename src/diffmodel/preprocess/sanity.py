"""Sanity check and report of a preprocessed dataset.

The reference script asserted a few properties before training; here they are
checked over every row and raised as one :class:`DiffModelError` listing each
broken property with an example row. The report counts what each stage kept
and dropped, the share of tokens that carry loss, and shows the first samples
with the masked and trained spans marked (see :func:`mark_spans`).

Drops: every ``SplitReport`` field named ``dropped_*``, and ``bad_records``,
counts samples that are not trained (:func:`drop_counts`); when they are more
than half of a split's samples, :func:`drop_warning` says so, with the
reasons and the flag to change, in the report, its JSON and the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from diffmodel import formats
from diffmodel.atomic import write_json
from diffmodel.errors import raise_if_problems
from diffmodel.preprocess.labels import IGNORE_INDEX

ANSI_TRAINED = "\033[1;32m"
ANSI_MASKED = "\033[2m"
ANSI_RESET = "\033[0m"
PLAIN_OPEN, PLAIN_CLOSE = "\u27e6", "\u27e7"  # ⟦trained span⟧


@dataclass
class SplitReport:
    """Counts for one split, stage by stage."""

    samples_loaded: int = 0  # good records (bad ones are counted in bad_records)
    bad_records: int = 0  # skipped by --skip_bad_records while loading
    dropped_too_long: int = 0
    dropped_no_diff: int = 0
    dropped_empty_diff: int = 0
    samples_kept: int = 0
    rows: int = 0
    row_slots: int = 0
    tokens: int = 0  # tokens with attention 1
    loss_tokens: int = 0  # tokens whose label is not ignored
    layout: str = ""
    row_format: str = ""  # the kind of rows loaded: text, prompt/completion, name/before/message/diff, tokenized
    loss_on: str = ""  # what carries loss: diff, message+diff, completion, all tokens
    edit_format: str = formats.DEFAULT  # --edit_format: its markers name what dropped_no_diff samples lack
    sources: list[dict] = field(default_factory=list)  # weighted --train_file sources (diffmodel.data.mix.source_report)
    examples: list[str] = field(default_factory=list)

    @property
    def loss_share(self) -> float:
        return self.loss_tokens / self.tokens if self.tokens else 0.0

    @property
    def fill_ratio(self) -> float:
        return self.tokens / self.row_slots if self.row_slots else 0.0


def _lists(column) -> pa.ListArray:
    """A column of rows as an Arrow list array (zero-copy for Arrow input)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column, (pa.ListArray, pa.LargeListArray)):
        return column
    return pa.array(column, type=pa.list_(pa.int64()))


def _flat(column: pa.ListArray) -> np.ndarray:
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def check_rows(batches: Iterable, block_size: int | None, split: str, max_len: int | None = None) -> tuple[int, int, int, int]:
    """Check every row; return (rows, slots, attended tokens, loss tokens).

    ``block_size``: every row must have exactly this length (None: any length
    up to ``max_len``). Where a row has ``position_ids`` but no attention mask
    (packed rows), the label at each sample start (position 0) must be ignored.

    ``batches`` yields Arrow record batches or tables (``Dataset.iter`` with
    the arrow format: no Python object per token) or dicts of row lists.
    Memory is one batch. Raises one DiffModelError naming every broken
    property (first offending row each).
    """
    problems: dict[str, str] = {}
    n_rows = slots = tokens = loss = 0
    for batch in batches:
        names = batch.column_names if hasattr(batch, "column_names") else list(batch)
        col = (lambda c: batch.column(c)) if hasattr(batch, "column") else (lambda c: batch[c])
        ids_col, label_col = _lists(col("input_ids")), _lists(col("labels"))
        attn_col = _lists(col("attention_mask")) if "attention_mask" in names else None
        lengths = pc.list_value_length(ids_col).to_numpy(zero_copy_only=False)
        first = n_rows
        n_rows += len(lengths)
        if block_size is not None and "length" not in problems:
            bad = np.flatnonzero(lengths != block_size)
            if bad.size:
                problems["length"] = f"{split} row {first + int(bad[0])} has {int(lengths[bad[0]])} tokens, expected block_size {block_size} (was the data laid out with another --block_size? pass --block_size {int(lengths[bad[0]])}, or lay the raw samples out again)"
        if block_size is None and max_len is not None and "length" not in problems:
            bad = np.flatnonzero(lengths > max_len)
            if bad.size:
                problems["length"] = f"{split} row {first + int(bad[0])} has {int(lengths[bad[0]])} tokens, more than --block_size {max_len} (pass a larger --block_size, or lay the raw samples out again)"
        label_lengths = pc.list_value_length(label_col).to_numpy(zero_copy_only=False)
        attn_lengths = pc.list_value_length(attn_col).to_numpy(zero_copy_only=False) if attn_col is not None else lengths
        bad = np.flatnonzero((label_lengths != lengths) | (attn_lengths != lengths))
        if bad.size:
            if "labels" not in problems:
                i = int(bad[0])
                problems["labels"] = f"{split} row {first + i}: {int(label_lengths[i])} labels and {int(attn_lengths[i])} attention entries for {int(lengths[i])} input_ids (rebuild labels with --force_label)"
            continue
        ids, labels = _flat(ids_col), _flat(label_col)
        attn = _flat(attn_col) if attn_col is not None else np.ones_like(ids)
        trained = labels != IGNORE_INDEX
        slots += int(ids.size)
        tokens += int(attn.sum())
        loss += int(trained.sum())
        bad = np.flatnonzero(trained & (labels != ids))
        if bad.size and "value" not in problems:
            j = int(bad[0])
            problems["value"] = f"{split}: token {j} of the batch ending at row {n_rows - 1}: label {int(labels[j])} is neither the token {int(ids[j])} nor {IGNORE_INDEX} (rebuild labels with --force_label)"
        if "position_ids" in names and attn_col is None:
            starts = _flat(_lists(col("position_ids"))) == 0
            bad = np.flatnonzero(trained & starts)
            if bad.size and "boundary" not in problems:
                problems["boundary"] = f"{split}: token {int(bad[0])} of the batch ending at row {n_rows - 1} starts a packed sample but carries a label (it would be predicted from the previous sample)"
        bad = np.flatnonzero(trained & (attn == 0))
        if bad.size and "attention" not in problems:
            problems["attention"] = f"{split}: token {int(bad[0])} of the batch ending at row {n_rows - 1} is padding (attention 0) but carries a label"
    raise_if_problems(list(problems.values()), f"the {split} split failed the sanity check")
    return n_rows, slots, tokens, loss


def _spans(ids: Sequence[int], labels: Sequence[int], attn: Sequence[int]) -> list[tuple[str, list[int]]]:
    """Group a row into runs of ("pad" | "masked" | "trained", ids)."""
    out: list[tuple[str, list[int]]] = []
    for t, lab, a in zip(ids, labels, attn):
        kind = "pad" if not a else ("trained" if lab != IGNORE_INDEX else "masked")
        if out and out[-1][0] == kind:
            out[-1][1].append(t)
        else:
            out.append((kind, [t]))
    return out


def mark_spans(row: dict, tokenizer, color: bool = False, max_chars: int = 1200) -> str:
    """Decode a row with trained spans marked: ANSI green (``color``) or ⟦brackets⟧.

    Masked context is dim (or plain); padding is summarised as ``[PAD xN]``.
    """
    ids = row["input_ids"]
    attn = row.get("attention_mask") or [1] * len(ids)
    parts = []
    for kind, run in _spans(ids, row["labels"], attn):
        if kind == "pad":
            parts.append(f"[PAD x{len(run)}]")
            continue
        text = tokenizer.decode(run)
        if kind == "trained":
            parts.append(f"{ANSI_TRAINED}{text}{ANSI_RESET}" if color else f"{PLAIN_OPEN}{text}{PLAIN_CLOSE}")
        else:
            parts.append(f"{ANSI_MASKED}{text}{ANSI_RESET}" if color else text)
    out = "".join(parts)
    return out if len(out) <= max_chars else out[:max_chars] + f"... [{len(out) - max_chars} more characters]"


def _no_target(edit_format: str | None = None) -> tuple[str, str]:
    """Why ``dropped_no_diff`` samples were not trained, and the fix, in ``edit_format``'s markers.

    A sample is dropped when its target marker does not follow a message
    marker, whatever ``--loss_on`` says (``message+diff`` starts at that
    message marker only when the target follows it: :mod:`diffmodel.preprocess.labels`).
    """
    target, message = formats.loss_marker(edit_format), formats.loss_marker(edit_format, "message+diff")
    return f"without {target}", f"give every text a {target} line after its {message} line (or name the text with --text_column)"


#: Drop counter -> (why the samples were not trained, what to change), in the default format's markers
#: (:func:`drop_reasons`: another format's). A counter missing here is described by its name.
DROP_REASONS: dict[str, tuple[str, str]] = {
    "bad_records": ("bad records skipped", "fix the records the log names"),
    "dropped_too_long": ("too long (>= --block_size tokens)", "raise --block_size (up to the model's positions) or mine shorter samples (diffmodel mine --tokenizer_name TOKENIZER --max_tokens BLOCK_SIZE-1)"),
    "dropped_no_diff": _no_target(),
    "dropped_empty_diff": ("with an empty diff or completion (nothing to train)", ""),
}


def drop_reasons(edit_format: str | None = None) -> dict[str, tuple[str, str]]:
    """:data:`DROP_REASONS` with the markers of ``edit_format`` (None: the default format)."""
    return {**DROP_REASONS, "dropped_no_diff": _no_target(edit_format)}


def drop_counts(report: SplitReport) -> dict[str, int]:
    """Every counter of samples that are not trained: the fields named ``dropped_*``, and ``bad_records``."""
    return {f.name: getattr(report, f.name) for f in fields(report) if f.name.startswith("dropped_") or f.name == "bad_records"}


def drop_warning(split: str, report: SplitReport) -> str | None:
    """A warning when more than half of a split's samples are dropped (reasons, largest first, and fixes), else None."""
    counts = {k: n for k, n in drop_counts(report).items() if n}
    dropped = sum(counts.values())
    total = report.samples_loaded + report.bad_records
    if not total or 2 * dropped <= total:
        return None
    order = sorted(counts, key=lambda k: -counts[k])
    reasons_of = drop_reasons(report.edit_format)
    described = {k: reasons_of.get(k, (k.removeprefix("dropped_").replace("_", " "), "")) for k in order}
    reasons = ", ".join(f"{counts[k]:,} {described[k][0]}" for k in order)
    fixes = "; ".join(described[k][1] for k in order if described[k][1])
    return f"the {split} split drops {dropped:,} of {total:,} samples ({dropped / total:.0%}): {reasons}" + (f". To keep more: {fixes}" if fixes else "")


def format_report(reports: dict[str, SplitReport]) -> str:
    """A readable table of the per-split counts, the drop warnings, then the decoded examples."""
    targets = dict.fromkeys(formats.loss_marker(r.edit_format) for r in reports.values()) or [formats.loss_marker()]
    rows = [
        ("samples loaded", "samples_loaded"),
        ("skipped: bad records", "bad_records"),
        ("dropped: too long", "dropped_too_long"),
        (f"dropped: no {' or '.join(targets)}", "dropped_no_diff"),
        ("dropped: empty diff", "dropped_empty_diff"),  # or an empty completion
        ("samples kept", "samples_kept"),
        ("rows", "rows"),
        ("tokens (attended)", "tokens"),
        ("loss-bearing tokens", "loss_tokens"),
    ]
    label_width = max(22, *(len(label) + 2 for label, _ in rows))  # 22 as ever, wider for a longer marker
    splits = list(reports)
    words = [str(getattr(reports[s], a) or "") for s in splits for a in ("layout", "row_format", "loss_on")]
    width = max(12, *(len(s) for s in splits), *(len(w) for w in words))  # columns never run into each other
    lines = ["Data sanity report", f"{'':<{label_width}}" + "".join(f"{s:>{width + 2}}" for s in splits)]
    for label, attr in rows:
        lines.append(f"{label:<{label_width}}" + "".join(f"{getattr(reports[s], attr):>{width + 2},}" for s in splits))
    lines.append(f"{'loss share':<{label_width}}" + "".join(f"{reports[s].loss_share:>{width + 2}.1%}" for s in splits))
    lines.append(f"{'fill ratio':<{label_width}}" + "".join(f"{reports[s].fill_ratio:>{width + 2}.1%}" for s in splits))
    lines.append(f"{'layout':<{label_width}}" + "".join(f"{reports[s].layout:>{width + 2}}" for s in splits))
    for label, attr in (("rows are", "row_format"), ("loss on", "loss_on")):
        if any(getattr(reports[s], attr) for s in splits):
            lines.append(f"{label:<{label_width}}" + "".join(f"{getattr(reports[s], attr):>{width + 2}}" for s in splits))
    for s in splits:
        lines += [f"{s} source {line}" for line in format_sources(reports[s].sources)]
    lines += [f"WARNING: {w}" for w in (drop_warning(s, reports[s]) for s in splits) if w]
    for s in splits:
        for k, ex in enumerate(reports[s].examples):
            lines.append(f"\n--- {s} row {k} ({PLAIN_OPEN}trained{PLAIN_CLOSE}, rest masked) ---\n{ex}")
    return "\n".join(lines)


def format_sources(sources: list[dict]) -> list[str]:
    """One line per weighted source: its files, weight, rows available (when known) and rows taken (with the effective share)."""
    return [
        f"{src['train_file']} ({src['files']} file(s)): weight {src['weight']:g} (share {src['share']:.1%}), "
        + (f"{src['rows']:,} rows, " if "rows" in src else "")
        + f"{src['rows_mixed']:,} taken ({src['effective_share']:.1%} of the mix)"
        for src in sources
    ]


def write_report_json(reports: dict[str, SplitReport], path: Path) -> Path:
    """Write the report as JSON (atomically)."""
    data = {s: {**asdict(r), "loss_share": r.loss_share, "fill_ratio": r.fill_ratio, "warning": drop_warning(s, r)} for s, r in reports.items()}
    return write_json(path, data)
