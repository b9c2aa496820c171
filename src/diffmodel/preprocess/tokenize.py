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


def tokenize_batch(batch: dict[str, list], tokenizer, text_column: str = "text") -> dict[str, list]:
    """Batched ``datasets.map`` function: adds ``input_ids`` and ``diff_start``."""
    texts = batch[text_column]
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, return_offsets_mapping=True, return_attention_mask=False)
        starts = []
        for text, offsets in zip(texts, enc["offset_mapping"]):
            start = diff_start_from_offsets(text, offsets)
            starts.append(-1 if start is None else start)
        return {"input_ids": enc["input_ids"], "diff_start": starts}
    enc = tokenizer(texts, return_attention_mask=False)
    return {"input_ids": enc["input_ids"], "diff_start": [-1] * len(texts)}


def is_short_enough(input_ids: list[int], block_size: int) -> bool:
    """The long-sample policy: a sample fits if one slot is left for EOS (len < block_size)."""
    return len(input_ids) < block_size
