"""Attention that respects packing: choose a backend and prove it isolates samples.

Packed rows (see :mod:`diffmodel.preprocess.packing`) are only correct if no
token attends to another sample of its row:

- ``sdpa``, ``eager``, ``flex_attention``: transformers builds a
  block-diagonal causal mask from ``position_ids`` that restart at 0, but only
  when ``attention_mask`` is None and no KV cache is used. The packed
  collator passes no mask; :func:`prepare_for_packing` turns the cache off.
- ``flash_attention_2`` / ``_3``: the kernels see packing only through
  ``cu_seq_lens``; the packed collator flattens each batch into one row and
  passes them.
- ``torch_varlen`` / ``fa4_varlen`` (:mod:`diffmodel.train.varlen`):
  torch's own varlen flash kernels, or flash-attention 4's; rows keep their
  shape and the packed collator passes the ``cu_seq_lens`` of the batch's
  rows laid end to end.

Any other backend, or a model whose attention ignores ``position_ids``, is
refused: :func:`check_isolation` packs probe samples of several lengths
through the collator training uses (flattened for flash attention), runs each
sample alone as well, and raises if a sample's logits differ or are not
finite. It runs at start-up on the path training takes, so a backend that is
wrong on this machine, torch or transformers release is refused there.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from diffmodel.errors import DiffModelError
from diffmodel.preprocess.packing import best_fit_decreasing, pack_row
from diffmodel.train.collate import PackedCollator, sample_lengths
from diffmodel.train.varlen import NAMES as VARLEN_NAMES

logger = logging.getLogger(__name__)

MASK_FROM_POSITIONS = ("sdpa", "eager", "flex_attention")
FLASH = ("flash_attention_2", "flash_attention_3")
PACKING_BACKENDS = MASK_FROM_POSITIONS + FLASH + VARLEN_NAMES


def backend_of(model) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


def prepare_for_packing(model) -> bool:
    """Turn the KV cache off and check the backend; returns True if batches must be flattened (flash)."""
    backend = backend_of(model)
    if backend not in PACKING_BACKENDS:
        raise DiffModelError(
            f"the model uses the {backend!r} attention backend, which cannot keep packed samples apart; "
            f"pass --attn_implementation sdpa (or one of {', '.join(PACKING_BACKENDS)}) or drop --packing"
        )
    if getattr(model.config, "use_cache", False):
        logger.info("packing: use_cache turned off (a KV cache disables the per-sample attention mask)")
        model.config.use_cache = False
    for module in model.modules():
        if hasattr(module, "warn_if_padding_and_no_attention_mask"):
            module.warn_if_padding_and_no_attention_mask = _rows_are_kept_apart
    return backend in FLASH


def _rows_are_kept_apart(input_ids, attention_mask) -> None:
    """Packed batches carry no attention mask on purpose (samples are kept apart by ``position_ids`` or
    ``cu_seq_lens``, and a row's padding bears no loss): transformers' check for padded ``input_ids`` without a
    mask (GPT-2's decoder runs it at every forward) would warn wrongly, and on a GPU wait for it each step."""


def needs_boundaries(model) -> bool:
    """Whether packed batches must carry ``cu_seq_lens`` over rows that keep their shape (the varlen backends)."""
    return backend_of(model) in VARLEN_NAMES


#: Lengths of the probe's samples: several rows, a sample of one token, and a pad segment from the collator.
PROBE_LENGTHS = (9, 5, 1, 7, 3, 6)
PROBE_ROW = 16


def probe_rows(vocab_size: int, eos_id: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randint(0, vocab_size, (n,), generator=gen).tolist() for n in PROBE_LENGTHS]
    bins = best_fit_decreasing([n + 1 for n in PROBE_LENGTHS], PROBE_ROW)
    return [pack_row([(samples[i], samples[i]) for i in b], eos_id) for b in bins]


@torch.no_grad()
def check_isolation(model, collator=None, tolerance: float = 1e-3, autocast_dtype: torch.dtype | None = None) -> float:
    """Run probe samples packed by ``collator`` and each alone; raise if a sample's logits differ or are not finite.

    The probe goes through the path training takes: the same collator
    (default: :class:`~diffmodel.train.collate.PackedCollator` with pad id 0),
    so a flattened batch with ``cu_seq_lens`` is probed as such, rows of
    different fill, a one-token sample and the collator's pad segment
    included. Returns the largest absolute difference seen. ``tolerance`` is
    relative to the logits' scale (bf16/fp16 models, or ``autocast_dtype``
    set as in mixed-precision training, get 50x more room).
    """
    collator = collator or PackedCollator(0)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    batch = collator(probe_rows(vocab_size, eos_id=vocab_size - 1))  # any id in the vocabulary will do
    for key in ("labels", "loss_index", "loss_targets"):  # logits at every position (not only where the loss is)
        batch.pop(key, None)
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    was_training = model.training
    model.eval()
    worst, scale, bad = 0.0, 0.0, []
    low = autocast_dtype is not None
    try:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=low):
            packed = model(**batch, use_cache=False).logits
            with _reference_backend(model):
                alone_runs = _alone(model, batch)
            for r, start, n, alone in alone_runs:
                got = packed[r : r + 1, start : start + n].float()
                if not (torch.isfinite(got).all() and torch.isfinite(alone).all()):
                    bad.append(f"non-finite logits in the sample at row {r}, tokens {start}-{start + n - 1}")
                else:
                    worst = max(worst, (got - alone.float()).abs().max().item())
                    scale = max(scale, alone.float().abs().max().item())
    finally:
        model.train(was_training)
    tol = tolerance * (50 if low or packed.dtype in (torch.bfloat16, torch.float16) else 1) * (scale or 1.0)
    if worst > tol:
        bad.append(f"logits of a sample differ by {worst:.3g} when packed beside others (allowed {tol:.3g})")
    if bad:
        raise DiffModelError(
            f"packed samples are not isolated with the {backend_of(model)!r} attention backend of this {model.config.model_type} model "
            f"on {device.type} ({'; '.join(bad)}); use --attn_implementation sdpa (or eager), or drop --packing"
        )
    return worst


@contextmanager
def _reference_backend(model):
    """Run the one-by-one references with sdpa when the model uses flex_attention.

    flex_attention compiles a kernel per input shape, and after a few shapes torch stops
    compiling it and runs it unfused (slow) for the rest of the process: the probe's six
    one-sample shapes would do that to training. sdpa on the same weights, with no packing
    involved, gives the same reference.
    """
    backend = backend_of(model)
    if backend != "flex_attention":
        yield
        return
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(backend)


def _alone(model, batch) -> list[tuple[int, int, int, torch.Tensor]]:
    """(row, start, length, logits) of every sample of the batch run alone."""
    out = []
    for r, positions in enumerate(batch["position_ids"].tolist()):
        start = 0
        for n in sample_lengths(positions):
            ids = batch["input_ids"][r : r + 1, start : start + n]
            alone = model(input_ids=ids, position_ids=batch["position_ids"][r : r + 1, start : start + n], use_cache=False).logits
            out.append((r, start, n, alone))
            start += n
    return out
