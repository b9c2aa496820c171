"""Labels: which tokens of a sample carry loss.

A diff sample is trained only from its ``<DFF>`` marker on; every token before
the marker is context and gets :data:`IGNORE_INDEX`. Which ``<DFF>`` that is,
is decided by :func:`diffmodel.sample.diff_start` alone (the ``<DFF>`` line
after the last ``<MSG>`` line); this module maps that character offset to a
token. With another ``--edit_format`` the format's ``loss_start`` and
``is_empty`` (:mod:`diffmodel.formats`) take the place of ``diff_start`` and
``diff_is_empty``: the marker that follows the message.

Invariants:
- The boundary is found by *character offset*: the first trained token is the
  first token whose character span ends after the marker's first character. A
  BPE token that merges the marker with the character before it (``"\\n<"``,
  ``" <DFF"``) is therefore still found, and is trained (it carries the
  marker's first character).
- Without character offsets (pre-tokenized data without text, a slow
  tokenizer) each token is decoded on its own and the pieces give the text
  and the offsets, so the same rule applies (:func:`diff_start_from_ids`).
- The boundary is a token index, or :data:`NO_DIFF` (no ``<DFF>`` line after
  a ``<MSG>`` line) or :data:`EMPTY_DIFF` (nothing but whitespace after it);
  samples of either kind are dropped and counted by the callers.
- ``labels`` has the length of ``input_ids``; every label is either
  :data:`IGNORE_INDEX` or the token at the same position (HF models shift
  labels themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from diffmodel import formats

#: The label value that ``torch.nn.CrossEntropyLoss`` and HF models skip.
IGNORE_INDEX = -100
#: Boundary of a text without a ``<DFF>`` line after a ``<MSG>`` line.
NO_DIFF = -1
#: Boundary of a text whose diff is empty (nothing but whitespace after ``<DFF>``).
EMPTY_DIFF = -2


def token_at_char(offsets: Sequence[Sequence[int]], pos: int) -> int | None:
    """Index of the first token whose span ends after character ``pos``, or None.

    ``offsets`` is the tokenizer's offset mapping (start, end) per token.
    Zero-width tokens (special tokens such as BOS) are never chosen.
    """
    for i, (start, end) in enumerate(offsets):
        if end > pos and end > start:
            return i
    return None


def diff_start_token(text: str, token_at: Callable[[int], int | None], edit_format: str | None = None) -> int:
    """Token index where the diff of ``text`` starts, or :data:`NO_DIFF` / :data:`EMPTY_DIFF`.

    ``token_at(pos)`` maps a character offset of ``text`` to the token that holds it;
    ``edit_format`` names the format of ``text`` (default ``carper``).
    """
    fmt = formats.get(edit_format)
    pos = fmt.loss_start(text)
    if pos < 0:
        return NO_DIFF
    if fmt.is_empty(text, pos):
        return EMPTY_DIFF
    token = token_at(pos)
    return NO_DIFF if token is None else token


def diff_start_from_offsets(text: str, offsets: Sequence[Sequence[int]], edit_format: str | None = None) -> int:
    """:func:`diff_start_token` with the tokenizer's offset mapping of ``text``."""
    return diff_start_token(text, lambda pos: token_at_char(offsets, pos), edit_format)


def diff_start_from_ids(input_ids: Sequence[int], tokenizer, edit_format: str | None = None) -> int:
    """:func:`diff_start_token` for token ids without their text: each token is decoded on its own."""
    pieces = tokenizer.batch_decode([[i] for i in input_ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    offsets, at = [], 0
    for piece in pieces:
        offsets.append((at, at + len(piece)))
        at += len(piece)
    return diff_start_from_offsets("".join(pieces), offsets, edit_format)


def mask_before(input_ids: Sequence[int], start: int) -> list[int]:
    """Labels for ``input_ids`` with every token before ``start`` ignored."""
    return [IGNORE_INDEX] * start + list(input_ids[start:])
