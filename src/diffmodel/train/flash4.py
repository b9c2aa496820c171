"""flash-attention 4's varlen kernels as torch operators (``--attn_implementation fa4_varlen``).

flash-attention 4 (``pip install --pre flash-attn-4``: the ``flash_attn.cute``
package, kernels written in CuTe DSL and compiled on first use) has varlen
forward and backward kernels for Hopper (compute capability 9.x) and
Blackwell (10.x) GPUs. Its own autograd function is opaque to
torch.compile, so this module wraps the forward and the backward kernel as
torch custom operators (``diffmodel::flash4_fwd`` / ``diffmodel::flash4_bwd``,
:mod:`diffmodel.train.varlen_ops`).

:func:`varlen` is what :mod:`diffmodel.train.varlen` calls with the packed
batch's tokens laid end to end; causal within each sample, key heads grouped
or not (the kernels take grouped heads as they are).

On an H200 its attention (forward + backward, heads of 64) ran 0.70x
flex_attention's with diffmodel's tiles for 12 heads and 0.96x for 32 query
over 4 key heads (benchmarks/RESULTS.md), so the fast path does not choose it.
"""

from __future__ import annotations

import importlib.util

import torch

from diffmodel.train import varlen_ops

#: Compute capability majors flash-attention 4 has kernels for (Hopper, Blackwell).
MAJORS = (9, 10)


def installed() -> bool:
    """Whether ``flash_attn.cute`` (flash-attn-4) can be found; imports the ``flash_attn`` package (flash-attn-4's
    is empty), not the kernels."""
    try:
        return importlib.util.find_spec("flash_attn.cute") is not None
    except (ImportError, ValueError):
        return False


def supports(capability: tuple[int, int] | None) -> bool:
    """Whether flash-attention 4 has kernels for a GPU of this compute capability (None: no GPU)."""
    return capability is not None and capability[0] in MAJORS


def _interface():
    from flash_attn.cute import interface

    return interface


def _forward(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    out, lse, *_ = _interface()._flash_attn_fwd(
        q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
        softmax_scale=scale, causal=True, return_lse=True)
    return out, lse


def _backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale):
    dq, dk, dv, *_ = _interface()._flash_attn_bwd(
        q, k, v, out, dout, lse, scale, True, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
        max_seqlen_q=max_q, max_seqlen_k=max_k)
    return dq, dk, dv


#: the log-sum-exp is (heads, tokens)
_fwd, _bwd = varlen_ops.define("flash4", _forward, _backward, lambda total, heads: (heads, total))


def varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
           max_q: int, max_k: int, scale: float) -> torch.Tensor:
    """Causal attention within each sample: ``q`` (tokens, heads, dim), ``k``/``v`` (tokens, key heads, dim), the
    samples' boundaries ``cu_q``/``cu_k`` (int32, samples + 1) and longest lengths; returns (tokens, heads, dim)."""
    return _fwd(q, k, v, cu_q, cu_k, max_q, max_k, scale)[0]
