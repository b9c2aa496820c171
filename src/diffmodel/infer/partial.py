"""An output file written piece by piece, so that a batch run that dies resumes where it stopped.

``diffmodel edit --jsonl IN OUT`` generates its requests a piece at a time (:func:`generate_in_pieces`);
``diffmodel eval edits`` and ``eval humanevalfix`` do the same through :class:`ResumableEditor`, whose
``REPORT.generations.partial`` holds each request's edits as one JSON line and is removed once the report
is written. After each piece its lines are
appended to ``OUT.partial`` (flushed and fsynced), then ``OUT.partial.json`` records how many requests are
done and how long ``OUT.partial`` is at that point (written atomically). The same command run again finds
them, checks that they were made from the same run (the ``fingerprint``: the input's hash, the model, the
generation settings), cuts ``OUT.partial`` back to the recorded length (lines appended after the last
record are dropped: their requests run again) and goes on from the next request. At the end ``OUT.partial``
is renamed to ``OUT`` in one step and the record removed: ``OUT`` is never half-written.

Invariants:
- ``OUT.partial`` holds whole lines of the first ``done`` requests, in input order, and nothing else.
- A record from another run (different fingerprint) is never resumed: both files are removed and the run
  starts over (the caller says so).
- A run does not touch the files of a run that is still going: the record names the process writing it (written
  as the run starts), and a record of a live process on this machine, other than this one, is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diffmodel.atomic import fsync_dir, make_folder, write_json
from diffmodel.errors import DiffModelError
from diffmodel.infer.prompt import Edit, EditStatus, as_request


def file_hash(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

#: Batches generated between two records of ``OUT.partial`` (a piece is this many times the batch size).
PIECE_BATCHES = 16


class PartialOutput:
    """``OUT.partial`` and its record ``OUT.partial.json`` for one run (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, fingerprint: dict):
        self.out = Path(os.path.abspath(out))
        self.lines = self.out.with_name(self.out.name + ".partial")
        self.record = self.out.with_name(self.out.name + ".partial.json")
        self.fingerprint = fingerprint
        self.done = 0
        self.kept_at_start = 0  # requests an earlier run had done when this one started
        self.discarded_other_run = False

    def start(self) -> int:
        """How many requests are done already (0 for a fresh run); leaves ``OUT.partial`` holding exactly them."""
        saved = self._read_record()
        writer = _live_writer(saved)
        if writer is not None:
            raise DiffModelError(f"{self.lines} is being written by process {writer} on this machine, a run with the same "
                                 f"output that is still going; wait for it to end or choose another output path (if no "
                                 f"such run is going, delete {self.record})")
        if saved is not None and saved.get("fingerprint") == self.fingerprint and self.lines.is_file() \
                and self.lines.stat().st_size >= saved["bytes"]:
            with open(self.lines, "r+b") as handle:
                handle.truncate(saved["bytes"])
            self.done = self.kept_at_start = int(saved["done"])
            self._write_record(saved["bytes"])
            return self.done
        self.discarded_other_run = saved is not None
        self.discard()
        make_folder(self.lines.parent)
        self.lines.write_bytes(b"")
        self._write_record(0)
        return 0

    def add(self, lines: list[str], requests: int) -> None:
        """Append the lines of the next ``requests`` requests, then record them as done."""
        with open(self.lines, "ab") as handle:
            handle.write("".join(lines).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
        self.done += requests
        self._write_record(size)

    def _write_record(self, size: int) -> None:
        write_json(self.record, {"fingerprint": self.fingerprint, "done": self.done, "bytes": size,
                                 "kept_at_start": self.kept_at_start, "pid": os.getpid(), "host": socket.gethostname()})

    def finish(self) -> Path:
        """Rename ``OUT.partial`` to ``OUT`` and drop the record."""
        os.replace(self.lines, self.out)
        fsync_dir(self.out.parent)
        self.record.unlink(missing_ok=True)
        return self.out

    def read_lines(self) -> list[str]:
        """The lines of ``OUT.partial``, split at ``\\n`` only: a JSON line keeps the U+2028, U+2029 and U+0085 of a
        file or a generation unescaped, and ``str.splitlines`` would break it there."""
        with open(self.lines, encoding="utf-8", newline="\n") as handle:
            return list(handle)

    def discard(self) -> None:
        self.lines.unlink(missing_ok=True)
        self.record.unlink(missing_ok=True)

    def _read_record(self) -> dict | None:
        try:
            saved = json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return saved if isinstance(saved, dict) and {"fingerprint", "done", "bytes"} <= saved.keys() else None


def _live_writer(saved: dict | None) -> int | None:
    """The process id in ``saved`` (a record) when that process is alive on this machine and is not this one."""
    if not saved or saved.get("host") != socket.gethostname() or not isinstance(saved.get("pid"), int):
        return None
    pid = saved["pid"]
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, owned by another user
        pass
    return pid


def shares(out: str | os.PathLike, total: int, piece: int, fingerprint: dict, shard) -> tuple[list[PartialOutput], list[tuple[int, int]]]:
    """Every process's kept output and requests ``[first, end)`` for ``total`` requests in pieces of ``piece``
    (:mod:`diffmodel.infer.shards`; one of each for one process, kept in ``out.partial``)."""
    from diffmodel.infer.shards import Shard

    spans = [Shard(rank, shard.world).span(total, piece) for rank in range(shard.world)]
    return [PartialOutput(shard.out(out, rank), {**fingerprint, "span": list(span)}) for rank, span in enumerate(spans)], spans


def join(parts: Sequence[PartialOutput], out: str | os.PathLike) -> Path:
    """Write the lines of ``parts`` (each whole, in order) to ``out`` in one step, then drop the parts."""
    import shutil

    out = Path(os.path.abspath(out))
    joining = out.with_name(out.name + ".joining")
    with open(joining, "wb") as handle:
        for part in parts:
            with open(part.lines, "rb") as lines:
                shutil.copyfileobj(lines, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(joining, out)
    fsync_dir(out.parent)
    for part in parts:
        part.discard()
    return out


def generate_in_pieces(editor, requests: Sequence[Any], partial: PartialOutput, piece: int, options: dict,
                       lines_of: Callable[[Sequence[Any], list[list[Edit]]], list[str]],
                       progress: Callable[[int], None] | None = None, offset: int = 0) -> list[list[Edit]]:
    """Generate ``requests[partial.done:]`` with ``editor.edit_many(..., **options)``, ``piece`` requests at a time,
    appending each piece's ``lines_of(piece_requests, edits)`` to ``partial``; returns this run's edits.

    Each piece samples with ``seed + first`` (``first``: its first request's index in the whole input, whose
    ``requests`` start at ``offset``), so a resumed run, or a share of the requests (:mod:`diffmodel.infer.shards`),
    generates what an unbroken one does."""
    seed = options.get("seed")
    made: list[list[Edit]] = []
    for first in range(partial.done, len(requests), piece):
        chunk = requests[first:first + piece]
        seeded = None if seed is None else seed + offset + first
        edits = editor.edit_many(chunk, **{**options, "seed": seeded, "progress": progress or False})
        partial.add(lines_of(chunk, edits), len(chunk))
        made += edits
    return made


def edit_bar(total: int, done: int = 0):
    """The "editing" progress bar on stderr, starting at the ``done`` requests of a resumed run."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="edit", desc="editing", dynamic_ncols=True, file=sys.stderr)


def edits_line(edits: list[Edit]) -> str:
    """One request's edits as a JSON line (read back by :func:`edits_of_line`)."""
    return json.dumps([{**asdict(e), "status": str(e.status)} for e in edits], ensure_ascii=False) + "\n"


def edits_of_line(line: str) -> list[Edit]:
    return [Edit(**{**e, "status": EditStatus(e["status"])}) for e in json.loads(line)]


def requests_hash(requests: Sequence[Any]) -> str:
    """A hash of the requests' files, messages and names, in order."""
    digest = hashlib.sha256()
    for item in requests:
        req = as_request(item)
        digest.update(json.dumps([req.code, req.message, req.name], ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


@dataclass
class Generated:
    """What :func:`generate_share` leaves: every process's kept output and requests ``[first, end)``, the edits this
    process generated in this run, and how many of all processes' requests earlier runs had done."""

    parts: list[PartialOutput]
    spans: list[tuple[int, int]]
    made: list[list[Edit]]
    kept: int


def generate_share(editor, requests: Sequence[Any], out: str | os.PathLike, fingerprint: dict, piece: int, options: dict,
                   lines_of: Callable[[Sequence[Any], list[list[Edit]]], list[str]],
                   progress: bool | Callable[[int], None] = False, log: Callable[[str], None] | None = None) -> Generated:
    """Generate this process's share of ``requests`` (all of them for one process; :mod:`diffmodel.infer.shards` under
    torchrun) into its kept output beside ``out``, resuming what an earlier run of the same ``fingerprint`` kept. Once
    every process is done, process 0 checks that each share was made for this run and returns; the others raise
    :class:`~diffmodel.infer.shards.OtherProcessReports`.

    ``editor`` is an editor, or a function that loads one, called only when something is left to generate (a run
    resumed after every generation was kept loads no model). ``progress``: True draws the bar, a callable is told.
    ``log`` gets the resume, start-over and interrupted lines."""
    from diffmodel.infer import shards

    say = log or (lambda line: None)
    shard = shards.current()
    parts, spans = shares(out, len(requests), piece, fingerprint, shard)
    partial, (first, end) = parts[shard.rank], spans[shard.rank]
    done = partial.start()
    if partial.discarded_other_run:
        say(f"note: {partial.lines.name} came from another run (other requests, model or settings): starting over")
    elif done:
        say(f"resuming: {done} of {end - first} requests were done ({partial.lines.name})")
    bar = edit_bar(end - first, done) if progress is True else None
    update = bar.update if bar is not None else progress if callable(progress) else None
    made, finished = [], False
    try:
        if done < end - first:
            model = editor if hasattr(editor, "edit_many") else editor()
            made = generate_in_pieces(model, requests[first:end], partial, piece, options, lines_of, update, offset=first)
        finished = True
    finally:
        if bar is not None:
            bar.close()
        if not finished and partial.done:
            say(f"{partial.lines.name} keeps the generations of {partial.done} of {end - first} requests: "
                "the same command resumes after them")
    shard.wait()
    if shard.rank:
        say(f"requests {first}-{end - 1} kept in {partial.lines.name}; process 0 finishes the run")
        raise shards.OtherProcessReports()
    earlier = 0
    for rank, (kept, (a, b)) in enumerate(zip(parts, spans)):
        saved = kept._read_record() or {}
        if saved.get("fingerprint") != kept.fingerprint or saved.get("done") != b - a:
            raise DiffModelError(f"process {rank} did not generate requests {a}-{b - 1} of this run ({kept.lines.name}): "
                                 "the processes saw other requests or settings (--no_bugs_cache lets each make its own "
                                 "bugs); run again with the same flags in every process")
        earlier += int(saved.get("kept_at_start", 0))
    return Generated(parts, spans, made, earlier)


class ResumableEditor:
    """An editor whose ``edit_many`` keeps its generations in ``OUT.partial`` (beside ``out``) as it goes
    (:func:`generate_share`), so that a run that dies resumes at the first request not done; :meth:`discard` removes
    them once the report is written.

    ``editor`` is an editor or a function that loads one (see :func:`generate_share`). ``fingerprint`` names the run
    (model, generation settings); the requests' hash and ``num_samples`` are added at each call. ``log`` gets the
    resume / start-over lines."""

    def __init__(self, editor, out: str | os.PathLike, fingerprint: dict, piece: int,
                 log: Callable[[str], None] | None = None):
        self.editor, self.out, self.fingerprint, self.piece, self.log = editor, out, fingerprint, piece, log
        self.parts: list[PartialOutput] = []  # every process's kept generations, in order
        self.requests = self.kept = 0  # requests asked for, and those of them an earlier run had generated

    def edit_many(self, requests: Sequence[Any], num_samples: int = 1, progress: bool | Callable[[int], None] = False,
                  **options) -> list[list[Edit]]:
        """All requests' edits (under torchrun, processes other than 0 stop once their share is kept)."""
        requests = list(requests)
        fingerprint = {**self.fingerprint, "requests": requests_hash(requests), "num_samples": num_samples, "piece": self.piece}
        got = generate_share(self.editor, requests, self.out, fingerprint, self.piece, {**options, "num_samples": num_samples},
                             lambda chunk, edits: [edits_line(e) for e in edits], progress, self.log)
        self.parts = got.parts
        self.requests += len(requests)
        self.kept += got.kept
        return [e for kept, (a, b) in zip(got.parts, got.spans) for e in self._read(kept, b - a)]

    @staticmethod
    def _read(partial: PartialOutput, requests: int) -> list[list[Edit]]:
        """The kept edits, one list per request; an error (not a report of other requests' edits) when the file holds
        anything else, as when two runs with the same ``--out`` wrote it at once."""
        lines = partial.read_lines()
        try:
            edits = [edits_of_line(line) for line in lines]
        except (ValueError, TypeError, KeyError, AttributeError):
            edits = None
        if edits is None or len(edits) != requests:
            raise DiffModelError(f"{partial.lines} does not hold the edits of the {requests} requests, one line each "
                                 f"(another run writing the same --out at the same time?); delete it and {partial.record.name} "
                                 "beside it, then run again")
        return edits

    def discard(self) -> None:
        for kept in self.parts:
            kept.discard()
