"""Compiled training step with the rotary tables inside vs outside the compiled graph.

Under torch.compile inductor inlines the rotary embedding's cos/sin into every layer's query/key kernels, and
those fused kernels took ~27 ms of the ~1B packed step on an H200 (step_profile). The question this answers: does
computing the tables once, outside the graph (the model's rotary module run eagerly: one graph break before the
first layer), make the step faster? Builds a Llama of ``--model`` (train_throughput.MODELS, ``--layers`` of them),
compiles it twice (one copy with its rotary module outside the graph), and times forward+backward under bf16 autocast on packed
rows, the two arms alternating for ``--rounds``. Checks that both give the same loss and gradients.

    PYTHONPATH=src python benchmarks/rotary_compile.py --model 1b --layers 22 --rounds 3 --steps 10
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from compiled_ab import compare, packed_batch  # noqa: E402
from train_throughput import MODELS  # noqa: E402



def outside_compiled_graph(model: torch.nn.Module) -> list[str]:
    """Run each ``*RotaryEmbedding`` module of ``model`` eagerly under torch.compile; the names of those changed."""
    changed = []
    for name, module in model.named_modules():
        if type(module).__name__.endswith("RotaryEmbedding"):
            module.forward = torch.compiler.disable(module.forward, recursive=True)
            changed.append(name)
    return changed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="1b")
    p.add_argument("--layers", type=int, default=None, help="layers (default: the model's)")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    shape = dict(MODELS[args.model])
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    config = transformers.LlamaConfig(**shape, vocab_size=args.vocab, max_position_embeddings=args.width, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").cuda()
    ours = copy.deepcopy(base)
    print("outside the graph:", outside_compiled_graph(ours))
    batch = packed_batch(args.rows, args.width, args.vocab, "cuda")
    med = compare({"inside": torch.compile(base), "outside": torch.compile(ours)}, batch, args.steps, args.rounds)
    print(f"| device | model | layers | inside ms | outside ms | outside speed-up |\n|---|---|---|---|---|---|\n"
          f"| {torch.cuda.get_device_name()} | {args.model} | {config.num_hidden_layers} | {med['inside']:.1f} | "
          f"{med['outside']:.1f} | {med['inside'] / med['outside']:.3f}x |")


if __name__ == "__main__":
    main()
