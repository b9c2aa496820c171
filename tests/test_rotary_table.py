"""The rotary tables kept (diffmodel.train.rotary_table): the model's own values, and compiled kernels that no
longer compute cos and sin for every head of every layer."""

from __future__ import annotations

import re

import pytest
import torch
import transformers
from test_rotary_layout import CONFIGS, loss_and_grads, tiny

from diffmodel.train import rotary_table


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_eager_loss_and_gradients_are_the_models_own_bit_for_bit(kind):
    model = tiny(kind)
    loss, grads = loss_and_grads(model)
    assert rotary_table.install(model) == 1
    try:
        kept_loss, kept_grads = loss_and_grads(model)
    finally:
        rotary_table.uninstall(model)
    assert torch.equal(loss, kept_loss)
    assert all(torch.equal(grads[n], kept_grads[n]) for n in grads)


def test_install_is_once_a_module_and_uninstall_removes_the_hook():
    model = tiny()
    rotary = model.model.rotary_emb
    assert rotary_table.install(model) == 1 and rotary_table.install(model) == 1
    assert len(rotary._forward_hooks) == 1
    rotary_table.uninstall(model)
    assert len(rotary._forward_hooks) == 0 and not hasattr(rotary, rotary_table.HANDLE)


def test_a_model_without_a_rotary_embedding_module_gets_nothing():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    assert rotary_table.install(gpt2) == 0


def test_the_tables_pass_through_unchanged_and_their_gradients_too():
    cos = torch.randn(2, 5, 8, requires_grad=True)
    sin = torch.randn(2, 5, 8, requires_grad=True)
    kept_cos, kept_sin = rotary_table.kept(cos, sin)
    assert torch.equal(kept_cos, cos) and torch.equal(kept_sin, sin) and kept_cos.data_ptr() != cos.data_ptr()
    (kept_cos * 2 + kept_sin * 3).sum().backward()
    assert torch.equal(cos.grad, torch.full_like(cos, 2.0)) and torch.equal(sin.grad, torch.full_like(sin, 3.0))


def _cos_sin_kernel_calls(codes: list[str]) -> int:
    """How many times the compiled code calls a kernel that computes cos or sin (inductor names its kernels after
    the operations fused into them)."""
    calls = 0
    for code in codes:
        names = {n for n in re.findall(r"^(\w+) = async_compile\.\w+\(", code, re.M) if "cos" in n or "sin" in n}
        calls += sum(len(re.findall(rf"\b{name}\(", code)) for name in names)
    return calls


def test_compiled_the_tables_are_computed_once_not_in_each_layers_kernels():
    from torch._inductor.utils import run_and_get_code

    layers = 3
    model = tiny(layers=layers)
    eager_loss, eager_grads = loss_and_grads(model)

    def compiled_step():
        torch._dynamo.reset()
        return run_and_get_code(loss_and_grads, torch.compile(model))

    (loss, grads), codes = compiled_step()
    # each layer's rotary kernels, one forward and two backward with the torch scripts/setup.sh installs
    assert _cos_sin_kernel_calls(codes) == 3 * layers
    rotary_table.install(model)
    try:
        (kept_loss, kept_grads), kept_codes = compiled_step()
    finally:
        rotary_table.uninstall(model)
        torch._dynamo.reset()
    assert _cos_sin_kernel_calls(kept_codes) == 1  # the tables' own kernel, once a forward
    torch.testing.assert_close(kept_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for name in eager_grads:
        torch.testing.assert_close(kept_grads[name], eager_grads[name], rtol=1e-4, atol=1e-5)
