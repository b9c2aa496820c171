"""Causal attention within each sample in plain math, forward and backward: what the varlen kernels compute, for
the tests that stand it in for them (tensors laid end to end: (tokens, heads, dim), boundaries ``cu``)."""

import torch


def forward(q, k, v, cu, scale):
    """The output and the log-sum-exp (heads, tokens); grouped key heads serve ``heads // key heads`` queries each."""
    groups = q.shape[1] // k.shape[1]
    out, lse = torch.zeros_like(q), torch.zeros(q.shape[1], q.shape[0])
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs = q[s:e].transpose(0, 1)
        ks, vs = (t[s:e].transpose(0, 1).repeat_interleave(groups, 0) for t in (k, v))
        w = (qs @ ks.transpose(1, 2)) * scale
        w = w.masked_fill(torch.ones(e - s, e - s, dtype=torch.bool).triu(1), float("-inf"))
        lse[:, s:e] = w.logsumexp(-1)
        out[s:e] = (w.softmax(-1) @ vs).transpose(0, 1)
    return out, lse


def backward(q, k, v, out, dout, lse, cu, scale):
    """The gradients of q, k and v from the output's gradient, the softmax rebuilt from ``lse`` (heads, tokens)."""
    groups = q.shape[1] // k.shape[1]
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, os_, dos = (t[s:e].transpose(0, 1) for t in (q, out, dout))  # (heads, n, dim)
        ks, vs = (t[s:e].transpose(0, 1).repeat_interleave(groups, 0) for t in (k, v))
        p = ((qs @ ks.transpose(1, 2)) * scale - lse[:, s:e, None]).exp().tril()
        dp = dos @ vs.transpose(1, 2)
        ds = p * (dp - (dos * os_).sum(-1, keepdim=True))
        dq[s:e] = (ds @ ks * scale).transpose(0, 1)
        heads = lambda t: t.unflatten(0, (k.shape[1], groups)).sum(1).transpose(0, 1)  # noqa: E731
        dk[s:e] = heads(ds.transpose(1, 2) @ qs * scale)
        dv[s:e] = heads(p.transpose(1, 2) @ dos)
    return dq, dk, dv


def inputs():
    """9 tokens in samples of 2, 4 and 3; 4 query heads over 2 key heads of 8."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(9, 4, 8, generator=g)
    k, v = torch.randn(9, 2, 8, generator=g), torch.randn(9, 2, 8, generator=g)
    cu = torch.tensor([0, 2, 6, 9], dtype=torch.int32)
    return q, k, v, cu


def reference_grads(q, k, v, cu, dout):
    """The output and autograd's gradients of the math forward (scale 8 ** -0.5)."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, _ = forward(q, k, v, cu, 8 ** -0.5)
    return out.detach(), torch.autograd.grad(out, (q, k, v), dout)


def assert_like_math(varlen, compiled=False):
    """``varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale)`` gives the math's output and, from a non-contiguous
    output gradient (as a transpose after attention gives), its gradients; ``compiled``: under torch.compile with
    the whole function in one graph (a graph break raises)."""
    q, k, v, cu = inputs()
    dout = torch.randn(9, 4, 8, generator=torch.Generator().manual_seed(1)).transpose(0, 1).contiguous().transpose(0, 1)
    want, want_grads = reference_grads(q, k, v, cu, dout)
    call = lambda q, k, v: varlen(q, k, v, cu, cu, 4, 4, 8 ** -0.5)  # noqa: E731
    if compiled:
        torch._dynamo.reset()
        call = torch.compile(lambda q, k, v: varlen(q * 1.0, k, v, cu, cu, 4, 4, 8 ** -0.5) * 1.0,
                             backend="aot_eager", fullgraph=True)
    q1, k1, v1 = (t.clone().requires_grad_() for t in (q, k, v))
    out = call(q1, k1, v1)
    torch.testing.assert_close(out, want)
    out.backward(dout)
    for got, expected in zip((q1.grad, k1.grad, v1.grad), want_grads):
        torch.testing.assert_close(got, expected)
    assert k1.grad.shape == (9, 2, 8)  # grouped key heads' gradients keep their own shape
