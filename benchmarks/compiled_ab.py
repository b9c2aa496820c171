"""Two compiled copies of a model, one training step each way, timed against each other on packed rows (shared
by rotary_compile.py and fused_projections.py).

:func:`compare` warms each arm up (compiling it), checks that the arms give the same loss and first-layer
gradients, then times forward + backward under bf16 autocast, the arms alternating (order reversed every other
round), and returns each arm's median ms a step.
"""

from __future__ import annotations

import argparse
import time

import torch


def arguments(description: str, default_model: str = "1b") -> argparse.ArgumentParser:
    """The options both scripts take: model size, packed batch shape, steps, rounds, attention, device."""
    from train_throughput import MODELS

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", choices=sorted(MODELS), default=default_model)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--attn", default="flex_attention")
    p.add_argument("--device", default="cuda")
    return p


def base_model(args):
    """The Llama of ``args.model``'s shape (heads of hidden / heads) on ``args.device``, with diffmodel's flex_attention
    tiles on a GPU."""
    import transformers
    from train_throughput import MODELS

    from diffmodel.train import flex_kernels

    shape = dict(MODELS[args.model])
    shape["head_dim"] = shape["hidden_size"] // shape["num_attention_heads"]
    config = transformers.LlamaConfig(**shape, vocab_size=args.vocab, max_position_embeddings=args.width,
                                      tie_word_embeddings=False, use_cache=False)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=args.attn).to(args.device)
    if args.attn == "flex_attention" and args.device == "cuda":
        flex_kernels.install(model, flex_kernels.HOPPER_HEAD64)
    return model


def device_name(args) -> str:
    return torch.cuda.get_device_name() if args.device == "cuda" else args.device.upper()


def main_ab(argv, description: str, change, before: str, after: str) -> dict[str, float]:
    """A whole two-arm script: ``args`` from :func:`arguments`, the model of :func:`base_model` as arm ``before`` and a
    copy changed by ``change(model) -> layers changed`` as arm ``after``, both compiled and compared on one packed
    batch; prints a table row and returns each arm's median ms a step."""
    import copy

    args = arguments(description).parse_args(argv)
    base = base_model(args)
    ours = copy.deepcopy(base)
    name = device_name(args)
    print(f"{after}: {change(ours)} layers changed; {name}, torch {torch.__version__}", flush=True)
    batch = packed_batch(args.rows, args.width, args.vocab, args.device)
    med = compare({before: torch.compile(base), after: torch.compile(ours)}, batch, args.steps, args.rounds)
    print(f"| device | model | {before} ms | {after} ms | speed-up |\n|---|---|---|---|---|\n"
          f"| {name} | {args.model} | {med[before]:.1f} | {med[after]:.1f} | {med[before] / med[after]:.3f}x |")
    return med


def packed_positions(rows: int, width: int, seed: int = 0) -> torch.Tensor:
    """(rows, width) position ids of packed rows: samples of 64 to 899 tokens, positions from 0 in each."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(rows, width, dtype=torch.long)
    for r in range(rows):
        pos, start = [], 0
        while start < width:
            n = min(int(torch.randint(64, 900, (1,), generator=g)), width - start)
            pos.extend(range(n))
            start += n
        out[r] = torch.tensor(pos)
    return out


def packed_batch(rows: int, width: int, vocab: int, device: str = "cpu") -> dict:
    """A training batch of random ids over :func:`packed_positions` (the ids are their own labels)."""
    ids = torch.randint(1, vocab, (rows, width), generator=torch.Generator().manual_seed(0)).to(device)
    return dict(input_ids=ids, labels=ids, position_ids=packed_positions(rows, width).to(device))


def step(model, batch):
    with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    return loss


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compare(arms: dict, batch: dict, steps: int, rounds: int) -> dict[str, float]:
    """``arms``: two compiled models by name. Prints each arm's compile time and loss, their differences and each
    round's time; returns the median ms a step per arm."""
    losses, grads = {}, {}
    for name, model in arms.items():
        t = time.perf_counter()
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            losses[name] = step(model, batch).item()
        _sync()
        grads[name] = {n: q.grad.float().clone() for n, q in model.named_parameters() if "layers.0." in n}
        print(f"{name}: compile + warm-up {time.perf_counter() - t:.0f} s, loss {losses[name]:.6f}", flush=True)
    first, second = arms
    worst = max((grads[first][n] - grads[second][n]).abs().max().item() for n in grads[first])
    scale = max(g.abs().max().item() for g in grads[first].values())
    print(f"|loss diff| {abs(losses[first] - losses[second]):.2e}, max |grad diff| layer 0 {worst:.2e} "
          f"(largest gradient {scale:.2e})", flush=True)
    times = {name: [] for name in arms}
    for r in range(rounds):
        for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            model = arms[name]
            _sync()
            t = time.perf_counter()
            for _ in range(steps):
                model.zero_grad(set_to_none=True)
                step(model, batch)
            _sync()
            times[name].append((time.perf_counter() - t) / steps * 1000)
            print(f"round {r} {name}: {times[name][-1]:.1f} ms/step", flush=True)
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}
