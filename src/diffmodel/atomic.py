"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the package writes for a user (an edited source file, a report, a
plot, a manifest) goes through :func:`write_bytes`: the data is written to a
temporary file in the same folder, flushed and fsynced, given the permission
bits of the file it replaces (or the umask's default for a new file), renamed
over the target, and the folder is fsynced so the rename survives a crash. If
anything fails the temporary file is removed and the target is untouched.
Datasets folders go through :func:`save_atomically`: ``save_to_disk`` into a
temporary sibling folder, renamed into place when complete, so a folder that
exists is always whole; it gets the umask's mode too (:func:`umask_mode`).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from diffmodel.errors import DiffModelError


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask_mode(base: int) -> int:
    """The mode a new file (``base`` 0o666) or folder (0o777) gets from the user's umask.

    ``tempfile.mkstemp`` / ``mkdtemp`` create 0600 / 0700 whatever the umask;
    what is renamed into place gets this mode instead.
    """
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def unwritable(path: str | Path, err: OSError) -> DiffModelError:
    """The error for a ``path`` that cannot be written: which part of it is in the way, and the fix."""
    path = Path(path)
    if path.is_dir():
        return DiffModelError(f"cannot write {path}: it is a folder; give the path of a file in it")
    blocking = next((p for p in path.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        reason = f"{blocking} is a file, not a folder"
    else:
        reason = err.strerror or str(err)
    return DiffModelError(f"cannot write {path}: {reason}. Choose a path in a folder you can write")


def folder_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be made or used as an output folder (a file in the way, no write permission), or None;
    nothing is created."""
    path = Path(path)
    try:
        existing = next((p for p in [path, *path.parents] if p.exists()), None)
    except OSError as err:  # a name the system cannot look up (too long, say)
        return f"cannot be used ({err.strerror})"
    if existing is None:
        return None
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def make_folder(path: str | Path) -> Path:
    """``mkdir -p path``, or :func:`unwritable`'s error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise unwritable(path, err) from None
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically, keeping its permission bits."""
    path = Path(path)
    folder = str(path.parent)
    if path.is_dir():
        raise unwritable(path, IsADirectoryError(21, "Is a directory"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise unwritable(path, err) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        mode = stat.S_IMODE(os.stat(path).st_mode) if path.exists() else umask_mode(0o666)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: object) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


META_FILE = "diffmodel_stage.json"


def save_atomically(ds, path: Path, meta: dict | None = None) -> None:
    """``save_to_disk`` into a temporary sibling folder, then rename it into place.

    ``meta`` is written into the folder as JSON before the rename. The folder
    gets the mode of a new folder under the user's umask (not mkdtemp's 0700).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes it 0700
        ds.save_to_disk(str(tmp))
        if meta is not None:
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
