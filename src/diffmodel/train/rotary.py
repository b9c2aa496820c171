"""Rotary position tables computed once per step, outside the compiled graph.

Under ``torch.compile`` inductor inlines the rotary embedding's ``cos`` and
``sin`` into every layer's query/key kernel, forward and backward: each
element of every query and key head computes its own ``sin`` and ``cos``
again, in fp32. On an H200 at ~1B (22 layers, 32 query heads) those fused
kernels took about 27 ms of a 538 ms packed step (benchmarks/RESULTS.md).
Running the model's own rotary module outside the graph (one graph break
before the first layer) makes the tables graph inputs: computed once, read by
every layer. The module itself is unchanged, so every rotary variant a model
declares (scaled, dynamic) computes exactly what it did.
"""

from __future__ import annotations

import torch


def outside_compiled_graph(model: torch.nn.Module) -> list[str]:
    """Run each rotary-embedding module of ``model`` eagerly under torch.compile; returns the names of those changed.

    A rotary module is one whose class name ends in ``RotaryEmbedding`` (transformers' naming for every model
    family). Idempotent."""
    changed = []
    for name, module in model.named_modules():
        if type(module).__name__.endswith("RotaryEmbedding") and not getattr(module, "_diffmodel_eager", False):
            module.forward = torch.compiler.disable(module.forward, recursive=True)
            module._diffmodel_eager = True
            changed.append(name)
    return changed
