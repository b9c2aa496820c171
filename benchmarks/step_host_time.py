"""Host time of two per-step pieces of a bf16-weights training step, without the device's work.

- the one-pass AdamW step (``MasterWeights(AdamW, one_pass=True).step``) with the compiled pass itself replaced by
  nothing: what the host does around it each step, for as many bf16 weights as the model has;
- the trainer's ``floating_point_ops`` for ``total_flos`` on the model built on the meta device: transformers' own
  (``Trainer.floating_point_ops``, which counts the parameters each call) and diffmodel's trainer's.
- two calls Trainer's loop makes on the model every step: ``model.train()`` (at the start of each training step)
  and ``model.zero_grad()`` (after each optimizer step), both walking every module.

    PYTHONPATH=src python benchmarks/step_host_time.py --model 110m
    PYTHONPATH=src python benchmarks/step_host_time.py --model 1b
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from train_throughput import MODELS  # noqa: E402

from diffmodel.train import master_adamw, master_weights  # noqa: E402


def per_call_ms(call, n: int) -> float:
    for _ in range(10):
        call()
    started = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - started) / n * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="110m")
    p.add_argument("--vocab_size", type=int, default=16384)
    p.add_argument("--calls", type=int, default=500)
    a = p.parse_args(argv)
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer

    config = LlamaConfig(vocab_size=a.vocab_size, tie_word_embeddings=False, **MODELS[a.model])
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    weights = [torch.nn.Parameter(torch.zeros(8, dtype=torch.bfloat16)) for _ in model.parameters()]
    opt = master_weights.optimizer_class(torch.optim.AdamW, one_pass=True)(weights, lr=3e-4, weight_decay=0.1)
    for w in weights:
        w.grad = torch.zeros_like(w)
    with mock.patch.object(master_adamw, "_compiled", lambda *args, **kwargs: None):
        step_ms = per_call_ms(opt.step, a.calls)
    inputs = {"input_ids": torch.zeros(16, 2048, dtype=torch.long)}
    theirs = per_call_ms(lambda: Trainer.floating_point_ops(SimpleNamespace(model=model), inputs), a.calls)
    from diffmodel.train.metrics import TokenMetricsMixin

    trainer = SimpleNamespace(model=model)
    ours_fn = TokenMetricsMixin.__dict__.get("floating_point_ops")  # absent before diffmodel had its own
    ours = per_call_ms(lambda: ours_fn(trainer, inputs), a.calls) if ours_fn else float("nan")
    model.train()
    train_ms = per_call_ms(model.train, a.calls)
    zero_ms = per_call_ms(model.zero_grad, a.calls)
    print(f"model {a.model}: {len(weights)} weights, {sum(1 for _ in model.modules())} modules, torch {torch.__version__}, "
          f"{a.calls} calls each")
    print("| piece | host ms a call |")
    print("|---|---|")
    print(f"| one-pass AdamW step around the compiled pass | {step_ms:.3f} |")
    print(f"| Trainer.floating_point_ops (transformers) | {theirs:.3f} |")
    print(f"| diffmodel's trainer's floating_point_ops | {ours * 1e3:.1f} µs |")
    print(f"| model.train() (Trainer, each step) | {train_ms:.3f} |")
    print(f"| model.zero_grad() (Trainer, each step) | {zero_ms:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
