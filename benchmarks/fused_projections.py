"""Compiled training step with each layer's query/key/value and gate/up projections as one matrix multiply each.

A Llama layer projects the same normed input three times for attention (queries, keys, values) and twice for its
MLP (gate, up). With grouped key heads the key and value projections are narrow (~1B: 2,048 -> 256), a shape the
GPU's matrix units fill poorly, and the input's gradient is the sum of three (and two) products. Concatenating
the weights at each forward (one cat of the weights, which autocast casts anyway) makes one wide product and one
input gradient. inductor's own ``batch_linear_lhs`` pass does this only for 2-D inputs, not a model's
(rows, tokens, hidden) ones. This measures what it would give on the default packed path (fp32 weights under bf16
autocast, flex_attention with diffmodel's tiles, torch.compile, packed rows), both arms alternating, and checks
that they give the same loss and gradients. Measured on an H100: slower at ~1B (0.984x) and ~110M (0.907x), so
`diffmodel train` keeps the model's own projections (benchmarks/RESULTS.md).

    PYTHONPATH=src python benchmarks/fused_projections.py --model 1b --rounds 3 --steps 10
    PYTHONPATH=src python benchmarks/fused_projections.py --model 110m --rounds 3 --steps 20
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from compiled_ab import main_ab  # noqa: E402


def fused_attention(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward

    kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
    shape = (*hidden_states.shape[:-1], -1, self.head_dim)
    weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
    sizes = [self.q_proj.out_features, self.k_proj.out_features, self.v_proj.out_features]
    q, k, v = (t.view(shape).transpose(1, 2) for t in F.linear(hidden_states, weight).split(sizes, dim=-1))
    q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
    out, weights = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)
    return self.o_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights


def fused_mlp(self, x):
    gate, up = F.linear(x, torch.cat([self.gate_proj.weight, self.up_proj.weight])).chunk(2, dim=-1)
    return self.down_proj(self.act_fn(gate) * up)


def fuse(model) -> int:
    for layer in model.model.layers:
        layer.self_attn.forward = types.MethodType(fused_attention, layer.self_attn)
        layer.mlp.forward = types.MethodType(fused_mlp, layer.mlp)
    return len(model.model.layers)


def main(argv=None):
    main_ab(argv, __doc__.splitlines()[0], fuse, "separate", "fused")

if __name__ == "__main__":
    main()
