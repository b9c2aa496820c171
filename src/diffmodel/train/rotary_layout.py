"""The rotary embedding in the projections' own memory order (tokens first): ``--rotary_layout``.

A Llama-style attention layer views its query and key projections as (rows, tokens, heads, head size) and
transposes them to (rows, heads, tokens, head size) before the rotary embedding. Eager PyTorch keeps the
tokens-first memory order of such a view through elementwise operations; torch.compile chooses the layout of
the rotary embedding's output itself and writes it heads-first, so that kernel transposes as it goes, and so
does the copy that turns the attention's output back into (rows, tokens, hidden) for the output projection,
and their gradients. flex_attention and sdpa take any strides (flex_attention's output follows the query's).

:func:`install` replaces the ``apply_rotary_pos_emb`` of a model's modeling module with one that calls the
model's own function on the tokens-first tensors (``unsqueeze_dim=2``) and hands back heads-first views of
them: the same operations in the same order, so the same values, with tokens-first memory under
torch.compile too (Qwen3's per-head norm weights, which norm the queries and keys before the rotary
embedding, get gradients summed in the other memory order: equal to the last bits). Only the standard call
(``unsqueeze_dim=1``, heads-first 4-D tensors) is changed; any other goes to the model's function as it is. The change is per modeling module (every model of that type in
the process), which is harmless: eager losses and gradients are the model's own (tests).
"""

from __future__ import annotations

import functools
import inspect
import sys

#: Marks a replaced function (its value: the model's own).
WRAPPED = "_diffmodel_tokens_first"


def tokens_first(rotary):
    """``rotary`` (a model's ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)``) on tokens-first memory."""

    @functools.wraps(rotary)
    def apply_rotary_pos_emb(q, k, cos, sin, *args, unsqueeze_dim=1, **kwargs):
        if args or kwargs or unsqueeze_dim != 1 or q.dim() != 4 or k.dim() != 4:
            return rotary(q, k, cos, sin, *args, unsqueeze_dim=unsqueeze_dim, **kwargs)
        q_embed, k_embed = rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin, unsqueeze_dim=2)
        return q_embed.transpose(1, 2), k_embed.transpose(1, 2)

    setattr(apply_rotary_pos_emb, WRAPPED, rotary)
    return apply_rotary_pos_emb


def takes(rotary) -> bool:
    """Whether ``rotary`` has the standard signature ``(q, k, cos, sin, ..., unsqueeze_dim=1)``."""
    try:
        params = inspect.signature(rotary).parameters
    except (TypeError, ValueError):
        return False
    names = list(params)
    return names[:4] == ["q", "k", "cos", "sin"] and "unsqueeze_dim" in params and params["unsqueeze_dim"].default == 1


def install(model) -> list[str]:
    """Give the modeling modules of ``model``'s attention layers the tokens-first rotary embedding; returns the
    modules changed now or before (empty when the model has no standard rotary function: GPT-2, say)."""
    done = []
    for module in model.modules():
        if not type(module).__name__.endswith("Attention"):
            continue
        modeling = sys.modules.get(type(module).__module__)
        rotary = getattr(modeling, "apply_rotary_pos_emb", None)
        if rotary is None or modeling.__name__ in done:
            continue
        if getattr(rotary, WRAPPED, None) is None:
            if not takes(rotary):
                continue
            modeling.apply_rotary_pos_emb = tokens_first(rotary)
        done.append(modeling.__name__)
    return done


def uninstall(model) -> None:
    """Give the modeling modules of ``model`` their own rotary function back."""
    for module in model.modules():
        modeling = sys.modules.get(type(module).__module__)
        rotary = getattr(modeling, "apply_rotary_pos_emb", None)
        if getattr(rotary, WRAPPED, None) is not None:
            modeling.apply_rotary_pos_emb = getattr(rotary, WRAPPED)
