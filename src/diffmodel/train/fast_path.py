"""The fast path of ``diffmodel train --packing``: what runs by default, and why.

With ``--packing`` these choices are made for the user unless a flag makes
them (each is logged at start-up with its reason, and recorded in the model
card):

- **attention** (``--attn_implementation``): flash-attention's varlen kernels
  when ``flash_attn`` is installed and a GPU is present (and no
  ``--padding_free off``: flash needs flattened batches); else
  ``flex_attention`` on a GPU (its block-sparse mask skips the blocks between
  samples); else ``sdpa`` (``eager`` for a model without it). A backend the
  model's class does not declare (GPT-2 and GPTBigCode have no
  flex_attention) is passed over, and the log says why. All keep samples apart
  (:mod:`diffmodel.train.attention`), and the start-up probe checks the one
  chosen, through the collator, device, precision and kernels training uses.
  ``--attn_implementation torch_varlen`` (:mod:`diffmodel.train.varlen`:
  torch's own varlen flash kernels, no flash-attn package) is offered but not
  chosen by default: on an H200 it matched flex_attention at ~110M and ran
  0.95x its tokens/s at ~1B (benchmarks/RESULTS.md). Nor is
  ``--attn_implementation fa4_varlen`` (flash-attention 4's kernels,
  :mod:`diffmodel.train.flash4`): on an H200 its attention ran 0.70x / 0.96x
  flex_attention's with the tiles for the ~110M / ~1B heads.
- **padding-free batches** (``--padding_free``): one flattened row per batch
  with the sample boundaries. Needed by flash attention (its kernels see
  packing only in a one-row batch); otherwise off: best-fit-decreasing rows
  are already nearly full, and sdpa/eager would build one dense mask over the
  whole flattened batch.
- **torch.compile** (``--compile``, sets ``--torch_compile``): on a GPU,
  unless ``--max_steps`` is under :data:`COMPILE_MIN_STEPS` (a run given by
  epochs: unless its epochs over the packed rows make fewer steps, decided
  again once the rows are built, :func:`epoch_steps`) or
  ``--max_train_time`` under :data:`COMPILE_MIN_SECONDS` (compiling costs up
  to a minute), liger-kernel is asked for, or DeepSpeed / FSDP shard the
  model (not measured together). Compiled rows are padded to
  ``--block_size`` so every batch has one shape (no recompilation); so are
  flex_attention's, whose kernel is compiled per shape. An epoch's last,
  smaller batch is filled with rows of pad tokens
  (:mod:`diffmodel.train.full_batches`), and the number of loss positions is
  marked as changing (:func:`diffmodel.train.loss_logits.dynamic_positions`),
  so the step is compiled once. Resuming is
  unaffected: Trainer saves the model without its compiled wrapper.
- **torch.compile cache** (``--compile_cache``, shown when compiled): the
  compiled kernels kept beside the preprocessing cache for later runs on any
  machine that sees it (:mod:`diffmodel.train.compile_cache`).
- **liger-kernel** (``--liger``): fused linear cross-entropy (no logits
  tensor), RMSNorm, SwiGLU and RoPE kernels, when installed, on a GPU, for a
  model type liger supports, and not compiling: its fused loss fails under
  torch.compile (torch 2.11, liger-kernel 0.8.5), and on an H200 at ~110M
  flex_attention + compile ran 113 ms a step against 124 ms with liger
  (benchmarks/RESULTS.md). With liger, training logs no ``mean_token_accuracy``.

- **data loader workers** (``--data_workers``, sets ``--dataloader_num_workers``):
  :data:`DATA_WORKERS` processes fetch and collate the next batches while the
  GPU runs a step, on a GPU with a map-style dataset (not ``--streaming``,
  whose reader shards by worker itself) when ``--dataloader_num_workers`` is
  not given. Without them the main process fetched batches for 4-5% of each
  step on an H200 at ~110M (``data_wait_share``, benchmarks/RESULTS.md).
  The order of the batches does not change (the sampler stays in the main
  process).

- **flex_attention's tiles** (``--flex_kernel_options``): with flex_attention
  on a GPU of compute capability 9.0 (H100, H200), heads of 64 and
  ``--bf16``/``--fp16``, the tile sizes inductor's autotuning picked there
  (:mod:`diffmodel.train.flex_kernels`); torch's own elsewhere.

- **asynchronous steps** (``--async_steps``): on a GPU, batches copied from pinned memory without
  waiting and Trainer's NaN/inf loss check done on the GPU, so the host queues the next step while the
  GPU runs this one (:mod:`diffmodel.train.async_steps`; on an H200 at ~110M the packed step went from
  63 to 58 ms).
- **logits at the loss positions only** (``--loss_logits``): the output layer and the loss computed only
  where the next token bears loss (:mod:`diffmodel.train.loss_logits`): on a GPU, for the model types it
  takes, unless liger-kernel's fused loss is chosen or DeepSpeed / FSDP shard the model (on an H200 the
  packed step went from 60 to 55 ms at ~110M and from 421 to 414 ms at ~1B, with a 16k vocabulary, when the
  output layer alone was picked; Llama-shaped models now run their last layer's MLP there only too).
- **rotary embedding tokens-first** (``--rotary_layout``): the model's rotary function applied to the
  projections' tokens-first tensors, so compiled steps write no heads-first copies of the queries and keys
  (:mod:`diffmodel.train.rotary_layout`; the same values). Off under ``auto``: measured no faster on an H100
  (``benchmarks/rotary_layout.py``: 0.999x at ~110M and ~1B; 1.05x on a CPU).
- **rotary tables kept** (``--rotary_table``): the rotary embedding's cos and sin computed once a forward
  and read by every layer, instead of recomputed by torch.compile's kernels for each head of each layer,
  forward and backward (:mod:`diffmodel.train.rotary_table`; the same values). On under ``auto`` in a compiled
  run: on an H100 the ~1B step went from 402 to 393 ms (1.022x) and the ~110M one from 53 to 52 ms (1.021x)
  (``benchmarks/train_default.py`` arm ``pack_rotary_table``); a model without a rotary embedding module
  (GPT-2) gets nothing, and the log says so.
- **bf16 weights** (``--bf16_weights``): the weights kept in bf16 with an fp32 copy in the optimizer
  (:mod:`diffmodel.train.master_weights`). On a GPU for a compiled ``--bf16`` run on one process with torch's
  AdamW and no gradient accumulation (an H100's ~110M packed step: 57 to 53 ms); otherwise off, since the gradients
  would be added up or averaged in bf16, or another optimizer or weight keeper is in charge.
- **AdamW in one pass** (``--adamw_one_pass``, shown with bf16 weights): the fp32 copies' AdamW step in one
  compiled pass over memory (:mod:`diffmodel.train.master_adamw`). On when the run is long enough for its compile
  to pay: the model's parameters times the run's steps reach :data:`ONE_PASS_MIN_WEIGHT_STEPS`.
- **block mask traced into the compiled graph** (``--trace_block_mask``, shown with flex_attention): torch's
  ``create_block_mask`` traced into the compiled model instead of compiled apart by transformers, which breaks the
  model's graph (:mod:`diffmodel.train.compiled_mask`; the same mask). On in compiled runs.

Without ``--packing`` nothing changes from the reference's behaviour, unless a
flag says ``on``.

Invariants: the decisions are pure functions of the flags and of
:class:`Facts` (what the machine has), so tests can give any machine; the
compile decision is made while parsing (it sets a ``TrainingArguments``
field) and, for a run given by epochs, taken back once its rows are counted;
the others when the model is built.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

from diffmodel.train import compile_cache, flash4, flex_kernels, master_weights
from diffmodel.train.attention import FLASH, PACKING_BACKENDS
from diffmodel.train.varlen import FLASH4
from diffmodel.train.varlen import NAME as VARLEN
from diffmodel.train.varlen import NAMES as VARLEN_NAMES

#: Below this many --max_steps, compiling (about a minute on a GPU) costs more than it saves.
COMPILE_MIN_STEPS = 300
#: Below this --max_train_time (seconds), likewise: on an H200 at ~110M, compiling took ~35 s of a 60 s budget
#: and the compiled run made fewer steps than an uncompiled one would have (benchmarks/RESULTS.md).
COMPILE_MIN_SECONDS = 600
#: ``--adamw_one_pass auto``: on when the model's parameters times the run's optimizer steps reach this. On an H100
#: (benchmarks/RESULTS.md) the one pass made the ~1B step 5 ms shorter (410 to 405 ms, the bytes it saves say
#: ~4.5 ms per 1e9 weights) and the ~110M one ~0.3 ms; compiling it took 34-44 s on a fresh machine (4 s from the
#: on-disk cache): ~40 s / 4.5e-12 s a weight-step is ~9e12, ~9,000 steps at ~1B and ~90,000 at ~110M.
ONE_PASS_MIN_WEIGHT_STEPS = 10**13
#: Data loader worker processes of the packed path on a GPU.
DATA_WORKERS = 2


@dataclass(frozen=True)
class Facts:
    """What this machine offers the fast path."""

    cuda: bool
    flash_attn: bool
    flex_attention: bool
    liger: bool
    capability: tuple[int, int] | None = None
    """The GPU's compute capability (None without one)."""
    flash4: bool = False
    """flash-attention 4 (``flash_attn.cute``) is installed."""


def probe_facts(use_cpu: bool = False) -> Facts:
    """``use_cpu``: --use_cpu, which trains on the CPU of a machine with a GPU: no GPU is offered then."""
    import torch

    cuda = torch.cuda.is_available() and not use_cpu
    return Facts(
        cuda=cuda,
        flash_attn=cuda and flash_attn_2_installed(),
        flex_attention=importlib.util.find_spec("torch.nn.attention.flex_attention") is not None,
        liger=importlib.util.find_spec("liger_kernel") is not None,
        capability=tuple(torch.cuda.get_device_capability()) if cuda else None,
        flash4=flash4.installed(),
    )


def flash_attn_2_installed() -> bool:
    """Whether flash-attn 2 is installed: its compiled kernels, not only the ``flash_attn`` name (flash-attn-4 installs
    ``flash_attn.cute`` alone, which transformers' ``flash_attention_2`` cannot use)."""
    return importlib.util.find_spec("flash_attn_2_cuda") is not None


@dataclass(frozen=True)
class Choice:
    value: object
    reason: str


def liger_supports(model_type: str | None) -> bool:
    """Whether liger-kernel has kernels for this model type (False when it is not installed)."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return False
    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN


def seconds_of(max_train_time) -> float | None:
    """--max_train_time in seconds; None when not given or not readable (validation reports the latter)."""
    from diffmodel.train.args import parse_duration

    try:
        return parse_duration(max_train_time)
    except ValueError:
        return None


def backends_of(config) -> frozenset[str] | None:
    """The attention backends the model class of ``config`` declares (None when the class is not known here)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except (ImportError, KeyError, ValueError):
        return None
    found = {"eager"}
    for backend, flag in (("sdpa", "_supports_sdpa"), ("flex_attention", "_supports_flex_attn"),
                          ("flash_attention_2", "_supports_flash_attn")):
        if getattr(cls, flag, False):
            found.add(backend)
    return frozenset(found)


def choose_attention(requested: str | None, packing: bool, facts: Facts, padding_free: str = "auto",
                     model: tuple[str, frozenset[str]] | None = None) -> Choice:
    """``model``: (model type, the backends its class declares), when known; a backend it lacks is not chosen."""
    if requested:
        return Choice(requested, "set by --attn_implementation")
    if not packing:
        return Choice(None, "the model's default (no --packing)")
    kind, has = model if model is not None else ("", None)

    def lacks(backend: str) -> bool:
        return has is not None and backend not in has

    flash = facts.cuda and facts.flash_attn
    if flash and padding_free != "off" and not lacks("flash_attention_2"):
        return Choice("flash_attention_2", "flash-attn is installed: its varlen kernels attend within each sample only")
    if flash and lacks("flash_attention_2"):
        no_flash = f"{kind} models have no flash attention"
    else:
        no_flash = "--padding_free off rules out flash-attn, which needs flattened batches" if flash else "flash-attn is not installed"
    if facts.flash4 and facts.cuda and flash4.supports(facts.capability):
        no_flash += (f"; flash-attention 4 is installed, but its attention ran 0.70x-0.96x flex_attention's on an H200: "
                     f"--attn_implementation {FLASH4} uses it")
    if facts.cuda and facts.flex_attention and not lacks("flex_attention"):
        return Choice("flex_attention", f"on a GPU its block-sparse mask skips the blocks between samples ({no_flash})")
    fallback = "eager" if lacks("sdpa") else "sdpa"
    if facts.cuda:
        no_flex = f"{kind} models have no flex_attention" if lacks("flex_attention") else "this torch has no flex_attention"
        return Choice(fallback, f"{fallback} keeps samples apart through position_ids ({no_flash}; {no_flex})")
    return Choice(fallback, f"no GPU: {fallback} keeps samples apart through position_ids")


def choose_padding_free(setting: str, attention: str | None, packing: bool) -> Choice:
    if not packing:
        return Choice(False, "no --packing")
    if attention in FLASH:
        return Choice(True, f"{attention} sees sample boundaries only in a one-row batch")
    if setting == "on":
        return Choice(True, "set by --padding_free on")
    if setting == "off":
        return Choice(False, "set by --padding_free off")
    if attention in ("flex_attention", *VARLEN_NAMES):
        return Choice(False, "packed rows are already nearly full; flattening would only drop the last pad segment")
    return Choice(False, f"{attention or 'this backend'} would need one dense mask over a flattened batch")


def choose_liger(setting: str, use_liger_kernel: bool, packing: bool, facts: Facts, model_type: str | None,
                 compiling: bool = False) -> Choice:
    """``compiling``: torch.compile is on (liger's fused loss fails under it, so ``auto`` leaves liger off)."""
    if use_liger_kernel or setting == "on":
        return Choice(True, "set by --liger on" if setting == "on" else "set by --use_liger_kernel")
    if setting == "off":
        return Choice(False, "set by --liger off")
    if not packing:
        return Choice(False, "no --packing")
    if not facts.cuda:
        return Choice(False, "no GPU (liger's kernels are Triton GPU kernels)")
    if not facts.liger:
        return Choice(False, "liger-kernel is not installed (pip install liger-kernel)")
    if not liger_supports(model_type):
        return Choice(False, f"liger-kernel has no kernels for {model_type!r} models")
    if compiling:
        return Choice(False, "torch.compile is on: liger's fused loss fails under it (torch 2.11, liger-kernel 0.8.5), "
                             "and compiling measured faster on an H200 (benchmarks/RESULTS.md)")
    return Choice(True, "installed: fused linear cross-entropy never builds the logits tensor")


def choose_compile(setting: str, torch_compile: bool, packing: bool, max_steps: int, facts: Facts,
                   liger_forced: bool = False, max_seconds: float | None = None, sharded: bool = False,
                   epoch_steps: int | None = None) -> Choice:
    """``torch_compile``: ``--torch_compile`` as the user gave it (the parser sets it itself when ``auto`` decides to
    compile: pass False then). ``liger_forced``: --liger on / --use_liger_kernel was given; ``sharded``: --deepspeed or
    --fsdp was given; ``epoch_steps``: the optimizer steps of a run without --max_steps, once its rows are known."""
    if setting == "on":
        return Choice(True, "set by --compile on")
    if torch_compile:
        auto = _auto_compile(packing, max_steps, facts, liger_forced, max_seconds, sharded, epoch_steps)
        return auto if setting == "auto" and auto.value else Choice(True, "set by --torch_compile")
    if setting == "off":
        return Choice(False, "set by --compile off")
    return _auto_compile(packing, max_steps, facts, liger_forced, max_seconds, sharded, epoch_steps)


def epoch_steps(rows: int, batch_size: int, accumulation: int, processes: int, epochs: float) -> int:
    """The optimizer steps Trainer makes of ``epochs`` over ``rows`` training rows (``batch_size`` rows a process,
    ``accumulation`` batches a step), as it counts them when no --max_steps is given."""
    batches = math.ceil(rows / max(batch_size * processes, 1))
    return math.ceil(epochs * max(math.ceil(batches / max(accumulation, 1)), 1))


def _auto_compile(packing: bool, max_steps: int, facts: Facts, liger_forced: bool, max_seconds: float | None = None,
                  sharded: bool = False, epoch_steps: int | None = None) -> Choice:
    if not packing:
        return Choice(False, "no --packing")
    if sharded:
        return Choice(False, "DeepSpeed / FSDP shard the model: compiling them was not measured here (pass --compile on to try)")
    if liger_forced:
        return Choice(False, "liger-kernel was asked for, and its fused loss fails under torch.compile (torch 2.11, liger-kernel 0.8.5)")
    if not facts.cuda:
        return Choice(False, "no GPU (compiling for the CPU takes minutes and gains little)")
    if 0 < max_steps < COMPILE_MIN_STEPS:
        return Choice(False, f"--max_steps {max_steps} is under {COMPILE_MIN_STEPS}: compiling would cost more than it saves")
    if max_steps <= 0 and epoch_steps is not None and epoch_steps < COMPILE_MIN_STEPS:
        return Choice(False, f"this run's {epoch_steps} steps (--num_train_epochs over its packed rows) are under "
                             f"{COMPILE_MIN_STEPS}: compiling would cost more than it saves")
    if max_seconds is not None and max_seconds < COMPILE_MIN_SECONDS:
        return Choice(False, f"--max_train_time {max_seconds:g} s is under {COMPILE_MIN_SECONDS} s: compiling would take too much of it")
    return Choice(True, "on a GPU it fuses the many small kernels of each layer; rows padded to --block_size keep one shape")


def data_workers_setting(text: str) -> int | None:
    """``--data_workers``: None for ``auto``, else the number of processes; ValueError when it is neither."""
    if text == "auto":
        return None
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def choose_data_workers(setting: str, dataloader_num_workers: int, packing: bool, facts: Facts,
                        streaming: bool = False) -> Choice:
    """How many processes fetch and collate batches (``dataloader_num_workers``: the parsed Trainer flag)."""
    given = data_workers_setting(setting)
    if given is not None:
        return Choice(given, f"set by --data_workers {given}")
    if dataloader_num_workers:
        return Choice(dataloader_num_workers, "set by --dataloader_num_workers")
    if not packing:
        return Choice(0, "no --packing")
    if streaming:
        return Choice(0, "--streaming reads its stream in the main process")
    if not facts.cuda:
        return Choice(0, "no GPU: the step itself runs on these CPUs")
    return Choice(DATA_WORKERS, "they fetch and collate the next batches while the GPU runs a step "
                                "(without them the main process waited 4-5% of each step on an H200)")


def _given(setting: str, flag: str) -> Choice | None:
    """The choice an ``on`` / ``off`` setting of ``--flag`` makes (None for ``auto``)."""
    return Choice(setting == "on", f"set by --{flag} {setting}") if setting in ("on", "off") else None


def choose_async_steps(setting: str, packing: bool, facts: Facts) -> Choice:
    if given := _given(setting, "async_steps"):
        return given
    if not packing:
        return Choice(False, "no --packing")
    if not facts.cuda:
        return Choice(False, "no GPU: host and step are the same processor")
    return Choice(True, "the host queues the next step while the GPU runs this one (batches copied without waiting, "
                        "the NaN/inf loss check on the GPU)")


def choose_rotary_layout(setting: str, compiled: bool) -> Choice:
    """``--rotary_layout``: the rotary embedding in tokens-first memory (:mod:`diffmodel.train.rotary_layout`)."""
    if given := _given(setting, "rotary_layout"):
        return given
    if not compiled:
        return Choice(False, "not compiled: eager PyTorch keeps the projections' memory order itself")
    return Choice(False, "no faster on an H100 (~110M 57.5 ms a step either way, ~1B 416.3 against 416.8; benchmarks/rotary_layout.py); --rotary_layout on applies it")


#: ``--rotary_table``'s choice when nothing is compiled (also FastPath's default for it).
TABLES_NOT_COMPILED = Choice(False, "not compiled: eager PyTorch computes the tables once a forward itself")


#: Why ``--rotary_table auto`` keeps the tables in a compiled run (benchmarks/RESULTS.md, 2026-12-06).
ROTARY_TABLE_MEASURED = ("torch.compile would compute cos and sin again in every layer's rotary kernels; on an H100 the "
                         "tables made the ~1B step 402 to 393 ms and the ~110M one 53 to 52 ms")


def choose_rotary_table(setting: str, compiled: bool) -> Choice:
    """``--rotary_table``: the rotary cos and sin tables made once a forward (:mod:`diffmodel.train.rotary_table`)."""
    if given := _given(setting, "rotary_table"):
        return given
    if not compiled:
        return TABLES_NOT_COMPILED
    return Choice(True, ROTARY_TABLE_MEASURED)


#: ``--optim`` values ``--bf16_weights auto`` keeps the fp32 copies in: torch's AdamW, as measured and tested.
TORCH_ADAMW = ("adamw_torch_fused", "adamw_torch")


def choose_bf16_weights(setting: str, packing: bool, facts: Facts, training_args, compiled: bool) -> Choice:
    """``--bf16_weights``: bf16 weights with fp32 copies in the optimizer (:mod:`diffmodel.train.master_weights`; the
    flags ``on`` does not go with are refused while parsing). ``auto``: on for a compiled ``--packing --bf16`` run
    on one GPU with torch's AdamW and no gradient accumulation, where it was measured."""
    from diffmodel.train.args import BF16_WEIGHTS_CONFLICTS, bf16_weights_conflicts

    if given := _given(setting, "bf16_weights"):
        return given
    if not facts.cuda:
        return Choice(False, "no GPU: measured on GPUs only; --bf16_weights on keeps them")
    if not packing:
        return Choice(False, "not --packing, where it was measured")
    if not getattr(training_args, "bf16", False):
        return Choice(False, "training is not --bf16")
    if conflicts := bf16_weights_conflicts(training_args):
        return Choice(False, f"{conflicts[0]} is given ({BF16_WEIGHTS_CONFLICTS[conflicts[0]]})")
    if not compiled:
        return Choice(False, "not compiled: measured with torch.compile only; --bf16_weights on keeps them")
    optim = master_weights.optim_name(training_args)
    if optim not in TORCH_ADAMW:
        return Choice(False, f"--optim {optim} is not torch's AdamW, which the copies were measured with; "
                             "--bf16_weights on keeps them in a torch optimizer")
    accumulation = getattr(training_args, "gradient_accumulation_steps", 1) or 1
    processes = getattr(training_args, "world_size", 1) or 1
    if accumulation > 1 or processes > 1:
        how = (f"add up over {accumulation} accumulation steps" if accumulation > 1 else
               f"be averaged across {processes} processes")
        return Choice(False, f"the gradients would {how} in bf16; --bf16_weights on accepts that")
    return Choice(True, "the residual stream and the gradients in bf16 and no weight cast at each step, fp32 copies in "
                        "the optimizer (on an H100 the ~110M packed step went from 57 to 53 ms)")


def choose_trace_block_mask(setting: str, attention: str | None, compiled: bool) -> Choice:
    """``--trace_block_mask``: flex_attention's block mask built inside the compiled graph (:mod:`diffmodel.train.compiled_mask`)."""
    if attention != "flex_attention":
        return Choice(False, f"attention is {attention or 'the model default'}, not flex_attention")
    if not compiled:
        return Choice(False, "not compiled: no compiled graph to build it in; built as transformers does")
    if given := _given(setting, "trace_block_mask"):
        return given
    return Choice(True, "transformers compiles the mask apart inside the model's compile, which breaks the model's graph "
                        "(a tiny packed Llama: 5 graphs and 4 breaks, 1 graph with the mask traced; an H100's ~110M step 1.006x)")


def choose_adamw_one_pass(setting: str, bf16_weights: bool, compiled: bool, training_args,
                          parameters: int | None = None, steps: int | None = None) -> Choice:
    """``--adamw_one_pass``: the bf16 weights' AdamW step in one compiled pass (:mod:`diffmodel.train.master_adamw`).
    ``parameters``: the model's (None when not known); ``steps``: the run's optimizer steps (--max_steps, or those of
    its epochs; None when not known, as for a run given by --max_train_time or streamed)."""
    if not bf16_weights:
        return Choice(False, "no bf16 weights: AdamW steps the fp32 weights themselves")
    if not compiled:
        return Choice(False, "not compiled: uncompiled, torch's fused AdamW is faster than its per-weight operations")
    optim = master_weights.optim_name(training_args)
    if optim not in TORCH_ADAMW:
        return Choice(False, f"--optim {optim} is not torch's AdamW")
    if given := _given(setting, "adamw_one_pass"):
        return given
    measured = ("on an H100 it made the ~1B step 5 ms shorter (410 to 405 ms) and the ~110M one ~0.3 ms; "
                "compiling it takes ~40 s on a fresh machine")
    if not parameters or not steps:
        unknown = "the run's steps are not known" if parameters else "the model's size is not known"
        return Choice(False, f"{unknown}, so neither is whether its compile pays ({measured}); "
                             "--adamw_one_pass on applies it")
    if parameters * steps < ONE_PASS_MIN_WEIGHT_STEPS:
        return Choice(False, f"{parameters / 1e6:,.0f}M parameters x {steps:,} steps is under "
                             f"{ONE_PASS_MIN_WEIGHT_STEPS:.0e} weight-steps: its compile would cost more than it saves "
                             f"({measured}); --adamw_one_pass on applies it")
    return Choice(True, f"{parameters / 1e6:,.0f}M parameters x {steps:,} steps: {measured}, repaid after "
                        f"{ONE_PASS_MIN_WEIGHT_STEPS:.0e} weight-steps")


#: ``--loss_logits output``: the output layer and the loss at the loss positions, not the last decoder layer's picks.
OUTPUT_ONLY = "output"


def choose_loss_logits(setting: str, packing: bool, liger: bool, facts: Facts, model_type: str | None, sharded: bool) -> Choice:
    """``liger``: liger-kernel was chosen (its fused loss replaces the output layer already); ``sharded``:
    --deepspeed or --fsdp was given."""
    if given := _given(setting, "loss_logits"):
        return given
    if setting == OUTPUT_ONLY:
        return Choice(OUTPUT_ONLY, "set by --loss_logits output: the output layer and the loss only, the last decoder layer whole")
    if not packing:
        return Choice(False, "no --packing")
    if liger:
        return Choice(False, "liger-kernel's fused loss builds no logits already")
    if not facts.cuda:
        return Choice(False, "no GPU: measured on GPUs only; --loss_logits on computes the output layer only where the loss is")
    from diffmodel.train import loss_logits  # torch and transformers: only once a run is being set up

    if not loss_logits.supports(model_type):
        return Choice(False, f"{model_type!r} models are not among those it takes ({', '.join(loss_logits.SUPPORTED)})")
    if sharded:
        return Choice(False, "not measured with DeepSpeed / FSDP; --loss_logits on takes it")
    return Choice(True, "the output layer and the loss run only where the next token bears loss "
                        "(on an H200 at ~110M the packed step went from 60 to 55 ms)")


@dataclass(frozen=True)
class FastPath:
    attention: Choice
    padding_free: Choice
    liger: Choice
    compile: Choice
    data_workers: Choice
    flex_kernels: Choice
    async_steps: Choice
    loss_logits: Choice
    rotary_layout: Choice
    bf16_weights: Choice
    adamw_one_pass: Choice
    trace_block_mask: Choice
    compile_cache: Choice = Choice(None, "not compiled")
    rotary_table: Choice = TABLES_NOT_COMPILED

    def settings(self, local: bool = True) -> dict[str, str]:
        """``{name: "value (reason)"}`` for each choice, as the log and the model card show them; ``local=False``
        leaves out what only this machine needs to know (the compile cache's folder), for the model card."""
        def show(c: Choice) -> str:
            if isinstance(c.value, bool):
                return "on" if c.value else "off"
            if isinstance(c.value, dict):
                return json.dumps(c.value)
            return str(c.value) if isinstance(c.value, int) else str(c.value or "model default")

        shown = [("attention", self.attention), ("padding-free batches", self.padding_free), ("liger-kernel", self.liger),
                 ("torch.compile", self.compile)]
        if self.compile.value and local:
            shown.append(("torch.compile cache", self.compile_cache))
        shown += [("data loader workers", self.data_workers),
                 ("asynchronous steps", self.async_steps), ("logits at the loss positions only", self.loss_logits),
                 ("rotary embedding tokens-first", self.rotary_layout)]
        if self.compile.value or self.rotary_table.value:  # what it changes is torch.compile's
            shown.append(("rotary tables kept", self.rotary_table))
        shown.append(("bf16 weights", self.bf16_weights))
        if self.bf16_weights.value:
            shown.append(("AdamW in one pass", self.adamw_one_pass))
        if self.attention.value == "flex_attention":
            shown.append(("block mask traced into the compiled graph", self.trace_block_mask))
            kernels = self.flex_kernels
            shown.append(("flex_attention tiles", kernels if kernels.value is not None else Choice("torch's", kernels.reason)))
        return {name: f"{show(c)} ({c.reason})" for name, c in shown}

    def lines(self) -> list[str]:
        return [f"{name}: {text}" for name, text in self.settings().items()]


def choose(speed, attn_requested: str | None, packing: bool, training_args, facts: Facts, model_type: str | None,
           backends: frozenset[str] | None = None, streaming: bool = False, head_dim: int | None = None,
           epoch_steps: int | None = None, parameters: int | None = None, cache_dir: str | None = None) -> FastPath:
    """Every choice for one run (``speed``: :class:`~diffmodel.train.args.SpeedArguments`; ``backends``:
    :func:`backends_of` the model's config, None when not known; ``head_dim``: the model's, for the flex_attention
    tiles; ``parameters``: the model's, for whether the one-pass AdamW's compile pays; ``cache_dir``: --cache_dir,
    beside which the compiled kernels are kept)."""
    attention = choose_attention(attn_requested, packing, facts, speed.padding_free,
                                 (model_type or "this", backends) if backends is not None else None)
    use_liger_kernel = getattr(training_args, "use_liger_kernel", False)
    sharded = bool(getattr(training_args, "deepspeed", None) or getattr(training_args, "fsdp", None))
    user_compile = getattr(training_args, "torch_compile", False) and not getattr(training_args, "compiled_by_auto", False)
    max_steps = getattr(training_args, "max_steps", -1) or -1
    compile_ = choose_compile(speed.compile, user_compile, packing, max_steps, facts, speed.liger == "on" or use_liger_kernel,
                              seconds_of(speed.max_train_time), sharded, epoch_steps)
    liger = choose_liger(speed.liger, use_liger_kernel, packing, facts, model_type, bool(compile_.value))
    bf16_weights = choose_bf16_weights(getattr(speed, "bf16_weights", "auto"), packing, facts, training_args,
                                       bool(compile_.value))
    return FastPath(
        attention=attention,
        padding_free=choose_padding_free(speed.padding_free, attention.value, packing),
        liger=liger,
        compile=compile_,
        data_workers=choose_data_workers(speed.data_workers, getattr(training_args, "dataloader_num_workers", 0) or 0,
                                         packing, facts, streaming),
        flex_kernels=Choice(*flex_kernels.choose(
            getattr(speed, "flex_kernel_options", "auto"), attention.value, facts.cuda, facts.capability, head_dim,
            bool(getattr(training_args, "bf16", False) or getattr(training_args, "fp16", False)))),
        async_steps=choose_async_steps(speed.async_steps, packing, facts),
        loss_logits=choose_loss_logits(speed.loss_logits, packing, bool(liger.value), facts, model_type, sharded),
        rotary_layout=choose_rotary_layout(getattr(speed, "rotary_layout", "auto"), bool(compile_.value)),
        rotary_table=choose_rotary_table(getattr(speed, "rotary_table", "auto"), bool(compile_.value)),
        bf16_weights=bf16_weights,
        trace_block_mask=choose_trace_block_mask(getattr(speed, "trace_block_mask", "auto"), attention.value,
                                                 bool(compile_.value)),
        adamw_one_pass=choose_adamw_one_pass(getattr(speed, "adamw_one_pass", "auto"), bool(bf16_weights.value),
                                             bool(compile_.value), training_args, parameters,
                                             max_steps if max_steps > 0 else epoch_steps),
        compile_cache=Choice(*compile_cache.choose(getattr(speed, "compile_cache", "auto"), cache_dir,
                                                   bool(compile_.value))),
    )


def problems(speed, attn_requested: str | None, packing: bool, facts: Facts, half: bool = True,
             training: bool = True) -> list[str]:
    """What the machine or the other flags make impossible, each with its fix (found before anything loads).

    ``half``: --bf16 or --fp16 was given; ``training``: --do_train was."""
    found = []
    if attn_requested == VARLEN:
        import torch

        from diffmodel.train import varlen

        if not varlen.available():
            found.append(f"--attn_implementation {VARLEN}: this torch {torch.__version__} has no torch.nn.attention.varlen "
                         "(torch 2.10 or later); use flex_attention or sdpa")
    if attn_requested == FLASH4:
        if not facts.flash4:
            found.append(f"--attn_implementation {FLASH4}: flash-attention 4 is not installed (pip install --pre flash-attn-4, with [cu13] for a CUDA 13 torch); "
                         "use flex_attention or torch_varlen")
        elif facts.cuda and not flash4.supports(facts.capability):
            cap = ".".join(map(str, facts.capability))
            found.append(f"--attn_implementation {FLASH4}: flash-attention 4 has kernels for Hopper and Blackwell GPUs "
                         f"(compute capability 9.x, 10.x), not this GPU's {cap}; use flex_attention or torch_varlen")
    if attn_requested in VARLEN_NAMES and facts.cuda and not half:
        found.append(f"--attn_implementation {attn_requested} runs flash kernels, which take bf16 or fp16: add --bf16 (or --fp16)")
    if training and attn_requested == "flex_attention" and not facts.cuda:
        found.append("--attn_implementation flex_attention: torch has no CPU backward for flex_attention, so it cannot "
                     "train without a GPU; use sdpa (the default) or eager on a CPU")
    if speed.liger == "on" and not facts.liger:
        found.append("--liger on: liger-kernel is not installed; pip install liger-kernel, or pass --liger auto")
    elif speed.liger == "on" and not facts.cuda:
        found.append("--liger on needs a GPU (liger's kernels are Triton GPU kernels); pass --liger auto or off")
    if speed.liger == "on" and speed.compile == "on":
        found.append("--liger on and --compile on: liger's fused loss fails under torch.compile (torch 2.11, liger-kernel 0.8.5); pass one of them")
    if speed.loss_logits in ("on", OUTPUT_ONLY) and not packing:
        found.append(f"--loss_logits {speed.loss_logits} picks the loss positions of packed batches: add --packing")
    if speed.padding_free == "on" and not packing:
        found.append("--padding_free on flattens packed rows: add --packing")
    if speed.padding_free == "off" and attn_requested in FLASH:
        found.append(f"--padding_free off: {attn_requested} keeps samples apart only in flattened batches; drop --padding_free off")
    try:
        flex_kernels.parse(getattr(speed, "flex_kernel_options", "auto"))
    except ValueError as e:
        found.append(str(e))
    try:
        data_workers_setting(speed.data_workers)
    except ValueError:
        found.append(f"--data_workers {speed.data_workers}: give auto or a number of processes (0 fetches batches in the main process)")
    if packing and attn_requested and attn_requested not in PACKING_BACKENDS:
        found.append(f"--attn_implementation {attn_requested} cannot keep packed samples apart; use one of {', '.join(PACKING_BACKENDS)} or drop --packing")
    cache = getattr(speed, "compile_cache", "auto")
    if not str(cache).strip():
        found.append("--compile_cache is empty: give auto, off or a folder for torch.compile's kernels")
    elif cache not in ("auto", "off") and Path(cache).expanduser().is_file():
        found.append(f"--compile_cache {cache} is a file: give a folder (made if missing), auto or off")
    return found
