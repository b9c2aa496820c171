"""benchmarks/compiled_ab.py and the model change of benchmarks/fused_projections.py, on the CPU."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from compiled_ab import compare, packed_batch  # noqa: E402
from fused_projections import fuse  # noqa: E402


def tiny_pair():
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, use_cache=False)
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return base, copy.deepcopy(base)


def batch():
    return packed_batch(2, 32, 64)


def test_compare_times_each_arm_each_round_and_reports_their_differences(capsys):
    base, other = tiny_pair()
    med = compare({"a": base, "b": other}, batch(), steps=2, rounds=3)
    assert set(med) == {"a", "b"} and all(v > 0 for v in med.values())
    out = capsys.readouterr().out
    assert "|loss diff| 0.00e+00, max |grad diff| layer 0 0.00e+00" in out
    rounds = [line.split(":")[0] for line in out.splitlines() if line.startswith("round ")]
    assert rounds == ["round 0 a", "round 0 b", "round 1 b", "round 1 a", "round 2 a", "round 2 b"]


def losses_and_grads(*models):
    """Each model's loss on :func:`batch` and its parameters' gradients by name."""
    losses, grads = [], []
    for model in models:
        loss = model(**batch()).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    return losses, grads


def test_fused_projections_give_the_models_own_loss_and_gradients():
    base, fused = tiny_pair()
    assert fuse(fused) == 2
    losses, grads = losses_and_grads(base, fused)
    assert abs(losses[0].item() - losses[1].item()) < 1e-6
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_rotary_in_the_projections_layout_gives_the_models_own_loss_and_gradients():
    from rotary_layout import keep_layout

    base, kept = tiny_pair()
    assert keep_layout(kept) == 2
    losses, grads = [], []
    for model in (base, kept):
        loss = model(**batch()).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert losses[0] == losses[1]  # the same operations in the same order
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_the_bf16_weights_arm_is_the_model_with_bf16_parameters():
    from bf16_weights import to_bf16

    base, cast = tiny_pair()
    assert to_bf16(cast) == 2
    assert {p.dtype for p in cast.parameters()} == {torch.bfloat16}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [model(**batch()).loss.item() for model in (base, cast)]
    assert abs(losses[0] - losses[1]) < 1e-2 * abs(losses[0])


def test_the_rotary_tables_kept_give_the_models_own_loss_and_gradients():
    from rotary_tables import keep_tables

    base, kept = tiny_pair()
    assert keep_tables(kept) == 2
    losses, grads = losses_and_grads(base, kept)
    assert torch.equal(losses[0], losses[1])
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
