"""Compiled training step with the weights kept in bf16 against fp32 weights under bf16 autocast (the default).

With fp32 weights, autocast casts every weight to bf16 at each forward and the residual stream between the layers
stays fp32 (the embedding's output and every residual add are fp32): each norm reads fp32 hidden states and each
add reads and writes them, in the forward and in the backward. With the weights in bf16 those tensors are half the
bytes and no weight is cast. This measures that difference alone: forward + backward of the same model (weights
cast to bf16 in the second arm, its rotary tables kept fp32), no optimizer step, so it is an upper bound on what
bf16 weights with an fp32 copy in the optimizer could gain (that copy costs a read and write of the weights and
gradients at each step, not measured here). Same packed batch, flex_attention with diffmodel's tiles, both compiled,
alternating; the loss and gradient differences printed are bf16 rounding, not a check.

    PYTHONPATH=src python benchmarks/bf16_weights.py --model 110m --rounds 3 --steps 20
    PYTHONPATH=src python benchmarks/bf16_weights.py --model 1b --rounds 3 --steps 10
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compiled_ab import main_ab  # noqa: E402

from diffmodel.train import master_weights  # noqa: E402


def to_bf16(model) -> int:
    """``--bf16_weights on``'s cast of ``model``'s parameters (its buffers, the rotary frequencies, stay fp32)."""
    master_weights.cast(model)
    return len(model.model.layers)


def main(argv=None):
    return main_ab(argv, __doc__.splitlines()[0], to_bf16, "fp32 weights", "bf16 weights")


if __name__ == "__main__":
    main()
