"""One product for q/k/v and one for gate/up (--fused_projections): the model's own loss, gradients and weights."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from diffmodel.train import fused_projections, loss_logits

sys.path.insert(0, str(Path(__file__).parent))
from packed_models import VOCAB, packed, samples, sum_loss_and_grads  # noqa: E402
from test_loss_logits import TINY  # noqa: E402

WINDOWED = {"mistral": {"sliding_window": 4}, "qwen2": {"sliding_window": 4, "use_sliding_window": True, "max_window_layers": 0},
            "qwen3": {"sliding_window": 4, "use_sliding_window": True, "max_window_layers": 0}}


def tiny(model_type: str, attn: str = "sdpa", **overrides):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, **{**TINY[model_type], **overrides})
    config._attn_implementation = attn
    config.use_cache = False
    return AutoModelForCausalLM.from_config(config).float().train()


def both(model_type: str, attn: str = "sdpa", **overrides):
    own = tiny(model_type, attn, **overrides)
    ours = copy.deepcopy(own)
    return own, ours, fused_projections.install(ours)


def assert_same(own, ours, batches, tol=1e-6):
    loss, grads = sum_loss_and_grads(own, batches)
    fused_loss, fused_grads = sum_loss_and_grads(ours, batches)
    assert fused_loss == pytest.approx(loss, abs=tol)
    assert grads.keys() == fused_grads.keys()
    for name in grads:
        assert torch.allclose(fused_grads[name], grads[name], atol=tol, rtol=1e-5), name


@pytest.mark.parametrize("model_type", fused_projections.SUPPORTED)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_loss_and_gradients_equal_the_models_own_on_packed_rows(model_type, attn):
    own, ours, count = both(model_type, attn)
    assert count == 2 * own.config.num_hidden_layers  # each layer's attention and MLP
    assert_same(own, ours, packed(samples(), 16))


@pytest.mark.parametrize("model_type", sorted(WINDOWED))
def test_a_sliding_window_shorter_than_the_samples_is_kept(model_type):
    own, ours, _ = both(model_type, **WINDOWED[model_type])
    batch = packed(samples(), 16)[0]
    assert_same(own, ours, [batch])
    # the window matters here: without it the loss differs
    plain = tiny(model_type)
    assert abs(plain(**batch).loss.item() - ours(**batch).loss.item()) > 1e-4


def test_biases_on_the_projections_are_fused_with_them():
    own, ours, _ = both("llama", attention_bias=True, mlp_bias=True)
    for module in own.modules():
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.normal_(module.bias)  # nonzero: a dropped bias changes the loss
    ours.load_state_dict(own.state_dict())
    assert_same(own, ours, packed(samples(), 16), tol=1e-5)


def test_the_weights_and_their_names_do_not_change():
    own, ours, _ = both("qwen3")
    assert list(ours.state_dict()) == list(own.state_dict())
    batch = packed(samples(), 16)[0]
    for model in (own, ours):
        torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
        model(**batch).loss.backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    for (name, a), (_, b) in zip(own.state_dict().items(), ours.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_the_products_are_fused():
    """The q/k/v and gate/up projections are never called: their weights go into one product each."""
    _, ours, _ = both("llama")
    called = []
    for name, module in ours.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "o_proj", "down_proj")):
            module.register_forward_hook(lambda m, i, o, name=name: called.append(name.rsplit(".", 1)[-1]))
    ours(**packed(samples(), 16)[0])
    assert sorted(set(called)) == ["down_proj", "o_proj"]


def test_generation_with_a_cache_runs_the_models_own_forward_and_gives_the_same_tokens():
    own, ours, _ = both("llama")
    for model in (own, ours):
        model.eval().config.use_cache = True
    prompt = torch.tensor([[3, 4, 5, 6]])
    expected = own.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0, use_cache=True)
    assert torch.equal(ours.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0, use_cache=True), expected)


def test_lora_adapters_on_the_projections_make_the_forward_fall_back_and_keep_them():
    from peft import LoraConfig, get_peft_model

    own, ours, _ = both("llama")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    own = get_peft_model(own, config)
    torch.manual_seed(1)
    ours = get_peft_model(ours, config)
    assert_same(own, ours, packed(samples(), 16))


def test_with_the_last_layer_picked_at_the_loss_positions_the_loss_is_the_full_forwards():
    own, ours, _ = both("llama")
    loss_logits.install(ours)
    batch = packed(samples(), 16)[0]
    index, targets = loss_logits.positions(batch["labels"].numpy())
    picked = ours(**batch, loss_index=torch.as_tensor(index), loss_targets=torch.as_tensor(targets)).loss
    assert picked.item() == pytest.approx(own(**batch).loss.item(), abs=1e-6)


def test_uninstall_gives_back_the_modules_own_forwards():
    own, ours, _ = both("mistral")
    fused_projections.uninstall(ours)
    assert not any("forward" in vars(m) for m in ours.modules())
