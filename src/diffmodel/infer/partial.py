"""An output file written piece by piece, so that a batch run that dies resumes where it stopped.

``diffmodel edit --jsonl IN OUT`` generates its requests a piece at a time. After each piece its lines are
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
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from diffmodel.atomic import fsync_dir, write_json


def file_hash(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class PartialOutput:
    """``OUT.partial`` and its record ``OUT.partial.json`` for one run (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, fingerprint: dict):
        self.out = Path(os.path.abspath(out))
        self.lines = self.out.with_name(self.out.name + ".partial")
        self.record = self.out.with_name(self.out.name + ".partial.json")
        self.fingerprint = fingerprint
        self.done = 0
        self.discarded_other_run = False

    def start(self) -> int:
        """How many requests are done already (0 for a fresh run); leaves ``OUT.partial`` holding exactly them."""
        saved = self._read_record()
        if saved is not None and saved.get("fingerprint") == self.fingerprint and self.lines.is_file() \
                and self.lines.stat().st_size >= saved["bytes"]:
            with open(self.lines, "r+b") as handle:
                handle.truncate(saved["bytes"])
            self.done = int(saved["done"])
            return self.done
        self.discarded_other_run = saved is not None
        self.discard()
        self.lines.write_bytes(b"")
        return 0

    def add(self, lines: list[str], requests: int) -> None:
        """Append the lines of the next ``requests`` requests, then record them as done."""
        with open(self.lines, "ab") as handle:
            handle.write("".join(lines).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
        self.done += requests
        write_json(self.record, {"fingerprint": self.fingerprint, "done": self.done, "bytes": size})

    def finish(self) -> Path:
        """Rename ``OUT.partial`` to ``OUT`` and drop the record."""
        os.replace(self.lines, self.out)
        fsync_dir(self.out.parent)
        self.record.unlink(missing_ok=True)
        return self.out

    def read_lines(self) -> list[str]:
        return self.lines.read_text(encoding="utf-8").splitlines(keepends=True)

    def discard(self) -> None:
        self.lines.unlink(missing_ok=True)
        self.record.unlink(missing_ok=True)

    def _read_record(self) -> dict | None:
        try:
            saved = json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return saved if isinstance(saved, dict) and {"fingerprint", "done", "bytes"} <= saved.keys() else None
