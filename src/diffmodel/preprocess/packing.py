"""Packing: whole samples into rows of at most ``block_size`` tokens, isolated.

A third layout beside pad and concat (see :mod:`diffmodel.preprocess.layout`).
Samples (each + EOS) are assigned to rows by best-fit decreasing: longest
first, each into the row whose free space is the smallest that still holds
it. No sample is ever split. Within a row::

    input_ids     a0 a1 a2 EOS b0 b1 EOS c0 EOS
    labels        .  a1 a2 EOS .  b1 EOS .  EOS     (. = IGNORE_INDEX)
    position_ids  0  1  2  3   0  1  2   0  1

- ``position_ids`` restart at 0 for each sample; with no ``attention_mask``
  (and no KV cache) transformers builds a block-diagonal causal mask from
  them, so no token attends to another sample.
- The first label of every sample is ignored: HF models shift labels inside
  the model, so that label would be predicted by the previous sample's EOS.
  (With ``--train_diff_model`` it is context anyway.)
- Rows carry no ``attention_mask``; the collator pads a batch to its longest
  row with an extra segment of pad tokens whose labels are ignored.

Invariants: a row holds at most ``block_size`` tokens; the multiset of
samples in the rows equals the input; the assignment depends only on the
sample lengths and their order.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from diffmodel.preprocess.labels import IGNORE_INDEX

PACKED_COLUMNS = ("input_ids", "labels", "position_ids")


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign items (by index) to bins of ``capacity``; returns the bins, each a list of indices.

    Bins are returned in creation order, items within a bin in insertion order
    (longest first). Raises ValueError for an item longer than ``capacity``.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free_values: list[int] = []  # sorted distinct free capacities that some bin has
    bins_with_free: dict[int, list[int]] = {}  # free capacity -> bin ids (LIFO)
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"item {i} of {size} tokens is longer than the row capacity {capacity}")
        k = bisect.bisect_left(free_values, size)
        if k < len(free_values):
            free = free_values[k]
            bucket = bins_with_free[free]
            b = bucket.pop()
            if not bucket:
                del bins_with_free[free]
                free_values.pop(k)
        else:
            b = len(bins)
            bins.append([])
            free = capacity
        bins[b].append(i)
        left = free - size
        if left > 0:
            if left not in bins_with_free:
                bisect.insort(free_values, left)
                bins_with_free[left] = []
            bins_with_free[left].append(b)
    return bins


def pack_row(samples: Sequence[tuple[Sequence[int], Sequence[int]]], eos_id: int) -> dict[str, list[int]]:
    """One packed row from ``(input_ids, labels)`` samples (EOS appended to each).

    Args:
        samples: the samples of the row, in order, each ``(input_ids, labels)``.
        eos_id: the tokenizer's EOS id (:func:`diffmodel.preprocess.tokens.eos_id_of`).

    Each sample's first label is ignored (``IGNORE_INDEX``, shown as ``X``) and
    its positions restart at 0:

    >>> row = pack_row([([5, 6, 7], [5, 6, 7]), ([8, 9], [8, 9])], eos_id=0)
    >>> row["input_ids"], row["position_ids"]
    ([5, 6, 7, 0, 8, 9, 0], [0, 1, 2, 3, 0, 1, 2])
    >>> ["X" if label == IGNORE_INDEX else label for label in row["labels"]]
    ['X', 6, 7, 0, 'X', 9, 0]
    """
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for sample_ids, sample_labels in samples:
        n = len(sample_ids) + 1
        ids.extend(sample_ids)
        ids.append(eos_id)
        labels.append(IGNORE_INDEX)
        labels.extend(sample_labels[1:])
        labels.append(eos_id)
        positions.extend(range(n))
    return {"input_ids": ids, "labels": labels, "position_ids": positions}
