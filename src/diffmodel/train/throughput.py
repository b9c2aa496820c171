"""Training speed in the log: tokens per second and model FLOPs utilization (MFU).

At every training log ``diffmodel train`` adds, over the time since the
previous log and summed over every rank:

- ``tokens_per_second``: input tokens (as ``num_tokens`` counts them),
- ``loss_tokens_per_second``: loss-bearing tokens,
- ``mfu``: model FLOPs per second per device over the device's dense
  bf16/fp16 peak, with the model FLOPs of a batch taken as
  ``6 * N * tokens + 12 * L * a * sum(n^2)``: ``N`` the parameters without
  the input embedding (the output projection counted when it is tied to
  it), ``L`` layers, ``a`` the attention width (heads x head size: the
  hidden size in most models, not in all), and ``n`` the length of each
  sequence the model attends over as the batch is laid out (each sample of a
  packed row, the pad segment included; each row of the pad and concat
  layouts). Logged only where the peak is known: a GPU of :data:`PEAKS`
  training in bf16/fp16, or any device with ``DIFFMODEL_PEAK_TFLOPS`` set.

``sum(n^2)`` is taken on the device without a host sync: a sample of ``n``
tokens has positions ``0 .. n-1``, and the sum of ``2p + 1`` over them is
``n^2``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

#: dense bf16/fp16 tensor-core peaks in FLOP/s (vendor data sheets), by a part of the name torch reports;
#: the first match wins, so the more specific names come first
PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)
PEAK_ENV = "DIFFMODEL_PEAK_TFLOPS"


def peak_flops(device_name: str | None, half: bool, env=None) -> float | None:
    """The dense peak for this device in FLOP/s; ``DIFFMODEL_PEAK_TFLOPS`` (in ``env``, default the process
    environment as it is now) wins; None when not known."""
    given = (os.environ if env is None else env).get(PEAK_ENV)
    if given:
        return float(given) * 1e12
    if not device_name or not half:
        return None
    return next((peak for part, peak in PEAKS if part in device_name), None)


def square_sum(inputs: dict) -> torch.Tensor:
    """Sum of n^2 over the sequences a batch is attended as (see the module docstring)."""
    ids = inputs["input_ids"]
    cu = inputs.get("cu_seq_lens_q")
    if cu is not None:
        lengths = (cu[1:] - cu[:-1]).to(torch.int64)
        return (lengths * lengths).sum()
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        rows = mask.sum(-1).to(torch.int64)
        return (rows * rows).sum()
    positions = inputs.get("position_ids")
    if positions is not None and mask is None:
        return (2 * positions.to(torch.int64) + 1).sum()
    return torch.full((), ids.shape[0] * ids.shape[-1] ** 2, dtype=torch.int64, device=ids.device)  # no host copy


@dataclass(frozen=True)
class ModelShape:
    params: int  # without the input embedding
    layers: int
    hidden: int
    width: int | None = None  # attention heads x head size, when it is not ``hidden``


def model_shape(model) -> ModelShape | None:
    """The shape the FLOPs formula needs; None for a model without a transformers config."""
    config = getattr(model, "config", None)
    try:
        layers, hidden = int(config.num_hidden_layers), int(config.hidden_size)
        embedding = model.get_input_embeddings().weight
    except (AttributeError, TypeError):
        return None
    params = sum(p.numel() for p in model.parameters()) - embedding.numel()
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and output.weight is embedding:  # tied: the projection to the vocabulary still runs
        params += embedding.numel()
    return ModelShape(params, layers, hidden, attention_width(config))


def attention_width(config) -> int | None:
    """Heads x head size when the config tells both and they differ from the hidden size, else None."""
    from diffmodel.train.model import head_dim_of

    heads, head_dim = getattr(config, "num_attention_heads", None), head_dim_of(config)
    if isinstance(heads, int) and head_dim and heads * head_dim != getattr(config, "hidden_size", None):
        return heads * head_dim
    return None


def model_flops(shape: ModelShape, tokens: int, squares: int) -> float:
    return 6.0 * shape.params * tokens + 12.0 * shape.layers * (shape.width or shape.hidden) * squares


def rates(tokens: int, loss_tokens: int, squares: int, seconds: float, shape: ModelShape | None,
          devices: int, peak: float | None) -> dict[str, float]:
    """The log entries for ``seconds`` of training (counts summed over ``devices`` ranks)."""
    if seconds <= 0:
        return {}
    out = {"tokens_per_second": round(tokens / seconds, 1), "loss_tokens_per_second": round(loss_tokens / seconds, 1)}
    if shape is not None and peak:
        out["mfu"] = round(model_flops(shape, tokens, squares) / seconds / max(devices, 1) / peak, 4)
    return out
