"""Tokenize: text -> ``input_ids`` plus the token index where the loss starts.

The loss boundary (:func:`diffmodel.formats.loss_start` for ``--loss_on`` in
the ``--edit_format``, or
the ``completion_start`` character of a prompt/completion row, mapped to a
token by :func:`diffmodel.preprocess.labels.loss_start_token`) is computed
here, while the character offsets are at hand, and stored as ``diff_start``
(a token index, or ``NO_DIFF`` / ``EMPTY_DIFF``) so that the label stage never
needs the text or the offsets again.

Invariants:
- Tokenization uses the tokenizer's own special-token convention (a Llama
  tokenizer adds BOS, GPT-2 adds nothing); EOS is appended by the layout stage.
- A slow tokenizer has no offset mapping: its tokens are decoded one by one
  to find the same boundary (:func:`~diffmodel.preprocess.labels.diff_start_from_ids`).
"""

from __future__ import annotations

from diffmodel.data.records import COMPLETION_START
from diffmodel.preprocess.labels import decoded_offsets, diff_start_from_ids, loss_start_token, token_at_char


def tokenize_batch(
    batch: dict[str, list], tokenizer, text_column: str = "text", loss_on: str = "diff", edit_format: str | None = None
) -> dict[str, list]:
    """Batched ``datasets.map`` function: adds ``input_ids`` and ``diff_start`` (the loss start).

    A row with a ``completion_start`` (a prompt/completion row; None in it
    marks a diff sample) starts its loss there; the others where ``loss_on``
    says in ``edit_format`` (default ``carper``; :func:`diffmodel.formats.loss_start`).
    With a fast tokenizer the boundary is the token holding the
    boundary's first character (``char_to_token``, read from the offsets the
    Rust side keeps), falling back to the offset mapping where no token holds
    it; a slow tokenizer's tokens are decoded one by one.
    """
    texts = batch[text_column]
    completion_starts = batch.get(COMPLETION_START) or [None] * len(texts)
    enc = tokenizer(texts, return_attention_mask=False, verbose=False)  # samples too long are dropped and counted, not warned of
    if getattr(tokenizer, "is_fast", False):
        def token_at(i: int, pos: int) -> int | None:
            token = enc.char_to_token(i, pos)
            return token if token is not None else token_at_char(enc.encodings[i].offsets, pos)
    else:
        def token_at(i: int, pos: int) -> int | None:
            return token_at_char(decoded_offsets(enc["input_ids"][i], tokenizer)[1], pos)
        if all(c is None for c in completion_starts):
            starts = [diff_start_from_ids(ids, tokenizer, loss_on, edit_format) for ids in enc["input_ids"]]
            return {"input_ids": enc["input_ids"], "diff_start": starts}

    starts = [
        loss_start_token(text, lambda pos, i=i: token_at(i, pos), loss_on, completion, edit_format)
        for i, (text, completion) in enumerate(zip(texts, completion_starts))
    ]
    return {"input_ids": enc["input_ids"], "diff_start": starts}


def is_short_enough(n_tokens: int, block_size: int) -> bool:
    """The long-sample policy: a sample of ``n_tokens`` fits if one slot is left for EOS (n < block_size)."""
    return n_tokens < block_size
