"""Data for training: load and preprocess the data that ``DataArguments`` names.

Shared by ``diffmodel train`` and ``diffmodel inspect``, so both see exactly
the same rows. The load and preprocessing options come from
:func:`diffmodel.preprocess.options.options_from`, which logs every decision
a flag implies (a forced layout, samples dropped by packing). The reports carry the bad records skipped while loading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

import datasets

from diffmodel.data.load import LoadOptions, load_raw_datasets
from diffmodel.errors import DiffModelError
from diffmodel.preprocess.cache import fingerprint
from diffmodel.preprocess.options import options_from
from diffmodel.preprocess.pipeline import preprocess

logger = logging.getLogger("diffmodel.train")


def source_fingerprint(raw: datasets.DatasetDict, files: list[str], load_opts: LoadOptions) -> str:
    """Identify the loaded data: its files (path, size, mtime) and the load options."""
    stats = []
    for f in files:
        p = Path(f)
        if p.is_file():
            st = p.stat()
            stats.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
        elif p.is_dir():
            for q in sorted(p.rglob("*")):
                if q.is_file():
                    st = q.stat()
                    stats.append((str(q.resolve()), st.st_size, st.st_mtime_ns))
    splits = {k: (len(v), v.column_names, None if stats else v._fingerprint) for k, v in raw.items()}
    return fingerprint(stats, splits, vars(load_opts))


def build_datasets(data_args, tokenizer, block_size: int, cache_dir: str | None = None, seed: int = 42, main_process_first=None):
    """Load and preprocess; returns (processed DatasetDict, reports).

    ``main_process_first(desc=...)`` (``TrainingArguments.main_process_first``
    under torchrun) lets rank 0 do the work while the other ranks wait and then
    reuse its caches.
    """
    first = main_process_first or (lambda desc: contextlib.nullcontext())
    load_opts, opts = options_from(data_args, block_size, cache_dir, seed)
    with first(desc="loading data"):
        raw, load_report = load_raw_datasets(load_opts)
    if "train" not in raw:
        raise DiffModelError(f"the data has no 'train' split (splits: {list(raw)}); name the training files with --train_file")
    opts = dataclasses.replace(opts, text_column=load_report.text_column or opts.text_column)
    with first(desc="preprocessing"):
        processed, reports = preprocess(raw, tokenizer, opts, source_fingerprint(raw, load_report.files, load_opts))
    for split, n in load_report.bad_records_by_split.items():
        if split in reports:
            reports[split].bad_records = n
    for report in reports.values():
        report.row_format = load_report.row_format
    if "train" in reports:
        reports["train"].sources = load_report.sources
    return processed, reports
