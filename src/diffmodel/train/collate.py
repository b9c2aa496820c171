"""Collate laid-out rows into a training batch.

Rows from the pad and concat layouts all have ``block_size`` entries, so the
collator only stacks them; rows of different lengths (data kept as it was with
``--skip_concat``) are right-padded to the longest row of the batch with the
pad id, label IGNORE_INDEX and attention 0. Every column the rows carry
(``attention_mask``, ``position_ids``) is passed to the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
