"""Labels: which tokens of a sample carry loss.

A diff sample is trained only from its target marker on (``--loss_on
diff``: ``<DFF>`` in ``carper``) or from its message marker on (``--loss_on
message+diff``: the ``<MSG>`` line); every token before is context and gets
:data:`IGNORE_INDEX`. Where that is, is decided by the sample's edit format
alone (:func:`diffmodel.formats.loss_start`: in ``carper`` the ``<DFF>`` line
after the last ``<MSG>`` line, or that ``<MSG>`` line; the other formats
with their own markers, :mod:`diffmodel.formats`), and whether its target is
empty by the format's ``is_empty``. A prompt/completion row (TRL's format:
text = prompt + completion) is trained from the character where its
completion starts, whatever the format. This module maps that character
offset to a token (:func:`loss_start_token`, the one policy for both kinds
of rows).

Invariants:
- The boundary is found by *character offset*: the first trained token is the
  first token whose character span ends after the marker's first character. A
  BPE token that merges the marker with the character before it (``"\\n<"``,
  ``" <DFF"``) is therefore still found, and is trained (it carries the
  marker's first character).
- Without character offsets (pre-tokenized data without text, a slow
  tokenizer) each token is decoded on its own and the pieces give the text
  and the offsets, so the same rule applies (:func:`diff_start_from_ids`).
- The boundary is a token index, or :data:`NO_DIFF` (no target marker: in
  ``carper`` no ``<DFF>`` line after a ``<MSG>`` line) or :data:`EMPTY_DIFF`
  (the format's ``is_empty``: in ``carper`` nothing but whitespace after the
  ``<DFF>``; or an empty or all-whitespace completion); samples of either
  kind are dropped and counted by the callers.
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


def loss_start_token(
    text: str,
    token_at: Callable[[int], int | None],
    loss_on: str = "diff",
    completion_start: int | None = None,
    edit_format: str | None = None,
) -> int:
    """Token index where the loss of ``text`` starts, or :data:`NO_DIFF` / :data:`EMPTY_DIFF`.

    ``token_at(pos)`` maps a character offset of ``text`` to the token that
    holds it. ``completion_start``: for a prompt/completion row, the character
    where the completion starts (then ``loss_on`` and ``edit_format`` do not
    apply); None for a diff sample written in ``edit_format`` (default
    ``carper``), whose start is :func:`diffmodel.formats.loss_start`.
    """
    if completion_start is not None:
        if not text[completion_start:].strip():
            return EMPTY_DIFF
        pos = completion_start
    else:
        fmt = formats.get(edit_format)
        target = fmt.loss_start(text)
        if target < 0:
            return NO_DIFF
        if fmt.is_empty(text, target):
            return EMPTY_DIFF
        pos = formats.loss_start(text, loss_on, edit_format)
    token = token_at(pos)
    return NO_DIFF if token is None else token


def diff_start_from_offsets(
    text: str, offsets: Sequence[Sequence[int]], loss_on: str = "diff", edit_format: str | None = None
) -> int:
    """:func:`loss_start_token` with the tokenizer's offset mapping of ``text``."""
    return loss_start_token(text, lambda pos: token_at_char(offsets, pos), loss_on, None, edit_format)


def decoded_offsets(input_ids: Sequence[int], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The text of ``input_ids`` and each token's (start, end) in it, every token decoded on its own."""
    pieces = tokenizer.batch_decode([[i] for i in input_ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    offsets, at = [], 0
    for piece in pieces:
        offsets.append((at, at + len(piece)))
        at += len(piece)
    return "".join(pieces), offsets


def diff_start_from_ids(input_ids: Sequence[int], tokenizer, loss_on: str = "diff", edit_format: str | None = None) -> int:
    """:func:`loss_start_token` for token ids without their text: each token is decoded on its own."""
    return diff_start_from_offsets(*decoded_offsets(input_ids, tokenizer), loss_on, edit_format)


def mask_before(input_ids: Sequence[int], start: int) -> list[int]:
    """Labels for ``input_ids`` with every token before ``start`` ignored."""
    return [IGNORE_INDEX] * start + list(input_ids[start:])
