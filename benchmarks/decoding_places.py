"""Diff-aware decoding's KV cache: growing, fixed places, fixed places replayed as CUDA graphs; alternating.

    PYTHONPATH=src python benchmarks/decoding_places.py --model runs/diff --data heldout.jsonl \\
        [--max_samples 100] [--batch_size 50] [--max_new_tokens 512] [--rounds 2] [--dtype bf16|fp32]
    PYTHONPATH=src python benchmarks/decoding_places.py --random 1b --tokenizer TOK --data heldout.jsonl  # untrained
    PYTHONPATH=src python benchmarks/decoding_places.py --tiny --device cpu   # a quick check of the script

The same model object decodes the same held-out requests (greedy, speculation
on, as ``diffmodel`` runs) with ``decoder.fixed_places`` / ``cuda_graphs``
set per arm (:mod:`diffmodel.infer.places`): ``growing`` (the growing,
compacted cache), ``places`` (fixed places, every pass eager), ``graphs``
(fixed places, passes replayed from CUDA graphs; GPU only). Arms alternate
``--rounds`` times; the table gives the median seconds and edits/s, the ratio
to ``growing``, the forward passes, the graphs captured (and the seconds
their capture took, in the first round), and how many rows wrote the same
tokens as ``growing`` (in bf16 attention over a differently laid-out cache
rounds differently, so greedy choices between near-equal tokens may differ;
in fp32 they should all be the same).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from constrained_decoding import _sync, checked, load, model_arguments, publish  # noqa: E402

ARMS = {"growing": (False, False), "places": (True, False), "graphs": (True, True)}


def run(args) -> str:
    data, cases, _, model = load(args)
    requests = [(c.before, c.message, c.name) for c in cases]
    arms = [a for a in args.arms.split(",") if a != "graphs" or model.device.type == "cuda"]
    decoder = model.decoder
    seconds: dict[str, list[float]] = {a: [] for a in arms}
    passes, graphs, tokens = {}, {}, {}
    for _ in range(args.rounds):
        for arm in arms:
            decoder.fixed_places, decoder.cuda_graphs = ARMS[arm]
            _sync(model.device)
            start = time.perf_counter()
            model.edit_many(requests, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
            _sync(model.device)
            seconds[arm].append(time.perf_counter() - start)
            passes.setdefault(arm, decoder.forward_calls)
            places = decoder.places
            graphs.setdefault(arm, "-" if places is None or not places.captures else
                              f"{places.captures} ({places.capture_s:.2f} s)")
            if ARMS[arm][0] and places is None:
                print(f"note: the {arm} arm ran with the growing cache (the places did not fit in memory)", file=sys.stderr)
            places = None  # its memory is free for the next arm
            tokens.setdefault(arm, [list(i) for i in decoder.last_ids])
    base = statistics.median(seconds[arms[0]])
    lines = [
        f"# Diff-aware decoding by KV cache ({dt.date.today().isoformat()})",
        "",
        f"- model: {'tiny random GPT-2 (--tiny: a check of the script)' if args.tiny else f'untrained {args.random} Llama' if args.random else args.model}; device "
        f"{torch.cuda.get_device_name(model.device) if model.device.type == 'cuda' else model.device}, dtype "
        f"{model.model.dtype}; torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}",
        f"- data: {data}, {len(requests)} requests; greedy with speculation, batch {args.batch_size}, "
        f"max_new_tokens {args.max_new_tokens}, {args.rounds} round(s) each, alternating",
        f"- command: `{' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])}`",
        "",
        f"| arm | s (median) | edits/s | vs {arms[0]} | forward passes | CUDA graphs captured | rows as {arms[0]} |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        s = statistics.median(seconds[arm])
        same = sum(a == b for a, b in zip(tokens[arm], tokens[arms[0]]))
        lines.append(f"| {arm} | {s:.2f} | {len(requests) / s:.2f} | {base / s:.2f}x | {passes[arm]} | {graphs[arm]} | "
                     f"{same}/{len(tokens[arm])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(p, max_samples=100, batch_size=50, max_new_tokens=512)
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="default: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--arms", default="growing,places,graphs", help="from growing, places, graphs (default: %(default)s; "
                   "graphs only on a GPU); the first is the baseline")
    p.add_argument("--random", choices=("tiny", "110m", "350m", "1b"),
                   help="instead of --model: an untrained Llama of this size (benchmarks/train_throughput.py's shapes)")
    p.add_argument("--tokenizer", help="with --random: the tokenizer folder whose vocabulary it gets")
    p.add_argument("--out", help="also write the Markdown table here")
    args = checked(p, argv)
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        p.error(f"unknown arm(s) {', '.join(sorted(unknown))}; choose from {', '.join(ARMS)}")
    publish(run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
