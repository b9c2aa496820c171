"""Equal-time quality: pad, concat and pack trained for the same time, scored on the same held-out diffs.

Each layout is trained by the real command, ``diffmodel train``, in its own process, from the same
random initialisation (same seed), samples, tokenizer, model configuration, batch and learning-rate
schedule (constant after warm-up, so a run cut by time is not favoured by its schedule), and stopped
by ``--max_train_time SECONDS`` (a checkpoint is saved where it stops). Then ``diffmodel eval loss``
scores every model on the same held-out samples: the mean loss per diff token, the quantity training
lowers. The layouts:

- ``pad``: the reference's pad layout (``--ignore_long_samples``),
- ``concat``: the reference's concatenation (``--concatenate_texts --ignore_long_samples``),
- ``pack``: ``--packing`` with diffmodel's defaults (``--compile off`` when ``--no_compile``),
- ``pack_bf16w``: that with ``--bf16_weights on`` (bf16 weights, fp32 copies in the optimizer): whether they train
  as well in the same time (``--order pack,pack_bf16w``); ``pack_fp32w``: that with ``--bf16_weights off`` (fp32
  weights under bf16 autocast; on a GPU the defaults keep bf16 weights since 2026-12-06: ``--order pack_fp32w,pack``).

Runs go one after another (a run is minutes long); the order is ``--order``.

    PYTHONPATH=src python benchmarks/equal_time.py --train 'mined/train/*.jsonl.zst' --heldout heldout.jsonl \\
        --tokenizer tok --model 110m --seconds 120
    PYTHONPATH=src python benchmarks/equal_time.py --tiny     # a quick CPU check of the script

Prints a Markdown table (steps, loss-bearing tokens seen, final train loss, held-out diff loss) and
appends it as JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import MODELS, config_overrides  # noqa: E402

LAYOUTS = {
    "pad": ["--ignore_long_samples"],
    "concat": ["--concatenate_texts", "--ignore_long_samples"],
    "pack": ["--packing"],
    "pack_bf16w": ["--packing", "--bf16_weights", "on"],
    "pack_fp32w": ["--packing", "--bf16_weights", "off"],
}


def train_argv(layout: str, a, out: Path) -> list[str]:
    overrides = config_overrides(a.model, a.vocab_size, a.block_size)
    argv = [sys.executable, "-m", "diffmodel.cli", "train", "--model_type", "llama", "--config_overrides", overrides, "--tokenizer_name", a.tokenizer,
            "--train_file", *a.train, "--validation_split_percentage", "0", "--train_diff_model",
            "--block_size", str(a.block_size), "--per_device_train_batch_size", str(a.batch_size),
            "--learning_rate", str(a.lr), "--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", str(a.warmup_steps),
            "--weight_decay", "0.1", "--dropout", "0", "--max_steps", "1000000", "--max_train_time", str(a.seconds),
            "--do_train", "--output_dir", str(out), "--save_strategy", "no", "--report_to", "none",
            "--logging_steps", str(a.logging_steps), "--seed", "0", "--overwrite_output_dir", "--disable_tqdm", "True",
            "--preprocessing_num_workers", str(a.workers), "--cache_dir", str(a.workdir / "cache"),
            # inductor's machine-wide cache, as before --compile_cache: runs on one machine share their kernels
            "--compile_cache", "off"]
    argv += ["--bf16"] if a.device == "cuda" else ["--use_cpu"]
    argv += LAYOUTS[layout]
    if layout.startswith("pack") and a.no_compile:
        argv += ["--compile", "off"]
    return argv


def run(cmd: list[str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=os.environ.copy())
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd[1:5])} ... exited {proc.returncode}:\n{tail}")
    return time.perf_counter() - started


def one_layout(layout: str, a) -> dict:
    out = a.workdir / layout
    wall = run(train_argv(layout, a, out), a.workdir / f"{layout}.train.log")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = max((h.get("step", 0) for h in history), default=0)
    losses = [h for h in history if "loss" in h]
    loss_tokens = max((h.get("num_loss_tokens", 0) for h in history), default=0)
    train_seconds = next((h["train_runtime"] for h in history if "train_runtime" in h), None)
    report = a.workdir / f"{layout}.eval.json"
    run([sys.executable, "-m", "diffmodel.cli", "eval", "loss", "--model", str(out), "--data", a.heldout, "--device", a.device, "--batch_size", "8",
         "--no_progress", "--out", str(report)], a.workdir / f"{layout}.eval.log")
    scored = json.loads(report.read_text())
    return {"layout": layout, "steps": steps, "loss_tokens": loss_tokens, "train_runtime_s": train_seconds, "wall_s": wall,
            "final_train_loss": losses[-1]["loss"] if losses else history[-1].get("train_loss"), "heldout": scored}


def heldout_loss(result: dict) -> float:
    return float(result["heldout"]["metrics"]["loss"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", nargs="+", help="training files (globs), as --train_file takes them")
    p.add_argument("--heldout", help="held-out samples for diffmodel eval loss")
    p.add_argument("--tokenizer")
    p.add_argument("--model", choices=sorted(MODELS), default="110m")
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--order", default="pack,concat,pad")
    p.add_argument("--block_size", type=int, default=2048)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup_steps", type=int, default=50)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--logging_steps", type=int, default=10)
    p.add_argument("--no_compile", action="store_true", help="pack with --compile off")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--tiny", action="store_true", help="a tiny Llama on the bundled samples, on the CPU, 20 s per layout: checks the script")
    a = p.parse_args(argv)
    a.workdir = a.workdir or Path(tempfile.mkdtemp(prefix="equal_time_"))
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.tiny:
        from diffmodel.sample import render_row
        from diffmodel.samples import load_quickstart, quickstart_path
        from diffmodel.tiny import train_tokenizer

        a.tokenizer = str(a.workdir / "tok")
        train_tokenizer([render_row(r) for r in load_quickstart()], vocab_size=400, model_max_length=1 << 20).save_pretrained(a.tokenizer)
        a.train, a.heldout = [str(quickstart_path())], str(quickstart_path())
        a.model, a.block_size, a.batch_size, a.device, a.seconds, a.warmup_steps, a.workers = "tiny", 512, 4, "cpu", min(a.seconds, 20), 5, 1
        a.logging_steps = 1
    from transformers import AutoTokenizer

    a.vocab_size = len(AutoTokenizer.from_pretrained(a.tokenizer))
    results = []
    for layout in a.order.split(","):
        r = one_layout(layout, a)
        results.append(r)
        print(f"{layout}: {r['steps']} steps, held-out diff loss {heldout_loss(r):.4f}", flush=True)
    print(f"\nmodel {a.model}, {a.seconds:.0f} s of training per layout, block {a.block_size}, batch {a.batch_size}, {a.device}")
    print("| layout | steps | loss-bearing tokens seen | final train loss | held-out diff loss |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['layout']} | {r['steps']:,} | {r['loss_tokens']:,} | {r['final_train_loss']:.4f} | {heldout_loss(r):.4f} |")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps({"model": a.model, "seconds": a.seconds, "results": results}, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
