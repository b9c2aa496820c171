"""Data for training: load and preprocess the data that ``DataArguments`` names.

Shared by ``diffmodel train`` and ``diffmodel inspect``, so both see exactly
the same rows. Logs every decision a flag implies (a forced layout, samples
dropped by packing). The reports carry the bad records skipped while loading.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import datasets

from diffmodel.data.load import LoadOptions, load_raw_datasets
from diffmodel.errors import DiffModelError
from diffmodel.preprocess.pipeline import PreprocessOptions, fingerprint, preprocess

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


def preprocess_options(data_args, block_size: int) -> PreprocessOptions:
    if data_args.packing:
        if data_args.concatenate_texts:
            raise DiffModelError("--packing and --concatenate_texts are two different layouts; pass one of them")
        if not data_args.ignore_long_samples:
            logger.warning("--packing: samples of --block_size tokens or more are dropped (packing never splits a sample), as with --ignore_long_samples")
    elif not data_args.ignore_long_samples and not data_args.concatenate_texts and not data_args.skip_concat:
        logger.warning("--ignore_long_samples not given: forcing --concatenate_texts, since left-padding cannot hold samples longer than --block_size")
    return PreprocessOptions(
        block_size=block_size,
        train_diff_model=data_args.train_diff_model,
        ignore_long_samples=data_args.ignore_long_samples,
        concatenate_texts=data_args.concatenate_texts,
        packing=data_args.packing,
        skip_concat=data_args.skip_concat,
        force_label=data_args.force_label,
        num_proc=data_args.preprocessing_num_workers,
        text_column=data_args.text_column or "text",
        overwrite_cache=data_args.overwrite_cache,
    )


def build_datasets(data_args, tokenizer, block_size: int, cache_dir: str | None = None, seed: int = 42, main_process_first=None):
    """Load and preprocess; returns (processed DatasetDict, reports).

    ``main_process_first(desc=...)`` (``TrainingArguments.main_process_first``
    under torchrun) lets rank 0 do the work while the other ranks wait and then
    reuse its caches.
    """
    first = main_process_first or (lambda desc: contextlib.nullcontext())
    load_opts = LoadOptions(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_files=data_args.train_file,
        validation_files=data_args.validation_file,
        validation_split_percentage=data_args.validation_split_percentage,
        load_from_disk=data_args.load_from_disk,
        text_column=data_args.text_column,
        keep_linebreaks=data_args.keep_linebreaks,
        skip_bad_records=data_args.skip_bad_records,
        cache_dir=cache_dir,
        seed=seed,
    )
    with first(desc="loading data"):
        raw, load_report = load_raw_datasets(load_opts)
    if load_report.bad_records:
        logger.warning("skipped %d malformed records, e.g. %s", load_report.bad_records, "; ".join(load_report.bad_record_examples[:3]))
    if "train" not in raw:
        raise DiffModelError(f"the data has no 'train' split (splits: {list(raw)}); name the training files with --train_file")
    opts = preprocess_options(data_args, block_size)
    opts.cache_dir = cache_dir
    opts.text_column = load_report.text_column or opts.text_column
    with first(desc="preprocessing"):
        processed, reports = preprocess(raw, tokenizer, opts, source_fingerprint(raw, load_report.files, load_opts))
    for split, n in load_report.bad_records_by_split.items():
        if split in reports:
            reports[split].bad_records = n
    return processed, reports
