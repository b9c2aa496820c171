"""Edit throughput: ``DiffModel.edit_many`` (what ``diffmodel edit --jsonl`` runs) against a plain
``transformers`` text-generation pipeline called once per prompt.

    PYTHONPATH=src python benchmarks/edit_throughput.py [--requests 256] [--batch_sizes 32 64]
        [--new_tokens 128] [--baseline_seconds 90] [--out results.md]
    PYTHONPATH=src python benchmarks/edit_throughput.py --size tiny --device cpu   # a quick check of the script

Set-up (nothing is downloaded):

- Prompts: ``render_prompt(name, before, message)`` for the first 20 to 100
  lines of Python standard-library modules, with a made-up instruction; the
  same prompts for both arms, in a fixed order.
- Tokenizer: byte-level BPE trained on those modules (``diffmodel.tiny``).
- Model: a Llama-shaped causal LM, random weights, bf16 on the GPU
  (``--size 350m``: 24 layers, hidden 1024, MLP 2816, 16 heads).
- Both arms decode greedily and generate exactly ``--new_tokens`` tokens per
  prompt (``min_new_tokens == max_new_tokens``, so EOS cannot end a prompt
  early); the batched arm checks this per edit.
- Baseline: ``pipeline("text-generation")`` on the same model object, one
  prompt per call, ``return_full_text=False``; it runs on the first prompts
  until ``--baseline_seconds`` have passed (its rate is steady), and the
  batched arm is also timed on exactly those prompts.
- Batched: ``DiffModel(model, tokenizer).edit_many(...)`` on all
  ``--requests`` prompts for each ``--batch_sizes`` value: tokenization,
  sorting, left padding, generation with the ``<NME>`` stop, decoding,
  parsing and applying included; unconstrained (``constrained=False``), the
  decoding the baseline does (diff-aware decoding is measured by
  ``benchmarks/constrained_decoding.py``).

Prints a Markdown report (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import os
import platform
import random
import statistics
import sys
import sysconfig
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, pipeline

from diffmodel.infer import DiffModel, EditRequest
from diffmodel.tiny import train_tokenizer

SIZES = {
    "350m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16),
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
}

MESSAGES = [
    "Add type hints to {fn}", "Handle an empty input in {fn}", "Rename a variable in {fn}",
    "Fix an off-by-one error in {fn}", "Add a docstring to {fn}", "Raise ValueError for bad arguments in {fn}",
]


def source_files() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    return sorted(f for f in glob.glob(os.path.join(root, "*.py")) if os.path.getsize(f) > 2000)


def make_requests(files: list[str], n: int, seed: int = 0) -> list[EditRequest]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        path = files[i % len(files)]
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines(keepends=True)
        k = rng.randint(20, 100)
        start = rng.randint(0, max(0, len(lines) - k))
        before = "".join(lines[start:start + k])
        fn = next((ln.split("def ", 1)[1].split("(", 1)[0] for ln in lines[start:start + k] if "def " in ln), "main")
        message = rng.choice(MESSAGES).format(fn=fn)
        out.append(EditRequest(before, message, f"lib/{os.path.basename(path)}"))
    return out


def build(size: str, files: list[str], device: torch.device, dtype: torch.dtype):
    texts = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as handle:
            texts.append(handle.read())
    vocab = 32000 if size == "350m" else 1024
    tokenizer = train_tokenizer(texts, vocab_size=vocab, model_max_length=4096)
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **SIZES[size],
    )
    with torch.device(device):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model = model.to(dtype).eval()
    gen = model.generation_config
    gen.bos_token_id = gen.eos_token_id = gen.pad_token_id = eos
    return model, tokenizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pipeline(pipe, prompts: list[str], new_tokens: int, budget_s: float, device) -> tuple[int, float]:
    """Prompts done one per call until the budget is spent; returns (count, seconds)."""
    sync(device)
    start = time.perf_counter()
    done = 0
    for prompt in prompts:
        pipe(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, return_full_text=False)
        done += 1
        if time.perf_counter() - start > budget_s:
            break
    sync(device)
    return done, time.perf_counter() - start


def run_batched(dm: DiffModel, requests: list[EditRequest], new_tokens: int, batch_size: int, device) -> float:
    sync(device)
    start = time.perf_counter()
    results = dm.edit_many(requests, max_new_tokens=new_tokens, min_new_tokens=new_tokens, batch_size=batch_size,
                           constrained=False)  # the same decoding as the pipeline baseline
    sync(device)
    seconds = time.perf_counter() - start
    counts = {e.num_tokens for group in results for e in group}
    if counts != {new_tokens}:
        raise SystemExit(f"batched arm generated {sorted(counts)} tokens per edit, not {new_tokens}: the arms are not comparable")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="350m")
    p.add_argument("--requests", type=int, default=256, help="prompts for the batched arm")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--new_tokens", type=int, default=128, help="tokens generated per prompt, both arms")
    p.add_argument("--baseline_seconds", type=float, default=90, help="time budget of the one-by-one pipeline arm")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="also write the report to this file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    files = source_files()
    model, tokenizer = build(args.size, files, device, dtype)
    requests = make_requests(files, args.requests)
    dm = DiffModel(model, tokenizer)
    prompt_lens = [len(ids) for ids in dm.encode(requests)]
    params = sum(p.numel() for p in model.parameters())
    setup_s = time.perf_counter() - t0
    print(f"set-up {setup_s:.1f}s: {params / 1e6:.1f}M parameters, {len(requests)} prompts", file=sys.stderr, flush=True)

    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    prompts = [dm.prompt(r) for r in requests]
    # warm-up: kernels, allocator, tokenizer caches
    run_pipeline(pipe, prompts[:2], 8, 1e9, device)
    dm.edit_many(requests[:4], max_new_tokens=8, min_new_tokens=8, batch_size=4, constrained=False)

    n_one, one_s = run_pipeline(pipe, prompts, args.new_tokens, args.baseline_seconds, device)
    one_rate = n_one / one_s
    print(f"pipeline one by one: {n_one} edits in {one_s:.1f}s", file=sys.stderr, flush=True)
    same_bs = max(args.batch_sizes)
    same_s = run_batched(dm, requests[:n_one], args.new_tokens, same_bs, device)
    rows = [("pipeline, one prompt per call", 1, n_one, one_s), (f"edit_many on the same {n_one} prompts", same_bs, n_one, same_s)]
    for bs in args.batch_sizes:
        seconds = run_batched(dm, requests, args.new_tokens, bs, device)
        rows.append(("edit_many", bs, len(requests), seconds))
        print(f"edit_many batch {bs}: {len(requests)} edits in {seconds:.1f}s", file=sys.stderr, flush=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    lines = [
        f"## Edit throughput ({dt.date.today().isoformat()})",
        "",
        f"- device: {name}; torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}",
        f"- command: `PYTHONPATH=src python benchmarks/edit_throughput.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- model: Llama-shaped, random weights, {params / 1e6:.1f}M parameters ({args.size}), {str(dtype).replace('torch.', '')}, {model.config._attn_implementation} attention, vocabulary {len(tokenizer)}",
        f"- prompts: {len(requests)}, {min(prompt_lens)} to {max(prompt_lens)} tokens (mean {statistics.mean(prompt_lens):.0f}); "
        f"{args.new_tokens} new tokens each (min_new_tokens = max_new_tokens), greedy",
        "",
        "| arm | batch | edits | seconds | edits/s | new tokens/s | vs pipeline |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, bs, n, seconds in rows:
        rate = n / seconds
        lines.append(f"| {label} | {bs} | {n} | {seconds:.1f} | {rate:.2f} | {rate * args.new_tokens:.0f} | {rate / one_rate:.1f}x |")
    best = max(n / s for _, _, n, s in rows[2:])
    lines += ["", f"Best batched rate / one-by-one pipeline rate: **{best / one_rate:.1f}x**."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
