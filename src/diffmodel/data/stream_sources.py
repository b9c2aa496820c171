"""Read data files as one stream of records, shared out between readers, from any position.

The streaming counterpart of :mod:`diffmodel.data.load` for ``--streaming``:
nothing is cached, nothing is held in memory but the current line (or
Parquet record batch).

Sharing: the records of one pass over the files (an *epoch*) are numbered
0, 1, 2, ... in file order; record ``g`` belongs to reader ``g % stride``,
where a reader is one dataloader worker of one rank (``stride`` = ranks x
workers). Every reader reads every file, but parses only its own records
(a JSON line of another reader is counted, never decoded), so the readers
share the data evenly whatever the number and size of the files.

Positions: a :class:`Position` says where a reader stands: the file (index
into the epoch's file order), the offset inside it (bytes of the
decompressed stream for JSON Lines, rows for Parquet), the line (for
messages) and the number of records of the epoch already passed. Reading
can start again from any position a reader has yielded; a plain file is
seeked, a ``.zst`` file is decompressed up to the offset.

Invariants:
- Supported: ``.jsonl``, ``.json`` (JSON Lines), their ``.zst`` forms and
  ``.parquet``. A ``.json`` file that holds one JSON array cannot be
  streamed and is refused, naming the file.
- Blank lines are not records. A bad record (not JSON, not an object, its
  text not a string: :func:`diffmodel.data.records.text_problem`) is a
  record: it keeps its number, so the sharing does not depend on validity.
  Without ``skip_bad_records`` the reader that owns it raises
  :class:`DiffModelError` (``path:LINE: reason``); with it the record is
  skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import astuple, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from diffmodel.data import records
from diffmodel.data.load import _extension, _resolve_files
from diffmodel.errors import DiffModelError, raise_if_problems

#: File suffixes ``--streaming`` reads.
STREAM_EXTENSIONS = (".jsonl.zst", ".json.zst", ".jsonl", ".json", ".parquet")

_BOM = b"\xef\xbb\xbf"
_SKIP_CHUNK = 1 << 20
_PARQUET_BATCH = 1024


@dataclass(frozen=True)
class Position:
    """Where a reader stands in one epoch (see the module docstring)."""

    file: int = 0
    offset: int = 0
    line: int = 0
    record: int = 0

    def to_list(self) -> list[int]:
        return list(astuple(self))

    @classmethod
    def from_list(cls, values) -> "Position":
        return cls(*(int(v) for v in values))


def stream_files(patterns: list[str], flag: str = "--train_file") -> list[str]:
    """Expand ``patterns`` (files and globs) and check that ``--streaming`` can read every file."""
    files = _resolve_files(patterns, flag)
    problems = []
    for path in files:
        ext = _extension(path)
        if ext not in STREAM_EXTENSIONS:
            problems.append(
                f"{flag} {path}: --streaming reads {', '.join(STREAM_EXTENSIONS)} files; convert it, or drop --streaming to load it whole"
            )
    raise_if_problems(problems, "cannot stream the data files")
    if not files:
        raise DiffModelError(f"{flag}: no files to stream")
    return files


class BadRecords:
    """What to do with a bad record of this reader: raise (the default) or count it."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.count = 0

    def __call__(self, message: str) -> None:
        if not self.skip:
            raise DiffModelError(f"{message}. Fix the record, or pass --skip_bad_records to skip and count bad records.")
        self.count += 1


def read_records(
    files: list[str], start: Position, stride: int, phase: int, bad: BadRecords, text_column: str | None = None
) -> Iterator[tuple[dict, str, Position]]:
    """Yield ``(row, origin, after)`` for each good record ``g >= start.record`` with ``g % stride == phase``.

    ``origin`` is ``path:LINE`` (``path: row N`` for Parquet); ``after`` is the
    position just past the record, from which reading can start again.
    ``text_column``: ``--text_column``, for the check of each JSON record's text.
    """
    if not 0 <= phase < stride:
        raise ValueError(f"reader {phase} is not one of {stride}")
    pos = start
    for index in range(start.file, len(files)):
        path = files[index]
        if index != pos.file:
            pos = Position(index, 0, 0, pos.record)
        if path.lower().endswith(".parquet"):
            reader = _parquet_records(path, pos, stride, phase)
        else:
            reader = _json_records(path, pos, stride, phase, bad, text_column)
        for item in reader:
            if isinstance(item, Position):  # end of the file: the record count goes on into the next one
                pos = item
            else:
                yield item


def _json_records(path: str, pos: Position, stride: int, phase: int, bad: BadRecords, text_column: str | None):
    offset, line, record = pos.offset, pos.line, pos.record
    with records.open_bytes(path) as fh:
        if offset == 0:
            head = fh.peek(4096).removeprefix(_BOM).lstrip(b" \t\r\n")[:1]  # type: ignore[attr-defined]
            if head == b"[":
                raise DiffModelError(
                    f"{path}: is one JSON array, which cannot be read as a stream; write it as JSON Lines "
                    "(one object per line, .jsonl), or drop --streaming to load it whole"
                )
        else:
            _skip_bytes(fh, path, offset)
        for raw in fh:
            offset += len(raw)
            line += 1
            if line == 1:
                raw = raw.removeprefix(_BOM)
            if not raw.strip():
                continue
            mine = record % stride == phase
            record += 1
            if not mine:
                continue
            origin = f"{path}:{line}"
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError as err:
                bad(f"{origin}: not valid UTF-8 ({err.reason} at byte {err.start})")
                continue
            except json.JSONDecodeError as err:
                bad(f"{origin}: not valid JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(obj, dict):
                bad(f"{origin}: not a JSON object (got {records._json_type(obj)})")
                continue
            problem = records.text_problem(obj, records.text_fields(obj, text_column))
            if problem is not None:
                bad(f"{origin}: {problem}")
                continue
            yield obj, origin, Position(pos.file, offset, line, record)
    yield Position(pos.file + 1, 0, 0, record)


def _skip_bytes(fh, path: str, offset: int) -> None:
    if hasattr(fh, "seekable") and fh.seekable() and not path.lower().endswith(".zst"):
        fh.seek(offset)
        return
    left = offset
    while left:
        got = len(fh.read(min(left, _SKIP_CHUNK)))
        if not got:
            raise DiffModelError(f"{path}: shorter than the saved stream position ({offset} bytes); was the file changed since the checkpoint?")
        left -= got


def _parquet_records(path: str, pos: Position, stride: int, phase: int):
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise DiffModelError(f"{path}: cannot read it as Parquet ({err})") from None
    meta = pf.metadata
    first_row = 0
    group = 0
    while group < meta.num_row_groups and first_row + meta.row_group(group).num_rows <= pos.offset:
        first_row += meta.row_group(group).num_rows
        group += 1
    row, record = first_row, pos.record
    if group < meta.num_row_groups:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, row_groups=list(range(group, meta.num_row_groups))):
            n = batch.num_rows
            lo = max(0, pos.offset - row)  # rows of this batch before the start position
            if lo >= n:
                row += n
                continue
            base = record - lo  # record number of the batch's first row
            first = lo + (phase - (base + lo)) % stride
            own = list(range(first, n, stride))
            if own:
                for j, obj in zip(own, batch.take(pa.array(own)).to_pylist()):
                    yield obj, f"{path}: row {row + j + 1}", Position(pos.file, row + j + 1, row + j + 1, base + j + 1)
            record = base + n
            row += n
    yield Position(pos.file + 1, 0, 0, record)
