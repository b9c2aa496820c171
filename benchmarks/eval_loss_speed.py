"""``diffmodel eval loss`` with the output layer at the loss positions only, against the model's own forward (every position).

    PYTHONPATH=src python benchmarks/eval_loss_speed.py --device cpu
    PYTHONPATH=src python benchmarks/eval_loss_speed.py --device cuda --hidden 2048 --layers 8 --vocab 128256 --samples 256 --batch_size 16

A Llama-shaped model from a config (random weights, ``--vocab`` as large as real tokenizers'), synthetic samples of
``--min_length``..``--max_length`` tokens whose last ``--loss_share`` bears loss (as a diff ends a sample), scored by
:func:`diffmodel.evaluate.loss.sample_losses` in two arms, alternating round by round:

- ``picked``: what the command does (the output layer at the loss positions, :mod:`diffmodel.train.loss_logits`);
- ``full``: the model's own forward over every position (what it did before; what unsupported model types do).

Prints seconds per round, the ratio, the largest relative difference of the per-sample loss sums, and on a GPU the
peak memory of each arm.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from unittest import mock

import torch


def samples(n: int, vocab: int, low: int, high: int, share: float, seed: int = 0):
    from diffmodel.evaluate.loss import LossSample
    from diffmodel.preprocess.labels import IGNORE_INDEX

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(low, high + 1, (1,), generator=g))
        ids = torch.randint(0, vocab, (length,), generator=g).tolist()
        start = length - max(1, int(length * share))
        out.append(LossSample(ids, [IGNORE_INDEX] * start + ids[start:], "Python"))
    return out


@contextmanager
def arm(name: str):
    from diffmodel.train import loss_logits

    if name == "full":
        with mock.patch.object(loss_logits, "supports", lambda model_type: False):
            yield
    else:
        yield


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--min_length", type=int, default=256)
    p.add_argument("--max_length", type=int, default=1024)
    p.add_argument("--loss_share", type=float, default=0.2)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)

    from transformers import LlamaConfig, LlamaForCausalLM

    from diffmodel.evaluate.loss import sample_losses

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=a.layers,
                         num_attention_heads=max(1, a.hidden // 64), num_key_value_heads=max(1, a.hidden // 64),
                         max_position_embeddings=a.max_length, pad_token_id=0)
    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    model = LlamaForCausalLM(config).to(a.device, dtype).eval()
    data = samples(a.samples, a.vocab, a.min_length, a.max_length, a.loss_share)
    times: dict[str, list[float]] = {"picked": [], "full": []}
    peaks: dict[str, int] = {}
    results = {}
    for r in range(a.rounds):
        for name in (("picked", "full") if r % 2 == 0 else ("full", "picked")):
            with arm(name), torch.no_grad():
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                results[name] = sample_losses(model, data, a.batch_size)
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                    peaks[name] = torch.cuda.max_memory_allocated()
                times[name].append(time.perf_counter() - start)
    gap = max(abs(x - y) / max(abs(y), 1e-9) for (x, _), (y, _) in zip(results["picked"], results["full"]))
    device = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    print(f"{device}; Llama hidden {a.hidden} x {a.layers} layers, vocabulary {a.vocab}, {a.samples} samples of "
          f"{a.min_length}-{a.max_length} tokens, {a.loss_share:.0%} bearing loss, batch {a.batch_size}, {dtype}")
    print("| arm | seconds a round (each) | best | peak GiB |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        peak = f"{peaks[name] / 2**30:.2f}" if name in peaks else "-"
        print(f"| {name} | {', '.join(f'{t:.2f}' for t in ts)} | {min(ts):.2f} | {peak} |")
    print(f"picked vs full: {min(times['full']) / min(times['picked']):.2f}x (best rounds); "
          f"largest relative difference of a sample's loss sum {gap:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
