"""A varlen attention kernel pair as torch custom operators that torch.compile keeps in one graph.

A kernel called from Python (flash-attention 4's CuTe functions, aten entries with no fake version such as
cuDNN's varlen attention) is opaque to torch.compile: the graph breaks around it, or tracing fails. :func:`define`
wraps a forward and a backward function as ``diffmodel::NAME_fwd`` / ``diffmodel::NAME_bwd`` with shape-only fake
versions and an autograd formula, so a compiled model keeps one graph around them and inductor fuses what
surrounds them. Both take the packed batch's tokens laid end to end: queries (tokens, heads, dim), keys and values
(tokens, key heads, dim), the samples' boundaries (int32, samples + 1) and longest lengths; attention is causal
within each sample.
"""

from __future__ import annotations

from typing import Callable

import torch


def define(name: str, forward: Callable, backward: Callable, lse_shape: Callable[[int, int], tuple[int, ...]]) -> tuple:
    """The custom operators of one kernel pair: ``forward(q, k, v, cu_q, cu_k, max_q, max_k, scale)`` gives the
    output and the log-sum-exp (float32, shaped ``lse_shape(tokens, heads)``); ``backward(dout, q, k, v, out, lse,
    cu_q, cu_k, max_q, max_k, scale)`` gives the gradients of q, k and v. Returns the two operators."""

    @torch.library.custom_op(f"diffmodel::{name}_fwd", mutates_args=())
    def fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
            max_q: int, max_k: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = forward(q, k, v, cu_q, cu_k, max_q, max_k, scale)
        return out.contiguous(), lse.contiguous()  # the strides the fake versions promise torch.compile

    @fwd.register_fake
    def _(q, k, v, cu_q, cu_k, max_q, max_k, scale):
        total, heads, _ = q.shape
        return q.new_empty((total, heads, v.shape[-1])), q.new_empty(lse_shape(total, heads), dtype=torch.float32)

    @torch.library.custom_op(f"diffmodel::{name}_bwd", mutates_args=())
    def bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: int, max_k: int,
            scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dq, dk, dv = backward(dout.contiguous(), q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale)
        return dq.contiguous(), dk.contiguous(), dv.contiguous()

    @bwd.register_fake
    def _(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup(ctx, inputs, output):
        q, k, v, cu_q, cu_k, max_q, max_k, scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
        ctx.sizes = (max_q, max_k, scale)

    def grads(ctx, dout, dlse):
        q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = bwd(dout, q, k, v, out, lse, cu_q, cu_k, *ctx.sizes)
        return dq, dk, dv, None, None, None, None, None

    fwd.register_autograd(grads, setup_context=setup)
    return fwd, bwd
