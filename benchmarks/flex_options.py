"""flex_attention's kernel options on packed rows: which settings make the packed step's attention fastest.

At ~1B (16 rows x 2,048, 32 query heads over 4 KV heads of 64) flex_attention is the largest part of the
default packed step after the matrix multiplies (112 of 538 ms on an H200, benchmarks/RESULTS.md). This times
its forward + backward alone, compiled as training compiles it, on rows packed the way ``diffmodel train
--packing`` packs them (best-fit-decreasing over sample lengths drawn at random, ``--min_length`` to
``--block_size``, log-uniform; the unfilled tail of a row is one more sequence, as transformers' mask from
position ids makes it), for each arm of kernel options, the arms alternating for ``--rounds``. Every arm's
output and gradients are compared with the default arm's.

    PYTHONPATH=src python benchmarks/flex_options.py --rounds 3 --steps 10
    PYTHONPATH=src python benchmarks/flex_options.py --lengths_from '.fetched/train_mined4/train/*.jsonl.zst' --tokenizer .fetched/tok16k

``--lengths_from`` draws the sample lengths from real samples (those train_default.py would train on) instead.

The arms ``flash4`` and ``torch_varlen`` time the varlen kernels of ``--attn_implementation fa4_varlen`` /
``torch_varlen`` instead (:mod:`diffmodel.train.varlen`: flash-attention 4, torch's own) on the same rows, laid
end to end with their sequences' boundaries, the transposes training does around them included; ``cudnn_varlen``
times cuDNN's attention through aten's varlen entry (``_cudnn_attention_forward`` / ``_backward`` with the
sequences' boundaries, wrapped as custom operators) the same way, ``cudnn_varlen_repeat`` with grouped keys and
values repeated to one per query head first, ``cudnn_varlen_compiled`` under torch.compile. On an H100 (torch 2.11)
cuDNN's varlen attention gave wrong gradients and ran 40-150x flex_attention's time (benchmarks/RESULTS.md), so
diffmodel does not offer it.

An arm is ``name=JSON`` (``--arm fast='{"fwd_BLOCK_M": 128}'``; a JSON key ``"mode"`` is torch.compile's mode
rather than a kernel option). An arm torch rejects is reported as failed; the others go on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffmodel.preprocess.packing import best_fit_decreasing  # noqa: E402
from diffmodel.train import varlen_ops  # noqa: E402
from diffmodel.train.flex_kernels import HOPPER_HEAD64  # noqa: E402

ARMS = {
    "default": {},
    "diffmodel": HOPPER_HEAD64,
    "autotune": {"mode": "max-autotune-no-cudagraphs"},
    "fwd_128x64": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64, "fwd_num_warps": 4, "fwd_num_stages": 3},
    "bwd_64x128": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64,
                   "bwd_num_warps": 8, "bwd_num_stages": 3},
    "tma": {"USE_TMA": True},
    # promises packed rows do not keep (both gave NaN on an H100; tests/test_bench_flex_options.py says why): every
    # query row sees a key in each key tile the kernel reaches, and each query block's key blocks of a kind are one run
    "diffmodel_rows_safe": {**HOPPER_HEAD64, "ROWS_GUARANTEED_SAFE": True},
    "diffmodel_guarantees": {**HOPPER_HEAD64, "ROWS_GUARANTEED_SAFE": True, "BLOCKS_ARE_CONTIGUOUS": True},
    # not flex_attention: the varlen kernels over the same sequences
    "flash4": {"varlen": "flash4"},
    "torch_varlen": {"varlen": "torch"},
    # cuDNN's attention over the same sequences (aten's varlen entry, which torch's own varlen_attn does not choose
    # in torch 2.11-2.13); with the grouped keys as they are, and repeated to one per query head
    "cudnn_varlen": {"varlen": "cudnn"},
    "cudnn_varlen_repeat": {"varlen": "cudnn_repeat"},
    # the same operators under torch.compile (inductor), as a compiled model would call them
    "cudnn_varlen_compiled": {"varlen": "cudnn_compiled"},
}


def packed_documents(rows: int, width: int, min_length: int, seed: int, pool: list[int] | None = None) -> torch.Tensor:
    """(rows, width) ids of the sequence each position belongs to: ``rows`` rows drawn at random from the
    best-fit-decreasing packing of eight times as many rows' worth of samples (as a shuffled packed dataset
    gives a batch). Sample lengths are drawn from ``pool`` (real samples' lengths) when given, else
    log-uniform between ``min_length`` and ``width``."""
    g = torch.Generator().manual_seed(seed)
    lengths: list[int] = []
    while sum(lengths) < rows * width * 8:
        if pool:
            lengths.append(min(width, pool[int(torch.randint(len(pool), (1,), generator=g))]))
            continue
        u = torch.rand(1, generator=g).item()
        lengths.append(int(math.exp(math.log(min_length) + u * (math.log(width) - math.log(min_length)))))
    bins = best_fit_decreasing(lengths, width)
    packed = [bins[i] for i in torch.randperm(len(bins), generator=g)[:rows].tolist()]
    doc = torch.empty(rows, width, dtype=torch.int32)
    for r, members in enumerate(packed):
        start = 0
        for i, index in enumerate(members):
            doc[r, start:start + lengths[index]] = i
            start += lengths[index]
        doc[r, start:] = len(members)  # the unfilled tail: one more sequence
    return doc


def sample_lengths(args) -> list[int] | None:
    """Token lengths (with the EOS each packed sample ends with) of ``--lengths_from``, kept as train_default.py
    keeps them (a diff, and room in a row); None without the flag."""
    if not args.lengths_from:
        return None
    if not args.tokenizer:
        raise SystemExit("--lengths_from needs --tokenizer (the folder train_default.py --tokenizer names)")
    from transformers import AutoTokenizer

    from train_default import read_texts, select_samples

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    texts = select_samples(read_texts(args.lengths_from), tokenizer, args.block_size, args.max_samples)
    return [len(ids) + 1 for ids in tokenizer(texts)["input_ids"]]


def block_mask(doc: torch.Tensor, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    doc = doc.to(device)

    def causal_within(b, h, q, kv):
        return (doc[b, q] == doc[b, kv]) & (q >= kv)

    return create_block_mask(causal_within, doc.shape[0], None, doc.shape[1], doc.shape[1], device=device)


def boundaries_of(doc: torch.Tensor) -> torch.Tensor:
    """The sequences' boundaries of ``doc``'s rows laid end to end (int32 ``cu_seqlens``)."""
    rows, width = doc.shape
    starts = torch.ones_like(doc, dtype=torch.bool)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    edges = torch.nonzero(starts.reshape(-1)).reshape(-1).tolist() + [rows * width]
    return torch.tensor(edges, dtype=torch.int32)


def _aten():
    """aten's operators (the tests give math of the same signatures)."""
    return torch.ops.aten


def cudnn_lse_shape(total: int, heads: int) -> tuple[int, int, int]:
    """The log-sum-exp declared for cuDNN's varlen forward: one per token and head."""
    return (total, heads, 1)


def _cudnn_forward(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    result = _aten()._cudnn_attention_forward(q, k, v, None, cu_q, cu_k, max_q, max_k, True, 0.0, True, False, scale=scale)
    out, lse = result[0], result[1]
    if tuple(lse.shape) != cudnn_lse_shape(q.shape[0], q.shape[1]):
        raise RuntimeError(f"cuDNN gave a log-sum-exp of shape {tuple(lse.shape)}, not the declared "
                           f"{cudnn_lse_shape(q.shape[0], q.shape[1])}")
    return out, lse


def _cudnn_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale):
    unused = torch.zeros(1, dtype=torch.int64, device=q.device)  # no dropout: seed and offset not used
    return _aten()._cudnn_attention_backward(
        grad_out=dout, query=q, key=k, value=v, out=out, logsumexp=lse, philox_seed=unused, philox_offset=unused,
        attn_bias=None, cum_seq_q=cu_q, cum_seq_k=cu_k, max_q=max_q, max_k=max_k, dropout_p=0.0, is_causal=True,
        scale=scale)


#: cuDNN's varlen attention (aten's entries, which have no fake versions) as custom operators torch.compile traces
cudnn_fwd, _ = varlen_ops.define("bench_cudnn", _cudnn_forward, _cudnn_backward, cudnn_lse_shape)


def cudnn_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    return cudnn_fwd(q, k, v, cu_q, cu_k, max_q, max_k, scale)[0]


COMPILED: dict = {}


def run_varlen(kernel: str, q, k, v, grad, cu):
    from diffmodel.train import varlen

    if kernel == "cudnn_compiled" and kernel not in COMPILED:
        COMPILED[kernel] = torch.compile(cudnn_varlen, fullgraph=True)
    call = {"flash4": varlen._flash4_kernel, "torch": varlen._kernel, "cudnn": cudnn_varlen,
            "cudnn_repeat": cudnn_varlen, "cudnn_compiled": COMPILED.get(kernel)}[kernel]
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    rows, heads, width, dim = q.shape
    kk, vv = k, v
    if kernel == "cudnn_repeat" and k.shape[1] != heads:
        kk, vv = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    flat = [t.transpose(1, 2).reshape(rows * width, t.shape[1], dim) for t in (q, kk, vv)]
    out = call(*flat, cu, cu, width, width, dim ** -0.5).reshape(rows, width, heads, dim).transpose(1, 2)
    out.backward(grad)
    return out, q.grad, k.grad, v.grad


def run(arm: dict, q, k, v, grad, mask, compiled: dict):
    from torch.nn.attention.flex_attention import flex_attention

    if "varlen" in arm:
        return run_varlen(arm["varlen"], q, k, v, grad, compiled["cu"])

    options = {key: value for key, value in arm.items() if key != "mode"}
    mode = arm.get("mode")
    if mode not in compiled:
        compiled[mode] = torch.compile(flex_attention, dynamic=False, mode=mode)
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = compiled[mode](q, k, v, block_mask=mask, enable_gqa=k.shape[1] != q.shape[1], kernel_options=options or None)
    out.backward(grad)
    return out, q.grad, k.grad, v.grad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--block_size", type=int, default=2048)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv_heads", type=int, default=4)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--min_length", type=int, default=64)
    p.add_argument("--lengths_from", help="draw sample lengths from these samples (jsonl / jsonl.zst glob, as "
                                          "train_default.py --data) tokenized by --tokenizer, not log-uniform")
    p.add_argument("--tokenizer", help="tokenizer folder for --lengths_from")
    p.add_argument("--max_samples", type=int, default=6000, help="--lengths_from: the first this many samples kept")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arm", action="append", default=[], metavar="NAME=JSON", help="an arm to add (repeatable)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"arms of the built-in set to run (default: {','.join(ARMS)})")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("flex_options.py times GPU kernels: run it on a machine with a CUDA GPU")
    arms = {name: ARMS[name] for name in args.arms.split(",") if name}
    for text in args.arm:
        name, _, spec = text.partition("=")
        arms[name] = json.loads(spec)
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    doc = packed_documents(args.rows, args.block_size, args.min_length, args.seed, sample_lengths(args))
    mask = block_mask(doc, "cuda")
    g = torch.Generator(device="cuda").manual_seed(args.seed)
    shape = (args.rows, args.heads, args.block_size, args.head_dim)
    kv_shape = (args.rows, args.kv_heads, args.block_size, args.head_dim)
    q = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(kv_shape, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    grad = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {args.rows} rows x {args.block_size}, "
          f"{int(doc.max(dim=1).values.sum())} sequences, block mask sparsity {mask.sparsity():.1f}%")
    compiled: dict = {"cu": boundaries_of(doc).cuda()}
    reference = None
    times: dict[str, list[float]] = {}
    failed: dict[str, str] = {}
    for name, arm in arms.items():
        try:
            start = time.perf_counter()
            result = run(arm, q, k, v, grad, mask, compiled)
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - an arm torch rejects is reported, the others run
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            print(f"{name}: FAILED {failed[name]}")
            continue
        if reference is None:
            reference = (name, result)
        worst = max((a.float() - b.float()).abs().max().item() for a, b in zip(result, reference[1]))
        print(f"{name}: compiled in {time.perf_counter() - start:.0f} s; output and gradients, max |diff| vs {reference[0]}: {worst:.2e}")
        times[name] = []
    for r in range(args.rounds):
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for name in order:
            run(arms[name], q, k, v, grad, mask, compiled)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                run(arms[name], q, k, v, grad, mask, compiled)
            torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
            print(f"round {r} {name}: {times[name][-1]:.2f} ms")
    base = min(times.get("default", next(iter(times.values()), [float("nan")])))
    print("\n| arm | options | fwd+bwd ms (best round) | vs default |\n|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | `{json.dumps(arms[name])}` | {min(values):.2f} | {base / min(values):.2f}x |")
    for name, why in failed.items():
        print(f"| {name} | `{json.dumps(arms[name])}` | failed: {why} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
