"""Compiled training step with the rotary embedding applied in the projections' own layout.

A Llama layer's query and key projections give (rows, tokens, heads, head size) tensors, which the attention
forward turns into (rows, heads, tokens, head size) views before the rotary embedding. Eager PyTorch keeps the
memory order of such a view through elementwise operations; torch.compile decides the layout of the rotary
embedding's output itself and writes it heads-first, so its kernel transposes as it goes, and so does the
copy that turns the attention's output back into (rows, tokens, hidden) for the output projection (and their
gradients in the backward). flex_attention takes any strides (its output follows the query's), so applying the
rotary embedding to the tokens-first tensors (``diffmodel train --rotary_layout on``,
:mod:`diffmodel.train.rotary_layout`) keeps the tokens-first order all the way through. The values are the same
(the same operations in the same order); this measures the time on the default packed path (fp32 weights under
bf16 autocast, flex_attention with diffmodel's tiles, torch.compile, packed rows), both arms alternating.

The layouts themselves show on a CPU (a 2-layer Llama compiled with sdpa, ``TORCH_LOGS=output_code``): with the
model's rotary embedding inductor allocates heads-first (rows, heads, tokens, head size) buffers for the rotated
queries and keys (strides (384, 96, 8, 1) for 4 heads x 12 tokens x 8); applied tokens-first, none of them, only
(rows, tokens, heads, head size) ones.

    PYTHONPATH=src python benchmarks/rotary_layout.py --model 110m --rounds 3 --steps 20
    PYTHONPATH=src python benchmarks/rotary_layout.py --model 1b --rounds 3 --steps 10
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compiled_ab import main_ab  # noqa: E402


def tokens_first_attention(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
    """A Llama attention layer's forward with diffmodel's tokens-first rotary embedding (``--rotary_layout on``, which
    replaces the modeling module's function for every model; here one model of the two gets it)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward

    from diffmodel.train.rotary_layout import tokens_first

    kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
    shape = (*hidden_states.shape[:-1], -1, self.head_dim)
    q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
    k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
    v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
    q, k = tokens_first(apply_rotary_pos_emb)(q, k, *position_embeddings)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
    out, weights = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)
    return self.o_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights


def keep_layout(model) -> int:
    for layer in model.model.layers:
        layer.self_attn.forward = types.MethodType(tokens_first_attention, layer.self_attn)
    return len(model.model.layers)


def main(argv=None):
    main_ab(argv, __doc__.splitlines()[0], keep_layout, "model's rotary", "tokens-first")

if __name__ == "__main__":
    main()
