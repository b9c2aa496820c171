"""Compiled training step with the rotary embedding's cos and sin tables made once a forward (``--rotary_table``).

torch.compile fuses a Llama's rotary tables (cos and sin of each position's angles, computed once a forward by
the model) into the kernels that read them, so every layer's rotary kernels, forward and backward, compute cos
and sin again for each query and key head. ``diffmodel train --rotary_table on``
(:mod:`diffmodel.train.rotary_table`) passes the tables through an operator torch.compile does not look into, so
they are computed once and read. The values are eager PyTorch's (the tables rounded to the model's dtype once);
this measures the forward + backward of the model (bf16 autocast over fp32 weights, flex_attention with
diffmodel's tiles, torch.compile, packed rows) with and without, the arms alternating, and checks their loss and
first-layer gradients against each other.

    PYTHONPATH=src python benchmarks/rotary_tables.py --model 110m --rounds 3 --steps 20
    PYTHONPATH=src python benchmarks/rotary_tables.py --model 1b --rounds 3 --steps 10
    PYTHONPATH=src python benchmarks/rotary_tables.py --model tiny --device cpu --attn sdpa --rows 2 --width 256 --vocab 512
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from compiled_ab import main_ab  # noqa: E402


def keep_tables(model) -> int:
    """The tables kept in ``model``; the number of layers that read them."""
    from diffmodel.train import rotary_table

    return len(model.model.layers) if rotary_table.install(model) else 0


def main(argv=None):
    main_ab(argv, __doc__.splitlines()[0], keep_tables, "recomputed tables", "tables kept")


if __name__ == "__main__":
    main()
