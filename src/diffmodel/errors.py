"""User-facing errors.

Every problem caused by a user's input (a flag, a file, a line of data) is
raised as :class:`DiffModelError` with a message that names the culprit and the
fix. The command line prints the message without a traceback and exits 2.
``assert`` is never used for user input.
"""

from __future__ import annotations


class DiffModelError(Exception):
    """A problem with the user's input, explained in the message."""


def raise_if_problems(problems: list[str], header: str) -> None:
    """Raise once for a list of problems, so the user sees all of them at once."""
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DiffModelError(f"{header}:\n{lines}")


def did_you_mean(candidates: list[str], sep: str = " or ") -> str:
    """`` (did you mean A or B?)`` for the close names a caller found (difflib), or ``""`` when there are none."""
    return f" (did you mean {sep.join(candidates)}?)" if candidates else ""
