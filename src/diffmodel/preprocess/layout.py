"""Layout: turn variable-length samples into fixed ``block_size`` rows.

Two layouts, as in the reference, with its defects fixed:

``pad`` (default when long samples are dropped): each sample gets EOS appended
and is left-padded to ``block_size``::

    input_ids       P  P  P  t0 t1 t2 t3 EOS
    labels          .  .  .  .  .  t2 t3 EOS     (. = IGNORE_INDEX, here <DFF> at t2)
    attention_mask  0  0  0  1  1  1  1  1
    position_ids    0  0  0  0  1  2  3  4

``concat``: each sample gets EOS appended, all samples are concatenated in
order and cut into ``block_size`` rows; samples may span rows::

    row 0:  a0 a1 a2 EOS b0 b1        position_ids 0..block_size-1
    row 1:  b2 EOS c0 c1 c2 EOS       attention_mask all 1

Fixes against the reference (and why):
- EOS is trained (its label is EOS, its attention 1): a model whose EOS is
  masked never learns to stop.
- Left-padded rows carry ``position_ids`` so the real tokens start at 0, as
  they do at inference; without them the sample starts at position ``pad``.
  The first real token's label is ignored: HF models shift labels, so it
  would be predicted from a pad token.
- The pad id comes from the tokenizer (pad, else EOS); nothing is hard-coded.
- The concatenation runs over the whole split with one carry, so the result
  does not depend on any batch size. The final partial row is kept,
  right-padded (labels ignored, attention 0) rather than dropped.

Invariants: every row has exactly ``block_size`` entries in each of the four
columns; a label is IGNORE_INDEX or the token at its position; a position
with attention 0 has label IGNORE_INDEX.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from diffmodel.preprocess.labels import IGNORE_INDEX

COLUMNS = ("input_ids", "labels", "attention_mask", "position_ids")


def pad_left(input_ids: Sequence[int], labels: Sequence[int], block_size: int, pad_id: int, eos_id: int) -> dict[str, list[int]]:
    """One sample + EOS, left-padded to ``block_size``.

    Args:
        input_ids, labels: the sample's tokens and labels (same length).
        block_size: the row length; the sample + EOS must fit (else ValueError).
        pad_id, eos_id: the tokenizer's pad and EOS ids (:mod:`diffmodel.preprocess.tokens`).

    Real tokens start at position 0; the first real token's label and the
    padding's are ignored (``IGNORE_INDEX``, shown as ``X``):

    >>> row = pad_left([5, 6, 7], [5, 6, 7], block_size=6, pad_id=0, eos_id=1)
    >>> row["input_ids"], row["attention_mask"], row["position_ids"]
    ([0, 0, 5, 6, 7, 1], [0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 2, 3])
    >>> ["X" if label == IGNORE_INDEX else label for label in row["labels"]]
    ['X', 'X', 'X', 6, 7, 1]
    """
    ids = list(input_ids) + [eos_id]
    labs = [IGNORE_INDEX] + list(labels[1:]) + [eos_id] if len(labels) else [eos_id]
    n = len(ids)
    if n > block_size:
        raise ValueError(f"sample of {len(input_ids)} tokens does not fit block_size {block_size} with EOS")
    pad = block_size - n
    return {
        "input_ids": [pad_id] * pad + ids,
        "labels": [IGNORE_INDEX] * pad + labs,
        "attention_mask": [0] * pad + [1] * n,
        "position_ids": [0] * pad + list(range(n)),
    }


def _row(ids: list[int], labs: list[int], block_size: int, pad_id: int) -> dict[str, list[int]]:
    n = len(ids)
    pad = block_size - n
    return {
        "input_ids": ids + [pad_id] * pad,
        "labels": labs + [IGNORE_INDEX] * pad,
        "attention_mask": [1] * n + [0] * pad,
        "position_ids": list(range(n)) + [0] * pad,
    }


def concatenate(samples: Iterable[tuple[Sequence[int], Sequence[int]]], block_size: int, eos_id: int, pad_id: int) -> Iterator[dict[str, list[int]]]:
    """Concatenate ``(input_ids, labels)`` samples (each + EOS) into ``block_size`` rows.

    Args:
        samples: ``(input_ids, labels)`` pairs, in order (any iterable: read once).
        block_size: the row length.
        eos_id, pad_id: the tokenizer's EOS and pad ids (:mod:`diffmodel.preprocess.tokens`).

    Samples run across rows; the last partial row is kept, right-padded with
    ignored labels (``IGNORE_INDEX``, shown as ``X``) and attention 0:

    >>> for row in concatenate([([5, 6, 7], [5, 6, 7]), ([8, 9], [8, 9])], block_size=3, eos_id=1, pad_id=0):
    ...     print(row["input_ids"], ["X" if label == IGNORE_INDEX else label for label in row["labels"]],
    ...           row["attention_mask"], row["position_ids"])
    [5, 6, 7] [5, 6, 7] [1, 1, 1] [0, 1, 2]
    [1, 8, 9] [1, 8, 9] [1, 1, 1] [0, 1, 2]
    [1, 0, 0] [1, 'X', 'X'] [1, 0, 0] [0, 0, 0]
    """
    buf_ids: list[int] = []
    buf_labels: list[int] = []
    for ids, labs in samples:
        buf_ids.extend(ids)
        buf_ids.append(eos_id)
        buf_labels.extend(labs)
        buf_labels.append(eos_id)
        while len(buf_ids) >= block_size:
            yield _row(buf_ids[:block_size], buf_labels[:block_size], block_size, pad_id)
            del buf_ids[:block_size]
            del buf_labels[:block_size]
    if buf_ids:
        yield _row(buf_ids, buf_labels, block_size, pad_id)
