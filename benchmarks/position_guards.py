"""Does a compiled step compile again when its number of rows changes? inductor's mix-order fusion, with and without its size checks.

An RMSNorm's backward sums one gradient along its rows (the input's gradient) and along its columns (the weight's);
inductor fuses the two on a GPU ("mix-order" reductions). In strict mode it first checks rows x columns >= 5 x 2^20
and rows >= 4,096, and on a number of rows marked as changing (``--loss_logits``' loss positions) each check is a
guard set from the first call's number: a later call on the other side compiles again. This compiles a norm and a
projection over rows x ``--hidden`` with the rows marked dynamic, calls it (forward and backward) for each number of
``--rows`` in turn, and prints the graphs each call compiled, in strict mode and with
``loss_logits.unguarded_positions()`` (what a compiled ``diffmodel train`` run at the loss positions sets)::

    PYTHONPATH=src python benchmarks/position_guards.py --hidden 1024 --rows 5312,4544,6016

The default rows are the ~350M benchmark run's first, sixth and seventh batches' loss positions
(benchmarks/batch_content.py); on the CPU inductor makes no mix-order fusion, so both settings compile once.
"""

from __future__ import annotations

import argparse

import torch

from diffmodel.train import loss_logits
from diffmodel.train.recompiles import graph_count


def graphs_per_call(rows: list[int], hidden: int, device: str, dtype: torch.dtype, unguarded: bool) -> list[int]:
    """Graphs compiled by each call of a fresh compiled norm + projection, one call per number of ``rows``."""
    torch._dynamo.reset()
    setattr(torch._inductor.config.triton, loss_logits.NON_STRICT_FUSION, False)
    if unguarded:
        loss_logits.unguarded_positions()
    torch.manual_seed(0)
    norm = torch.nn.RMSNorm(hidden, device=device, dtype=dtype)
    proj = torch.nn.Linear(hidden, hidden, bias=False, device=device, dtype=dtype)

    @torch.compile
    def loss(x):
        return proj(norm(x)).float().square().mean()

    made = []
    for n in rows:
        x = torch.randn(n, hidden, device=device, dtype=dtype, requires_grad=True)
        torch._dynamo.maybe_mark_dynamic(x, 0)
        before = graph_count()
        loss(x).backward()
        made.append(graph_count() - before)
    return made


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--rows", default="5312,4544,6016", help="numbers of rows, one call each, in this order")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    a = p.parse_args(argv)
    rows = [int(n) for n in a.rows.split(",")]
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    before = getattr(torch._inductor.config.triton, loss_logits.NON_STRICT_FUSION)
    results = []
    try:
        for name, unguarded in (("strict (inductor's default)", False), ("unguarded_positions()", True)):
            made = graphs_per_call(rows, a.hidden, a.device, dtype, unguarded)
            results.append({"setting": name, "graphs": made, "again": sum(made[1:])})
    finally:
        setattr(torch._inductor.config.triton, loss_logits.NON_STRICT_FUSION, before)
    device = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"{device}, torch {torch.__version__}, hidden {a.hidden}, rows {a.rows}")
    print("| setting | graphs compiled by each call | compiled again after the first call |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['setting']} | {', '.join(map(str, r['graphs']))} | {r['again']} |")
    return results


if __name__ == "__main__":
    main()
