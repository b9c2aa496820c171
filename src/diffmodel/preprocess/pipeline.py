"""Run the preprocessing stages over a ``DatasetDict``, with a stage cache.

Order (the reference's): tokenize -> drop long samples -> labels (mask before
where the loss starts: the ``--edit_format``'s target marker (``<DFF>`` in
``carper``), or its message marker (the ``<MSG>`` line) with ``--loss_on
message+diff``, :func:`diffmodel.formats.loss_start`; the completion of a prompt/completion row, always, even without
``--train_diff_model``; drop samples without a diff, and with an empty diff
or completion) -> layout (pad | concat | pack) -> sanity check. Each stage function lives
in its own module; this module only wires them to ``datasets`` and caches
their results.

Caching: the result of the encode stage (tokenize + labels + filters) and of
the layout stage go through the fingerprinted stage cache
(:mod:`diffmodel.preprocess.cache`): a stage whose inputs, tokenizer and
options are unchanged is loaded instead of recomputed, and an interrupted run
never leaves a stage that looks finished.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from diffmodel import formats
from diffmodel.data.records import COMPLETION_START
from diffmodel.errors import DiffModelError
from diffmodel.preprocess.cache import cached_stage, default_cache_root, fingerprint, tokenizer_fingerprint
from diffmodel.preprocess.labels import EMPTY_DIFF, NO_DIFF, diff_start_from_ids, mask_before
from diffmodel.preprocess.layout import COLUMNS, concatenate, pad_left
from diffmodel.preprocess.packing import PACKED_COLUMNS, best_fit_decreasing, pack_row
from diffmodel.preprocess.sanity import SplitReport, check_rows, mark_spans
from diffmodel.preprocess.options import PreprocessOptions
from diffmodel.preprocess.tokenize import is_short_enough, tokenize_batch
from diffmodel.preprocess.tokens import eos_id_of, pad_id_of

logger = logging.getLogger(__name__)

STAGE_VERSION = 2  # bump when a stage's output changes for the same inputs


# --- encode stage: tokenize + labels, as one pass -------------------------------------------


def encode_batch(batch: dict[str, list], tokenizer, opts: PreprocessOptions) -> dict[str, list]:
    """tokenize (unless ``input_ids`` exist) and label one batch; no rows are dropped here.

    ``diff_start`` comes out as a token index, or ``NO_DIFF`` / ``EMPTY_DIFF``
    for a sample the filters drop. Token ids without text or ``diff_start``
    get the boundary by decoding their tokens (:func:`diff_start_from_ids`).
    """
    if "input_ids" in batch and batch["input_ids"] is not None:
        ids = batch["input_ids"]
        starts = batch.get("diff_start")
    else:
        enc = tokenize_batch(batch, tokenizer, opts.text_column, opts.loss_on, opts.edit_format)
        ids, starts = enc["input_ids"], enc["diff_start"]
    out: dict[str, list] = {"input_ids": ids, "n_tokens": [len(x) for x in ids]}
    has_labels = "labels" in batch and batch["labels"] is not None
    if has_labels and not opts.force_label:
        out["labels"] = batch["labels"]
        out["diff_start"] = [0] * len(ids)
        return out
    # a prompt/completion row is always trained on its completion only; a diff sample only with --train_diff_model
    masked = [opts.train_diff_model or c is not None for c in batch.get(COMPLETION_START) or [None] * len(ids)]
    if not any(masked):
        out["labels"] = [list(row_ids) for row_ids in ids]
        out["diff_start"] = [0] * len(ids)
        return out
    if starts is None:
        starts = [diff_start_from_ids(row_ids, tokenizer, opts.loss_on, opts.edit_format) for row_ids in ids]
    starts = [start if mask else 0 for start, mask in zip(starts, masked)]
    out["labels"] = [mask_before(row_ids, start) if start >= 0 else [] for row_ids, start in zip(ids, starts)]
    out["diff_start"] = starts
    return out


def _count_filter(ds: datasets.Dataset, column: str, predicate, num_proc, desc: str) -> tuple[datasets.Dataset, int]:
    """Keep the rows whose ``column`` value passes ``predicate`` (only that column is read); returns (kept, dropped)."""
    before = len(ds)
    kept = ds.filter(lambda values: [predicate(v) for v in values], input_columns=[column], batched=True, num_proc=num_proc, desc=desc)
    return kept, before - len(kept)


ENCODED_FEATURES = datasets.Features({
    "input_ids": datasets.Sequence(datasets.Value("int32")),
    "labels": datasets.Sequence(datasets.Value("int32")),
    "diff_start": datasets.Value("int64"),
    "n_tokens": datasets.Value("int64"),
})


def encode_split(ds: datasets.Dataset, tokenizer, opts: PreprocessOptions, split: str = "train") -> tuple[datasets.Dataset, dict]:
    """Tokenize, label and filter one split; returns it with its drop counts."""
    loaded = len(ds)
    if "input_ids" not in ds.column_names and opts.text_column not in ds.column_names:
        raise DiffModelError(
            f"the dataset has no {opts.text_column!r} column and no 'input_ids' (columns: {ds.column_names}); "
            "name the text column with --text_column"
        )
    pretokenized = "input_ids" in ds.column_names
    if pretokenized and opts.train_diff_model and "diff_start" not in ds.column_names and (opts.force_label or "labels" not in ds.column_names):
        logger.warning("data is pre-tokenized without text: each token is decoded on its own to find where the loss starts "
                       "(the %s after the last %s)", formats.loss_marker(opts.edit_format),
                       formats.loss_marker(opts.edit_format, "message+diff"))
    keep = [c for c in ("input_ids", "labels", "diff_start") if c in ds.column_names]
    remove = [c for c in ds.column_names if c not in keep]
    ds = ds.map(
        encode_batch,
        batched=True,
        num_proc=opts.num_proc,
        remove_columns=remove,
        features=ENCODED_FEATURES,
        fn_kwargs={"tokenizer": tokenizer, "opts": opts},
        desc="tokenize + label",
    )
    counts = {"dropped_too_long": 0, "dropped_no_diff": 0, "dropped_empty_diff": 0}
    if opts.drops_long_samples:
        ds, counts["dropped_too_long"] = _count_filter(
            ds, "n_tokens", lambda n: is_short_enough(n, opts.block_size), opts.num_proc, f"drop samples >= {opts.block_size} tokens"
        )
    starts = ds.with_format("arrow")["diff_start"]
    counts["dropped_no_diff"] = pc.sum(pc.equal(starts, NO_DIFF)).as_py() or 0
    counts["dropped_empty_diff"] = pc.sum(pc.equal(starts, EMPTY_DIFF)).as_py() or 0
    ds, _ = _count_filter(ds, "diff_start", lambda start: start >= 0, opts.num_proc, "drop samples without a diff")
    if len(ds) == 0:
        raise_empty(split, loaded, counts, opts.block_size, opts.packing, opts.edit_format)
    return ds.remove_columns(["diff_start", "n_tokens"]), counts


def raise_empty(split: str, loaded: int, counts: dict[str, int], block_size: int, packing: bool = False,
                edit_format: str | None = None):
    """The error for a split left without rows; the fixes named are the ones that apply (--packing drops long samples itself).

    ``edit_format`` (None: the default) names the target marker the dropped samples lack.
    """
    fixes = []
    if counts.get("dropped_too_long", 0):
        fixes.append("raise --block_size (--packing drops every sample of --block_size tokens or more: it never splits one)"
                     if packing else "raise --block_size, drop --ignore_long_samples")
    fixes.append("check the data (and that --edit_format is the format its text is written in)")
    raise DiffModelError(
        f"the {split} split is empty after preprocessing ({loaded} loaded, {counts.get('dropped_too_long', 0)} dropped as >= --block_size "
        f"{block_size} tokens, {counts.get('dropped_no_diff', 0)} dropped without {formats.loss_marker(edit_format)}, "
        f"{counts.get('dropped_empty_diff', 0)} dropped with an empty diff); {', or '.join(fixes)}"
    )


# --- layout stage -----------------------------------------------------------------------------


def pad_batch(batch: dict[str, list], block_size: int, pad_id: int, eos_id: int) -> dict[str, list]:
    rows = [pad_left(i, l, block_size, pad_id, eos_id) for i, l in zip(batch["input_ids"], batch["labels"])]
    return {c: [r[c] for r in rows] for c in COLUMNS}


ROW_FEATURES = datasets.Features({c: datasets.Sequence(datasets.Value("int32")) for c in COLUMNS})


def concat_split(ds: datasets.Dataset, block_size: int, eos_id: int, pad_id: int, workdir: Path) -> datasets.Dataset:
    """Concatenate a whole split in order into an Arrow file, one record batch per 64 rows (memory: one batch)."""
    schema = ROW_FEATURES.arrow_schema
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"concat-{os.getpid()}.arrow"
    samples = (
        (ids, labels)
        for batch in ds.select_columns(["input_ids", "labels"]).iter(batch_size=256)
        for ids, labels in zip(batch["input_ids"], batch["labels"])
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        chunk: dict[str, list] = {c: [] for c in COLUMNS}
        for row in concatenate(samples, block_size, eos_id, pad_id):
            for c in COLUMNS:
                chunk[c].append(row[c])
            if len(chunk["input_ids"]) == 64:
                writer.write_batch(pa.RecordBatch.from_pydict(chunk, schema=schema))
                chunk = {c: [] for c in COLUMNS}
        if chunk["input_ids"]:
            writer.write_batch(pa.RecordBatch.from_pydict(chunk, schema=schema))
    return datasets.Dataset.from_file(str(path))


PACKED_FEATURES = datasets.Features({c: datasets.Sequence(datasets.Value("int32")) for c in PACKED_COLUMNS})


def _gather_rows(batch: dict[str, list], source: datasets.Dataset, eos_id: int) -> dict[str, list]:
    flat = [i for members in batch["members"] for i in members]
    got = source.select_columns(["input_ids", "labels"])[flat]
    samples = iter(zip(got["input_ids"], got["labels"]))
    rows = [pack_row([next(samples) for _ in members], eos_id) for members in batch["members"]]
    return {c: [r[c] for r in rows] for c in PACKED_COLUMNS}


def pack_split(ds: datasets.Dataset, block_size: int, eos_id: int, num_proc: int | None) -> datasets.Dataset:
    """Best-fit-decreasing packing of a whole split (lengths read from Arrow, rows built in parallel)."""
    if ds._indices is not None:
        ds = ds.flatten_indices()
    lengths = (pc.list_value_length(ds.data.column("input_ids")).to_numpy() + 1).tolist()
    bins = best_fit_decreasing(lengths, block_size)
    plan = datasets.Dataset.from_dict({"members": bins})
    return plan.map(
        _gather_rows,
        batched=True,
        batch_size=256,
        num_proc=num_proc if num_proc and len(bins) >= 2 * num_proc else None,
        remove_columns=["members"],
        features=PACKED_FEATURES,
        fn_kwargs={"source": ds, "eos_id": eos_id},
        desc=f"pack into rows of <= {block_size}",
    )


def layout_split(ds: datasets.Dataset, tokenizer, opts: PreprocessOptions, workdir: Path) -> datasets.Dataset:
    pad_id, eos_id = pad_id_of(tokenizer), eos_id_of(tokenizer)
    if opts.layout == "pack":
        return pack_split(ds, opts.block_size, eos_id, opts.num_proc)
    if opts.layout == "concat":
        return concat_split(ds, opts.block_size, eos_id, pad_id, workdir)
    return ds.map(
        pad_batch,
        batched=True,
        num_proc=opts.num_proc,
        remove_columns=ds.column_names,
        features=ROW_FEATURES,
        fn_kwargs={"block_size": opts.block_size, "pad_id": pad_id, "eos_id": eos_id},
        desc=f"left-pad to {opts.block_size}",
    )


# --- the whole pipeline -----------------------------------------------------------------------


def loss_on_of(columns, opts: PreprocessOptions) -> str:
    """What carries loss in rows with these columns, as the report says it: ``labels as given``, ``completion``, ``--loss_on`` or ``all tokens``.

    Rows that bring a ``labels`` column keep it (unless ``--force_label``
    rebuilds it, which rows already laid out never do), whatever
    ``--train_diff_model`` and ``--loss_on`` say.
    """
    if "labels" in columns and (not opts.force_label or (opts.skip_concat and {"attention_mask", "position_ids"} & set(columns))):
        return "labels as given"
    if COMPLETION_START in columns:
        return "completion"
    return opts.loss_on if opts.train_diff_model else "all tokens"


def is_laid_out(ds: datasets.Dataset) -> bool:
    """Rows that an earlier run laid out carry labels and an attention mask (pad, concat) or position ids (pack)."""
    cols = set(ds.column_names)
    return {"input_ids", "labels"} <= cols and bool({"attention_mask", "position_ids"} & cols)


def holds_layout(ds: datasets.Dataset) -> bool:
    """Rows that a layout step made: laid-out columns with padding (attention 0) or per-sample ``position_ids``.

    Laying such rows out again would take their padding for text (and train
    packed samples as one); rows that merely carry an all-ones attention mask
    (tokenized elsewhere) are samples and may be laid out.
    """
    if not is_laid_out(ds):
        return False
    if "position_ids" in ds.column_names:
        return True
    mask = ds.with_format("arrow")["attention_mask"]
    values = pc.list_flatten(mask)
    return len(values) > 0 and pc.min(values).as_py() == 0


def preprocess(raw: datasets.DatasetDict, tokenizer, opts: PreprocessOptions, source_fingerprint: str) -> tuple[datasets.DatasetDict, dict[str, SplitReport]]:
    """Run every stage on every split; returns the laid-out splits and their reports."""
    root = default_cache_root(opts.cache_dir)
    tok_fp = tokenizer_fingerprint(tokenizer)
    stage_opts = asdict(opts)
    for k in ("num_proc", "overwrite_cache", "cache_dir", "report_examples"):
        stage_opts.pop(k)
    out, reports = {}, {}
    for split, ds in raw.items():
        report = SplitReport(samples_loaded=len(ds), layout="as given" if opts.skip_concat else opts.layout,
                             loss_on=loss_on_of(ds.column_names, opts), edit_format=opts.edit_format)
        if opts.skip_concat and is_laid_out(ds):
            if opts.force_label:
                logger.warning("--force_label has no effect with --skip_concat on rows that are already laid out: their labels were built before layout; rebuild from the raw data to change them")
            rows = ds
            report.samples_kept = len(ds)
        elif opts.skip_concat and opts.packing:  # raw samples have no position_ids to train them as packed rows
            raise DiffModelError(
                f"--skip_concat --packing trains rows an earlier --packing run laid out (input_ids, labels, position_ids), "
                f"but the {split} split holds samples that are not laid out (columns: {', '.join(ds.column_names)}); "
                "drop --skip_concat to pack them"
            )
        elif not opts.skip_concat and holds_layout(ds):
            raise DiffModelError(
                f"the {split} split holds rows an earlier run laid out (columns: {', '.join(ds.column_names)}: padding or packed samples); "
                "laying them out again would train their padding as text: pass --skip_concat (and the --block_size they were laid "
                "out with) to train them as they are, or give the raw samples to lay them out again"
            )
        else:
            if report.loss_on == "labels as given":
                logger.warning("the %s split has a labels column: its labels are kept, whatever --train_diff_model and --loss_on say "
                               "(--force_label rebuilds them)", split)
            enc_fp = fingerprint(STAGE_VERSION, "encode", source_fingerprint, split, tok_fp, stage_opts)
            encoded, counts = cached_stage(root, "encode", enc_fp, lambda ds=ds, split=split: encode_split(ds, tokenizer, opts, split), opts.overwrite_cache)
            report.dropped_too_long, report.dropped_no_diff = counts["dropped_too_long"], counts["dropped_no_diff"]
            report.dropped_empty_diff = counts.get("dropped_empty_diff", 0)
            report.samples_kept = len(encoded)
            if opts.skip_concat:
                rows = encoded
            else:
                lay_fp = fingerprint(STAGE_VERSION, "layout", enc_fp, opts.layout, opts.block_size, pad_id_of(tokenizer), eos_id_of(tokenizer))
                rows, _ = cached_stage(root, "layout", lay_fp, lambda enc=encoded: (layout_split(enc, tokenizer, opts, root / "tmp"), {}), opts.overwrite_cache)
                shutil.rmtree(root / "tmp", ignore_errors=True)
        if len(rows) == 0:
            raise_empty(split, report.samples_loaded, asdict(report), opts.block_size, opts.packing, opts.edit_format)
        check_cols = [c for c in COLUMNS if c in rows.column_names]
        fixed = opts.block_size if "attention_mask" in rows.column_names else None
        report.rows, report.row_slots, report.tokens, report.loss_tokens = check_rows(rows.select_columns(check_cols).with_format("arrow").iter(batch_size=256), fixed, split, opts.block_size)
        if fixed is None:
            report.row_slots = report.rows * opts.block_size
        report.examples = [mark_spans(rows[i], tokenizer) for i in range(min(opts.report_examples, len(rows)))]
        out[split] = rows
        reports[split] = report
    return datasets.DatasetDict(out), reports
