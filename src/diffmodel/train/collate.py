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
from the sample boundaries. With ``boundaries`` (for ``torch_varlen`` and ``fa4_varlen``, see
:mod:`diffmodel.train.varlen`) rows keep their shape and the batch also
carries ``cu_seq_lens_q/k`` of its rows laid end to end, with
``max_length_q/k`` the row width (one value per shape, so a compiled model
does not see a new constant every batch). With ``loss_positions`` the batch also carries
``loss_index`` / ``loss_targets`` (:mod:`diffmodel.train.loss_logits`). With ``batch_rows`` a batch of
fewer rows (an epoch's last) is filled with rows of pad tokens alone (one pad sample each, no loss), so
a compiled step sees one shape (:mod:`diffmodel.train.full_batches`).

Rows may hold lists, numpy arrays or tensors (``diffmodel train`` gives the
Trainer its datasets in numpy format, so a batch of 16 rows of 2,048 tokens
is collated in under a millisecond instead of ~15 ms of Python list work);
batches are built with numpy and handed over as int64 tensors without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffmodel.errors import DiffModelError
from diffmodel.preprocess.labels import IGNORE_INDEX
from diffmodel.train import loss_logits

PAD_VALUES = {"labels": IGNORE_INDEX, "attention_mask": 0, "position_ids": 0}


def _stack(rows: list[dict], column: str, width: int, fill: int) -> np.ndarray:
    """Rows' ``column`` as one (rows, width) int64 array, right-filled with ``fill``."""
    out = np.full((len(rows), width), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        values = np.asarray(r[column])
        out[i, : len(values)] = values
    return out


@dataclass
class RowCollator:
    pad_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(r["input_ids"]) for r in rows]
        width = max(lengths)
        columns = [c for c in ("input_ids", "labels", "attention_mask", "position_ids") if c in rows[0]]
        batch = {c: torch.from_numpy(_stack(rows, c, width, PAD_VALUES.get(c, self.pad_id))) for c in columns}
        if "attention_mask" not in batch and min(lengths) < width:
            batch["attention_mask"] = torch.from_numpy((np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64))
        return batch


def boundaries(positions) -> torch.Tensor:
    """``cu_seq_lens`` (int32) of packed rows laid end to end: a sample starts where its position is 0."""
    flat = np.asarray(positions).reshape(-1)
    starts = np.flatnonzero(flat == 0)
    if len(starts) == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    return torch.from_numpy(np.concatenate([starts, [len(flat)]]).astype(np.int32))


def sample_lengths(position_ids) -> list[int]:
    """Lengths of the samples of a packed row (a list or array), read from where positions restart at 0."""
    return np.diff(boundaries(position_ids).numpy()).tolist()


@dataclass
class PackedCollator:
    pad_id: int
    flatten: bool = False
    pad_to_multiple_of: int = 8
    boundaries: bool = False
    loss_positions: bool = False
    """add ``loss_index`` and ``loss_targets`` (:mod:`diffmodel.train.loss_logits`)"""
    batch_rows: int = 0
    """fill a batch of fewer rows to this many with rows of pad tokens (0: as it comes; not with ``flatten``)"""

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if any("attention_mask" in r for r in rows):
            raise DiffModelError(
                "packed rows carry an attention_mask, which would let samples attend to each other; "
                "lay the data out again with --packing (drop --skip_concat) or drop --packing"
            )
        if self.flatten:
            return self._flat(rows)
        if len(rows) < self.batch_rows:  # the pad segment of an empty row is the whole row
            rows = list(rows) + [{"input_ids": [], "labels": [], "position_ids": []}] * (self.batch_rows - len(rows))
        lengths = np.asarray([len(r["input_ids"]) for r in rows])
        m = self.pad_to_multiple_of
        width = int(lengths.max())
        width = -(-width // m) * m if m else width
        # the pad tokens after a row form one more sample: positions from 0
        positions = _stack(rows, "position_ids", width, 0)
        tail = np.arange(width)[None, :] - lengths[:, None]
        positions = np.where(tail >= 0, tail, positions)
        labels = _stack(rows, "labels", width, IGNORE_INDEX)
        batch = {
            "input_ids": torch.from_numpy(_stack(rows, "input_ids", width, self.pad_id)),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(positions),
        }
        if self.boundaries:
            cu = boundaries(positions)
            batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=width, max_length_k=width)
        return self._with_loss_positions(batch, labels)

    def _with_loss_positions(self, batch: dict, labels: np.ndarray) -> dict:
        if self.loss_positions:
            index, targets = loss_logits.positions(labels, minimum=loss_logits.MINIMUM)
            batch.update({loss_logits.INDEX: torch.from_numpy(index), loss_logits.TARGETS: torch.from_numpy(targets)})
        return batch

    def _flat(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        def flat(column):
            return np.concatenate([np.asarray(r[column], dtype=np.int64) for r in rows])[None, :]

        pos = flat("position_ids")
        cu = boundaries(pos)
        longest = int((cu[1:] - cu[:-1]).max())
        labels = flat("labels")
        return self._with_loss_positions({
            "input_ids": torch.from_numpy(flat("input_ids")),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(pos),
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": longest,
            "max_length_k": longest,
        }, labels)
