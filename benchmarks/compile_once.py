"""Compiling time of a compiled `diffmodel train` run's first steps, with the loss positions marked dynamic
(the default) and without (the step compiled for the first batch's number of loss positions, then again).

Each arm is a fresh `diffmodel train --compile on --loss_logits on --packing` process of a tiny Llama on the bundled
samples, with an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR``), the arms alternating. Reports the Trainer's
``train_runtime`` (its --max_steps steps, compiling included) and the recompiles torch logged.

    PYTHONPATH=src python benchmarks/compile_once.py --rounds 2              # this machine's device
    PYTHONPATH=src python benchmarks/compile_once.py --device cuda --rounds 2 --hidden 768 --layers 12 --heads 12
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

#: ``sitecustomize`` of the arm without the marking: the trainer hands the batch over as it is.
UNMARKED = "from diffmodel.train import loss_logits\nloss_logits.dynamic_positions = lambda batch: batch\n"


def run_arm(marked: bool, work: Path, args) -> tuple[float, int]:
    from diffmodel.samples import quickstart_path

    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(dir=work), TORCH_LOGS="recompiles")
    paths = [str(Path(__file__).parent.parent / "src")]
    if not marked:
        site = Path(tempfile.mkdtemp(dir=work))
        (site / "sitecustomize.py").write_text(UNMARKED)
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    overrides = (f"hidden_size={args.hidden},intermediate_size={args.hidden * 2},num_hidden_layers={args.layers},"
                 f"num_attention_heads={args.heads},num_key_value_heads={args.heads},max_position_embeddings={args.block_size}")
    out = Path(tempfile.mkdtemp(dir=work))
    cmd = [sys.executable, "-m", "diffmodel.cli", "train", "--model_type", "llama", "--tokenizer_name", str(work / "tok"),
           "--config_overrides", overrides, "--train_file", str(quickstart_path()), "--validation_split_percentage", "0",
           "--train_diff_model", "--packing", "--block_size", str(args.block_size), "--per_device_train_batch_size", "2",
           "--max_steps", str(args.steps), "--do_train", "--output_dir", str(out / "run"), "--cache_dir", str(work / "cache"),
           "--compile", "on", "--loss_logits", "on", "--report_to", "none", "--save_strategy", "no", "--no_progress",
           *(["--use_cpu"] if args.device == "cpu" else ["--bf16"])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    runtime = json.loads((out / "run" / "train_results.json").read_text())["train_runtime"]
    return runtime, len(re.findall(r"\[__recompiles\] Recompiling", done.stderr))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--block_size", type=int, default=1024)
    args = p.parse_args(argv)
    from diffmodel.sample import render_row
    from diffmodel.samples import load_quickstart
    from diffmodel.tiny import train_tokenizer

    times: dict[str, list[float]] = {"marked": [], "unmarked": []}
    recompiles: dict[str, list[int]] = {"marked": [], "unmarked": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_tokenizer([render_row(r) for r in load_quickstart()], model_max_length=args.block_size).save_pretrained(work / "tok")
        for r in range(args.rounds):
            for arm in (("unmarked", "marked") if r % 2 == 0 else ("marked", "unmarked")):
                runtime, count = run_arm(arm == "marked", work, args)
                times[arm].append(runtime)
                recompiles[arm].append(count)
                print(f"round {r} {arm}: train_runtime {runtime:.1f} s, {count} recompiles", flush=True)
    mid = {arm: statistics.median(v) for arm, v in times.items()}
    print("| arm | train_runtime s (rounds) | recompiles | speed-up |\n|---|---|---|---|")
    for arm in ("unmarked", "marked"):
        rounds = ", ".join(f"{t:.1f}" for t in times[arm])
        print(f"| {arm} | {mid[arm]:.1f} ({rounds}) | {max(recompiles[arm])} | {mid['unmarked'] / mid[arm]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
