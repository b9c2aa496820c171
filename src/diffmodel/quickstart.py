"""The quickstart: the whole pipeline on the bundled samples, on a CPU (``diffmodel quickstart``).

Steps: write the bundled sample set (``diffmodel/samples/quickstart.jsonl``,
made by ``scripts/make_quickstart_samples.py``) to the output folder, train a
byte-level BPE tokenizer on it and build a small GPT-2 or Llama from a config
(nothing is downloaded), then run ``diffmodel train`` on it with
``--train_diff_model --packing`` and evaluation. It ends
with the sanity report, a checkpoint, ``loss.png`` and a summary.

Everything it writes goes under ``--output_dir`` (default ``quickstart_out``):
``data/quickstart.jsonl``, ``base_model/`` (the untrained model and
tokenizer), ``model/`` (the trained checkpoint, ``loss.png``, ``speed.png``,
``data_report.json``, ``train_results.json``, ``eval_results.json``).

This module holds the steps; the command (:mod:`diffmodel.commands.quickstart`)
parses the flags, calls them in order and prints. ``args`` below is the
command's parsed namespace.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from diffmodel.errors import raise_if_problems
from diffmodel.sample import render_row
from diffmodel.samples import load_quickstart, quickstart_path
from diffmodel.tiny import N_HEADS, save_tiny_checkpoint
from diffmodel.train.card import speed_results


#: Steps between training logs (the summary's median speed leaves out the first log).
LOGGING_STEPS = 5


def check_flags(args) -> None:
    """Raise one :class:`~diffmodel.errors.DiffModelError` naming every bad flag, before anything is written."""
    from diffmodel.atomic import folder_problem

    problems = []
    if problem := folder_problem(args.output_dir):
        problems.append(f"--output_dir {args.output_dir}: {problem}; choose another folder")
    if not 0 < args.epochs < math.inf:
        problems.append(f"--epochs {args.epochs:g}: use a positive number of epochs (default: 5)")
    if args.max_steps == 0 or args.max_steps < -1:
        problems.append(f"--max_steps {args.max_steps}: use a positive number of steps, or -1 to run all --epochs")
    if args.block_size < 2:
        problems.append(f"--block_size {args.block_size} is too small; use at least 2 (default: 512)")
    if args.layers < 1:
        problems.append(f"--layers {args.layers}: use at least 1 layer (default: 3)")
    step = N_HEADS * (2 if args.arch == "llama" else 1)
    if args.hidden < 1 or args.hidden % step:
        even = ", each of an even size for RoPE" if args.arch == "llama" else ""
        problems.append(f"--hidden {args.hidden}: with --arch {args.arch} the hidden size must be a positive multiple of {step} "
                        f"({N_HEADS} attention heads{even}), e.g. {max(step, round(args.hidden / step) * step)}")
    if args.vocab_size < 257:
        problems.append(f"--vocab_size {args.vocab_size} is too small for a byte-level tokenizer (256 byte symbols plus the EOS token); "
                        "use at least 257 (default: 1024)")
    if not 0 <= args.seed < 2**32:
        problems.append(f"--seed {args.seed}: use a seed from 0 to 2**32 - 1")
    raise_if_problems(problems, "diffmodel quickstart cannot start")


def build_base_model(args, rows: list[dict], out: Path) -> Path:
    texts = [render_row(r) for r in rows]
    overrides = {"n_layer": args.layers, "n_embd": args.hidden} if args.arch == "gpt2" else {"num_hidden_layers": args.layers, "hidden_size": args.hidden, "intermediate_size": 4 * args.hidden}
    return save_tiny_checkpoint(out / "base_model", args.arch, texts, vocab_size=args.vocab_size, n_positions=args.block_size, seed=args.seed, **overrides)


def check_block_size(base: Path, rows: list[dict], block_size: int) -> None:
    """Refuse a ``--block_size`` that no bundled sample fits (training drops the samples of ``block_size`` tokens or more,
    EOS included), naming the least that keeps one; the tokenizer just trained decides the lengths."""
    from transformers import AutoTokenizer

    from diffmodel.errors import DiffModelError

    tokenizer = AutoTokenizer.from_pretrained(base)
    shortest = min(len(tokenizer(render_row(r))["input_ids"]) + 1 for r in rows)
    if shortest >= block_size:
        raise DiffModelError(f"--block_size {block_size}: no bundled sample fits (the shortest is {shortest} tokens with EOS, "
                             f"and training drops samples of --block_size tokens or more); use more than {shortest} (default: 512)")


def train_args(args, data: Path, base: Path, out: Path) -> list[str]:
    return [
        "--model_name_or_path", str(base),
        "--train_file", str(data),
        "--output_dir", str(out / "model"),
        "--cache_dir", str(out / "cache"),
        "--train_diff_model", "--packing",
        "--block_size", str(args.block_size),
        "--validation_split_percentage", "5",
        "--do_train", "--do_eval", "--overwrite_output_dir",
        "--num_train_epochs", str(args.epochs),
        "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8",
        "--learning_rate", "3e-3",
        "--warmup_steps", "20",
        "--lr_scheduler_type", "cosine",
        "--weight_decay", "0.01",
        "--logging_steps", str(LOGGING_STEPS),
        "--eval_strategy", "epoch",
        "--save_strategy", "epoch",
        "--save_total_limit", "1",
        "--report_to", "none",
        "--seed", str(args.seed),
        "--dataloader_num_workers", "0",
        *(["--no_progress"] if args.no_progress else []),
    ]


def copy_samples(out: Path) -> tuple[list[dict], Path]:
    """The bundled samples, and their copy written to ``out/data/quickstart.jsonl``."""
    rows = load_quickstart()
    data = out / "data" / "quickstart.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(quickstart_path(), data)
    return rows, data


def _median_speed(log_history: list[dict]) -> str:
    """The summary's speed: the median tokens/s of the logs after the first (which holds the start-up), or why there is none."""
    median = speed_results(log_history).get("median_tokens_per_second")
    if median is None:
        return f"not measured (it needs two logged steps: --logging_steps {LOGGING_STEPS}, so at least {2 * LOGGING_STEPS} steps)"
    return f"{median} tokens/s, median"


def summary(model_dir: Path, block_size: int, start: float) -> list[tuple[str, str]]:
    """(name, value) rows of the final table, read from what the training run wrote into ``model_dir``."""
    state = json.loads((model_dir / "trainer_state.json").read_text())
    logged = [h["loss"] for h in state["log_history"] if "loss" in h]
    last_loss = logged[-1] if logged else json.loads((model_dir / "train_results.json").read_text())["train_loss"]
    ev = json.loads((model_dir / "eval_results.json").read_text())
    report = json.loads((model_dir / "data_report.json").read_text())
    return [
        ("samples", f"{report['train']['samples_loaded']} train / {report['validation']['samples_loaded']} validation"),
        ("rows x block_size", f"{report['train']['rows']} x {block_size} ({report['train']['layout']} layout, {report['train']['fill_ratio']:.1%} filled)"),
        ("loss-bearing share", f"{report['train']['loss_share']:.1%} of attended tokens"),
        ("last train loss", f"{last_loss:.3f} (step {state['global_step']})"),
        ("eval loss (diff tokens)", f"{ev['eval_loss']:.3f}"),
        ("eval perplexity", f"{ev['perplexity']:.2f}"),
        ("checkpoint", str(model_dir)),
        ("model card", str(model_dir / "README.md")),
        ("loss plot", str(model_dir / "loss.png")),
        ("speed", f"{_median_speed(state['log_history'])} (plot: {model_dir / 'speed.png'})"),
        ("data report", str(model_dir / "data_report.json")),
        ("wall time", f"{time.time() - start:.0f} s"),
    ]
