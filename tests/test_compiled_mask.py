"""flex_attention's block mask traced into the compiled model (diffmodel.train.compiled_mask): no graph break at
the mask, the same logits as each packed sample run alone."""

from __future__ import annotations

import copy
from unittest import mock

import torch
import transformers
from transformers import masking_utils

from diffmodel.train import compiled_mask


def packed_llama():
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, head_dim=16, use_cache=False)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="flex_attention").eval()
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    # two packed rows: samples of 10 + 14 and 7 + 9 + 8 tokens, positions restarting at each
    positions = torch.tensor([list(range(10)) + list(range(14)), list(range(7)) + list(range(9)) + list(range(8))])
    return model, ids, positions


def alone(model, ids, positions):
    """The logits of each packed sample run alone through a copy of ``model`` with eager attention: what the packed
    rows must give. (Not the model's own uncompiled forward: flex_attention's CPU kernel, which torch compiles for it,
    gave wrong rows or NaN for these batch-dependent masks on a CPU without AVX-512, torch 2.13.)"""
    config = copy.deepcopy(model.config)  # from_config sets the attention on the config it is given
    reference = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    reference.load_state_dict(model.state_dict())
    out = torch.zeros(*ids.shape, model.config.vocab_size)
    for row in range(ids.shape[0]):
        starts = (positions[row] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
        for start, end in zip(starts, starts[1:]):
            with torch.no_grad():
                out[row, start:end] = reference(input_ids=ids[row:row + 1, start:end]).logits[0]
    return out


def mask_breaks(model, ids, positions) -> list[str]:
    """The graph breaks torch.compile meets in the model's forward that come from building the block mask."""
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(input_ids=ids, position_ids=positions)
    return [str(r.reason) for r in explained.break_reasons
            if any("create_block_mask" in (frame.name or "") or "masking_utils" in (frame.filename or "")
                   for frame in r.user_stack)]


def test_the_mask_is_built_inside_the_compiled_graph_and_is_the_same():
    # transformers' flex_attention is compiled even in eager models; after other shapes earlier in the process it is
    # compiled for dynamic shapes, whose CPU code inductor fails to build: start from static ones
    torch._dynamo.reset()
    model, ids, positions = packed_llama()
    expected = alone(model, ids, positions)
    original = masking_utils.create_block_mask
    assert mask_breaks(model, ids, positions)  # transformers' own call compiles create_block_mask apart: a break
    traced = mock.patch.object(compiled_mask, "TRACED", True)  # what --trace_block_mask gives a compiled flex_attention run
    traced.start()
    try:
        assert compiled_mask.install() and compiled_mask.install()  # a second call wraps nothing more
        wrapped = masking_utils.create_block_mask
        assert getattr(wrapped, compiled_mask.WRAPPED) and getattr(wrapped, "__wrapped__") is original
        assert mask_breaks(model, ids, positions) == []
        with mock.patch.object(compiled_mask, "TRACED", False):  # the benchmark's comparison arm
            assert mask_breaks(model, ids, positions)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager")
        with torch.no_grad():
            logits = compiled(input_ids=ids, position_ids=positions).logits
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
        # outside a compile, transformers' own call as it was: the same mask
        starts = (positions == 0).cumsum(-1)

        def same_sample_causal(b, h, q, kv):
            return (starts[b, q] == starts[b, kv]) & (kv <= q)

        mask_args = (same_sample_causal, 2, None, 24, 24)
        assert torch.equal(wrapped(*mask_args, device="cpu").to_dense(), original(*mask_args, device="cpu").to_dense())
    finally:
        traced.stop()
        masking_utils.create_block_mask = original
        torch._dynamo.reset()
