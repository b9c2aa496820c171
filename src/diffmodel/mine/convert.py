"""CommitPack / CommitPackFT rows -> diff samples.

CommitPack-style rows carry a whole file before and after a commit::

    commit, old_file, new_file, old_contents, new_contents, subject, message, lang, license, repos

:func:`convert_row` turns one into the same row a mined commit gives
(:data:`diffmodel.mine.samples.ROW_FIELDS`), computing the diff with the same
:func:`~diffmodel.diff.make.make_diff` and the text in the same edit format
(:func:`diffmodel.mine.samples.finish_sample`), and applying the same filters (message,
language, sizes, tokens; duplicates are removed where the samples are written).

Invariants:
- A row becomes a sample or is counted under one reason, as in mining;
  a row without ``new_contents`` (absent or null: not read as an emptied
  file) or without a file name is counted as ``bad_row``.
- ``repository`` is the row's ``repos`` (CommitPack lists every repository
  holding the commit, comma-separated: the first is kept), so splitting by
  repository works on converted rows too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from diffmodel.errors import DiffModelError
from diffmodel.mine import filters as F
from diffmodel.mine.languages import language_of
from diffmodel.mine.samples import ChunkResult, SampleOptions, finish_sample

DROP_BAD_ROW = "bad_row"

#: Suffixes :func:`read_rows` can read.
ROW_FILE_SUFFIXES = (".jsonl", ".jsonl.zst", ".json", ".json.zst", ".parquet")


def _text(value: object) -> str | None:
    if value is None:
        return ""
    return value if isinstance(value, str) else None


def convert_row(row: dict, options: SampleOptions, result: ChunkResult, count_tokens=None) -> dict | None:
    """Turn one CommitPack-style row into a sample (recorded in ``result``), or count why not."""
    result.counts["changed_files"] += 1
    old_file, new_file = _text(row.get("old_file")), _text(row.get("new_file"))
    old_contents, new_contents = _text(row.get("old_contents")), _text(row.get("new_contents"))
    message = _text(row.get("message")) or _text(row.get("subject")) or ""
    fields = (old_file, new_file, old_contents, new_contents)
    if any(f is None for f in fields) or row.get("new_contents") is None or not (new_file or old_file):
        result.counts[DROP_BAD_ROW] += 1
        return None
    deleted = not new_file
    if deleted and not options.keep_deleted:
        result.counts[F.DROP_DELETED] += 1
        return None
    reason = F.message_drop_reason(message, "", options.filters)
    if reason:
        result.counts[reason] += 1
        return None
    name = new_file or old_file
    language = language_of(name) or str(row.get("lang") or "")
    if not F.language_ok(language, options.filters):
        result.counts[F.DROP_LANGUAGE] += 1
        return None
    repos = str(row.get("repos") or row.get("repository") or "")
    sample = {
        "repository": repos.split(",")[0].strip(),
        "commit": str(row.get("commit") or ""),
        "parent": "",
        "date": "",
        "name": name,
        "old_name": old_file if old_file and new_file and old_file != new_file else "",
        "language": language,
        "message": message.strip(),
        "before": old_contents,
        "after": "" if deleted else new_contents,
    }
    return finish_sample(sample, options, result, count_tokens)


def convert_rows(rows: Iterable[dict], options: SampleOptions, count_tokens=None) -> ChunkResult:
    """Convert a batch of rows; the samples keep the order of the rows."""
    result = ChunkResult()
    for row in rows:
        result.commits += 1
        result.counts["rows"] += 1
        convert_row(row, options, result, count_tokens)
    return result


def row_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a file of rows (a message naming ``--rows``), or None."""
    if Path(path).is_dir():
        return f"--rows {path}: is a folder; give one file of rows (one --rows per file)"
    if not Path(path).is_file():
        return f"--rows {path}: no such file"
    if not str(path).lower().endswith(ROW_FILE_SUFFIXES):
        return f"--rows {path}: unknown file type; use one of {', '.join(ROW_FILE_SUFFIXES)}"
    return None


def read_rows(path: str | Path) -> Iterator[dict]:
    """Stream the rows of a ``.jsonl``, ``.jsonl.zst``, ``.json`` or ``.parquet`` file.

    Each row keeps its own keys: rows of one file may differ in their optional
    columns (``message`` in one, ``subject`` in another).
    """
    path = str(path)
    problem = row_file_problem(path)
    if problem:
        raise DiffModelError(problem)
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    from diffmodel.data.records import RecordReader

    yield from RecordReader(skip_bad_records=False, fix="fix or remove that row", same_columns=False).read(path)
