"""Labels: which tokens of a sample carry loss.

A diff sample is trained only from its ``<DFF>`` marker on; every token before
the marker is context and gets :data:`IGNORE_INDEX`.

Invariants:
- The boundary is found by *character offset* when the text is known: the
  first trained token is the first token whose character span ends after the
  marker's first character. A BPE token that merges the marker with the
  character before it (``"\\n<"``, ``" <DFF"``) is therefore still found, and
  is trained (it carries the marker's first character).
- For pre-tokenized data without text the marker's own token ids are searched
  for; this misses merged markers, and the caller logs that it was used.
- ``labels`` has the length of ``input_ids``; every label is either
  :data:`IGNORE_INDEX` or the token at the same position (HF models shift
  labels themselves).
"""

from __future__ import annotations

from collections.abc import Sequence

from diffmodel.sample import DIFF_MARKER

#: The label value that ``torch.nn.CrossEntropyLoss`` and HF models skip.
IGNORE_INDEX = -100


def diff_start_from_offsets(text: str, offsets: Sequence[Sequence[int]], marker: str = DIFF_MARKER) -> int | None:
    """Index of the first token at or after ``marker`` in ``text``, or None if absent.

    ``offsets`` is the tokenizer's offset mapping (start, end) per token.
    Zero-width tokens (special tokens such as BOS) are never the boundary.
    """
    pos = text.find(marker)
    if pos < 0:
        return None
    for i, (start, end) in enumerate(offsets):
        if end > pos and end > start:
            return i
    return None


def diff_start_from_ids(input_ids: Sequence[int], marker_ids: Sequence[int]) -> int | None:
    """Index where ``marker_ids`` first occurs as a run inside ``input_ids``, or None."""
    n = len(marker_ids)
    if n == 0:
        return None
    first = marker_ids[0]
    for i in range(len(input_ids) - n + 1):
        if input_ids[i] == first and list(input_ids[i:i + n]) == list(marker_ids):
            return i
    return None


def mask_before(input_ids: Sequence[int], start: int) -> list[int]:
    """Labels for ``input_ids`` with every token before ``start`` ignored."""
    return [IGNORE_INDEX] * start + list(input_ids[start:])
