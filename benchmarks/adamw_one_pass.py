"""The bf16 weights' optimizer step alone: torch's three passes against ``--adamw_one_pass``'s one compiled pass.

Builds the weights of a Llama of ``train_throughput.MODELS`` (16k vocabulary, untied embeddings) in bf16 with random
bf16 gradients, and times ``MasterWeights(AdamW).step`` both ways (:mod:`diffmodel.train.master_weights`), the arms
alternating for ``--rounds``. Reports each arm's first step (the one pass compiles there) and its median step, and
the largest difference between the two arms' fp32 copies after the same steps.

    PYTHONPATH=src python benchmarks/adamw_one_pass.py --model 110m --device cpu --rounds 2 --steps 3
    PYTHONPATH=src python benchmarks/adamw_one_pass.py --model 1b --rounds 3 --steps 20      # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from train_throughput import MODELS  # noqa: E402

from diffmodel.train import master_weights  # noqa: E402


def weights(model: str, vocab: int, device: str) -> list[torch.nn.Parameter]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **MODELS[model])
    with torch.device("meta"):
        shapes = [p.shape for p in LlamaForCausalLM(config).parameters()]
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.nn.Parameter((torch.randn(s, generator=g, device=device) * 0.02).bfloat16()) for s in shapes]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="110m")
    p.add_argument("--vocab_size", type=int, default=16384)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args(argv)
    arms = {}
    for name, one_pass in (("three passes", False), ("one pass", True)):
        params = weights(a.model, a.vocab_size, a.device)
        opt = master_weights.optimizer_class(torch.optim.AdamW, one_pass=one_pass)(
            params, lr=3e-4, weight_decay=0.1, fused=a.device != "cpu" or None)
        arms[name] = {"params": params, "opt": opt, "first_s": None, "ms": []}
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)

    def step(arm: dict, n: int) -> float:
        for i, w in enumerate(arm["params"]):
            w.grad = (torch.randn(w.shape, generator=torch.Generator(device=a.device).manual_seed(n * 1000 + i),
                                  device=a.device) * 1e-3).bfloat16()
        sync()
        start = time.perf_counter()
        arm["opt"].step()
        sync()
        return time.perf_counter() - start

    n_weights = len(arms["one pass"]["params"])
    print(f"model {a.model}: {n_weights} weights, {sum(w.numel() for w in arms['one pass']['params']) / 1e6:.1f}M, "
          f"device {torch.cuda.get_device_name() if a.device.startswith('cuda') else 'CPU'}, torch {torch.__version__}")
    for name, arm in arms.items():
        arm["first_s"] = step(arm, 0)
        print(f"{name}: first step {arm['first_s']:.1f} s", flush=True)
    for rnd in range(a.rounds):
        for name, arm in (arms.items() if rnd % 2 == 0 else reversed(arms.items())):
            arm["ms"] += [step(arm, 1 + rnd * a.steps + k) * 1e3 for k in range(a.steps)]
            print(f"round {rnd} {name}: {statistics.median(arm['ms'][-a.steps:]):.2f} ms", flush=True)
    copies = [arm["opt"].copies() for arm in arms.values()]
    diff = max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(*copies))
    base = statistics.median(arms["three passes"]["ms"])
    print("| arm | first step s (compiling included) | median step ms | speed-up |")
    print("|---|---|---|---|")
    for name, arm in arms.items():
        ms = statistics.median(arm["ms"])
        print(f"| {name} | {arm['first_s']:.1f} | {ms:.2f} | {base / ms:.2f}x |")
    print(f"largest difference between the arms' fp32 copies after the same steps: {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
