"""Size-bounded ``jsonl.zst`` shards, written so that a shard is either complete or invisible.

A :class:`ShardWriter` writes JSON lines into ``<dir>/<prefix>-00000.jsonl.zst``,
``-00001``, ... and starts a new shard once the current one holds
``max_bytes`` of uncompressed JSON. Every shard is written as
``NAME.jsonl.zst.tmp`` and renamed to ``NAME.jsonl.zst`` only after its zstd
frame is closed and flushed to disk, so a glob for ``*.jsonl.zst`` never sees a
half-written shard, and an interrupted run leaves only ``.tmp`` files that the
next run deletes.

Invariants:
- Memory is bounded by the compressor's window, not by the shard size: lines
  are streamed into the compressor as they come.
- A shard is never empty: a shard file is opened on the first line written to it.
- Names are numbered from ``first_index``; a resumed run continues after the
  highest complete shard, so it never overwrites one.
- :func:`write_json_atomic` writes any JSON file (the manifest) by the same
  write-then-rename rule.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import zstandard

from diffmodel.atomic import fsync_dir, write_json

#: Suffix of a complete shard.
SHARD_SUFFIX = ".jsonl.zst"
#: Suffix of a shard still being written (or left behind by an interrupted run).
TMP_SUFFIX = ".tmp"
#: Default shard size bound: uncompressed bytes of JSON lines per shard.
DEFAULT_SHARD_BYTES = 256 * 1024 * 1024
#: zstd level: fast, and about as small as level 19 on JSON lines of source code within ~15%.
ZSTD_LEVEL = 3


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}{SHARD_SUFFIX}"


_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5,})" + re.escape(SHARD_SUFFIX) + "$")


def shard_index(path: str | Path, prefix: str) -> int | None:
    """The number of a complete shard file named ``prefix-NNNNN.jsonl.zst``, else ``None``."""
    m = _SHARD_RE.match(Path(path).name)
    if not m or m.group("prefix") != prefix:
        return None
    return int(m.group("index"))


def complete_shards(directory: str | Path, prefix: str) -> list[Path]:
    """Complete shards of ``prefix`` in ``directory``, in index order (``.tmp`` files excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(shard_index(p, prefix), p) for p in directory.iterdir()]
    return [p for i, p in sorted((i, p) for i, p in found if i is not None)]


def remove_tmp_files(directory: str | Path) -> list[Path]:
    """Delete every ``*.tmp`` file under ``directory`` (left by an interrupted run); return them."""
    directory = Path(directory)
    removed = sorted(directory.rglob("*" + TMP_SUFFIX)) if directory.is_dir() else []
    for path in removed:
        path.unlink()
    return removed


def write_json_atomic(path: str | Path, obj: object) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (see :mod:`diffmodel.atomic`)."""
    write_json(path, obj)


@dataclass
class ShardInfo:
    """A complete shard: where it is, how many lines, how many bytes before/after compression."""

    path: Path
    lines: int
    raw_bytes: int
    bytes: int
    runs: list[list] = field(default_factory=list)
    """``[tag, lines]`` for each run of consecutive lines written with the same tag."""

    @property
    def tags(self) -> set[str]:
        return {tag for tag, _ in self.runs}


class ShardWriter:
    """Stream JSON lines into numbered, size-bounded ``jsonl.zst`` shards.

    ``write(line, tag)`` takes one encoded JSON line (``bytes``, with or without
    its ``\\n``); ``tag`` (e.g. the repository) is remembered per shard so the
    caller can tell which shards hold what. ``on_close`` is called with the
    :class:`ShardInfo` of every shard once it is complete on disk;
    ``before_publish`` just before the rename that makes it visible (to write
    anything that must exist whenever the shard does).
    """

    def __init__(self, directory: str | Path, prefix: str, max_bytes: int = DEFAULT_SHARD_BYTES,
                 first_index: int = 0, level: int = ZSTD_LEVEL, on_close=None, before_publish=None) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.next_index = first_index
        self.level = level
        self.on_close = on_close
        self.before_publish = before_publish
        self.closed: list[ShardInfo] = []
        self._fh = None
        self._writer = None
        self._current: ShardInfo | None = None
        self._tmp: Path | None = None

    @property
    def open_tags(self) -> set[str]:
        """Tags of lines in the shard being written (empty when none is open)."""
        return self._current.tags if self._current else set()

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / shard_name(self.prefix, self.next_index)
        self.next_index += 1
        self._tmp = final.with_name(final.name + TMP_SUFFIX)
        self._fh = open(self._tmp, "wb")
        self._writer = zstandard.ZstdCompressor(level=self.level).stream_writer(self._fh, closefd=False)
        self._current = ShardInfo(path=final, lines=0, raw_bytes=0, bytes=0)

    def write(self, line: bytes, tag: str = "") -> None:
        if not line.endswith(b"\n"):
            line += b"\n"
        if self._current is None:
            self._open()
        self._writer.write(line)
        self._current.lines += 1
        self._current.raw_bytes += len(line)
        runs = self._current.runs
        if runs and runs[-1][0] == tag:
            runs[-1][1] += 1
        else:
            runs.append([tag, 1])
        if self._current.raw_bytes >= self.max_bytes:
            self.close_shard()

    def close_shard(self) -> ShardInfo | None:
        """Finish the open shard (if any): close the frame, fsync, rename into place."""
        if self._current is None:
            return None
        self._writer.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        info = self._current
        info.bytes = os.path.getsize(self._tmp)
        if self.before_publish is not None:
            self.before_publish(info)
        os.replace(self._tmp, info.path)
        fsync_dir(info.path.parent)
        self._current = self._fh = self._writer = self._tmp = None
        self.closed.append(info)
        if self.on_close is not None:
            self.on_close(info)
        return info

    def abandon(self) -> None:
        """Drop the open shard without making it visible (its ``.tmp`` is deleted)."""
        if self._current is None:
            return
        try:
            self._writer.close()
            self._fh.close()
        finally:
            if self._tmp is not None and self._tmp.exists():
                self._tmp.unlink()
            self._current = self._fh = self._writer = self._tmp = None

    def close(self) -> None:
        self.close_shard()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()


def read_shard(path: str | Path) -> Iterator[dict]:
    """Yield the JSON objects of one ``jsonl.zst`` shard, streaming."""
    with open(path, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        buffer = b""
        while True:
            chunk = reader.read(1 << 20)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
        if buffer.strip():
            yield json.loads(buffer)


def count_lines(path: str | Path) -> int:
    """Number of JSON lines in a ``jsonl.zst`` shard (streaming; lines are not parsed)."""
    n = 0
    last = b"\n"
    with open(path, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        while True:
            chunk = reader.read(1 << 20)
            if not chunk:
                break
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")
