"""The load stage: data files or a saved dataset in, a ``DatasetDict`` of raw rows out.

Sources (exactly one per run):

- ``train_files`` / ``validation_files``: paths or globs of one file type per
  split: ``.jsonl``/``.json`` (optionally ``.zst``), ``.parquet``, ``.csv`` or
  ``.txt`` (one sample per line, as in ``run_clm``). Train files with a final
  ``:WEIGHT`` each are weighted sources: each is read on its own, the
  validation split is cut from all of them, then the train split is mixed by
  the rule of :mod:`diffmodel.data.mix` (``LoadReport.sources`` tells how).
- ``dataset_name``: a local dataset folder (split names read from file and
  folder names, as ``datasets`` does), or any name ``datasets.load_dataset``
  can open without network.
- ``dataset_name`` with ``load_from_disk``: a ``save_to_disk`` folder; a lone
  ``Dataset`` becomes the ``train`` split.

Invariants:
- JSON record files are parsed here (see :mod:`diffmodel.data.records`) and
  written to the ``datasets`` cache as Arrow through ``Dataset.from_generator``;
  the cache key covers each file's path, size and modification time and the
  parser's code, so a changed file is read again. Other types go through the
  ``datasets`` builders.
- The result has a non-empty ``train`` split; unless a validation split was
  given or ``validation_split_percentage`` is 0, it also has ``validation``,
  cut from ``train`` by a seeded permutation (both keep the source order).
- Every split has the text column named in the report (``text`` when rows
  were rendered from ``name/before/message/diff`` in ``edit_format`` by
  :func:`diffmodel.formats.render_row`, or from ``prompt/completion`` rows,
  which also get a ``completion_start`` column: the character where the loss
  starts, whatever the edit format), or an ``input_ids`` column, in which
  case ``LoadReport.text_column`` is None and rows pass through untouched.
  ``LoadReport.row_format`` names the kind of rows.
- Problems with the input raise :class:`DiffModelError` naming the file (and
  line), the flag and the fix.
- Nothing is written into the input: a ``save_to_disk`` folder is read
  through a folder of links to its files under the cache folder
  (:func:`_reading_folder`), so the cache files that ``datasets`` writes next
  to a dataset's own files land there.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from datasets.data_files import DataFilesDict, get_data_patterns
from datasets.exceptions import DatasetGenerationError

from diffmodel import formats, sample
from diffmodel.data import mix, records
from diffmodel.errors import DiffModelError, raise_if_problems

logger = logging.getLogger(__name__)

#: File suffix -> how it is read ("json" by this package, the rest by the ``datasets`` builder of that name).
FORMATS: dict[str, str] = {
    ".jsonl.zst": "json",
    ".json.zst": "json",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".txt": "text",
}
SUPPORTED_EXTENSIONS = tuple(FORMATS)

_STATS_FILE = "diffmodel-load-stats.json"


@dataclass
class LoadOptions:
    """Where the raw data comes from and how it is read."""

    dataset_name: str | None = None
    """A local dataset folder or a dataset name; with ``load_from_disk`` a ``save_to_disk`` folder."""
    dataset_config_name: str | None = None
    """Config of ``dataset_name`` (passed to ``datasets.load_dataset``)."""
    train_files: list[str] | None = None
    """Training data files; globs allowed (``out/train/*.jsonl.zst``)."""
    validation_files: list[str] | None = None
    """Validation data files; globs allowed. Without them a validation split is cut from train."""
    validation_split_percentage: int = 5
    """Percent of train cut off as validation when no validation split is given; 0 cuts none."""
    load_from_disk: bool = False
    """Read ``dataset_name`` with ``datasets.load_from_disk``."""
    text_column: str | None = None
    """Column holding the training text (default: ``text``, else rendered from structured fields)."""
    edit_format: str = "carper"
    """The edit format structured fields are rendered in (:mod:`diffmodel.formats`); ``text`` is read as written."""
    keep_linebreaks: bool = True
    """For ``.txt`` files: keep the newline at the end of each line's sample."""
    skip_bad_records: bool = False
    """Skip (and count) malformed JSON records (not JSON, not an object, text not a string) instead of stopping at the first."""
    cache_dir: str | None = None
    """``datasets`` cache folder (default: the ``datasets`` default cache)."""
    seed: int = 42
    """Seed of the train/validation cut and of the weighted mix."""
    mix_size: int | None = None
    """Rows of the weighted mix of ``train_files`` (default: as many as the first source to run out allows; see :mod:`diffmodel.data.mix`)."""


@dataclass
class LoadReport:
    """What loading did, for logs and the sanity report."""

    files: list[str]
    """Every data file read (for ``load_from_disk`` / named datasets: the folder or name)."""
    bad_records: int
    """Records skipped under ``skip_bad_records``."""
    bad_record_examples: list[str]
    """Up to ``records.MAX_EXAMPLES`` messages ``"file:line: reason"``."""
    rendered_from_fields: bool
    """True when the ``text`` column was rendered from ``name/before/message/diff``."""
    validation_from_split: bool
    """True when validation was cut from train."""
    text_column: str | None
    """Column to tokenize; None when rows are already tokenized (``input_ids``)."""
    bad_records_by_split: dict[str, int] = field(default_factory=dict)
    """``bad_records`` per split read from files (a validation split cut from train has its records counted in train)."""
    sources: list[dict] = field(default_factory=list)
    """Weighted ``--train_file`` sources: files, weight, share, rows and rows taken (:func:`diffmodel.data.mix.source_report`)."""
    row_format: str = ""
    """The kind of rows: ``text``, ``prompt/completion`` (loss on the completion), ``name/before/message/diff`` or ``tokenized``."""


def load_raw_datasets(opts: LoadOptions) -> tuple[datasets.DatasetDict, LoadReport]:
    """Load the raw splits described by ``opts`` (see the module docstring for the rules)."""
    _check_options(opts)
    report = LoadReport(
        files=[],
        bad_records=0,
        bad_record_examples=[],
        rendered_from_fields=False,
        validation_from_split=False,
        text_column=None,
    )
    origins: dict[str, str] = {}
    if opts.load_from_disk:
        raw = _load_saved(opts.dataset_name, report, origins, opts.cache_dir)
    elif opts.dataset_name:
        raw = _load_named(opts, report, origins)
    else:
        sources, problems = mix.parse_sources(opts.train_files)
        raise_if_problems(problems, "cannot read the --train_file weights")
        weighted = mix.is_weighted(sources)
        if weighted:
            raw = _load_weighted(sources, opts, report, origins)
        else:
            raw = _load_split_files({"train": _resolve_files(opts.train_files, "--train_file")}, opts, report, origins)
        if opts.validation_files:
            raw["validation"] = _load_split_files({"validation": _resolve_files(opts.validation_files, "--validation_file")}, opts, report, origins)["validation"]

    if "train" not in raw:
        raise DiffModelError(
            f"{opts.dataset_name}: no 'train' split (found: {', '.join(raw) or 'none'}); "
            "name the training files train*, put them in a train/ folder, or pass --train_file"
        )
    for split, ds in raw.items():
        if len(ds) == 0:
            raise DiffModelError(f"the {split} split is empty ({origins.get(split, opts.dataset_name)}); give it data")
    raw = _resolve_text(raw, opts, report, origins)
    raw = _ensure_validation(raw, opts, report)
    if mix.SOURCE_COLUMN in raw["train"].column_names:
        raw = _mix_train(raw, sources, opts, report)
    return raw, report


# --------------------------------------------------------------------------- options and files


def _check_options(opts: LoadOptions) -> None:
    problems = []
    has_files = bool(opts.train_files) or bool(opts.validation_files)
    if opts.dataset_name and has_files:
        problems.append("--dataset_name and --train_file/--validation_file both given; pass only one source")
    if not opts.dataset_name and not opts.train_files:
        if opts.validation_files:
            problems.append("--validation_file given without --train_file; pass the training files too")
        else:
            problems.append(
                "no data: pass --train_file (files or globs), or --dataset_name (a dataset folder; "
                "with --load_from_disk a save_to_disk folder)"
            )
    if opts.load_from_disk and not opts.dataset_name:
        problems.append("--load_from_disk needs --dataset_name set to the save_to_disk folder")
    if not 0 <= opts.validation_split_percentage < 100:
        problems.append(
            f"--validation_split_percentage {opts.validation_split_percentage} is not in 0..99 "
            "(0 cuts no validation split)"
        )
    raise_if_problems(problems, "cannot load data")


def _resolve_files(patterns: list[str], flag: str) -> list[str]:
    """Expand globs and check that every path names an existing file (order kept, duplicates dropped)."""
    files, problems = expand_files(patterns, flag)
    raise_if_problems(problems, "cannot find the data files")
    return files


def expand_files(patterns: list[str], flag: str) -> tuple[list[str], list[str]]:
    """(files, problems): globs expanded (order kept, duplicates dropped), and each path that names no file, for ``flag``."""
    files: list[str] = []
    problems = []
    for pattern in patterns:
        path = os.path.expanduser(pattern)
        if glob.has_magic(path):
            matches = [m for m in sorted(glob.glob(path, recursive=True)) if os.path.isfile(m)]
            if not matches:
                problems.append(f"{flag} {pattern}: the glob matches no file")
            files.extend(matches)
        elif os.path.isdir(path):
            problems.append(
                f"{flag} {pattern}: is a folder; pass a glob such as {os.path.join(pattern, '*.jsonl.zst')}, "
                "or pass the folder as --dataset_name"
            )
        elif not os.path.isfile(path):
            problems.append(f"{flag} {pattern}: no such file")
        else:
            files.append(path)
    return list(dict.fromkeys(files)), problems


def _extension(path: str) -> str | None:
    lower = path.lower()
    for ext in SUPPORTED_EXTENSIONS:  # longest first: .jsonl.zst before .jsonl
        if lower.endswith(ext):
            return ext
    return None


def _split_format(files: list[str], what: str) -> str:
    """The one reader for ``files`` (all JSON forms mix freely; other types do not mix)."""
    by_format: dict[str, list[str]] = {}
    problems = []
    for path in files:
        ext = _extension(path)
        if ext is None:
            problems.append(
                f"{path}: unsupported file type; supported: {', '.join(SUPPORTED_EXTENSIONS)} "
                "(convert the file, or save a dataset with save_to_disk and pass --load_from_disk)"
            )
        else:
            by_format.setdefault(FORMATS[ext], []).append(path)
    if len(by_format) > 1:
        kinds = "; ".join(f"{fmt}: {', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}" for fmt, paths in by_format.items())
        problems.append(f"{what} mixes file types ({kinds}); give each split files of one type")
    raise_if_problems(problems, f"cannot read {what}")
    return next(iter(by_format))


# --------------------------------------------------------------------------- sources


def _load_split_files(
    split_files: dict[str, list[str]], opts: LoadOptions, report: LoadReport, origins: dict[str, str]
) -> datasets.DatasetDict:
    raw = {}
    for split, files in split_files.items():
        fmt = _split_format(files, f"the {split} split")
        origins[split] = _describe(files)
        report.files.extend(files)
        if fmt == "json":
            raw[split] = _load_json(files, split, opts, report)
        else:
            raw[split] = _load_with_builder(fmt, files, split, opts)
    return datasets.DatasetDict(raw)


def _load_weighted(sources: list[mix.Source], opts: LoadOptions, report: LoadReport, origins: dict[str, str]) -> datasets.DatasetDict:
    """Each weighted source read on its own, then one train split whose rows carry their source's index."""
    parts, files_per_source = [], []
    for i, source in enumerate(sources):
        files = _resolve_files([source.pattern], "--train_file")
        files_per_source.append(len(files))
        ds = _load_split_files({"train": files}, opts, report, origins)["train"]
        parts.append(ds.add_column(mix.SOURCE_COLUMN, [i] * len(ds)))
    origins["train"] = _describe(report.files)
    kinds = "; ".join(f"{s.pattern}: {', '.join(c for c in p.column_names if c != mix.SOURCE_COLUMN)}" for s, p in zip(sources, parts))
    different = f"the weighted --train_file sources have different columns ({kinds}); give every source the same kind of rows"
    if len({tuple(sorted(p.column_names)) for p in parts}) > 1:
        raise DiffModelError(different)
    try:
        train = datasets.concatenate_datasets(parts)
    except ValueError as err:
        raise DiffModelError(different) from err
    report.sources = [{"files": n} for n in files_per_source]
    return datasets.DatasetDict({"train": train})


def _mix_train(raw: datasets.DatasetDict, sources: list[mix.Source], opts: LoadOptions, report: LoadReport) -> datasets.DatasetDict:
    """The train split mixed by weight (the rule of :mod:`diffmodel.data.mix`); the source column removed from every split."""
    train = raw["train"]
    source_of_row = train.with_format("numpy")[mix.SOURCE_COLUMN]
    available = np.bincount(source_of_row, minlength=len(sources)).tolist()
    empty = [s.spec for s, n in zip(sources, available) if n == 0]
    if empty:
        raise DiffModelError(
            f"--train_file {', '.join(empty)}: no rows left in the train split after the validation cut; "
            "give the source more rows, pass --validation_file, or lower --validation_split_percentage"
        )
    indices, taken = mix.mix_indices(source_of_row, mix.shares(sources), opts.seed, opts.mix_size)
    report.sources = mix.source_report(sources, [s["files"] for s in report.sources], available, taken)
    for entry in report.sources:
        logger.info(
            "mix: %s weight %g (share %.1f%%): %d of its %d train rows taken (%.1f%% of %d)",
            entry["train_file"], entry["weight"], 100 * entry["share"], entry["rows_mixed"], entry["rows"], 100 * entry["effective_share"], len(indices),
        )
        if entry["rows_mixed"] > entry["rows"]:
            logger.warning("mix: --mix_size %d repeats rows of %s (%d taken of %d)", opts.mix_size, entry["train_file"], entry["rows_mixed"], entry["rows"])
    out = {"train": train.select(indices)}
    out.update({k: v for k, v in raw.items() if k != "train"})
    return datasets.DatasetDict({k: v.remove_columns([c for c in v.column_names if c == mix.SOURCE_COLUMN]) for k, v in out.items()})


def _describe(files: list[str]) -> str:
    return ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def _load_with_builder(fmt: str, files: list[str], split: str, opts: LoadOptions) -> datasets.Dataset:
    kwargs = {"keep_linebreaks": opts.keep_linebreaks} if fmt == "text" else {}
    try:
        return datasets.load_dataset(fmt, data_files={split: files}, split=split, cache_dir=opts.cache_dir, **kwargs)
    except Exception as err:  # noqa: BLE001 - any reader failure is reported with the files that caused it
        raise DiffModelError(f"cannot read {fmt} file(s) {_describe(files)}: {_root_message(err)}") from err


def _load_json(files: list[str], split: str, opts: LoadOptions, report: LoadReport) -> datasets.Dataset:
    """JSON record files -> Arrow in the cache, one pass, with bad records counted."""
    fingerprint = _fingerprint(files, split, opts)
    ds, stats = _generate(files, split, opts, fingerprint)
    if stats is None:  # cached without its stats (an interrupted run): build once more under another key
        ds, stats = _generate(files, split, opts, fingerprint + "-again")
    if stats is None:
        stats = records.ReadStats(rows=len(ds))
    if stats.bad_records:
        logger.warning(  # once per split, for every command that loads data (train, inspect, eval)
            "%s split: skipped %d bad record(s), e.g. %s", split, stats.bad_records, "; ".join(stats.bad_record_examples[:3])
        )
    report.bad_records += stats.bad_records
    report.bad_records_by_split[split] = report.bad_records_by_split.get(split, 0) + stats.bad_records
    room = records.MAX_EXAMPLES - len(report.bad_record_examples)
    report.bad_record_examples.extend(stats.bad_record_examples[: max(room, 0)])
    return ds


def _generate(
    files: list[str], split: str, opts: LoadOptions, fingerprint: str
) -> tuple[datasets.Dataset, records.ReadStats | None]:
    """Build (or reuse from the cache) one split; stats are None if cached without them."""
    stats = records.ReadStats()
    reader = records.RecordReader(opts.skip_bad_records, stats, opts.text_column)
    ran = []

    def rows(paths: list[str]):
        ran.append(True)
        for path in paths:
            yield from reader.read(path)

    try:
        ds = datasets.Dataset.from_generator(
            rows,
            gen_kwargs={"paths": files},  # a list: one generator call per file, in order
            cache_dir=opts.cache_dir,
            fingerprint=fingerprint,
            split=datasets.NamedSplit(split),
        )
    except DatasetGenerationError as err:
        cause = _find_cause(err, DiffModelError)
        if cause is not None:
            raise cause from None
        if ran and stats.rows == 0:
            raise _empty_error(files, split, stats) from None
        raise DiffModelError(f"cannot build the {split} split from {_describe(files)}: {_root_message(err)}") from err

    stats_path = _stats_path(ds)
    if ran:
        if stats_path is not None:
            stats_path.write_text(json.dumps(stats.__dict__))
        return ds, stats
    if stats_path is not None and stats_path.is_file():
        return ds, records.ReadStats(**json.loads(stats_path.read_text()))
    return ds, None


def _empty_error(files: list[str], split: str, stats: records.ReadStats) -> DiffModelError:
    skipped = f"; all {stats.bad_records} record(s) were bad and skipped, e.g. {stats.bad_record_examples[0]}" if stats.bad_records else ""
    return DiffModelError(f"the {split} split is empty: no records in {_describe(files)}{skipped}")


def _stats_path(ds: datasets.Dataset) -> Path | None:
    if not ds.cache_files:
        return None
    return Path(ds.cache_files[0]["filename"]).parent / _STATS_FILE


def _fingerprint(files: list[str], split: str, opts: LoadOptions) -> str:
    """Cache key of a JSON split: file identities, the options that change rows, and the reader's code."""
    identity = []
    for path in files:
        st = os.stat(path)
        identity.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
    code = Path(records.__file__).read_bytes() + Path(__file__).read_bytes()
    key = json.dumps(
        {"files": identity, "split": split, "skip_bad_records": opts.skip_bad_records, "text_column": opts.text_column, "code": hashlib.sha256(code).hexdigest()}
    )
    return "diffmodel-json-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _reading_folder(path: str, cache_dir: str | None) -> str:
    """A folder under the cache holding links to every file of the ``save_to_disk`` folder ``path`` (made once per
    state of its files), which ``datasets`` reads instead of ``path``: the cache files that its ``map`` and
    ``filter`` write beside a dataset's own files then go there, not into the user's folder. ``path`` itself
    where links cannot be made."""
    root = os.path.abspath(path)
    files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names)
    stats = {f: os.stat(os.path.join(root, f)) for f in files if not os.path.basename(f).startswith("cache-")}
    identity = [[f, st.st_size, st.st_mtime_ns] for f, st in stats.items()]  # cache-*: what datasets wrote there before
    key = hashlib.sha256(json.dumps([root, identity]).encode()).hexdigest()[:32]
    target = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "diffmodel_saved" / key
    if target.is_dir():
        return str(target)
    building = target.with_name(f"{key}.tmp-{os.getpid()}")
    try:
        for f, _, _ in identity:
            (building / f).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.join(root, f), building / f)
        os.replace(building, target)
    except OSError as err:
        shutil.rmtree(building, ignore_errors=True)
        if target.is_dir():  # another process made it first
            return str(target)
        logger.warning("--dataset_name %s: could not link its files under %s (%s); datasets writes its cache files "
                       "into that folder", path, target.parent, err)
        return path
    return str(target)


def _load_saved(path: str, report: LoadReport, origins: dict[str, str], cache_dir: str | None = None) -> datasets.DatasetDict:
    if not os.path.exists(path):
        raise DiffModelError(f"--dataset_name {path}: no such folder (--load_from_disk reads a save_to_disk folder)")
    try:
        loaded = datasets.load_from_disk(_reading_folder(path, cache_dir))
    except FileNotFoundError as err:
        raise DiffModelError(
            f"--dataset_name {path}: not a save_to_disk folder ({_root_message(err)}); "
            "drop --load_from_disk to read a folder of data files"
        ) from err
    except Exception as err:  # noqa: BLE001 - e.g. datasets cannot reopen a saved dataset of 0 rows
        raise DiffModelError(
            f"--dataset_name {path}: cannot load this save_to_disk folder ({_root_message(err)}); "
            "check that it holds rows and was written by a compatible datasets version"
        ) from err
    report.files.append(path)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    for split in loaded:
        origins[split] = f"{path}, split {split}"
    return loaded


def _load_named(opts: LoadOptions, report: LoadReport, origins: dict[str, str]) -> datasets.DatasetDict:
    name = opts.dataset_name
    if os.path.isfile(name):
        raise DiffModelError(f"--dataset_name {name}: is a file; pass it as --train_file {name}")
    if os.path.isdir(name):
        if _is_saved_dataset(name):
            raise DiffModelError(f"--dataset_name {name}: is a save_to_disk folder; add --load_from_disk")
        if opts.dataset_config_name is None and not _declares_configs(name):
            return _load_split_files(_folder_splits(name), opts, report, origins)
    try:
        loaded = datasets.load_dataset(name, opts.dataset_config_name, cache_dir=opts.cache_dir)
    except Exception as err:  # noqa: BLE001 - whatever datasets raises, say what was asked and what to try
        config = f" (config {opts.dataset_config_name})" if opts.dataset_config_name else ""
        raise DiffModelError(
            f"--dataset_name {name}{config}: cannot load it: {_root_message(err)}. There is no network access: "
            "pass a local dataset folder, data files with --train_file, or a save_to_disk folder with --load_from_disk "
            "(HF_DATASETS_OFFLINE=1 skips the network retries)"
        ) from err
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    report.files.append(name)
    for split in loaded:
        origins[split] = f"{name}, split {split}"
    return loaded


def _is_saved_dataset(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, f)) for f in ("dataset_dict.json", "state.json"))


def _declares_configs(folder: str) -> bool:
    """True if the folder's README front matter declares configs (then ``datasets`` must read it)."""
    readme = os.path.join(folder, "README.md")
    if not os.path.isfile(readme):
        return False
    text = Path(readme).read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return False
    front = text.split("---", 2)[1] if text.count("---") >= 2 else ""
    return any(line.startswith("configs:") for line in front.splitlines())


def _folder_splits(folder: str) -> dict[str, list[str]]:
    """Split name -> data files of a dataset folder, named as ``datasets`` names them."""
    try:
        patterns = get_data_patterns(folder)
        found = DataFilesDict.from_patterns(patterns, base_path=folder)
    except Exception as err:  # noqa: BLE001 - EmptyDatasetError and friends
        raise DiffModelError(f"--dataset_name {folder}: no data files found ({_root_message(err)})") from err
    splits: dict[str, list[str]] = {}
    for split, files in found.items():
        usable = [f for f in files if _extension(f) is not None]
        ignored = [f for f in files if _extension(f) is None]
        if ignored:
            logger.warning("%s: ignoring %d file(s) of unsupported type, e.g. %s", folder, len(ignored), ignored[0])
        if not usable:
            raise DiffModelError(
                f"--dataset_name {folder}: the {split} split has no file of a supported type "
                f"({', '.join(SUPPORTED_EXTENSIONS)}); found e.g. {files[0]}"
            )
        splits[str(split)] = usable
    return splits


# --------------------------------------------------------------------------- text and validation


def _resolve_text(
    raw: datasets.DatasetDict, opts: LoadOptions, report: LoadReport, origins: dict[str, str]
) -> datasets.DatasetDict:
    """Make every split carry the same text column (or ``input_ids``), rendering structured rows."""
    chosen: dict[str, str | None] = {}
    formats: dict[str, str] = {}
    out = {}
    for split, ds in raw.items():
        where = origins.get(split, split)
        columns = ds.column_names
        if "input_ids" in columns:
            if opts.text_column is not None:
                raise DiffModelError(
                    f"{where}: rows are already tokenized (column input_ids), so --text_column "
                    f"{opts.text_column} would be ignored; drop --text_column"
                )
            chosen[split] = None
        elif opts.text_column is not None:
            if opts.text_column not in columns:
                raise DiffModelError(
                    f"{where}: --text_column {opts.text_column} is not a column (columns: {', '.join(columns)}); "
                    "name one of them, or drop --text_column to use 'text' or render name/before/message/diff"
                )
            _check_text(ds, opts.text_column, where)
            chosen[split] = opts.text_column
        elif "text" in columns:
            _check_text(ds, "text", where)
            chosen[split] = "text"
        elif all(f in columns for f in records.PROMPT_COMPLETION):
            for column in records.PROMPT_COMPLETION:
                _check_text(ds, column, where)
            ds = ds.map(
                _prompt_completion_batch,
                batched=True,
                input_columns=list(records.PROMPT_COMPLETION),
                desc=f"Joining {split} prompts and completions",
            )
            formats[split] = records.row_format(records.PROMPT_COMPLETION)
            chosen[split] = "text"
        elif all(f in columns for f in sample.FIELDS):
            ds = ds.map(
                _render_batch,
                batched=True,
                with_indices=True,
                input_columns=list(sample.FIELDS),
                fn_kwargs={"render_version": _RENDER_VERSION, "edit_format": opts.edit_format, "where": where,
                           "skip_bad": opts.skip_bad_records},
                desc=f"Rendering {split} samples",
            )
            ds = _drop_unrendered(ds, split, report)
            report.rendered_from_fields = True
            formats[split] = records.row_format(sample.FIELDS)
            chosen[split] = "text"
        else:
            raise no_text_error(where, list(columns))
        out[split] = ds
    for split, column in chosen.items():
        formats.setdefault(split, "tokenized" if column is None else column)
    completion_rows = {f == "prompt/completion" for f in formats.values()}
    if len(set(chosen.values())) > 1 or len(completion_rows) > 1:
        kinds = ", ".join(f"{s}: {f if f != 'tokenized' else 'input_ids (tokenized)'}" for s, f in formats.items())
        raise DiffModelError(f"the splits disagree on their text ({kinds}); give every split the same kind of rows")
    report.text_column = next(iter(chosen.values()))
    report.row_format = next(iter(formats.values()))
    if report.row_format == "prompt/completion":
        logger.info("rows are prompt/completion (TRL's format): text = prompt + completion, loss on the completion only")
    return datasets.DatasetDict(out)


def _check_text(ds: datasets.Dataset, column: str, where: str) -> None:
    feature = ds.features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise DiffModelError(
            f"{where}: column {column} holds {feature}, not text; pass --text_column with a text column"
        )


_RENDER_VERSION = hashlib.sha256(
    b"".join(Path(f).read_bytes() for f in [sample.__file__, *sorted(Path(formats.__file__).parent.glob("*.py"))])
).hexdigest()[:16]


#: Column of a rendered split: why the row could not be rendered (None where it was), until the row is dropped.
_UNRENDERED = "_diffmodel_unrendered"


def _render_batch(names: list, befores: list, messages: list, diffs: list, indices: list, render_version: str,
                  edit_format: str = "carper", where: str = "", skip_bad: bool = False) -> dict:
    """``text`` for a batch of structured rows in ``edit_format``; ``render_version`` only keys the cache to the rendering code.

    In a format that writes the new file (not ``carper``) a row whose diff does not apply to its before cannot be
    rendered: an error naming the row, or with ``skip_bad`` (``--skip_bad_records``) a bad record, counted and dropped
    (:func:`_drop_unrendered`)."""
    del render_version
    texts, why = [], []
    for n, b, m, d, i in zip(names, befores, messages, diffs, indices):
        try:
            texts.append(formats.render_row({"name": n, "before": b, "message": m, "diff": d}, edit_format))
            why.append(None)
        except DiffModelError as err:
            if not skip_bad:
                raise DiffModelError(f"{where}: record {i + 1}: {err}. Fix the record, or pass --skip_bad_records to "
                                     "skip and count bad records.") from None
            texts.append("")
            why.append(f"{where}: record {i + 1}: {err}")
    return {"text": texts, _UNRENDERED: why}


def _drop_unrendered(ds: datasets.Dataset, split: str, report: LoadReport) -> datasets.Dataset:
    """Drop the rows :func:`_render_batch` could not render, counted as the split's bad records (none in ``carper``:
    the column is all null, counted from Arrow's null count without reading it)."""
    if ds.data.column(_UNRENDERED).null_count < len(ds):
        why = [w for w in ds[_UNRENDERED] if w is not None]
        logger.warning("%s split: skipped %d record(s) whose diff does not apply, e.g. %s", split, len(why), why[0])
        report.bad_records += len(why)
        report.bad_records_by_split[split] = report.bad_records_by_split.get(split, 0) + len(why)
        room = records.MAX_EXAMPLES - len(report.bad_record_examples)
        report.bad_record_examples.extend(why[: max(room, 0)])
        ds = ds.filter(lambda w: w is None, input_columns=[_UNRENDERED], desc=f"Dropping unrendered {split} records")
    return ds.remove_columns([_UNRENDERED])


def _prompt_completion_batch(prompts: list, completions: list) -> dict:
    """``text`` and ``completion_start`` for a batch of prompt/completion rows."""
    joined = [records.prompt_completion_text(p, c) for p, c in zip(prompts, completions)]
    return {"text": [t for t, _ in joined], records.COMPLETION_START: [start for _, start in joined]}


def _ensure_validation(raw: datasets.DatasetDict, opts: LoadOptions, report: LoadReport) -> datasets.DatasetDict:
    """Cut ``validation`` off ``train`` when none was given (a seeded choice; both keep source order)."""
    pct = opts.validation_split_percentage
    if "validation" in raw or pct == 0:
        return raw
    train = raw["train"]
    n = len(train)
    n_val = math.ceil(n * pct / 100)
    if n_val >= n:
        raise DiffModelError(
            f"the train split has {n} row(s), too few to cut a {pct}% validation split from; "
            "pass --validation_file, more data, or --validation_split_percentage 0"
        )
    order = np.random.default_rng(opts.seed).permutation(n)
    out = {
        "train": train.select(np.sort(order[n_val:])),
        "validation": train.select(np.sort(order[:n_val])),
    }
    out.update({k: v for k, v in raw.items() if k != "train"})
    report.validation_from_split = True
    logger.info("cut %d of %d train rows off as validation (seed %d)", n_val, n, opts.seed)
    return datasets.DatasetDict(out)


# --------------------------------------------------------------------------- error helpers


def _find_cause(err: BaseException, kind: type) -> BaseException | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _root_message(err: BaseException) -> str:
    """The innermost cause's message (``datasets`` wraps reader errors in generic ones)."""
    seen = set()
    while (err.__cause__ or err.__context__) is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def no_text_error(where: str, columns: list[str], kind: str = "column") -> DiffModelError:
    """The error for rows with no text, no structured fields and no input_ids (shared with --streaming)."""
    missing = [f for f in sample.FIELDS if f not in columns]
    return DiffModelError(
        f"{where}: no text to train on. {kind.capitalize()}s found: {', '.join(columns) or 'none'}. Give the rows a "
        f"'text' {kind}, pass --text_column {kind.upper()} to use another, give them the fields "
        f"{', '.join(sample.FIELDS)} to have them rendered (missing: {', '.join(missing)}), "
        "or give tokenized rows (input_ids)"
    )
