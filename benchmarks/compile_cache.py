"""A compiled run's first step with the compile cache empty, then with an earlier run's kernels in it (``--compile_cache``).

Builds the quickstart's tiny base model from the bundled samples (a Llama, ``--layers`` x ``--hidden``), then runs
``diffmodel train --packing --compile on --compile_cache DIR`` twice, each in a process of its own, on the bundled
samples: the first with ``DIR`` empty, the second with what the first left there. Reports the first step's seconds as
each run logged them (``torch.compile: the first step (step 1) took ...``), the whole process's seconds, and the
folder's size.

    PYTHONPATH=src python benchmarks/compile_cache.py                       # on this machine's device
    PYTHONPATH=src python benchmarks/compile_cache.py --layers 12 --hidden 768 --block_size 2048   # a ~110M-wide Llama
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

FIRST_STEP = re.compile(r"the first step \(step \d+\) took (\d+) s")


def build(work: Path, a) -> tuple[Path, Path]:
    """(the base model's folder, the training file)."""
    from diffmodel.quickstart import build_base_model, copy_samples

    rows, data = copy_samples(work)
    base = build_base_model(argparse.Namespace(arch="llama", layers=a.layers, hidden=a.hidden, vocab_size=a.vocab_size,
                                               block_size=a.block_size, seed=0), rows, work)
    return base, data


def train(base: Path, data: Path, out: Path, cache: Path, a) -> tuple[float | None, float]:
    """One run in a process of its own: (its first step's seconds as logged, the process's seconds)."""
    import torch

    argv = [sys.executable, "-m", "diffmodel.cli", "train", "--model_name_or_path", str(base), "--train_file", str(data),
            "--output_dir", str(out), "--overwrite_output_dir", "--cache_dir", str(out.parent / "data_cache"),
            "--train_diff_model", "--packing", "--block_size", str(a.block_size), "--do_train",
            "--validation_split_percentage", "0", "--per_device_train_batch_size", "8", "--max_steps", str(a.steps),
            "--save_strategy", "no", "--report_to", "none", "--compile", "on", "--compile_cache", str(cache),
            "--no_progress", *(["--bf16"] if torch.cuda.is_available() else ["--use_cpu", "--attn_implementation", "sdpa"])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # --compile_cache decides
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"diffmodel train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    found = FIRST_STEP.search(done.stderr + done.stdout)
    return (float(found.group(1)) if found else None), seconds


def size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--vocab_size", type=int, default=1024)
    p.add_argument("--block_size", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--workdir", type=Path, help="where the model, runs and cache go (default: a temporary folder)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or Path(tmp)
        base, data = build(work, a)
        cache = work / "compile_cache"
        rows = []
        for name in ("cold (empty folder)", "warm (the first run's kernels)"):
            first, seconds = train(base, data, work / "run", cache, a)
            rows.append((name, first, seconds, size_mb(cache)))
            print(f"{name}: first step {first} s, process {seconds:.1f} s", flush=True)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\nLlama {a.layers} x {a.hidden}, block {a.block_size}, {a.steps} steps, {device}, torch {torch.__version__}")
    print("| run | first step s (logged) | process s | folder MB |")
    print("|---|---|---|---|")
    for name, first, seconds, mb in rows:
        print(f"| {name} | {first if first is not None else '-'} | {seconds:.1f} | {mb:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
