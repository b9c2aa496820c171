"""``diffmodel train`` as users run it: default ``--packing`` against the reference layouts and TRL's SFTTrainer.

Every arm is a real ``transformers.Trainer`` loop on the same samples, tokenizer, model
configuration, seed, batch (rows x ``--block_size``) and precision:

- ``pad``: the reference's pad layout (``--ignore_long_samples``),
- ``concat``: the reference's concatenation (``--concatenate_texts --ignore_long_samples``),
- ``pack``: ``--packing`` with every other choice left to diffmodel's fast path
  (:mod:`diffmodel.train.fast_path`: attention, padding-free, liger-kernel, torch.compile),
- ``pack_nocompile``: the same with ``--compile off``; ``pack_plain``: ``--attn_implementation sdpa
  --liger off --compile off`` (packing without any fast-path choice); ``pack_flex_compile``,
  ``pack_flex_liger``, ``pack_sdpa_compile``, ``pack_sdpa_liger``: one attention backend with
  torch.compile or liger-kernel, the other off (the measurements the defaults are chosen from);
  ``pack_varlen``: ``--attn_implementation torch_varlen`` (torch's varlen flash kernels) with the other
  defaults, ``pack_varlen_liger``: the same with liger-kernel instead of torch.compile,
  ``pack_torch_tiles``: the defaults with ``--flex_kernel_options torch`` (torch's own flex_attention tiles),
  ``pack_sync``: the defaults with ``--async_steps off`` (the host waits for the GPU each step),
  ``pack_rotary``: the defaults with ``--rotary_layout on`` (the rotary embedding tokens-first),
  ``pack_rotary_table``: the defaults with ``--rotary_table on`` (the rotary cos and sin tables made once a forward;
  the default of compiled runs since 2026-12-06), ``pack_no_rotary_table``: with ``--rotary_table off``,
  ``pack_bf16w``: the defaults with ``--bf16_weights on`` (bf16 weights, fp32 copies in the optimizer; the GPU
  default since 2026-12-06), ``pack_fp32w``: with ``--bf16_weights off`` (fp32 weights under bf16 autocast),
  ``pack_one_pass``: the defaults with ``--adamw_one_pass on`` (the bf16 weights' AdamW step in one compiled pass,
  not three: fp32 gradients made, torch's fused AdamW, the copies written back; the default of long runs since
  2026-12-06), ``pack_three_passes``: with ``--adamw_one_pass off``, ``pack_one_pass_repeat``: ``pack_one_pass`` and,
  for models of grouped key heads, the last layer's attention for the loss positions' queries alone over the keys
  repeated to one per query head (:data:`REPEAT_GROUPED_ARMS`), ``pack_mask_apart``: the defaults
  with ``--trace_block_mask off`` (flex_attention's block mask compiled apart, as transformers builds it),
  ``pack_nonan``: that with ``--logging_nan_inf_filter False`` (no NaN/inf check of the step loss at all),
  ``pack_cdt``, ``pack_combo``, ``pack_autotune``, ``pack_cpp_wrapper``: the defaults compiled with inductor's
  coordinate-descent tuning of its fused kernels' block sizes, with its combo kernels, with its autotuning of matrix
  multiplies and fused kernels, or with its host code in C++ (:data:`INDUCTOR_ARMS`), ``pack_one_pass_combo``: the
  one pass compiled with combo kernels, the rest as the defaults (:data:`ONE_PASS_OPTION_ARMS`; with ``--isolate``,
  as a process compiles the pass once), ``pack_one_pass_device_scalars``: the one pass with its learning-rate terms on
  the GPU (``master_adamw.SCALARS_ON_DEVICE``: no ``.item()`` a kernel launch),
  ``pack_loss_logits``: the defaults with ``--loss_logits on`` (output layer and loss at the loss positions only;
  the default on a GPU since 2026-12-04), ``pack_full_logits``: the defaults with ``--loss_logits off``,
  ``pack_output_only``: the defaults with ``--loss_logits on`` as it was measured on 2026-12-04: the output layer at
  the loss positions only, the last decoder layer's MLP at every position, ``pack_all_queries``: the last layer's
  MLP at the loss positions, its attention at every position (:data:`EARLIER_LOSS_LOGITS_ARMS`),
- any arm with ``_nocudnn`` appended (``concat_nocudnn``): the same run with cuDNN's
  ``scaled_dot_product_attention`` kernel left out (flash, memory-efficient and math kernels
  allowed), to tell how much of an sdpa arm's step that kernel's choice makes,
- ``trl``: TRL's ``SFTTrainer`` with its best packing settings (``packing_strategy="bfd"``,
  ``padding_free=True``, ``completion_only_loss=True`` on prompt/completion rows split at ``<DFF>``),
  the attention backend diffmodel's fast path chose, liger-kernel when installed, no gradient
  checkpointing (SFTConfig turns it on by default), and torch.compile when ``--trl_compile``.

diffmodel's arms are built by :func:`diffmodel.train.run.prepare`, the function ``diffmodel train``
trains with, from a parsed command line (``--max_steps`` is large, so the defaults are those of a long
run; the benchmark stops each run itself). Each arm runs ``--warmup`` steps (compilation included),
then ``--steps`` timed steps between two ``synchronize()`` calls (see below); arms alternate for ``--rounds``
rounds. With ``--isolate``, each round of each arm runs in a process of its own (fresh CUDA context,
allocator, compiled-code caches and data-loader workers; the on-disk compile cache is shared): on an H200
an arm that ran after other arms in one process took 1.1x-1.3x its step time alone (benchmarks/RESULTS.md).
A round during whose timed steps torch.compile compiled a graph (a recompile for a new shape, in any arm, TRL's
flex_attention included) is flagged: its time includes compiling, and ``--warmup`` should be raised; the table's
step time then also gives the time of the steps that compiled nothing.
With ``--sync_debug``, every distinct place where the host waits for the GPU during the timed steps is printed
with the Python frames that led there (``torch.cuda.set_sync_debug_mode``).
With ``--profile DIR``, each arm's first round then profiles ``--profile_steps`` more steps
and writes ``DIR/profile_<arm>.md``: kernel time per step by kind (matrix multiplies, attention,
compiled fused kernels, optimizer, copies) and the share of wall time the GPU was busy
(:mod:`step_profile`). From the batches of the timed steps (read after the clock stops) it reports loss-bearing
tokens/s (labels that count after the shift) and a step, real (non-pad) tokens/s, step time, peak memory and
useful MFU (real samples only: 6*N*n + 12*L*d*n^2 per sample of n tokens, N without the input
embedding, over 989 TFLOP/s dense bf16 of an H100/H200).

Loss-bearing tokens a batch differ from batch to batch, and each arm packs and orders its batches its own way:
a window of a few steps can hold several percent more or fewer of them than the arm's epoch does on average (on
the ~1B command's samples, TRL's 10 timed batches held 10% more than its epoch's average, diffmodel's 2% more).
By default (``--steps epoch``) each arm is timed over the rest of its first epoch after ``--warmup`` (its last,
partial batch left out); the report gives the batches each arm timed. A smaller ``--steps`` is quicker and gives
step times, and tokens/s with the window's luck in them.

Samples: ``--data`` (``diffmodel mine`` output or any jsonl with a ``text`` field), keeping the first
``--max_samples`` whose tokens fit a row with room to spare, so no arm drops or truncates any.

    PYTHONPATH=src python benchmarks/train_default.py --data 'mined/train/*.jsonl.zst' --tokenizer tok \\
        --model 110m --arms pad,concat,pack,pack_nocompile,trl
    PYTHONPATH=src python benchmarks/train_default.py --tiny      # a quick CPU check of the script
"""

from __future__ import annotations

import argparse
import gc
import glob
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from train_throughput import MODELS, PEAK_FLOPS, config_overrides, flops  # noqa: E402

from diffmodel.preprocess.labels import IGNORE_INDEX  # noqa: E402
from diffmodel.preprocess.tokens import pad_id_of  # noqa: E402
from diffmodel.train import rotary_layout, rotary_table  # noqa: E402
from diffmodel.train.recompiles import RecompileCallback, graph_count  # noqa: E402

KEYS = ("input_ids", "labels", "position_ids", "attention_mask")


# --- data ----------------------------------------------------------------------------------------


def read_texts(pattern: str) -> list[str]:
    from diffmodel.sample import render_row

    texts = []
    for path in sorted(glob.glob(pattern)) or [pattern]:
        if path.endswith(".zst"):
            import zstandard

            with open(path, "rb") as fh:
                lines = list(io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8"))
        else:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        texts += [render_row(json.loads(line)) for line in lines if line.strip()]
    return texts


def select_samples(texts: list[str], tokenizer, block_size: int, limit: int) -> list[str]:
    """The first ``limit`` texts with a diff whose tokens fit a row with 16 tokens to spare."""
    from diffmodel.sample import diff_start

    kept = []
    for text in texts:
        if diff_start(text) > 0 and len(tokenizer(text)["input_ids"]) < block_size - 16:
            kept.append(text)
            if len(kept) == limit:
                break
    return kept


# --- arms ----------------------------------------------------------------------------------------


NO_CUDNN = "_nocudnn"
#: Arms that are the defaults compiled with these inductor settings (``torch._inductor.config``) while they train.
INDUCTOR_ARMS = {
    "pack_cdt": {"coordinate_descent_tuning": True},  # block sizes of the fused pointwise / reduction kernels tuned
    "pack_combo": {"combo_kernels": True},  # independent small kernels launched as one
    # matrix multiplies and fused kernels chosen by timing candidates (Triton templates against cuBLAS), as
    # --torch_compile_mode max-autotune-no-cudagraphs does; the adamw one pass's compile is tuned too
    "pack_autotune": {"max_autotune": True, "coordinate_descent_tuning": True},
    # the compiled code's host side in C++ rather than Python (each kernel launched without Python's overhead)
    "pack_cpp_wrapper": {"cpp_wrapper": True},
}
#: Arms that compile the one-pass AdamW with these inductor settings added (``master_adamw.EXTRA_OPTIONS``).
ONE_PASS_OPTION_ARMS = {"pack_one_pass_combo": {"combo_kernels": True}}


#: Arms that are ``--loss_logits on`` as it was measured before a later step: the name of the
#: :mod:`diffmodel.train.loss_logits` constant emptied while it installs (``pack_output_only``: the loss positions picked
#: after the decoder, not inside its last layer; ``pack_all_queries``: inside the last layer after its attention, which
#: runs at every position).
EARLIER_LOSS_LOGITS_ARMS = {"pack_output_only": "LAST_LAYER", "pack_all_queries": "LAST_QUERIES"}
#: Arms that give grouped-key models the last layer's loss-position queries over repeated keys (``loss_queries.REPEAT_GROUPED``).
REPEAT_GROUPED_ARMS = {"pack_one_pass_repeat"}


def diffmodel_argv(arm: str, a, data_file: Path, out: Path, cache: Path) -> list[str]:
    arm = arm.removesuffix(NO_CUDNN)
    overrides = config_overrides(a.model, a.vocab_size, a.block_size)
    argv = ["--model_type", "llama", "--config_overrides", overrides, "--tokenizer_name", a.tokenizer,
            "--train_file", str(data_file), "--validation_split_percentage", "0", "--train_diff_model",
            "--block_size", str(a.block_size), "--per_device_train_batch_size", str(a.batch_size),
            "--learning_rate", "3e-4", "--max_steps", "100000", "--do_train", "--output_dir", str(out),
            "--save_strategy", "no", "--report_to", "none", "--logging_steps", "100000", "--dropout", "0",
            "--seed", "0", "--overwrite_output_dir", "--cache_dir", str(cache), "--disable_tqdm", "True",
            "--preprocessing_num_workers", str(a.workers),
            # inductor's machine-wide cache (not one under each command's --cache_dir): the commands run on one machine
            # share their kernels; where the kernels are kept changes set-up times only, not the timed steps
            "--compile_cache", "off"]
    if a.device == "cuda":
        argv += ["--bf16"]
    else:
        argv += ["--use_cpu"]
    return argv + {
        "pad": ["--ignore_long_samples"],
        "concat": ["--concatenate_texts", "--ignore_long_samples"],
        "pack": ["--packing"],
        **{name: ["--packing"] for name in INDUCTOR_ARMS},
        "pack_nocompile": ["--packing", "--compile", "off"],
        "pack_torch_tiles": ["--packing", "--flex_kernel_options", "torch"],
        "pack_plain": ["--packing", "--attn_implementation", "sdpa", "--liger", "off", "--compile", "off"],
        "pack_flex_compile": ["--packing", "--attn_implementation", "flex_attention", "--liger", "off", "--compile", "on"],
        "pack_flex_liger": ["--packing", "--attn_implementation", "flex_attention", "--liger", "on", "--compile", "off"],
        "pack_sdpa_compile": ["--packing", "--attn_implementation", "sdpa", "--liger", "off", "--compile", "on"],
        "pack_sdpa_liger": ["--packing", "--attn_implementation", "sdpa", "--liger", "on", "--compile", "off"],
        "pack_varlen": ["--packing", "--attn_implementation", "torch_varlen"],
        "pack_fa4": ["--packing", "--attn_implementation", "fa4_varlen"],
        "pack_varlen_liger": ["--packing", "--attn_implementation", "torch_varlen", "--liger", "on", "--compile", "off"],
        "pack_sync": ["--packing", "--async_steps", "off"],
        "pack_rotary": ["--packing", "--rotary_layout", "on"],
        "pack_rotary_table": ["--packing", "--rotary_table", "on"],
        "pack_no_rotary_table": ["--packing", "--rotary_table", "off"],
        "pack_bf16w": ["--packing", "--bf16_weights", "on"],
        "pack_fp32w": ["--packing", "--bf16_weights", "off"],
        "pack_one_pass": ["--packing", "--adamw_one_pass", "on"],
        "pack_one_pass_repeat": ["--packing", "--adamw_one_pass", "on"],
        **{name: ["--packing", "--adamw_one_pass", "on"] for name in ONE_PASS_OPTION_ARMS},
        "pack_one_pass_device_scalars": ["--packing", "--adamw_one_pass", "on"],
        "pack_three_passes": ["--packing", "--adamw_one_pass", "off"],
        "pack_mask_apart": ["--packing", "--trace_block_mask", "off"],
        "pack_loss_logits": ["--packing", "--loss_logits", "on"],
        "pack_full_logits": ["--packing", "--loss_logits", "off"],
        **{name: ["--packing", "--loss_logits", "on"] for name in EARLIER_LOSS_LOGITS_ARMS},
        "pack_nonan": ["--packing", "--async_steps", "off", "--logging_nan_inf_filter", "False"],
    }[arm]


def build_diffmodel(arm: str, a, data_file: Path, work: Path):
    from diffmodel.train.args import parse_args, validate
    from diffmodel.train.run import prepare

    from diffmodel.train import loss_queries, master_adamw

    model_args, data_args, training_args = parse_args(diffmodel_argv(arm, a, data_file, work / arm, work / "cache"))
    validate(model_args, data_args, training_args)
    # read at each forward: the arm keeps it while it trains, the next arm's build sets it again
    loss_queries.REPEAT_GROUPED = arm.removesuffix(NO_CUDNN) in REPEAT_GROUPED_ARMS
    master_adamw.EXTRA_OPTIONS = dict(ONE_PASS_OPTION_ARMS.get(arm.removesuffix(NO_CUDNN), {}))
    master_adamw.SCALARS_ON_DEVICE = arm.removesuffix(NO_CUDNN) == "pack_one_pass_device_scalars"
    with _earlier_loss_logits(arm):
        prepared = prepare(model_args, data_args, training_args)
    return prepared.trainer, prepared.fast_path.settings()


def build_trl(a, texts: list[str], data_file: Path, work: Path):
    """SFTTrainer with bfd packing, padding-free batches and completion-only loss; attention and liger as diffmodel chose."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from diffmodel.sample import diff_start
    from diffmodel.train import fast_path
    from diffmodel.train.args import parse_args, speed_args_from
    from diffmodel.train.model import load_config, load_model, load_tokenizer

    model_args, data_args, training_args = parse_args(diffmodel_argv("pack", a, data_file, work / "trl", work / "cache"))
    tokenizer = load_tokenizer(model_args)
    config = load_config(model_args)
    path = fast_path.choose(speed_args_from(training_args), None, True, training_args, fast_path.probe_facts(), config.model_type)
    torch.manual_seed(0)
    model = load_model(type(model_args)(**{**vars(model_args), "attn_implementation": path.attention.value}), config, tokenizer)
    rows = [{"prompt": t[: diff_start(t)], "completion": t[diff_start(t):]} for t in texts]
    # TRL's best on this machine: liger-kernel whenever it is installed for the model (its padding-free rows
    # change length every batch, so it is not compiled unless --trl_compile)
    facts = fast_path.probe_facts()
    liger = facts.cuda and facts.liger and fast_path.liger_supports(config.model_type)
    cfg = SFTConfig(
        output_dir=str(work / "trl"), max_length=a.block_size, packing=True, packing_strategy="bfd", padding_free=True,
        completion_only_loss=True, per_device_train_batch_size=a.batch_size, learning_rate=3e-4, max_steps=100000,
        bf16=a.device == "cuda", use_cpu=a.device == "cpu", logging_steps=100000, save_strategy="no", report_to="none",
        # TRL packs each worker's share of the samples apart (bfd within a shard): one worker by default, its fullest
        # batches (on the ~1B command's samples 8 workers left them 2% emptier; benchmarks/batch_content.py)
        seed=0, dataset_num_proc=a.trl_workers if a.trl_workers > 1 else None, use_liger_kernel=liger,
        torch_compile=a.trl_compile,
        gradient_checkpointing=False,  # SFTConfig's default is True; no diffmodel arm recomputes activations
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    return trainer, {"attention": path.attention.value, "liger-kernel": liger, "torch.compile": a.trl_compile,
                     "gradient checkpointing": False}


# --- measuring -----------------------------------------------------------------------------------


class Meter:
    """Times steps warmup+1 .. warmup+steps and keeps their batches (device tensors, read afterwards); counts the
    graphs compiled between the two marks (``compiled``: a figure that includes compiling, when above 0), and the
    timed steps that compiled with their wall time (``compiling_steps``, ``compiling_s``), as the trainer's
    :class:`RecompileCallback` counted them between the marks (the host's time from a step's start to its end, which
    with asynchronous steps also holds the end of the step queued before it); :meth:`attach` gives the trainer one
    where ``diffmodel train`` did not (uncompiled runs, TRL)."""

    def __init__(self, warmup: int, steps: int, cuda: bool, extra: int = 0):
        """``extra``: steps that run after the timed ones (profiled by another callback, which stops the run)."""
        from transformers import TrainerCallback

        meter = self

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step in (warmup, warmup + steps):
                    if cuda:
                        torch.cuda.synchronize()
                    meter.marks.append(time.perf_counter())
                    meter.graphs.append(graph_count())
                    meter.recompiled.append((meter.recompiles.steps, meter.recompiles.seconds))
                if state.global_step >= warmup + steps + extra:
                    control.should_training_stop = True
                return control

        self.warmup, self.steps = warmup, steps
        self.callback = Clock()
        self.marks: list[float] = []
        self.graphs: list[int] = []
        self.batches: list[dict] = []
        self.recompiles = RecompileCallback()  # the trainer's own, once attached
        self.recompiled: list[tuple[int, float]] = []  # its (steps, seconds) at each mark

    @property
    def compiled(self) -> int:
        return self.graphs[1] - self.graphs[0] if len(self.graphs) == 2 else 0

    @property
    def compiling_steps(self) -> int:
        return self.recompiled[1][0] - self.recompiled[0][0] if len(self.recompiled) == 2 else 0

    @property
    def compiling_s(self) -> float:
        return self.recompiled[1][1] - self.recompiled[0][1] if len(self.recompiled) == 2 else 0.0

    def attach(self, trainer) -> None:
        own = [c for c in trainer.callback_handler.callbacks if isinstance(c, RecompileCallback)]
        if own:
            self.recompiles = own[0]
        else:
            trainer.add_callback(self.recompiles)
        trainer.add_callback(self.callback)  # after it: a mark reads its count with the step's own included
        step = trainer.training_step

        def counted(model, inputs, num_items_in_batch=None):
            if self.warmup <= trainer.state.global_step < self.warmup + self.steps:
                self.batches.append({k: inputs[k] for k in KEYS if k in inputs})
            return step(model, inputs, num_items_in_batch)

        trainer.training_step = counted


def sync_debug_callback(first: int, last: int):
    """Reports every distinct place where the host waits for the GPU during steps ``first`` .. ``last``
    (``torch.cuda.set_sync_debug_mode``), with the Python frames that led there."""
    import traceback
    import warnings

    from transformers import TrainerCallback

    seen: set = set()
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchronizing CUDA operation" not in str(message):
            return shown(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack()[:-1] if "warnings.py" not in f.filename][-8:]
        key = tuple((f.filename, f.lineno) for f in frames)
        if key not in seen:
            seen.add(key)
            print("host waits for the GPU at:\n" + "".join(f"    {f.filename}:{f.lineno} {f.name}: {f.line}\n" for f in frames), flush=True)

    class SyncDebug(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == first:
                warnings.showwarning = show
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
            elif state.global_step == last:
                torch.cuda.set_sync_debug_mode("default")
                warnings.showwarning = shown
                print(f"{len(seen)} distinct places where the host waited for the GPU in steps {first + 1}-{last}", flush=True)
            return control

    return SyncDebug()


def pieces(batch: dict, pad_id: int, eos_id: int) -> list[int]:
    """Lengths of the real samples (or parts of samples) in a batch, for the useful-FLOPs count."""
    ids = batch["input_ids"].cpu()
    out = []
    if "attention_mask" in batch:  # pad and concat rows: a piece ends after each EOS
        for row, mask in zip(ids.tolist(), batch["attention_mask"].cpu().tolist()):
            n = 0
            for t, m in zip(row, mask):
                if m:
                    n += 1
                    if t == eos_id:
                        out.append(n)
                        n = 0
            if n:
                out.append(n)
        return out
    labels = batch["labels"].cpu()
    for r, positions in enumerate(batch["position_ids"].cpu().tolist()):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        for s, e in zip(starts, starts[1:]):
            if (ids[r, s:e] == pad_id).all() and (labels[r, s:e] == IGNORE_INDEX).all():
                continue  # the collator's pad segment
            out.append(e - s)
    return out


def batch_tokens(batch: dict, pad_id: int, eos_id: int) -> tuple[int, int, list[int]]:
    """(loss-bearing tokens (labels that count after the shift), real tokens, the real pieces' lengths) of a batch."""
    lengths = pieces(batch, pad_id, eos_id)
    return int((batch["labels"][..., 1:] != IGNORE_INDEX).sum()), sum(lengths), lengths


def _attention_kernels(arm: str):
    """The sdpa kernels an arm may use: all (torch's own choice), or all but cuDNN's for ``*_nocudnn`` arms."""
    import contextlib

    if not arm.endswith(NO_CUDNN):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _earlier_loss_logits(arm: str):
    """For an :data:`EARLIER_LOSS_LOGITS_ARMS` arm, ``--loss_logits`` installed with its constant emptied."""
    import contextlib
    from unittest import mock

    name = EARLIER_LOSS_LOGITS_ARMS.get(arm.removesuffix(NO_CUDNN))
    if name is None:
        return contextlib.nullcontext()
    from diffmodel.train import loss_logits

    return mock.patch.object(loss_logits, name, ())


def _inductor_settings(arm: str):
    """The inductor settings of an :data:`INDUCTOR_ARMS` arm, for the time it trains (compiling happens in its first steps)."""
    import contextlib

    settings = INDUCTOR_ARMS.get(arm.removesuffix(NO_CUDNN))
    if not settings:
        return contextlib.nullcontext()
    import torch._inductor.config

    return torch._inductor.config.patch(settings)


def epoch_batches(dataset, batch_size: int) -> int | None:
    """Batches in one epoch of ``dataset`` (None for a stream of unknown length)."""
    try:
        return -(-len(dataset) // batch_size)
    except TypeError:
        return None


def steps_arg(text: str) -> int | str:
    """``--steps``: a positive number or ``epoch``."""
    if text == "epoch":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of steps (1 or more) or epoch")
    return value


def timed_steps(steps: int | str, warmup: int, epoch: int | None) -> int:
    """The steps to time: ``steps`` itself, or for ``epoch`` the rest of the first epoch after ``warmup`` without its
    last, partial batch."""
    if steps != "epoch":
        return steps
    if epoch is None:
        raise ValueError("--steps epoch: the data has no length (a stream); give --steps N")
    if epoch - warmup - 1 < 1:
        raise ValueError(f"--steps epoch: an epoch of {epoch} batches leaves none to time after --warmup {warmup}; "
                         "give more samples or a smaller --warmup")
    return epoch - warmup - 1


def window(warmup: int, steps: int, epoch: int | None) -> str:
    """Which of an epoch's batches the timed steps trained on (``batches 5-84 of an epoch of 94``)."""
    where = f"batches {warmup + 1}-{warmup + steps}"
    if epoch is None:
        return where
    if warmup + steps > epoch:
        note = " (the timed steps run into the next epoch)"
    elif steps < epoch / 2:
        note = (f" ({steps / epoch:.0%} of it: its tokens a batch may differ from the epoch's by several percent; "
                "raise --steps to compare tokens/s)")
    else:
        note = ""
    return f"{where} of an epoch of {epoch}{note}"


def run_arm(arm: str, a, texts, data_file: Path, work: Path, results: dict, cuda: bool) -> None:
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    base = arm.removesuffix(NO_CUDNN)
    trainer, choices = build_trl(a, texts, data_file, work) if base == "trl" else build_diffmodel(arm, a, data_file, work)
    epoch = epoch_batches(trainer.train_dataset, a.batch_size)
    steps = timed_steps(a.steps, a.warmup, epoch)
    profiling = bool(a.profile) and arm not in results  # the arm's first round
    meter = Meter(a.warmup, steps, cuda, a.profile_steps if profiling else 0)
    meter.attach(trainer)
    if profiling:
        from step_profile import step_profile_callback

        trainer.add_callback(step_profile_callback(a.warmup + steps, a.profile_steps, a.profile / f"profile_{arm}.md",
                                                   f"{arm}, model {a.model}, {a.batch_size} x {a.block_size}", cuda))
    if a.sync_debug and cuda:
        trainer.add_callback(sync_debug_callback(a.warmup, a.warmup + steps))
    with _attention_kernels(arm), _inductor_settings(arm):
        trainer.train()
    if len(meter.marks) != 2:
        raise RuntimeError(f"{arm}: the run ended before {a.warmup + steps} steps (too few samples?)")
    seconds = meter.marks[1] - meter.marks[0]
    tok = trainer.processing_class
    pad_id = pad_id_of(tok)
    model = trainer.model
    n_params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    r = results.setdefault(arm, {"seconds": 0.0, "loss_tok": 0, "real_tok": 0, "useful": 0.0, "steps": 0, "mem": 0,
                                 "setup_s": [], "round_ms": [], "choices": choices, "rows": 0, "compiled": 0,
                                 "compiling_steps": 0, "compiling_s": 0.0,
                                 "epoch_batches": epoch, "window": window(a.warmup, steps, epoch)})
    for b in meter.batches:
        loss_tok, real_tok, lengths = batch_tokens(b, pad_id, tok.eos_token_id)
        r["loss_tok"] += loss_tok
        r["real_tok"] += real_tok
        r["useful"] += flops(n_params, model.config, lengths)
        r["rows"] += b["input_ids"].shape[0]
    r["seconds"] += seconds
    r["steps"] += steps
    r["setup_s"].append(meter.marks[0] - started)
    r["round_ms"].append(seconds / steps * 1e3)
    r["compiled"] += meter.compiled
    r["compiling_steps"] += meter.compiling_steps
    r["compiling_s"] += meter.compiling_s
    if cuda:
        r["mem"] = max(r["mem"], torch.cuda.max_memory_allocated())
    print(f"{arm}: {steps} steps in {seconds:.2f} s ({seconds / steps * 1e3:.0f} ms/step), "
          f"set-up + warm-up {meter.marks[0] - started:.0f} s; so far {r['loss_tok'] / r['seconds']:,.0f} loss-bearing tok/s, useful MFU {r['useful'] / r['seconds'] / PEAK_FLOPS:.1%}; "
          f"{choices}", flush=True)
    if meter.compiled:
        print(f"{arm}: {meter.compiled} graph(s) compiled during the timed steps: this round's time includes compiling "
              f"(raise --warmup); {meter.compiling_steps} step(s) compiled, in {meter.compiling_s:.1f} s", flush=True)
    rotary_layout.uninstall(model)  # --rotary_layout on changes the modeling module for the arms after it in this process
    rotary_table.uninstall(model)
    del trainer, model, meter
    gc.collect()


SUMMED = ("seconds", "loss_tok", "real_tok", "useful", "steps", "rows", "compiled", "compiling_steps", "compiling_s")


def step_ms(row: dict) -> str:
    """The table's step time: over all rounds, then each round's where there were several (``55 (54, 56)``), and
    how many graphs torch.compile compiled while the steps were timed, where it did (so a table kept alone says it),
    with the step time of the other steps (``729, 1 graph(s) compiled while timed; 156 without the 1 step(s) that
    compiled``)."""
    rounds = row["round_ms"]
    each = f" ({', '.join(f'{ms:.0f}' for ms in rounds)})" if len(rounds) > 1 else ""
    compiled = f", {row['compiled']} graph(s) compiled while timed" if row.get("compiled") else ""
    if row.get("compiled") and row.get("other_ms"):
        compiled += f"; {row['other_ms']:.0f} without the {row['compiling_steps']} step(s) that compiled"
    return f"{row['step_ms']:.0f}{each}{compiled}"


def other_ms(r: dict) -> float | None:
    """Step time of the timed steps that compiled nothing (summed rounds ``r``), or None when every step compiled."""
    steps = r["steps"] - r.get("compiling_steps", 0)
    return (r["seconds"] - r.get("compiling_s", 0.0)) / steps * 1e3 if steps > 0 else None


def merge(results: dict, arm: str, r: dict) -> None:
    """Add one round's figures of ``arm`` (as :func:`run_arm` keeps them) to ``results``."""
    if arm not in results:
        results[arm] = r
        return
    total = results[arm]
    for key in SUMMED:
        total[key] += r[key]
    total["mem"] = max(total["mem"], r["mem"])
    total["setup_s"] += r["setup_s"]
    total["round_ms"] += r["round_ms"]


def run_isolated(arm: str, a, data_file: Path, work: Path, results: dict, profile: bool) -> None:
    """One round of ``arm`` in a new Python process; its figures are merged into ``results``."""
    spec = work / f"round_{arm}.json"
    out = work / f"round_{arm}_result.json"
    out.unlink(missing_ok=True)
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    if not profile:
        args["profile"] = None
    spec.write_text(json.dumps({"arm": arm, "args": args, "data_file": str(data_file), "work": str(work), "out": str(out)}))
    # a session of its own: stopping this benchmark stops the round's process and the compile workers it started
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--one_round", str(spec)], stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    log = work / f"round_{arm}.stderr"
    try:
        stderr = tee(proc.stderr, log)
        proc.wait()
    except BaseException:
        _stop_group(proc)
        raise
    if proc.returncode != 0 or not out.exists():
        print(f"{arm}: the end of the failed round's error output (all of it in {log}):\n{stderr.strip()[-4000:]}", file=sys.stderr)
        raise RuntimeError(f"the process of this round exited with {proc.returncode}: {error_line(stderr)}")
    merge(results, arm, json.loads(out.read_text()))


def tee(stream, log: Path, echo=None) -> str:
    """Copy a round's error output, line by line as it comes, to ``echo`` and to the file ``log``; return all of it.
    Its warnings and torch's logs (``TORCH_LOGS=recompiles`` names the guard behind a recompile) show while the round
    runs, and stay in ``log`` after it."""
    echo = echo or sys.stderr
    lines = []
    with open(log, "w") as file:
        for line in stream:
            lines.append(line)
            file.write(line)
            file.flush()
            echo.write(line)
            echo.flush()
    return "".join(lines)


def error_line(stderr: str) -> str:
    """The last line of a failed round's error output that names an exception (``RuntimeError: ...``,
    ``torch._inductor.exc.InductorError: ...``), else its last 300 characters: torch's advice lines that follow an
    error do not push the error itself out of the table."""
    named = [line.strip() for line in stderr.splitlines()
             if re.match(r"\s*[\w.]*(Error|Exception|Exit)\b.*:", line)]
    return named[-1][:300] if named else stderr.strip()[-300:]


def _stop_group(proc) -> None:
    """SIGTERM to the round's process group, SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:  # still running: the next signal
            continue


class Stopped(BaseException):
    """SIGTERM (``timeout``, a scheduler) reached the benchmark: the rounds that finished are reported."""


def _raise_stopped(signum, frame):
    raise Stopped()


def one_round(spec_path: Path) -> int:
    """An ``--isolate`` child: one round of one arm as the spec says, its figures written as JSON."""
    spec = json.loads(spec_path.read_text())
    a = argparse.Namespace(**spec["args"])
    for key in ("profile", "workdir", "json"):
        if getattr(a, key, None):
            setattr(a, key, Path(getattr(a, key)))
    data_file = Path(spec["data_file"])
    texts = [json.loads(line)["text"] for line in data_file.read_text(encoding="utf-8").splitlines() if line]
    results: dict = {}
    print(f"{spec['arm']}: a round in process {os.getpid()}", flush=True)
    run_arm(spec["arm"], a, texts, data_file, Path(spec["work"]), results, a.device == "cuda")
    Path(spec["out"]).write_text(json.dumps(results[spec["arm"]], default=str))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="samples: jsonl / jsonl.zst files with a text field (a glob)")
    p.add_argument("--tokenizer", help="tokenizer folder")
    p.add_argument("--model", choices=sorted(MODELS), default="110m")
    p.add_argument("--arms", default="pad,concat,pack,pack_nocompile,trl")
    p.add_argument("--block_size", type=int, default=2048)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=steps_arg, default="epoch",
                   help="timed steps after --warmup: a number, or epoch (default: the rest of each arm's first epoch, "
                        "its last, partial batch left out)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max_samples", type=int, default=6000)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--trl_compile", action="store_true", help="torch.compile TRL's model too")
    p.add_argument("--trl_workers", type=int, default=1,
                   help="TRL's dataset_num_proc (it packs each worker's share of the samples apart: more workers, emptier batches)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny Llama and tokenizer on the bundled samples, on the CPU: checks the script")
    p.add_argument("--json", type=Path, help="append the results as one JSON line here")
    p.add_argument("--profile", type=Path, help="profile each arm's first round after its timed steps; tables go in this folder")
    p.add_argument("--profile_steps", type=int, default=3)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--isolate", action="store_true", help="run each round of each arm in a process of its own")
    p.add_argument("--sync_debug", action="store_true", help="print every place the host waits for the GPU in the timed steps")
    p.add_argument("--one_round", type=Path, help=argparse.SUPPRESS)  # an --isolate child: the spec of its one round
    a = p.parse_args(argv)
    if a.one_round:
        return one_round(a.one_round)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="train_default_"))
    work.mkdir(parents=True, exist_ok=True)
    if a.tiny:
        from diffmodel.sample import render_row
        from diffmodel.samples import load_quickstart
        from diffmodel.tiny import train_tokenizer

        texts = [render_row(r) for r in load_quickstart()]
        a.model, a.block_size, a.batch_size, a.device = "tiny", min(a.block_size, 512), min(a.batch_size, 2), "cpu"
        a.warmup, a.rounds = min(a.warmup, 1), min(a.rounds, 1)
        a.steps = 2 if a.steps == "epoch" else min(a.steps, 2)
        a.tokenizer = str(work / "tok")
        train_tokenizer(texts, vocab_size=400, model_max_length=1 << 20).save_pretrained(a.tokenizer)
    else:
        texts = read_texts(a.data)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
    a.vocab_size = len(tokenizer)
    texts = select_samples(texts, tokenizer, a.block_size, a.max_samples)
    data_file = work / "samples.jsonl"
    data_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    cuda = a.device == "cuda"
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{len(texts)} samples, model {a.model}, device {device}, torch {torch.__version__}", flush=True)
    arms = [x for x in a.arms.split(",") if x]
    results: dict = {}
    failed: dict = {}
    rnd = 0
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        for rnd in range(a.rounds):
            for arm in arms if rnd % 2 == 0 else arms[::-1]:
                if arm in failed:
                    continue
                try:
                    if a.isolate:
                        run_isolated(arm, a, data_file, work, results, profile=arm not in results)
                    else:
                        run_arm(arm, a, texts, data_file, work, results, cuda)
                except Exception as err:  # an arm the machine cannot run is reported, the others go on
                    failed[arm] = f"{type(err).__name__}: {str(err)[:300]}"
                    print(f"round {rnd} {arm}: FAILED {failed[arm]}", flush=True)
    except Stopped:
        print(f"stopped (SIGTERM) in round {rnd}: the table has the rounds that finished", flush=True)
    table = []
    for arm in arms:
        if arm in failed:
            table.append({"arm": arm, "error": failed[arm]})
            continue
        if arm not in results:
            table.append({"arm": arm, "error": "stopped before a round of it finished"})
            continue
        r = results[arm]
        table.append({"arm": arm, "loss_tok_s": r["loss_tok"] / r["seconds"], "real_tok_s": r["real_tok"] / r["seconds"],
                      "step_ms": r["seconds"] / r["steps"] * 1e3, "round_ms": r["round_ms"], "peak_gib": r["mem"] / 2**30,
                      "useful_mfu": r["useful"] / r["seconds"] / PEAK_FLOPS, "setup_s": statistics.median(r["setup_s"]),
                      "loss_tok_step": r["loss_tok"] / r["steps"], "epoch_batches": r.get("epoch_batches"),
                      "window": r.get("window", ""),
                      "choices": r["choices"], "compiled": r["compiled"], "compiling_steps": r.get("compiling_steps", 0),
                      "other_ms": other_ms(r)})
    ref = {row["arm"]: row for row in table if "error" not in row}
    print(f"\nmodel {a.model}, {len(texts)} samples, block {a.block_size}, batch {a.batch_size}, {a.rounds} rounds x {'the rest of an epoch' if a.steps == 'epoch' else f'{a.steps} steps'}, {device}")
    print("| arm | loss-bearing tok/s | vs pad | vs concat | vs trl | loss-bearing tok a step | real tok/s | step ms (rounds) "
          "| peak GiB | useful MFU | set-up + warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in table:
        if "error" in row:
            print(f"| {row['arm']} | failed: {row['error'][:150]} |")
            continue

        def vs(name):
            return f"{row['loss_tok_s'] / ref[name]['loss_tok_s']:.2f}x" if name in ref else "-"

        print(f"| {row['arm']} | {row['loss_tok_s']:,.0f} | {vs('pad')} | {vs('concat')} | {vs('trl')} | "
              f"{row['loss_tok_step']:,.0f} | {row['real_tok_s']:,.0f} | "
              f"{step_ms(row)} | {row['peak_gib']:.1f} | {row['useful_mfu']:.1%} | {row['setup_s']:.0f} |")
    for row in table:
        if "error" not in row:
            print(f"{row['arm']}: timed on {row['window']}")
    for row in table:
        if row.get("compiled"):
            print(f"{row['arm']}: {row['compiled']} graph(s) compiled during its timed steps; its figure includes compiling (raise --warmup)")
    for row in table:
        if "choices" in row:
            print(f"{row['arm']}: {row['choices']}")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps({"model": a.model, "device": device, "torch": torch.__version__, "samples": len(texts),
                                "table": table, "args": {k: str(v) for k, v in vars(a).items()}}, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
