"""Tokenize: text -> ``input_ids`` plus the token index where the diff starts.

The diff boundary (:func:`diffmodel.sample.diff_start`, mapped to a token by
:mod:`diffmodel.preprocess.labels`) is computed here, while the character
offsets are at hand, and stored as ``diff_start`` (a token index, or
``NO_DIFF`` / ``EMPTY_DIFF``) so that the label stage never needs the text or
the offsets again.

Invariants:
- Tokenization uses the tokenizer's own special-token convention (a Llama
  tokenizer adds BOS, GPT-2 adds nothing); EOS is appended by the layout stage.
- A slow tokenizer has no offset mapping: its tokens are decoded one by one
  to find the same boundary (:func:`~diffmodel.preprocess.labels.diff_start_from_ids`).
"""

from __future__ import annotations

from diffmodel.preprocess.labels import diff_start_from_ids, diff_start_token, token_at_char


def tokenize_batch(batch: dict[str, list], tokenizer, text_column: str = "text", edit_format: str | None = None) -> dict[str, list]:
    """Batched ``datasets.map`` function: adds ``input_ids`` and ``diff_start``.

    ``edit_format`` (default ``carper``) decides where loss starts (:mod:`diffmodel.formats`).

    With a fast tokenizer the boundary is the token holding the marker's first
    character (``char_to_token``, read from the offsets the Rust side keeps),
    falling back to the offset mapping where no token holds it.
    """
    texts = batch[text_column]
    enc = tokenizer(texts, return_attention_mask=False)
    if not getattr(tokenizer, "is_fast", False):
        return {"input_ids": enc["input_ids"], "diff_start": [diff_start_from_ids(ids, tokenizer, edit_format) for ids in enc["input_ids"]]}

    def token_at(i: int, pos: int) -> int | None:
        token = enc.char_to_token(i, pos)
        return token if token is not None else token_at_char(enc.encodings[i].offsets, pos)

    starts = [diff_start_token(text, lambda pos, i=i: token_at(i, pos), edit_format) for i, text in enumerate(texts)]
    return {"input_ids": enc["input_ids"], "diff_start": starts}


def is_short_enough(n_tokens: int, block_size: int) -> bool:
    """The long-sample policy: a sample of ``n_tokens`` fits if one slot is left for EOS (n < block_size)."""
    return n_tokens < block_size
