"""fa4_varlen: flash-attention 4's varlen kernels behind torch custom operators.

The kernels need a Hopper or Blackwell GPU (``benchmarks/train_throughput.py --check`` runs them there). Here the
operators' wiring is tested with the interface replaced by causal math attention of the same signature: the
forward returns what the kernel returns, the backward hands the kernel what it needs and returns its gradients,
and torch.compile traces the operators as one graph. That a model named ``fa4_varlen`` keeps packed samples apart
(on the CPU each sample runs through sdpa, as ``torch_varlen`` does) is tested in tests/test_varlen.py.
"""

import sys
from pathlib import Path

import pytest
import torch

from diffmodel.errors import DiffModelError
from diffmodel.train import fast_path, flash4, varlen
from diffmodel.train.args import SpeedArguments

sys.path.insert(0, str(Path(__file__).parent))
import varlen_math  # noqa: E402


class MathInterface:
    """flash_attn.cute.interface's two private entry points as this module calls them, in math."""

    def __init__(self):
        self.calls = []

    def _flash_attn_fwd(self, q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                        causal, return_lse):
        self.calls.append(("fwd", causal, return_lse, max_seqlen_q, cu_seqlens_k is cu_seqlens_q))
        out, lse = varlen_math.forward(q, k, v, cu_seqlens_q, softmax_scale)
        return out, lse, None, None, None

    def _flash_attn_bwd(self, q, k, v, out, dout, lse, scale, causal, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                        max_seqlen_k):
        self.calls.append(("bwd", causal, dout.is_contiguous(), max_seqlen_k))
        again, again_lse = varlen_math.forward(q, k, v, cu_seqlens_q, scale)
        torch.testing.assert_close(again, out)  # the kernel's own output and log-sum-exp come back
        torch.testing.assert_close(again_lse, lse)
        return varlen_math.backward(q, k, v, out, dout, lse, cu_seqlens_q, scale)


@pytest.fixture
def math_kernels(monkeypatch):
    interface = MathInterface()
    monkeypatch.setattr(flash4, "_interface", lambda: interface)
    return interface


def test_forward_and_backward_go_through_the_kernels(math_kernels):
    varlen_math.assert_like_math(flash4.varlen)
    assert math_kernels.calls == [("fwd", True, True, 4, True), ("bwd", True, True, 4)]


def test_torch_compile_traces_the_operators_as_one_graph(math_kernels):
    varlen_math.assert_like_math(flash4.varlen, compiled=True)


def test_the_fake_kernels_give_the_real_shapes():
    q, k, v, cu = varlen_math.inputs()
    v = torch.randn(9, 2, 16)  # a value head size of its own
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        out, lse = flash4._fwd(*(mode.from_tensor(t) for t in (q, k, v, cu, cu)), 4, 4, 0.3)
        dq, dk, dv = flash4._bwd(*(mode.from_tensor(t) for t in (torch.zeros(9, 4, 16), q, k, v, torch.zeros(9, 4, 16),
                                                                 torch.zeros(4, 9), cu, cu)), 4, 4, 0.3)
    assert out.shape == (9, 4, 16) and lse.shape == (4, 9) and lse.dtype == torch.float32
    assert (dq.shape, dk.shape, dv.shape) == ((9, 4, 8), (9, 2, 8), (9, 2, 16))


def test_fp32_is_refused_with_the_fix():
    q = torch.zeros(4, 2, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(DiffModelError, match="fa4_varlen.*--bf16"):
        varlen._flash4_kernel(q, q, q, cu, cu, 4, 4, 0.35)


H200 = fast_path.Facts(cuda=True, flash_attn=False, flex_attention=True, liger=False, capability=(9, 0), flash4=True)


@pytest.mark.parametrize("facts, half, expected", [
    (H200, True, []),
    (H200, False, ["runs flash kernels, which take bf16 or fp16: add --bf16"]),
    (fast_path.Facts(cuda=True, flash_attn=False, flex_attention=True, liger=False, capability=(9, 0)), True,
     ["flash-attention 4 is not installed (pip install --pre flash-attn-4, with [cu13] for a CUDA 13 torch)"]),
    (fast_path.Facts(cuda=True, flash_attn=False, flex_attention=True, liger=False, capability=(8, 0), flash4=True),
     True, ["not this GPU's 8.0; use flex_attention or torch_varlen"]),
    (fast_path.Facts(cuda=False, flash_attn=False, flex_attention=True, liger=False, flash4=True), False, []),
])
def test_problems_name_the_fix(facts, half, expected):
    found = fast_path.problems(SpeedArguments(), varlen.FLASH4, True, facts, half=half)
    assert len(found) == len(expected) and all(e in f for e, f in zip(expected, found))


def test_padding_free_stays_off_and_capabilities():
    choice = fast_path.choose_padding_free("auto", varlen.FLASH4, True)
    assert choice.value is False and "nearly full" in choice.reason
    assert flash4.supports((9, 0)) and flash4.supports((10, 0))
    assert not flash4.supports((8, 0)) and not flash4.supports(None)


def test_flash_attn_4_alone_is_not_flash_attn_2(monkeypatch, tmp_path):
    # flash-attn-4 installs the flash_attn.cute package only: flash_attention_2 must not be chosen for it
    (tmp_path / "flash_attn" / "cute").mkdir(parents=True)
    (tmp_path / "flash_attn" / "cute" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert flash4.installed()
    assert not fast_path.flash_attn_2_installed()
    facts = fast_path.probe_facts()
    assert facts.flash4 and not facts.flash_attn


def test_the_log_says_why_installed_flash_attention_4_is_not_chosen():
    choice = fast_path.choose_attention(None, True, H200)
    assert choice.value == "flex_attention"
    assert "flash-attention 4 is installed, but its attention ran 0.70x-0.96x" in choice.reason
    assert "--attn_implementation fa4_varlen uses it" in choice.reason
    without = fast_path.Facts(cuda=True, flash_attn=False, flex_attention=True, liger=False, capability=(9, 0))
    assert "flash-attention 4" not in fast_path.choose_attention(None, True, without).reason
    a100 = fast_path.Facts(cuda=True, flash_attn=False, flex_attention=True, liger=False, capability=(8, 0), flash4=True)
    assert "flash-attention 4" not in fast_path.choose_attention(None, True, a100).reason  # no kernels for it there
    assert fast_path.choose_attention(varlen.FLASH4, True, H200).value == varlen.FLASH4
