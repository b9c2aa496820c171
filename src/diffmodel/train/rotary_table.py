"""The rotary embedding's cos and sin tables made once a forward: ``--rotary_table``.

A Llama-style model computes its rotary tables once a forward (``model.rotary_emb(hidden, position_ids)``:
cos and sin of each position's angles, cast to the hidden states' dtype) and hands them to every layer.
torch.compile treats the cos and sin as cheap to recompute and fuses them into their readers: each layer's
rotary kernel, forward and backward, evaluates cos and sin again for every query and key head (in a
compiled tiny Llama of 3 layers on a CPU, kernels computing cos or sin are called 9 times a step: the test counts them). On a GPU
that is two transcendental functions an element of the queries and keys, in every layer, where a table
lookup would do.

:func:`install` adds a forward hook to each rotary embedding module of a model (a module whose class name
ends with ``RotaryEmbedding`` and that returns ``(cos, sin)``) that passes the two tables through
:func:`kept`, an operator torch.compile cannot see into (a copy): the tables are then computed once, kept,
and read by the layers' kernels, forward and backward. The values are those of eager PyTorch: cos and sin
rounded to the model's dtype once, as the model's own code rounds them. The hook does nothing outside
torch.compile but copy two small tables (``positions x head size`` per row).
"""

from __future__ import annotations

import torch

#: Marks a rotary embedding module given the hook (its value: the hook's handle).
HANDLE = "_diffmodel_rotary_table"


@torch.library.custom_op("diffmodel::kept_tables", mutates_args=())
def kept(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` copied: an operator that torch.compile keeps as it is (its inputs are computed and
    stored, not recomputed inside the kernels that read its outputs)."""
    return cos.clone(), sin.clone()


@kept.register_fake
def _(cos, sin):
    return torch.empty_like(cos), torch.empty_like(sin)


def _backward(ctx, grad_cos, grad_sin):
    return grad_cos, grad_sin


kept.register_autograd(_backward)


def _hook(module, args, output):
    if isinstance(output, tuple) and len(output) == 2 and all(isinstance(t, torch.Tensor) for t in output):
        return kept(*output)
    return output


def install(model) -> int:
    """Give ``model``'s rotary embedding modules the hook; returns how many modules have it (0: the model has
    none, GPT-2 say)."""
    count = 0
    for module in model.modules():
        if not type(module).__name__.endswith("RotaryEmbedding"):
            continue
        if getattr(module, HANDLE, None) is None:
            setattr(module, HANDLE, module.register_forward_hook(_hook))
        count += 1
    return count


def uninstall(model) -> None:
    """Remove the hooks :func:`install` added."""
    for module in model.modules():
        handle = getattr(module, HANDLE, None)
        if handle is not None:
            handle.remove()
            delattr(module, HANDLE)
