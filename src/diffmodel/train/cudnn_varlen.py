"""cuDNN's flash attention over packed samples (``--attn_implementation cudnn_varlen``).

cuDNN 9 (shipped with torch's CUDA wheels) has fused attention kernels that take sequences laid end to end, and
aten reaches them with the samples' boundaries through ``_cudnn_attention_forward`` / ``_cudnn_attention_backward``.
torch's own ``varlen_attn`` does not choose them (its cuDNN branch is switched off in torch 2.11-2.13), and
neither aten entry has a fake version, so torch.compile cannot trace them: this module wraps the pair as custom
operators (``diffmodel::cudnn_fwd`` / ``diffmodel::cudnn_bwd``, :mod:`diffmodel.train.varlen_ops`).
:mod:`diffmodel.train.varlen` calls :func:`varlen` with the packed batch's tokens laid end to end; causal within
each sample, key heads grouped or not (cuDNN takes fewer key than query heads as they are).

Why: in the ~1B profiles of benchmarks/RESULTS.md cuDNN ran whole-row causal attention (about 1.5x the work by an
estimate) in about the time flex_attention took for the packed rows. It is not chosen by default until
``benchmarks/flex_options.py`` (arm ``cudnn_varlen``) and ``benchmarks/train_default.py`` measure it.
"""

from __future__ import annotations

import torch

from diffmodel.errors import DiffModelError
from diffmodel.train import varlen_ops

#: the first cuDNN release whose fused attention takes sequences laid end to end with their boundaries
MIN_VERSION = 90000


def lse_shape(total: int, heads: int) -> tuple[int, int, int]:
    """The log-sum-exp cuDNN gives for sequences laid end to end: one per token and head."""
    return (total, heads, 1)


def supported() -> str | None:
    """None when this torch can run cuDNN's varlen attention on its GPU, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if not torch.backends.cudnn.is_available():
        return f"this torch {torch.__version__} has no cuDNN"
    version = torch.backends.cudnn.version() or 0
    if version < MIN_VERSION:
        return f"its cuDNN is {version}, and the varlen attention needs cuDNN 9 (9.0.0, {MIN_VERSION}) or later"
    return None


def _aten():
    """aten's operators (the tests give math of the same signatures)."""
    return torch.ops.aten


def _forward(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    result = _aten()._cudnn_attention_forward(q, k, v, None, cu_q, cu_k, max_q, max_k, True, 0.0, True, False,
                                                     scale=scale)
    out, lse = result[0], result[1]
    want = lse_shape(q.shape[0], q.shape[1])
    if tuple(lse.shape) != want:
        raise DiffModelError(f"--attn_implementation cudnn_varlen: cuDNN gave a log-sum-exp of shape {tuple(lse.shape)}, "
                             f"not the {want} this module declares to torch.compile (torch {torch.__version__}, "
                             f"cuDNN {torch.backends.cudnn.version()}); use --attn_implementation flex_attention")
    return out, lse


def _backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale):
    # no dropout: the random generator's seed and offset are not used, but given (as the forward gives them)
    unused = torch.zeros(1, dtype=torch.int64, device=q.device)
    dq, dk, dv = _aten()._cudnn_attention_backward(
        grad_out=dout, query=q, key=k, value=v, out=out, logsumexp=lse, philox_seed=unused, philox_offset=unused,
        attn_bias=None, cum_seq_q=cu_q, cum_seq_k=cu_k, max_q=max_q, max_k=max_k, dropout_p=0.0, is_causal=True,
        scale=scale)
    return dq, dk, dv


_fwd, _bwd = varlen_ops.define("cudnn", _forward, _backward, lse_shape)


def varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
           max_q: int, max_k: int, scale: float) -> torch.Tensor:
    """Causal attention within each sample: ``q`` (tokens, heads, dim), ``k``/``v`` (tokens, key heads, dim), the
    samples' boundaries ``cu_q``/``cu_k`` (int32, samples + 1) and longest lengths; returns (tokens, heads, dim)."""
    return _fwd(q, k, v, cu_q, cu_k, max_q, max_k, scale)[0]
