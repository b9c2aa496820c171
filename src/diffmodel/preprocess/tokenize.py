"""Tokenize: text -> ``input_ids`` plus the token index where the diff starts.

The diff boundary is computed here, while the character offsets are at hand,
and stored as ``diff_start`` (-1 when the text has no ``<DFF>``) so that the
label stage never needs the text or the offsets again.

Invariants:
- Tokenization uses the tokenizer's own special-token convention (a Llama
  tokenizer adds BOS, GPT-2 adds nothing); EOS is appended by the layout stage.
- A slow tokenizer has no offset mapping: ``diff_start`` is then -1 and the
  label stage falls back to searching the marker's ids.
"""

from __future__ import annotations

from diffmodel.preprocess.labels import diff_start_from_offsets
from diffmodel.sample import DIFF_MARKER


def tokenize_batch(batch: dict[str, list], tokenizer, text_column: str = "text") -> dict[str, list]:
    """Batched ``datasets.map`` function: adds ``input_ids`` and ``diff_start``.

    With a fast tokenizer the boundary is the token holding the marker's first
    character (``char_to_token``, read from the offsets the Rust side keeps),
    falling back to :func:`diff_start_from_offsets` where no token holds it.
    """
    texts = batch[text_column]
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, return_attention_mask=False)
        starts = []
        for i, text in enumerate(texts):
            pos = text.find(DIFF_MARKER)
            start = enc.char_to_token(i, pos) if pos >= 0 else None
            if start is None and pos >= 0:
                start = diff_start_from_offsets(text, enc.encodings[i].offsets)
            starts.append(-1 if start is None else start)
        return {"input_ids": enc["input_ids"], "diff_start": starts}
    enc = tokenizer(texts, return_attention_mask=False)
    return {"input_ids": enc["input_ids"], "diff_start": [-1] * len(texts)}


def is_short_enough(n_tokens: int, block_size: int) -> bool:
    """The long-sample policy: a sample of ``n_tokens`` fits if one slot is left for EOS (n < block_size)."""
    return n_tokens < block_size
