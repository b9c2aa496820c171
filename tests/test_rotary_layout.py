"""The tokens-first rotary embedding (diffmodel.train.rotary_layout): the model's own values, tokens-first memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers

from diffmodel.train import rotary_layout

SHAPES = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, use_cache=False)
CONFIGS = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
}


@pytest.fixture
def restore():
    made = []
    yield made.append
    for model in made:
        rotary_layout.uninstall(model)


def tiny(kind: str = "llama", attn: str = "sdpa", layers: int = 2):
    torch.manual_seed(0)
    config = CONFIGS[kind](**{**SHAPES, "num_hidden_layers": layers})
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn).train()


def packed_batch():
    ids = torch.randint(1, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]])
    return dict(input_ids=ids, labels=ids, position_ids=positions)


def loss_and_grads(model):
    model.zero_grad(set_to_none=True)
    loss = model(**packed_batch()).loss
    loss.backward()
    return loss.detach(), {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_models_own_loss_and_gradients_bit_for_bit(kind, attn, restore):
    model = tiny(kind, attn)
    loss, grads = loss_and_grads(model)
    restore(model)
    assert rotary_layout.install(model) == [f"transformers.models.{kind}.modeling_{kind}"]
    modeling = sys.modules[f"transformers.models.{kind}.modeling_{kind}"]
    assert getattr(modeling.apply_rotary_pos_emb, rotary_layout.WRAPPED, None) is not None
    kept_loss, kept_grads = loss_and_grads(model)
    assert torch.equal(loss, kept_loss)
    # Qwen3 norms each head's queries and keys before the rotary embedding: its norm weights' gradients are sums over
    # every position, taken in the incoming gradient's memory order, so they may differ in the last bits
    summed = {n for n in grads if n.endswith(("q_norm.weight", "k_norm.weight"))}
    assert bool(summed) == (kind == "qwen3")
    assert all(torch.equal(grads[n], kept_grads[n]) for n in grads if n not in summed)
    assert all(torch.allclose(grads[n], kept_grads[n], rtol=1e-6, atol=1e-9) for n in summed)


def test_heads_first_views_of_tokens_first_memory(restore):
    from transformers.models.llama import modeling_llama

    own = modeling_llama.apply_rotary_pos_emb
    model = tiny("llama")
    restore(model)
    rotary_layout.install(model)
    q = torch.randn(2, 5, 4, 8).transpose(1, 2)  # as the attention layer hands them over: views of tokens-first memory
    k = torch.randn(2, 5, 2, 8).transpose(1, 2)
    cos, sin = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    rq, rk = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    assert rq.shape == (2, 4, 5, 8) and rk.shape == (2, 2, 5, 8)
    assert rq.transpose(1, 2).is_contiguous() and rk.transpose(1, 2).is_contiguous()
    eq, ek = own(q, k, cos, sin)
    assert torch.equal(rq, eq) and torch.equal(rk, ek)
    # any other call goes to the model's function as it is
    tq, tk = modeling_llama.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin, unsqueeze_dim=2)
    assert torch.equal(tq, eq.transpose(1, 2)) and tq.is_contiguous()


def test_install_twice_wraps_once_and_uninstall_gives_the_function_back(restore):
    from transformers.models.llama import modeling_llama

    own = modeling_llama.apply_rotary_pos_emb
    model = tiny("llama")
    restore(model)
    rotary_layout.install(model)
    wrapped = modeling_llama.apply_rotary_pos_emb
    assert rotary_layout.install(model) == ["transformers.models.llama.modeling_llama"]
    assert modeling_llama.apply_rotary_pos_emb is wrapped
    rotary_layout.uninstall(model)
    assert modeling_llama.apply_rotary_pos_emb is own


def test_a_model_without_the_standard_rotary_function_is_left_as_it_is():
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=4)
    assert rotary_layout.install(transformers.GPT2LMHeadModel(config)) == []
    assert rotary_layout.takes(lambda q, k, cos, sin, position_ids=None: None) is False
    assert rotary_layout.takes(lambda q, k, cos, sin, unsqueeze_dim=1: None) is True


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_with_the_last_layers_queries_at_the_loss_positions_the_loss_is_the_full_forwards(kind, restore):
    """--loss_logits picks the last layer's queries through the modeling module's rotary function (one-row sdpa)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from packed_models import PAD, X, packed_rows, samples
    from test_loss_logits import _loss_and_grads, _query_rows
    from test_loss_logits import tiny as logits_model

    from diffmodel.train import loss_logits
    from diffmodel.train.collate import PackedCollator

    rows = packed_rows(samples())
    full_batch = PackedCollator(PAD, flatten=True)(rows)
    picked_batch = PackedCollator(PAD, flatten=True, loss_positions=True)(rows)
    num_items = torch.tensor(int((full_batch["labels"][:, 1:] != X).sum()))
    model = logits_model(kind)
    full, full_grads = _loss_and_grads(model, full_batch, num_items)
    restore(model)
    rotary_layout.install(model)
    loss_logits.install(model)
    queries = _query_rows(model)
    picked, picked_grads = _loss_and_grads(model, picked_batch, num_items)
    assert queries == [len(picked_batch["loss_index"])]  # the queries' pick ran
    torch.testing.assert_close(picked.loss, full.loss, rtol=1e-6, atol=1e-6)
    for name in full_grads:
        torch.testing.assert_close(picked_grads[name], full_grads[name], rtol=1e-5, atol=1e-6, msg=name)
