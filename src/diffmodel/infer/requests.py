"""Reading what ``diffmodel edit`` is asked to edit: a file, its name in the prompt, ``--jsonl`` requests.

Invariants:
- A file's text comes back byte for byte (CRLF kept); a missing, folder, non-regular
  (pipe, device) or non-UTF-8 file is a :class:`~diffmodel.errors.DiffModelError` naming it.
- A ``--jsonl`` line whose text is not valid Unicode (a lone surrogate escape) is a bad line.
- :func:`read_requests` checks every line and reports every bad one at once
  as FILE:LINE (at most :data:`MAX_LISTED` listed), before any model is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffmodel.errors import DiffModelError, raise_if_problems

#: At most this many bad jsonl lines are listed in one error.
MAX_LISTED = 20


def read_text_file(path: str, what: str = "FILE") -> str:
    """A file's text, byte for byte (CRLF kept); clear errors for missing or non-UTF-8 files."""
    if not os.path.exists(path):
        raise DiffModelError(f"{what} {path!r} does not exist (to write a new file, create it empty first)")
    if os.path.isdir(path):
        raise DiffModelError(f"{what} {path!r} is a folder, not a file")
    if not os.path.isfile(path):  # a pipe would block the read; a device (/dev/null) would be replaced by --apply
        raise DiffModelError(f"{what} {path!r} is not a regular file (a pipe, socket or device); give a text file")
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DiffModelError(f"cannot read {what} {path!r}: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DiffModelError(f"{what} {path!r} is not UTF-8 text (byte {err.start}); diff models read text files") from None


def prompt_name(path: str) -> str:
    """The name FILE gets in the prompt: relative to the current folder when inside it, else its base name."""
    full = os.path.abspath(path)
    here = os.getcwd()
    try:
        rel = os.path.relpath(full, here)
    except ValueError:  # another drive
        rel = os.path.basename(full)
    if rel.startswith(".." + os.sep) or rel == "..":
        rel = os.path.basename(full)
    return rel.replace(os.sep, "/")


def _field(row: dict, names: tuple[str, ...]) -> tuple[str | None, object]:
    for name in names:
        if name in row:
            return name, row[name]
    return None, None


def _lone_surrogate(value: object) -> str | None:
    """Where ``value`` (a JSON value) holds a string that is not valid Unicode (a lone ``\\ud800``-style escape):
    a description, else None. Such text cannot be tokenized nor written back as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return f"a lone surrogate \\u{ord(value[err.start]):04x} at character {err.start}"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and (found := _lone_surrogate(key)):
            return f"a key holds {found}"
        if found := _lone_surrogate(item):
            return found
    return None


def read_requests(path: str) -> list[dict]:
    """Rows of a jsonl request file, each checked; every bad line is reported at once as FILE:LINE."""
    if not os.path.isfile(path):
        raise DiffModelError(f"--jsonl IN {path!r} does not exist" if not os.path.exists(path) else f"--jsonl IN {path!r} is not a file")
    rows: list[dict] = []
    problems: list[str] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(f"{where}: not UTF-8")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"{where}: not valid JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(row, dict):
                problems.append(f"{where}: expected a JSON object, got {type(row).__name__}")
                continue
            bad = []
            for names in (("name", "path"), ("before", "code"), ("message",)):
                key, value = _field(row, names)
                label = " or ".join(repr(n) for n in names)
                if key is None:
                    bad.append(f"missing {label}")
                elif not isinstance(value, str):
                    bad.append(f"{key!r} must be a string, got {type(value).__name__}")
            for key, value in row.items():
                if found := _lone_surrogate(key) or _lone_surrogate(value):
                    bad.append(f"{key!r} holds {found}, not valid Unicode; write the text as UTF-8")
                    break
            if bad:
                problems.append(f"{where}: {'; '.join(bad)}")
                continue
            rows.append(row)
    if len(problems) > MAX_LISTED:
        problems = problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more bad lines"]
    raise_if_problems(problems, f"cannot read --jsonl IN {path!r}")
    if not rows:
        raise DiffModelError(f"--jsonl IN {path!r} has no requests")
    return rows


__all__ = ["MAX_LISTED", "prompt_name", "read_requests", "read_text_file"]
