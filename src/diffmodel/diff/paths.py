"""What a patch may write: file names kept inside a working folder.

Invariants:
- :func:`safe_path` returns a real path strictly inside the real path of the
  root, or raises :class:`~diffmodel.errors.DiffModelError` naming the file
  and why: an empty name or one with a NUL byte, an absolute name, a name
  with a ``..`` part, or a name that a symlink leads outside the root.
- Nothing is read or written here; the check only resolves paths.
"""

from __future__ import annotations

import os

from diffmodel.errors import DiffModelError


def safe_path(root: str, name: str) -> str:
    """The real path of ``name`` inside ``root``; DiffModelError if it is unsafe."""
    if not name or "\0" in name:
        raise DiffModelError(f"refusing file name {name!r}: it is empty or contains a NUL byte")
    if os.path.isabs(name):
        raise DiffModelError(f"refusing absolute file name {name!r}: names must be relative to the working folder (-C)")
    parts = name.replace(os.sep, "/").split("/")
    if ".." in parts:
        raise DiffModelError(f"refusing file name {name!r}: it contains '..'; names must stay inside the working folder (-C)")
    root_real = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root_real, name))
    if not real.startswith(root_real.rstrip(os.sep) + os.sep):
        raise DiffModelError(
            f"refusing {name!r}: it resolves to {real}, outside the working folder {root_real} (a symlink leads out)"
        )
    return real


__all__ = ["safe_path"]
