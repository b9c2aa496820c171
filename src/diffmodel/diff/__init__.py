"""The diff machinery: make, parse and apply unified diffs of one file.

- :func:`make_diff` writes the hunks ``git diff`` writes (the ``<DFF>`` text).
- :func:`parse_diff` reads diffs, including imperfect model output, and never raises.
- :func:`apply_diff` applies them strictly (exact lines and numbers) or leniently.
"""

from diffmodel.diff.apply import ApplyResult, ApplyStatus, HunkOutcome, HunkStatus, apply_diff
from diffmodel.diff.make import make_diff, split_lines
from diffmodel.diff.parse import Hunk, ParsedDiff, Status, parse_diff, parse_patch

__all__ = [
    "ApplyResult", "ApplyStatus", "Hunk", "HunkOutcome", "HunkStatus", "ParsedDiff", "Status",
    "apply_diff", "make_diff", "parse_diff", "parse_patch", "split_lines",
]
