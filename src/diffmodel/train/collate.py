"""Collate laid-out rows into a training batch.

:class:`RowCollator` (pad and concat layouts): rows all have ``block_size``
entries, so it only stacks them; rows of different lengths (data kept as it
was with ``--skip_concat``) are right-padded to the longest row of the batch
with the pad id, label IGNORE_INDEX and attention 0. Every column the rows
carry (``attention_mask``, ``position_ids``) is passed to the model.

:class:`PackedCollator` (packed rows): never passes an ``attention_mask``
(any 2-D mask turns off transformers' per-sample isolation); pads a batch to
its longest row with one more segment of pad tokens (positions from 0, labels
ignored), so the pad tokens form a sample of their own. With ``flatten`` (for
flash attention, whose kernels only see packing in a batch of one row) the
batch becomes one row, with ``cu_seq_lens_q/k`` and ``max_length_q/k`` built
from the sample boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffmodel.errors import DiffModelError
from diffmodel.preprocess.labels import IGNORE_INDEX

PAD_VALUES = {"labels": IGNORE_INDEX, "attention_mask": 0, "position_ids": 0}


@dataclass
class RowCollator:
    pad_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        columns = [c for c in ("input_ids", "labels", "attention_mask", "position_ids") if c in rows[0]]
        batch = {}
        for c in columns:
            fill = PAD_VALUES.get(c, self.pad_id)
            batch[c] = torch.tensor([list(r[c]) + [fill] * (width - len(r[c])) for r in rows], dtype=torch.long)
        if "attention_mask" not in batch and any(len(r["input_ids"]) < width for r in rows):
            batch["attention_mask"] = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows], dtype=torch.long)
        return batch


def sample_lengths(position_ids: list[int]) -> list[int]:
    """Lengths of the samples of a packed row, read from where positions restart at 0."""
    starts = [i for i, p in enumerate(position_ids) if p == 0]
    return [b - a for a, b in zip(starts, starts[1:] + [len(position_ids)])]


@dataclass
class PackedCollator:
    pad_id: int
    flatten: bool = False
    pad_to_multiple_of: int = 8

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if any("attention_mask" in r for r in rows):
            raise DiffModelError(
                "packed rows carry an attention_mask, which would let samples attend to each other; "
                "lay the data out again with --packing (drop --skip_concat) or drop --packing"
            )
        if self.flatten:
            return self._flat(rows)
        width = max(len(r["input_ids"]) for r in rows)
        m = self.pad_to_multiple_of
        width = -(-width // m) * m if m else width
        ids, labels, pos = [], [], []
        for r in rows:
            pad = width - len(r["input_ids"])
            ids.append(list(r["input_ids"]) + [self.pad_id] * pad)
            labels.append(list(r["labels"]) + [IGNORE_INDEX] * pad)
            pos.append(list(r["position_ids"]) + list(range(pad)))
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(pos)}

    def _flat(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [t for r in rows for t in r["input_ids"]]
        labels = [t for r in rows for t in r["labels"]]
        pos = [t for r in rows for t in r["position_ids"]]
        lengths = sample_lengths(pos)
        cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        longest = max(lengths)
        return {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([pos]),
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": longest,
            "max_length_k": longest,
        }
