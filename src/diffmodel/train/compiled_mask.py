"""flex_attention's block mask built inside the compiled model, not by a compile of its own.

For flex_attention, transformers builds the block mask of a packed batch (each sample's causal block, from
``position_ids`` that restart at 0) with torch's ``create_block_mask(..., _compile=True)``, which compiles
``create_block_mask`` on its own. Called inside a model that torch.compile is tracing, that nested compile
breaks the model's graph there (on this CPU, ``TORCH_LOGS=graph_breaks`` shows the breaks at torch's
``flex_attention.py``): the forward's start runs as several compiled regions with Python between them. On a
GPU whose host barely keeps ahead of the device, as at ~110M on an H100, the device then waits: the profile's
timeline showed it idle for ~3.9 ms at the start of each forward, before the first layer (under the profiler,
whose own cost inflates it; benchmarks/RESULTS.md).

:func:`install` wraps the ``create_block_mask`` that transformers' masking module calls (once per process; in
compiled flex_attention runs, ``--trace_block_mask``): while torch.compile traces, the mask is built by torch's
``create_block_mask`` traced into the model's graph
(which torch traces since 2.6); otherwise it is built as transformers asked. The mask is the same (test:
the compiled model's logits equal the eager model's, with no graph break at the mask).
"""

from __future__ import annotations

import functools

import torch

#: Marks the wrapper, so that :func:`install` wraps once.
WRAPPED = "_diffmodel_traced_in_compile"

#: Whether the wrapper traces the mask into a compiled graph; ``--trace_block_mask`` sets it for each run (off: the
#: mask is built as transformers asks, compiling or not).
TRACED = True


def install() -> bool:
    """Wrap transformers' ``create_block_mask`` (see the module docstring); False where transformers has none."""
    from transformers import masking_utils

    original = getattr(masking_utils, "create_block_mask", None)
    if original is None:
        return False
    if getattr(original, WRAPPED, False):
        return True
    from torch.nn.attention.flex_attention import create_block_mask as traced

    @functools.wraps(original)
    def create_block_mask(*args, _compile=False, **kwargs):
        if TRACED and torch.compiler.is_compiling():
            return traced(*args, **kwargs)
        return original(*args, _compile=_compile, **kwargs)

    setattr(create_block_mask, WRAPPED, True)
    masking_utils.create_block_mask = create_block_mask
    return True
