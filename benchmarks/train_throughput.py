"""GPU training throughput of the layouts: pad and concat (reference) against packing.

One process, one model, one seed, the same samples; the arms run alternately
(round robin, ``--rounds`` times) so that clock and thermal drift hit every arm
alike. Per arm it reports:

- loss-bearing tokens/s (labels that count, after the model's shift),
- non-pad tokens/s,
- step time and peak GPU memory,
- useful MFU: FLOPs of the real samples only, 6*N*n + 12*L*d*n^2 per sample of
  n tokens (N = parameters without the input embedding), over the peak
  (989 TFLOP/s dense bf16 for H100/H200),
- hardware MFU: FLOPs of every row slot with dense attention over the row,
  6*N*B + 12*L*d*B^2 per row of B tokens.

The data is real diff samples (``--data``: an ``.npz`` of token ids with the
``<DFF>`` token index of each sample; ``--make_data`` builds it from
``diffmodel mine`` output). Only samples shorter than ``--block_size`` are used
by every arm (the reference command line passes ``--ignore_long_samples``).

``--check`` first proves on the GPU, in fp32 on a small Llama, that a packed
batch gives the loss and gradients of its samples run one by one, for each
packed backend (FlexAttention has no CPU backward, so the CPU tests check its
loss only; torch_varlen's kernels take bf16 only, so it is checked in bf16 with room for rounding, as is
flex_attention with diffmodel's Hopper tiles, ``flex_attention+tiles``), and for flex_attention with the
output layer and loss at the loss positions only (``flex_attention+loss_logits``, ``--loss_logits on``: the
last layer's MLP and its attention for those positions' queries too), and that with the tiles, in bf16
(``flex_attention+tiles+loss_logits``, the GPU defaults), compiled, and compiled with the rotary tables kept
(``...+compile+rotary_table``, ``--rotary_table on``).

Row building uses the package's pure layout functions (no ``datasets`` needed).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffmodel.preprocess.labels import IGNORE_INDEX, mask_before  # noqa: E402
from diffmodel.preprocess.layout import concatenate, pad_left  # noqa: E402
from diffmodel.preprocess.packing import best_fit_decreasing, pack_row  # noqa: E402
from diffmodel.train.collate import PackedCollator  # noqa: E402
from diffmodel.train.throughput import ModelShape, attention_width, model_flops  # noqa: E402

PEAK_FLOPS = 989e12
MODELS = {
    # Llama-shaped, random init
    "110m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12),
    "350m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
}
EOS = 0  # the benchmark's tokenizer has <|endoftext|> first


def config_overrides(model: str, vocab_size: int, block_size: int) -> str:
    """``diffmodel train --config_overrides`` for a Llama of :data:`MODELS` (untied embeddings, as built here)."""
    values = {**MODELS[model], "vocab_size": vocab_size, "max_position_embeddings": block_size, "tie_word_embeddings": False}
    return ",".join(f"{k}={v}" for k, v in values.items())


# --- data ----------------------------------------------------------------------------------------


def make_data(mined_dir: Path, out: Path, vocab_size: int) -> None:
    """Tokenize ``diffmodel mine`` output with a byte-level BPE trained on it; save ids and <DFF> indices."""
    import glob
    import io

    import zstandard

    from diffmodel.preprocess.tokenize import tokenize_batch
    from diffmodel.tiny import train_tokenizer

    texts = []
    for f in sorted(glob.glob(str(mined_dir / "*" / "*.jsonl.zst"))):
        with open(f, "rb") as fh:
            for line in io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8"):
                texts.append(json.loads(line)["text"])
    tok = train_tokenizer(texts, vocab_size=vocab_size, model_max_length=1 << 20)
    enc = tokenize_batch({"text": texts}, tok)
    lengths = np.array([len(x) for x in enc["input_ids"]])
    np.savez_compressed(
        out,
        ids=np.concatenate([np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]),
        lengths=lengths,
        diff_start=np.asarray(enc["diff_start"], dtype=np.int64),
        vocab=np.array([len(tok)]),
        eos=np.array([tok.eos_token_id]),
    )


def load_samples(path: Path, block_size: int) -> tuple[list[tuple[list[int], list[int]]], int, int]:
    z = np.load(path)
    ids, lengths, starts = z["ids"], z["lengths"], z["diff_start"]
    eos = int(z["eos"][0]) if "eos" in z else EOS
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    samples = []
    for i, n in enumerate(lengths):
        if n >= block_size or starts[i] < 0:
            continue
        row = ids[offsets[i]:offsets[i + 1]].tolist()
        samples.append((row, mask_before(row, int(starts[i]))))
    return samples, int(z["vocab"][0]), eos


def _pieces_of(row_ids: list[int], attn: list[int], eos: int) -> list[int]:
    """Sample pieces of a concat row (split after each EOS), for the useful-FLOPs count."""
    pieces, n = [], 0
    for t, a in zip(row_ids, attn):
        if not a:
            continue
        n += 1
        if t == eos:
            pieces.append(n)
            n = 0
    if n:
        pieces.append(n)
    return pieces


def build_rows(layout: str, samples, block_size: int, eos: int) -> list[dict]:
    """Rows of a layout, each with ``pieces``: the lengths of the (parts of) samples it holds."""
    if layout == "pad":
        rows = [pad_left(i, l, block_size, eos, eos) for i, l in samples]
        for r, (i, _) in zip(rows, samples):
            r["pieces"] = [len(i) + 1]
        return rows
    if layout == "concat":
        rows = list(concatenate(samples, block_size, eos, eos))
        for r in rows:
            r["pieces"] = _pieces_of(r["input_ids"], r["attention_mask"], eos)
        return rows
    bins = best_fit_decreasing([len(i) + 1 for i, _ in samples], block_size)
    rows = []
    for b in bins:
        r = pack_row([samples[k] for k in b], eos)
        r["pieces"] = [len(samples[k][0]) + 1 for k in b]
        rows.append(r)
    return rows


def batches(rows: list[dict], batch_size: int, block_size: int, packed: bool, seed: int):
    """Endless shuffled batches on the GPU, with their token counts."""
    rng = np.random.default_rng(seed)
    collate = PackedCollator(EOS, pad_to_multiple_of=block_size)
    while True:
        order = rng.permutation(len(rows))
        for s in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [rows[k] for k in order[s:s + batch_size]]
            if packed:
                batch = collate([{c: r[c] for c in ("input_ids", "labels", "position_ids")} for r in chunk])
            else:
                batch = {c: torch.tensor([r[c] for r in chunk]) for c in ("input_ids", "labels", "attention_mask", "position_ids")}
            loss_tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            real = sum(sum(r["pieces"]) for r in chunk)
            pieces = [p for r in chunk for p in r["pieces"]]
            yield {k: v.cuda(non_blocking=True) for k, v in batch.items()}, loss_tokens, real, pieces


# --- model ---------------------------------------------------------------------------------------


def build_model(name: str, vocab: int, block_size: int, attn: str, liger: bool, dtype=torch.bfloat16):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=block_size, tie_word_embeddings=False, use_cache=False, **MODELS[name])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.config._attn_implementation = attn
    if liger:  # patches this instance only (fused linear cross-entropy, RMSNorm, SwiGLU, RoPE)
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)
    model.train()
    n_params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    return model, n_params, cfg


def flops(n_params: int, cfg, lengths: list[int]) -> float:
    """Model FLOPs of samples of these lengths (the formula ``diffmodel train`` logs its MFU with)."""
    return model_flops(ModelShape(n_params, cfg.num_hidden_layers, cfg.hidden_size, attention_width(cfg)), sum(lengths),
                       sum(n * n for n in lengths))


# --- the run -------------------------------------------------------------------------------------


def run_arms(args, samples, vocab: int, eos: int) -> list[dict]:
    arms = [a for a in args.arms.split(",") if a]
    layouts = {"pad": "pad", "concat": "concat"}
    rows = {}
    for arm in arms:
        layout = layouts.get(arm.split("+")[0], "pack")
        if layout not in rows:
            rows[layout] = build_rows(layout, samples, args.block_size, eos)
            slots = len(rows[layout]) * args.block_size
            print(f"{layout}: {len(rows[layout])} rows, fill {sum(sum(r['pieces']) for r in rows[layout]) / slots:.1%}", flush=True)
    results = {arm: {"step_s": [], "loss_tok": 0, "real_tok": 0, "time": 0.0, "useful": 0.0, "hw": 0.0, "mem": 0} for arm in arms}
    models = {}
    failed: dict[str, str] = {}
    for rnd in range(args.rounds):
        for arm in arms:
            if arm in failed:
                continue
            try:
                run_arm(args, arm, rnd, rows, results, models, vocab)
            except Exception as err:  # an optional arm (compile, liger) may not work on this machine
                failed[arm] = f"{type(err).__name__}: {str(err)[:300]}"
                print(f"round {rnd} {arm}: FAILED {failed[arm]}", flush=True)
                torch.cuda.empty_cache()
    table = [{"arm": arm, "error": err} for arm, err in failed.items()]
    for arm, r in results.items():
        if arm in failed or not r["step_s"]:
            continue
        table.append({
            "arm": arm,
            "loss_tok_s": r["loss_tok"] / r["time"],
            "real_tok_s": r["real_tok"] / r["time"],
            "step_ms": statistics.median(r["step_s"]) * 1e3,
            "peak_gib": r["mem"] / 2**30,
            "useful_mfu": r["useful"] / r["time"] / PEAK_FLOPS,
            "hw_mfu": r["hw"] / r["time"] / PEAK_FLOPS,
        })
    return table


def run_arm(args, arm: str, rnd: int, rows, results, models, vocab: int) -> None:
    base, *mods = arm.split("+")
    attn = {"pad": "sdpa", "concat": "sdpa", "pack_sdpa": "sdpa", "pack_flex": "flex_attention", "pack_eager": "eager"}[base]
    liger = "liger" in mods
    key = (attn, liger, "compile" in mods)
    if key not in models:
        model, n_params, cfg = build_model(args.model, vocab, args.block_size, attn, liger)
        fwd = torch.compile(model) if "compile" in mods else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        models[key] = (model, fwd, opt, n_params, cfg)
    model, fwd, opt, n_params, cfg = models[key]
    layout = base if base in ("pad", "concat") else "pack"
    it = batches(rows[layout], args.batch_size, args.block_size, layout == "pack", seed=rnd)
    torch.cuda.reset_peak_memory_stats()
    r = results[arm]
    for step in range(args.warmup + args.steps):
        batch, loss_tok, real, pieces = next(it)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = fwd(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            r["step_s"].append(dt)
            r["loss_tok"] += loss_tok
            r["real_tok"] += real
            r["time"] += dt
            r["useful"] += flops(n_params, cfg, pieces)
            r["hw"] += flops(n_params, cfg, [args.block_size] * batch["input_ids"].shape[0])
    r["mem"] = max(r["mem"], torch.cuda.max_memory_allocated())
    print(f"round {rnd} {arm}: step {statistics.median(r['step_s'][-args.steps:]) * 1e3:.0f} ms, loss {loss.item():.3f}", flush=True)
    if not math.isfinite(loss.item()):
        raise RuntimeError("loss is not finite")


def check_equivalence(vocab: int = 128, only: str | None = None) -> list[str]:
    """Packed == one by one, loss and gradients, fp32 on the GPU, per packed backend (``only``: the cases whose name
    contains this text)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = []
    g = torch.Generator().manual_seed(1)
    samples = []
    for n, m in [(260, 20), (190, 40), (133, 5), (320, 70), (147, 12)]:  # >= 128: FlexAttention's block size
        ids = torch.randint(1, vocab, (n,), generator=g).tolist()
        samples.append((ids, [IGNORE_INDEX] * m + ids[m:]))
    from diffmodel.train import flex_kernels, loss_logits, loss_queries, rotary_table, varlen

    varlen.register()
    tiled = "flex_attention+tiles"  # flex_attention with the tiles --flex_kernel_options auto gives Hopper GPUs
    picked = "flex_attention+loss_logits"  # the output layer and loss at the loss positions only (--loss_logits on)
    both = "flex_attention+tiles+loss_logits"  # and the last layer's queries at those positions with the tiles (the GPU defaults)
    compiled = both + "+compile"  # the same under torch.compile, as `diffmodel train` runs them on a GPU
    repeated = compiled + " (grouped keys repeated)"  # and the last layer's queries for this model's grouped key heads
    fa4 = varlen.FLASH4 + "+loss_logits+compile"  # flash-attention 4's kernels as the GPU defaults would run them
    tables = compiled + "+rotary_table"  # the GPU defaults with the rotary tables kept (--rotary_table on)
    flexes = (tiled, picked, both, compiled, repeated, tables)
    for name in ("sdpa", "eager", "flex_attention", varlen.NAME, tiled, picked, both, compiled, repeated, tables,
                 varlen.FLASH4, fa4):
        if only and only not in name:
            continue
        attn = "flex_attention" if name in flexes else name.split("+")[0]
        loss_queries.REPEAT_GROUPED = name == repeated
        cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, use_cache=False)
        torch.manual_seed(0)
        # torch's varlen flash kernels take bf16 only, and the tiles were chosen for bf16: those are compared in
        # bf16, with room for its rounding
        low = name in (varlen.NAME, tiled, both, compiled, repeated, tables, varlen.FLASH4, fa4)
        model = LlamaForCausalLM(cfg).cuda().to(torch.bfloat16 if low else torch.float32)
        model.config._attn_implementation = attn
        if name in (tiled, both, compiled, repeated, tables):
            flex_kernels.install(model, flex_kernels.HOPPER_HEAD64)
        if name in (picked, both, compiled, repeated, tables, fa4):
            loss_logits.install(model)
        if name == tables:
            rotary_table.install(model)
        torch._dynamo.reset()

        def total(batch_list, fwd=model):
            model.zero_grad()
            s, c = 0.0, 0
            for b in batch_list:
                n = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
                loss = fwd(**{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in b.items()}).loss * n
                loss.backward()
                s += loss.item()
                c += n
            return s / c, {k: p.grad.detach().clone() / c for k, p in model.named_parameters()}

        try:
            ref_loss, ref_g = total([{"input_ids": torch.tensor([i + [EOS]]), "labels": torch.tensor([l + [EOS]])} for i, l in samples])
            bins = best_fit_decreasing([len(i) + 1 for i, _ in samples], 1024)
            packed = PackedCollator(EOS, boundaries=attn in varlen.NAMES,
                                    loss_positions=name in (picked, both, compiled, repeated, tables, fa4))(
                [pack_row([samples[k] for k in b], EOS) for b in bins])
            loss, grads = total([packed], torch.compile(model) if name in (compiled, repeated, tables, fa4) else model)
        except Exception as err:
            out.append(f"{name}: could not run: {type(err).__name__}: {str(err)[:200]}")
            print(out[-1], flush=True)
            continue
        gdiff = max((grads[k] - ref_g[k]).abs().max().item() for k in ref_g)
        line = f"{name}: |loss diff| {abs(loss - ref_loss):.2e}, max |grad diff| {gdiff:.2e}"
        gscale = max(ref_g[k].abs().max().item() for k in ref_g)
        ok = abs(loss - ref_loss) < (1e-2 * abs(ref_loss) if low else 1e-5) and gdiff < (2e-2 * gscale if low else 1e-5)
        out.append(line + (" OK" if ok else " MISMATCH"))
        print(out[-1], flush=True)
    loss_queries.REPEAT_GROUPED = False
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path(".bench/gpu/samples.npz"))
    p.add_argument("--make_data", type=Path, help="build --data from this `diffmodel mine` output folder, then stop")
    p.add_argument("--vocab_size", type=int, default=32000)
    p.add_argument("--model", choices=sorted(MODELS), default="350m")
    p.add_argument("--arms", default="pad,concat,pack_sdpa,pack_flex")
    p.add_argument("--block_size", type=int, default=2048)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--check", action="store_true", help="first check packed == one by one on the GPU")
    p.add_argument("--check_only", help="--check: only the cases whose name contains this text (fa4, compile, ...)")
    p.add_argument("--json", type=Path, help="append the results as one JSON line here")
    args = p.parse_args(argv)
    if args.make_data:
        make_data(args.make_data, args.data, args.vocab_size)
        return 0
    checks = check_equivalence(only=args.check_only) if args.check else []
    if any(line.endswith("MISMATCH") for line in checks):
        print("a path does not give one by one's loss and gradients; not measuring", file=sys.stderr)
        return 1
    if args.check and not args.data.exists():
        print(f"checks done; no {args.data} to measure on (make it with --make_data)")
        return 0
    samples, vocab, eos = load_samples(args.data, args.block_size)
    print(f"{len(samples)} samples under {args.block_size} tokens, device {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    table = run_arms(args, samples, vocab, eos)
    base = next((r for r in table if r["arm"] == "pad"), None)
    print(f"\nmodel {args.model}, block {args.block_size}, batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps")
    print("| arm | loss-bearing tok/s | vs pad | non-pad tok/s | step ms | peak GiB | useful MFU | hardware MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        if "error" in r:
            print(f"| {r['arm']} | failed: {r['error'][:120]} |")
            continue
        ratio = f"{r['loss_tok_s'] / base['loss_tok_s']:.2f}x" if base else "-"
        print(f"| {r['arm']} | {r['loss_tok_s']:,.0f} | {ratio} | {r['real_tok_s']:,.0f} | {r['step_ms']:.0f} | {r['peak_gib']:.1f} | {r['useful_mfu']:.1%} | {r['hw_mfu']:.1%} |")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"model": args.model, "device": torch.cuda.get_device_name(), "table": table, "checks": checks, "args": {k: str(v) for k, v in vars(args).items()}}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
