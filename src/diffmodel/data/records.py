"""Streaming reader for JSON record files: ``.jsonl``, ``.json`` and their ``.zst`` forms.

A record file holds one JSON object per line (JSON Lines). A ``.json`` file may
instead hold one JSON array of objects; that form is parsed as a whole, so it
is meant for small files only.

Invariants:
- Files are read as bytes, line by line; a ``.zst`` file is decompressed as a
  stream (across concatenated frames), never into one string. Memory is
  bounded by the longest line (and one compressed chunk).
- A ``.zst`` file cut inside a frame is an error naming the file
  (:class:`ZstdFrames`), also with ``skip_bad_records``: truncation is never
  a skipped record.
- Lines split on ``\\n`` only; blank lines are ignored.
- Every problem is reported as ``path:LINE: reason`` (``path: item N: reason``
  inside a JSON array). Without ``skip_bad_records`` the first bad record
  raises :class:`DiffModelError`; with it the record is skipped and counted in
  :class:`ReadStats`.
- The first record of a split fixes its columns: a later record that lacks a
  column gets ``None`` there; a record with a column the first lacked is a bad
  record (Arrow needs one schema per split). With ``same_columns=False``
  every JSON object is yielded as it is (no columns, no text checks).
- The fields the text comes from (:func:`text_fields`: ``--text_column``,
  else ``text``, else ``prompt/completion`` (TRL's format, text = prompt +
  completion: :func:`prompt_completion_text`), else
  ``name/before/message/diff``) are checked per record
  (:func:`text_problem`): a text that is missing, null, a number or anything
  but a JSON string is a bad record, named by its line. Of the structured
  fields only ``before``, ``message`` and ``diff`` may be null (read as
  empty: a null ``before`` is a new file).
"""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Iterator

import zstandard

from diffmodel.errors import DiffModelError
from diffmodel.sample import FIELDS

#: How many bad-record messages a report keeps (the count is always exact).
MAX_EXAMPLES = 10

_BOM = b"\xef\xbb\xbf"


@dataclass
class ReadStats:
    """What a read saw: rows kept, bad records skipped and a few of their messages."""

    rows: int = 0
    bad_records: int = 0
    bad_record_examples: list[str] = field(default_factory=list)

    def add_bad(self, message: str) -> None:
        self.bad_records += 1
        if len(self.bad_record_examples) < MAX_EXAMPLES:
            self.bad_record_examples.append(message)


@contextmanager
def open_bytes(path: str) -> Iterator[IO[bytes]]:
    """Open ``path`` for buffered binary reading, decompressing ``.zst`` on the fly (see :class:`ZstdFrames`)."""
    with open(path, "rb") as fh:
        if path.lower().endswith(".zst"):
            with io.BufferedReader(ZstdFrames(fh, path), buffer_size=1 << 20) as buffered:
                yield buffered
        else:
            yield fh


class ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a file of concatenated zstd frames, read as a stream.

    A file that ends inside a frame was cut short (an interrupted download or
    copy): reading its end raises :class:`DiffModelError` naming the file,
    never returns the partial data as if it were the end. (A file cut exactly
    between two frames cannot be told from a whole one.) Data that is not
    zstd raises too.
    """

    _CHUNK = 1 << 17  # compressed bytes per read

    def __init__(self, fh: IO[bytes], path: str):
        super().__init__()
        self._fh, self._path = fh, path
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = None  # decompressor of the frame being read, None between frames
        self._out = b""
        self._pos = 0
        self._read_in = 0  # compressed bytes read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._pos >= len(self._out):
            if not self._decompress_more():
                return 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos:self._pos + n]
        self._pos += n
        return n

    def _decompress_more(self) -> bool:
        """Decompress the next compressed chunk into ``_out``; False at the end of a whole file."""
        data = self._fh.read(self._CHUNK)
        if not data:
            if self._frame is not None:
                raise DiffModelError(
                    f"{self._path}: the file is truncated: its zstd data stops in the middle of a frame after "
                    f"{self._read_in:,} bytes, so the file was cut short (e.g. an interrupted download or copy). "
                    "Download or create it again"
                )
            return False
        self._read_in += len(data)
        out = []
        try:
            while data:
                if self._frame is None:
                    self._frame = self._dctx.decompressobj()
                out.append(self._frame.decompress(data))
                if not self._frame.eof:
                    break
                data = self._frame.unused_data
                self._frame = None
        except zstandard.ZstdError as err:
            raise DiffModelError(
                f"{self._path}: not valid zstd data near byte {self._read_in:,} ({err}); the file is damaged or not "
                "zstd-compressed. Download or create it again, or rename it if it is not compressed"
            ) from None
        self._out, self._pos = b"".join(out), 0
        return True


class RecordReader:
    """Yields the JSON objects of a sequence of files as rows with one shared set of columns.

    ``columns`` and ``first_origin`` are fixed by the first good record seen, so
    one reader must be used for all the files of one split. With
    ``same_columns=False`` each object is yielded with its own keys, unchecked.
    """

    def __init__(self, skip_bad_records: bool, stats: ReadStats | None = None, text_column: str | None = None,
                 fix: str = "Fix the record, or pass --skip_bad_records to skip and count bad records",
                 same_columns: bool = True):
        self.skip_bad_records = skip_bad_records
        self.same_columns = same_columns
        self.fix = fix  # what the error for a bad record tells the user to do
        self.stats = stats if stats is not None else ReadStats()
        self.text_column = text_column
        self.columns: list[str] | None = None
        self.first_origin: str | None = None
        self.fields: tuple[str, ...] = ()

    def _bad(self, message: str) -> None:
        if not self.skip_bad_records:
            raise DiffModelError(f"{message}. {self.fix[:1].upper()}{self.fix[1:]}.")
        self.stats.add_bad(message)

    def _row(self, obj: object, origin: str) -> dict | None:
        """``obj`` as a row with the split's columns, or None (after reporting) if it is bad."""
        if not isinstance(obj, dict):
            self._bad(f"{origin}: not a JSON object (got {_json_type(obj)})")
            return None
        if not self.same_columns:
            return obj
        if self.columns is None:
            problem = text_problem(obj, text_fields(obj, self.text_column))
            if problem is not None:  # the first good record fixes the columns, so check it before
                self._bad(f"{origin}: {problem}")
                return None
            self.columns = list(obj)
            self.first_origin = origin
            self.fields = text_fields(self.columns, self.text_column)
            return obj
        extra = [k for k in obj if k not in self.columns]
        if extra:
            self._bad(
                f"{origin}: key(s) {', '.join(map(repr, extra))} not among the columns of the first record "
                f"({self.first_origin}: {', '.join(self.columns) or 'none'})"
            )
            return None
        problem = text_problem(obj, self.fields)
        if problem is not None:
            self._bad(f"{origin}: {problem}")
            return None
        return {k: obj.get(k) for k in self.columns}

    def read(self, path: str) -> Iterator[dict]:
        """Yield the rows of one file."""
        with open_bytes(path) as fh:
            if path.lower().removesuffix(".zst").endswith(".json") and _first_byte(fh) == b"[":
                yield from self._read_array(fh, path)
                return
            for lineno, raw in enumerate(fh, 1):
                if lineno == 1:
                    raw = raw.removeprefix(_BOM)
                if not raw.strip():
                    continue
                origin = f"{path}:{lineno}"
                try:
                    obj = json.loads(raw)
                except UnicodeDecodeError as err:
                    self._bad(f"{origin}: not valid UTF-8 ({err.reason} at byte {err.start})")
                    continue
                except json.JSONDecodeError as err:
                    if lineno == 1 and _one_document(path):
                        raise DiffModelError(
                            f"{path} holds one JSON document over several lines, not records: a .json or .jsonl file is read as "
                            "one record per line (JSON lines), or, for .json, as a JSON array of records ([{...}, {...}])"
                        ) from None
                    self._bad(f"{origin}: not valid JSON ({err.msg.removesuffix(' at')} at column {err.colno})")
                    continue
                row = self._row(obj, origin)
                if row is not None:
                    self.stats.rows += 1
                    yield row

    def _read_array(self, fh: IO[bytes], path: str) -> Iterator[dict]:
        try:
            items = json.load(fh)
        except UnicodeDecodeError as err:
            raise DiffModelError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
        except json.JSONDecodeError as err:
            # A broken array cannot be skipped record by record.
            raise DiffModelError(
                f"{path}:{err.lineno}: not valid JSON ({err.msg.removesuffix(' at')} at column {err.colno}); "
                "the file is one JSON array, so it must parse as a whole (JSON Lines files can skip bad lines)"
            ) from None
        for index, obj in enumerate(items, 1):
            row = self._row(obj, f"{path}: item {index}")
            if row is not None:
                self.stats.rows += 1
                yield row


#: The fields of a prompt/completion row (TRL's format): loss on the completion only.
PROMPT_COMPLETION = ("prompt", "completion")
#: Column holding, per row, the character where the completion starts in the text (None for a diff sample).
COMPLETION_START = "completion_start"


def prompt_completion_text(prompt: str, completion: str) -> tuple[str, int]:
    """The text of a prompt/completion row (prompt + completion) and the character where the loss starts."""
    return prompt + completion, len(prompt)


#: Structured fields that may be null (read as empty; a null ``before`` is a new file).
NULLABLE_FIELDS = ("before", "message", "diff")


def text_fields(keys, text_column: str | None) -> tuple[str, ...]:
    """The fields the text of a row with these keys comes from, by the load stage's rules.

    ``()`` for tokenized rows (``input_ids``) and rows without text (the load
    stage names those); else ``text_column`` if given, ``text`` if present,
    ``prompt/completion`` if both are present, else the structured fields
    ``name/before/message/diff``.
    """
    keys = list(keys)
    if "input_ids" in keys:
        return ()
    if text_column is not None:
        return (text_column,) if text_column in keys else ()
    if "text" in keys:
        return ("text",)
    if all(f in keys for f in PROMPT_COMPLETION):
        return PROMPT_COMPLETION
    if all(f in keys for f in FIELDS):
        return FIELDS
    return ()


def row_format(fields: tuple[str, ...]) -> str:
    """The kind of rows whose text comes from ``fields`` (:func:`text_fields`), as reports name it."""
    if fields == PROMPT_COMPLETION:
        return "prompt/completion"
    if fields == FIELDS:
        return "/".join(FIELDS)
    return fields[0] if fields else "tokenized"


def text_problem(row: dict, fields: tuple[str, ...]) -> str | None:
    """Why ``row`` has no usable text in ``fields`` (the reason of a bad record), or None if it has."""
    for name in fields:
        if name not in row:
            return f"no {name!r} (the first record has it); give every record its text"
        value = row[name]
        if isinstance(value, str) or (value is None and name in NULLABLE_FIELDS and fields == FIELDS):
            continue
        allowed = "a JSON string, or null for an empty one" if name in NULLABLE_FIELDS and fields == FIELDS else "a JSON string"
        return f"{name!r} is {_json_type(value)}, not text ({allowed})"
    return None


def _one_document(path: str) -> bool:
    """Whether the file is a single JSON object written over several lines (a pretty-printed document, such as a
    ``manifest.json``), which is not a file of records. Read whole only when its first line did not parse."""
    limit = 16 << 20  # a larger file is not read whole for this
    try:
        with open_bytes(path) as fh:
            data = fh.read(limit + 1)
        return len(data) <= limit and isinstance(json.loads(data.removeprefix(_BOM)), dict)
    except (ValueError, OSError, DiffModelError, zstandard.ZstdError):
        return False


def _first_byte(fh: IO[bytes]) -> bytes:
    """The first non-whitespace byte in the read buffer of ``fh``, without consuming anything."""
    chunk = fh.peek(4096)  # type: ignore[attr-defined]
    return chunk.removeprefix(_BOM).lstrip(b" \t\r\n")[:1]


def _json_type(obj: object) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, (int, float)):
        return "a number"
    if obj is None:
        return "null"
    return type(obj).__name__
