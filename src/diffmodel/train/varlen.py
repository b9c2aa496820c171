"""``torch_varlen`` / ``fa4_varlen``: packed rows through variable-length flash attention.

``--attn_implementation torch_varlen`` attends within each packed sample with
``torch.nn.attention.varlen.varlen_attn`` (flash-attention's varlen kernels
built into torch on CUDA; no ``flash_attn`` package needed);
``--attn_implementation fa4_varlen`` with flash-attention 4's kernels
(:mod:`diffmodel.train.flash4`; ``pip install --pre flash-attn-4``, Hopper and
Blackwell GPUs). Both work alike: rows keep their
shape: the packed collator adds the sample boundaries of the whole batch
(``cu_seq_lens_q/k`` over its rows laid end to end, and ``max_length_q/k``,
the row width), and :func:`attention` lays the batch's tokens end to end for
the kernel, which skips every pair of tokens from different samples.

Calls without boundaries take the same kernel when they can (no mask, no
cache, bf16/fp16: one causal sequence per row), and transformers' sdpa
attention with the mask transformers built otherwise (padding, a KV cache
while generating, fp32 outside mixed precision),
so a model trained this way also evaluates and generates. On the CPU, where
torch has no varlen kernel, each sample runs through sdpa on its own: same
results, slowly; that is what the CPU tests check. The kernel needs bf16 or
fp16 inputs: under mixed precision (``--bf16``) the queries and keys arrive in
fp32 from the rotary embedding and are cast to the autocast dtype here
(:func:`half_dtype`). On an H200 ``torch_varlen`` measured 1.01x flex_attention's tokens/s at
~110M and 0.95x at ~1B (benchmarks/RESULTS.md), so the fast path does not
choose it.
"""

from __future__ import annotations

import inspect

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from diffmodel.errors import DiffModelError
from diffmodel.train import flash4

NAME = "torch_varlen"
#: flash-attention 4's kernels (:mod:`diffmodel.train.flash4`) in the same layout.
FLASH4 = "fa4_varlen"
NAMES = (NAME, FLASH4)
HALF = (torch.bfloat16, torch.float16)


def available() -> bool:
    """Whether this torch has ``torch.nn.attention.varlen`` (torch 2.10 and later)."""
    try:
        from torch.nn.attention import varlen  # noqa: F401
    except ImportError:
        return False
    return True


#: (varlen_attn, keywords that make it causal, whether it takes ``scale``, whether it takes ``enable_gqa``),
#: read once by :func:`kernel` outside any compiled region (no signature inspection while torch.compile traces)
_KERNEL: tuple | None = None


def kernel() -> tuple:
    """torch's ``varlen_attn`` and how to call it: torch 2.10 took ``is_causal=True``, later releases ``window_size=(-1, 0)``."""
    global _KERNEL
    if _KERNEL is None:
        from torch.nn.attention.varlen import varlen_attn

        params = inspect.signature(varlen_attn).parameters
        causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
        _KERNEL = (varlen_attn, causal, "scale" in params, "enable_gqa" in params)
    return _KERNEL


def register() -> None:
    """Make ``torch_varlen`` and ``fa4_varlen`` names transformers accepts as ``attn_implementation`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    for name, function in ((NAME, attention), (FLASH4, attention_flash4)):
        AttentionInterface.register(name, function)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)  # the mask of calls without boundaries
    if available():
        kernel()


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seq_lens_q=None,
              cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs):
    """transformers' attention interface: ``query`` (batch, heads, length, dim) in, (batch, length, heads, dim) out."""
    return _attend(NAME, _kernel, module, query, key, value, attention_mask, scaling, dropout, cu_seq_lens_q,
                   cu_seq_lens_k, max_length_q, max_length_k, **kwargs)


def attention_flash4(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seq_lens_q=None,
                     cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs):
    """:func:`attention` with flash-attention 4's kernels."""
    return _attend(FLASH4, _flash4_kernel, module, query, key, value, attention_mask, scaling, dropout, cu_seq_lens_q,
                   cu_seq_lens_k, max_length_q, max_length_k, **kwargs)


def _attend(name, gpu_kernel, module, query, key, value, attention_mask, scaling, dropout, cu_seq_lens_q,
            cu_seq_lens_k, max_length_q, max_length_k, **kwargs):
    batch, heads, length, dim = query.shape
    half = half_dtype(query)
    if cu_seq_lens_q is None:
        # no boundaries: a mask (padding), a KV cache (generating) or full precision on a GPU (the kernel takes
        # bf16/fp16; generation during training runs outside autocast) go to sdpa
        if attention_mask is not None or key.shape[2] != length or (query.is_cuda and half is None):
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        cu_seq_lens_q = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=query.device)
        max_length_q = length
    window = kwargs.get("sliding_window")
    if window is not None and window < int(max_length_q):
        raise DiffModelError(f"--attn_implementation {name}: this model attends within a sliding window of {window} tokens, "
                             f"which the varlen kernels do not apply, and a sample here can be {int(max_length_q)} tokens "
                             f"long; use --attn_implementation flex_attention (or sdpa), or --block_size {window} or less")
    cu_k = cu_seq_lens_k if cu_seq_lens_k is not None else cu_seq_lens_q
    max_k = max_length_k if max_length_k is not None else max_length_q
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * length, value.shape[1], dim)
    if half is not None and q.dtype != half:
        q, k, v = q.to(half), k.to(half), v.to(half)
    scale = scaling if scaling is not None else dim ** -0.5
    if q.is_cuda:
        out = gpu_kernel(q, k, v, cu_seq_lens_q.to(torch.int32), cu_k.to(torch.int32), int(max_length_q), int(max_k), scale)
    else:
        out = _per_sample(q, k, v, cu_seq_lens_q, scale)
    return out.reshape(batch, length, heads, dim), None


def half_dtype(query: torch.Tensor) -> torch.dtype | None:
    """The dtype attention runs in: the query's own when bf16/fp16, else the autocast dtype when autocast is on for
    its device, else None (full precision).

    Under ``--bf16`` transformers' Llama-style rotary embedding returns fp32 queries and keys (its cos/sin follow the
    fp32 hidden states), and autocast casts them back to bf16 only for the ops it knows, such as sdpa; the varlen
    kernel is not one of them, so this module casts as autocast would."""
    if query.dtype in HALF:
        return query.dtype
    kind = query.device.type
    if torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        if dtype in HALF:
            return dtype
    return None


def _needs_half(q, name: str) -> None:
    if q.dtype not in HALF:
        raise DiffModelError(f"--attn_implementation {name} runs flash kernels, which take bf16 or fp16, not {q.dtype}: "
                             "train with --bf16 (or --fp16), or use --attn_implementation flex_attention")


def _flash4_kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    _needs_half(q, FLASH4)
    return flash4.varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale)


def _kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    _needs_half(q, NAME)
    varlen_attn, causal, takes_scale, takes_gqa = _KERNEL or kernel()
    extra = dict(causal)
    if takes_scale:
        extra["scale"] = scale
    elif abs(scale - q.shape[-1] ** -0.5) > 1e-12:
        raise DiffModelError(f"this torch's varlen_attn has no scale argument, and the model scales attention by {scale:g}; "
                             "use --attn_implementation flex_attention")
    if k.shape[1] != q.shape[1]:
        if takes_gqa:
            extra["enable_gqa"] = True
        else:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **extra)


def _per_sample(q, k, v, cu, scale):
    """Each sample through sdpa alone (the CPU, where torch has no varlen kernel)."""
    out = torch.empty_like(q)
    groups = q.shape[1] // k.shape[1]
    edges = cu.tolist()
    for start, end in zip(edges, edges[1:]):
        if end <= start:
            continue
        qs = q[start:end].transpose(0, 1)
        ks = k[start:end].transpose(0, 1).repeat_interleave(groups, dim=0)
        vs = v[start:end].transpose(0, 1).repeat_interleave(groups, dim=0)
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale).transpose(0, 1)
    return out
