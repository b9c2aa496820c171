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

Any other backend, or a model whose attention ignores ``position_ids``, is
refused: :func:`check_isolation` runs two samples packed in one row and the
second alone, and raises if its logits differ.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from diffmodel.errors import DiffModelError

logger = logging.getLogger(__name__)

MASK_FROM_POSITIONS = ("sdpa", "eager", "flex_attention")
FLASH = ("flash_attention_2", "flash_attention_3")
PACKING_BACKENDS = MASK_FROM_POSITIONS + FLASH


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def choose_attention(requested: str | None, packing: bool) -> str | None:
    """The backend to load the model with: the user's, else flash-attn for packing on a GPU when installed, else the model's default."""
    if requested:
        if packing and requested not in PACKING_BACKENDS:
            raise DiffModelError(
                f"--attn_implementation {requested} cannot keep packed samples apart; use one of {', '.join(PACKING_BACKENDS)} or drop --packing"
            )
        return requested
    if packing and flash_attn_available():
        logger.info("packing: flash-attn is installed, using flash_attention_2 (override with --attn_implementation)")
        return "flash_attention_2"
    return None


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
    return backend in FLASH


@torch.no_grad()
def check_isolation(model, vocab_size: int | None = None, length: int = 8, tolerance: float = 1e-3) -> float:
    """Run [a | b] packed with restarting positions and b alone; raise if b's logits differ.

    Returns the largest absolute difference seen. ``tolerance`` is relative to
    the logits' scale (bf16 models get 50x more room).
    """
    vocab_size = vocab_size or model.get_input_embeddings().weight.shape[0]
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, vocab_size, (1, length), generator=gen)
    b = torch.randint(0, vocab_size, (1, length), generator=gen)
    pos = torch.arange(length).unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        packed = model(input_ids=torch.cat([a, b], 1).to(device), position_ids=torch.cat([pos, pos], 1).to(device), use_cache=False).logits[:, length:]
        alone = model(input_ids=b.to(device), position_ids=pos.to(device), use_cache=False).logits
    finally:
        model.train(was_training)
    diff = (packed.float() - alone.float()).abs().max().item()
    scale = alone.float().abs().max().item() or 1.0
    tol = tolerance * (50 if alone.dtype in (torch.bfloat16, torch.float16) else 1)
    if diff > tol * scale:
        raise DiffModelError(
            f"packed samples are not isolated with the {backend_of(model)!r} attention backend of this {model.config.model_type} model "
            f"(logits of a sample differ by {diff:.3g} when packed behind another); use --attn_implementation sdpa or drop --packing"
        )
    return diff
