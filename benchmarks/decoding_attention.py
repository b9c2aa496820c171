"""Decoding with and without cuDNN's attention kernel: both decoders, the same checkpoint and batch, alternating.

    PYTHONPATH=src python benchmarks/decoding_attention.py --model runs/diff --data heldout.jsonl \\
        [--max_samples 50] [--batch_size 50] [--max_new_tokens 128] [--rounds 2]
    PYTHONPATH=src python benchmarks/decoding_attention.py --tiny     # a quick check of the script (CPU)

``DiffModel.edit_many`` generates inside
:func:`diffmodel.infer.model.decoding_attention`, which leaves cuDNN's
``scaled_dot_product_attention`` kernel out. The ``cudnn allowed`` arm
replaces that context with a no-op (the kernels torch picks by itself), the
other runs as ``diffmodel`` does. Each of the diff-aware and the plain
decoder runs in both arms, alternating, ``--rounds`` times (order reversed in
every other round); the table gives the median seconds and edits/s per arm and
the ratio. On the CPU the setting changes nothing (cuDNN is a GPU kernel).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from constrained_decoding import _sync, checked, load, model_arguments  # noqa: E402

from diffmodel.infer import model as model_module  # noqa: E402
from diffmodel.infer.prompt import EditRequest  # noqa: E402


def run(args) -> str:
    _, cases, _, model = load(args)
    requests = [EditRequest(c.before, c.message, c.name) for c in cases]
    options = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    model.edit_many(requests[:2], max_new_tokens=8, batch_size=2)  # warm-up
    ours = model_module.decoding_attention
    seconds: dict[tuple[bool, bool], list[float]] = {}
    try:
        for r in range(args.rounds):
            for constrained in (True, False):
                for allowed in ((True, False) if r % 2 == 0 else (False, True)):
                    model_module.decoding_attention = contextlib.nullcontext if allowed else ours
                    _sync(model.device)
                    start = time.perf_counter()
                    model.edit_many(requests, constrained=constrained, **options)
                    _sync(model.device)
                    seconds.setdefault((constrained, allowed), []).append(time.perf_counter() - start)
    finally:
        model_module.decoding_attention = ours
    name = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu"
    lines = [f"# Decoding with and without cuDNN attention ({dt.date.today().isoformat()}, {name}, torch {torch.__version__})", "",
             f"{len(requests)} requests, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, greedy, "
             f"{args.rounds} round(s), alternating; command: `{' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}`", "",
             "| decoder | cudnn allowed: s | edits/s | as diffmodel runs (no cudnn): s | edits/s | speed-up |",
             "|---|---|---|---|---|---|"]
    for constrained in (True, False):
        a = statistics.median(seconds[(constrained, True)])
        b = statistics.median(seconds[(constrained, False)])
        lines.append(f"| {'diff-aware' if constrained else 'plain generate'} | {a:.2f} | {len(requests) / a:.2f} | "
                     f"{b:.2f} | {len(requests) / b:.2f} | {a / b:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(p, max_samples=50, batch_size=50, max_new_tokens=128)
    args = checked(p, argv)
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
