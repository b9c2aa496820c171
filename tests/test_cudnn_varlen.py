"""cudnn_varlen: cuDNN's fused attention over packed samples, behind torch custom operators.

The kernels need a CUDA GPU with cuDNN 9 (``benchmarks/flex_options.py`` arms ``cudnn_varlen*`` and
``benchmarks/train_throughput.py --check`` run them there). Here aten's two entries are replaced by causal math
attention of the same signatures: the forward returns what cuDNN returns, the backward hands cuDNN what it needs
and returns its gradients, torch.compile traces the operators as one graph, a log-sum-exp of another shape is
refused by name. That a model named ``cudnn_varlen`` keeps packed samples apart (on the CPU each sample runs
through sdpa, as ``torch_varlen`` does) is tested in tests/test_varlen.py.
"""

import sys
from pathlib import Path

import pytest
import torch

from diffmodel.errors import DiffModelError
from diffmodel.train import cudnn_varlen, fast_path, varlen
from diffmodel.train.args import SpeedArguments

sys.path.insert(0, str(Path(__file__).parent))
import varlen_math  # noqa: E402


class MathAten:
    """aten's ``_cudnn_attention_forward`` / ``_backward`` as cudnn_varlen calls them, in math; the log-sum-exp laid
    out (tokens, heads, 1) as declared, or as ``lse_layout`` says."""

    def __init__(self, lse_layout=lambda lse: lse.t().unsqueeze(-1)):
        self.calls = []
        self.lse_layout = lse_layout

    def _cudnn_attention_forward(self, q, k, v, attn_bias, cu_q, cu_k, max_q, max_k, compute_log_sumexp, dropout_p,
                                 is_causal, return_debug_mask, *, scale):
        self.calls.append(("fwd", attn_bias, compute_log_sumexp, dropout_p, is_causal, max_q, cu_k is cu_q))
        out, lse = varlen_math.forward(q, k, v, cu_q, scale)
        seed = offset = torch.zeros(1, dtype=torch.int64)
        return out, self.lse_layout(lse), cu_q, cu_k, max_q, max_k, seed, offset, None

    def _cudnn_attention_backward(self, *, grad_out, query, key, value, out, logsumexp, philox_seed, philox_offset,
                                  attn_bias, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal, scale):
        self.calls.append(("bwd", attn_bias, dropout_p, is_causal, grad_out.is_contiguous(), max_k,
                           philox_seed.numel(), philox_offset.numel()))
        assert logsumexp.shape == (query.shape[0], query.shape[1], 1)  # the forward's own, as it gave it
        again, _ = varlen_math.forward(query, key, value, cum_seq_q, scale)
        torch.testing.assert_close(again, out)
        return varlen_math.backward(query, key, value, out, grad_out, logsumexp[..., 0].t(), cum_seq_q, scale)


@pytest.fixture
def math_kernels(monkeypatch):
    aten = MathAten()
    monkeypatch.setattr(cudnn_varlen, "_aten", lambda: aten)
    return aten


def test_forward_and_backward_go_through_the_kernels(math_kernels):
    varlen_math.assert_like_math(cudnn_varlen.varlen)
    assert math_kernels.calls == [("fwd", None, True, 0.0, True, 4, True), ("bwd", None, 0.0, True, True, 4, 1, 1)]


def test_torch_compile_traces_the_operators_as_one_graph(math_kernels):
    varlen_math.assert_like_math(cudnn_varlen.varlen, compiled=True)


def test_the_fake_kernels_give_the_declared_shapes():
    q, k, v, cu = varlen_math.inputs()
    v = torch.randn(9, 2, 16)  # a value head size of its own
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        out, lse = cudnn_varlen._fwd(*(mode.from_tensor(t) for t in (q, k, v, cu, cu)), 4, 4, 0.3)
        dq, dk, dv = cudnn_varlen._bwd(*(mode.from_tensor(t) for t in (torch.zeros(9, 4, 16), q, k, v, torch.zeros(9, 4, 16),
                                                                       torch.zeros(9, 4, 1), cu, cu)), 4, 4, 0.3)
    assert out.shape == (9, 4, 16) and lse.shape == (9, 4, 1) and lse.dtype == torch.float32
    assert (dq.shape, dk.shape, dv.shape) == ((9, 4, 8), (9, 2, 8), (9, 2, 16))


def test_a_log_sum_exp_of_another_shape_is_refused_by_name(monkeypatch):
    aten = MathAten(lse_layout=lambda lse: lse)  # (heads, tokens), as flash attention lays it out
    monkeypatch.setattr(cudnn_varlen, "_aten", lambda: aten)
    q, k, v, cu = varlen_math.inputs()
    with pytest.raises(DiffModelError, match=r"log-sum-exp of shape \(4, 9\), not the \(9, 4, 1\).*flex_attention"):
        cudnn_varlen.varlen(q, k, v, cu, cu, 4, 4, 0.35)


def test_fp32_is_refused_with_the_fix():
    q = torch.zeros(4, 2, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(DiffModelError, match="cudnn_varlen.*--bf16"):
        varlen._cudnn_kernel(q, q, q, cu, cu, 4, 4, 0.35)


H200 = fast_path.Facts(cuda=True, flash_attn=False, flex_attention=True, liger=False, capability=(9, 0))


@pytest.mark.parametrize("facts, half, unsupported, expected", [
    (H200, True, None, []),
    (H200, False, None, ["runs flash kernels, which take bf16 or fp16: add --bf16"]),
    (H200, True, "its cuDNN is 8902, and the varlen attention needs cuDNN 9",
     ["--attn_implementation cudnn_varlen: its cuDNN is 8902, and the varlen attention needs cuDNN 9",
      "use flex_attention or torch_varlen"]),
    (fast_path.Facts(cuda=False, flash_attn=False, flex_attention=True, liger=False), False, "no CUDA GPU", []),
])
def test_problems_name_the_fix(monkeypatch, facts, half, unsupported, expected):
    monkeypatch.setattr(cudnn_varlen, "supported", lambda: unsupported)
    found = fast_path.problems(SpeedArguments(), varlen.CUDNN, True, facts, half=half)
    assert len(found) == (1 if expected else 0) and all(e in found[0] for e in expected)


def test_offered_but_not_chosen_by_default():
    assert fast_path.choose_attention(None, True, H200).value == "flex_attention"
    assert fast_path.choose_attention(varlen.CUDNN, True, H200).value == varlen.CUDNN
    choice = fast_path.choose_padding_free("auto", varlen.CUDNN, True)
    assert choice.value is False


def test_this_machine_says_why_not(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cudnn_varlen.supported() == "no CUDA GPU"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 8902)
    assert "needs cuDNN 9" in cudnn_varlen.supported()
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    assert cudnn_varlen.supported() is None
