"""One matrix multiply for each layer's query, key and value projections, and one for its MLP's gate and up
projections (``--fused_projections``).

A Llama-shaped decoder layer projects the same normed input three times for attention and twice for its MLP.
Each product reads the input again, and in the backward pass the input's gradient is the sum of three (and two)
products, each written out and then added. With grouped key heads the key and value projections are also
narrow (a ~1B Llama: 2,048 -> 256), a shape that keeps a GPU's matrix units poorly fed. :func:`install` gives
each attention and MLP module of the model a forward that concatenates the weights (the cast autocast makes of
them anyway becomes one cast of the concatenation) and makes one product, then splits its output: the same
values, computed with fewer, wider products. inductor's own pass for this (``batch_linear_lhs``) takes only 2-D
inputs, not a model's (rows, tokens, hidden) ones.

The modules and their parameters stay as they are: checkpoints, ``state_dict`` and the saved model do not
change. A forward falls back to the module's own when it cannot fuse: a KV cache is passed (generation), a
projection is not a plain ``torch.nn.Linear`` (a LoRA adapter, a quantized layer), or only some of them have
biases. Tests: loss and gradients equal to the model's own forward for Llama, Mistral (a sliding window),
Qwen2 (biases) and Qwen3 (per-head norms), and the saved weights unchanged.
"""

from __future__ import annotations

import sys
import types

import torch
import torch.nn.functional as F

#: Model types whose attention is the Llama one (projections, rotary, optional per-head norms, optional sliding
#: window) and whose MLP is ``down(act(gate(x)) * up(x))``.
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def supports(model_type: str | None) -> bool:
    return model_type in SUPPORTED


def install(model) -> int:
    """Give each decoder layer's attention and MLP of ``model`` (this instance) the fused forward, except modules whose
    forward this instance replaced already; returns how many modules were given it."""
    count = 0
    for module in model.modules():
        if "forward" in vars(module):  # this instance's forward was replaced already (liger-kernel's SwiGLU MLP)
            continue
        if all(hasattr(module, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")):
            module.forward = types.MethodType(_attention, module)
            count += 1
        elif all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            module.forward = types.MethodType(_mlp, module)
            count += 1
    return count


def uninstall(model) -> None:
    for module in model.modules():
        if getattr(module.forward, "__func__", None) in (_attention, _mlp):
            del module.forward


def window(attn) -> int | None:
    """The attention module's sliding window (transformers': keys fewer than this many positions back), None without one."""
    return attn.sliding_window if hasattr(attn, "sliding_window") else getattr(attn.config, "sliding_window", None)


def fused(*linears) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The concatenated weight and bias of these projections; None when they cannot be fused."""
    if any(type(m) is not torch.nn.Linear for m in linears):
        return None
    biases = [m.bias for m in linears]
    if any(b is None for b in biases) and any(b is not None for b in biases):
        return None
    weight = torch.cat([m.weight for m in linears])
    return weight, (torch.cat(biases) if biases[0] is not None else None)


def _attention(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    cached = kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None
    both = None if cached else fused(self.q_proj, self.k_proj, self.v_proj)
    if both is None:
        return type(self).forward(self, hidden_states, position_embeddings=position_embeddings, attention_mask=attention_mask, **kwargs)
    kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
    shape = (*hidden_states.shape[:-1], -1, self.head_dim)
    sizes = [self.q_proj.out_features, self.k_proj.out_features, self.v_proj.out_features]
    query, key, value = (t.view(shape) for t in F.linear(hidden_states, *both).split(sizes, dim=-1))
    if hasattr(self, "q_norm"):  # Qwen3: each head normed before the rotary embedding
        query, key = self.q_norm(query), self.k_norm(key)
    rotary = sys.modules[type(self).__module__].apply_rotary_pos_emb
    query, key = rotary(query.transpose(1, 2), key.transpose(1, 2), *position_embeddings)
    backend = self.config._attn_implementation
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(backend, sys.modules[type(self).__module__].eager_attention_forward)
    extra = {"sliding_window": window(self)} if window(self) is not None else {}
    out, weights = attend(self, query, key, value.transpose(1, 2), attention_mask,
                          dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling, **extra, **kwargs)
    return self.o_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights


def _mlp(self, x):
    both = fused(self.gate_proj, self.up_proj)
    if both is None:
        return type(self).forward(self, x)
    gate, up = F.linear(x, *both).chunk(2, dim=-1)
    return self.down_proj(self.act_fn(gate) * up)
