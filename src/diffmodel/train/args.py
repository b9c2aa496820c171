"""Command-line arguments of ``diffmodel train``, as typed dataclasses.

``diffmodel train`` accepts every ``transformers.TrainingArguments`` flag plus
the two dataclasses below: the model and data options of HF's ``run_clm.py``
and the reference script's seven flags (with their meaning unchanged). Each
field's docstring-like ``help`` is what ``--help`` prints.

A single ``.json`` / ``.yaml`` file of arguments may replace the command
line; in it a single value for a list argument (``train_file: data.jsonl``)
is a one-element list, as on the command line.

:func:`validate` gathers every problem of a command line and raises once,
naming each flag and the fix, before any data or model is read
(:func:`data_problems` is shared with ``diffmodel inspect``).

Invariants: this module imports nothing heavy at module level (no torch,
transformers or datasets), so ``diffmodel train --help`` reads the flags'
help from these dataclasses in a fraction of a second; ``TrainingArguments``
and ``HfArgumentParser`` are imported inside the functions that parse.
Derived values are decided while parsing (``--streaming`` sets
``ignore_data_skip``; ``--no_progress`` sets ``disable_tqdm``; ``--compile``,
by :mod:`diffmodel.train.fast_path`, sets ``torch_compile``), never by
changing parsed arguments afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from diffmodel.errors import DiffModelError, raise_if_problems

if TYPE_CHECKING:
    from transformers import HfArgumentParser, TrainingArguments


def arg(default=None, help: str = "", **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelArguments:
    model_name_or_path: str | None = arg(None, "Checkpoint folder (or hub name, if reachable) to start from. Omit to train from scratch with --model_type or --config_name.")
    model_type: str | None = arg(None, "Architecture to build from scratch when no --model_name_or_path is given (gpt2, llama, ...).")
    config_overrides: str | None = arg(None, "Override config values when training from scratch, e.g. 'n_embd=10,resid_pdrop=0.2'.")
    config_name: str | None = arg(None, "Config folder or name, if not the same as --model_name_or_path.")
    tokenizer_name: str | None = arg(None, "Tokenizer folder or name, if not the same as --model_name_or_path.")
    cache_dir: str | None = arg(None, "Where to keep downloaded models, HF dataset caches and the preprocessing cache (CACHE/diffmodel_preprocess). Default: Hugging Face's own caches, and $DIFFMODEL_CACHE/preprocess (or ~/.cache/diffmodel/preprocess) for preprocessing.")
    use_fast_tokenizer: bool = arg(True, "Use a fast (Rust) tokenizer; it gives the character offsets that find <DFF> exactly.")
    model_revision: str = arg("main", "Model version (branch, tag or commit).")
    trust_remote_code: bool = arg(False, "Allow model code from the checkpoint folder.")
    torch_dtype: str | None = arg(None, "Load the model in this dtype: auto, bfloat16, float16 or float32. Default: the checkpoint's own dtype (transformers 5); a model trained from scratch is built in float32.", choices=["auto", "bfloat16", "float16", "float32"])
    attn_implementation: str | None = arg(None, "Attention backend: eager, sdpa, flex_attention, flash_attention_2, torch_varlen (torch's own varlen flash kernels, GPU with --bf16; with --packing), fa4_varlen (flash-attention 4's varlen kernels: pip install --pre flash-attn-4, Hopper/Blackwell GPU with --bf16; with --packing) (default: with --packing the fastest that keeps samples apart here, logged with its reason: flash-attn, else flex_attention on a GPU, else sdpa; without --packing the model's own choice).")
    dropout: float | None = arg(0.1, "Dropout set on every dropout setting of the model config (residual, embedding, attention), as the reference did. Pass a negative value to keep the checkpoint's.")


@dataclass
class DataArguments:
    dataset_name: str | None = arg(None, "Local dataset folder (any format below), or with --load_from_disk a folder written by save_to_disk.")
    dataset_config_name: str | None = arg(None, "Configuration name of the dataset, for datasets that have several.")
    train_file: list[str] | None = arg(None, "Training data files (json, jsonl, jsonl.zst, json.zst, parquet, csv, txt); several files and globs allowed. A final :WEIGHT on every value mixes the sources by weight (a.jsonl:0.7 'b/*.jsonl:0.3'; in a YAML file: {path: ..., weight: ...}), seeded by --seed (docs/streaming.md).")
    mix_size: int | None = arg(None, "With weighted --train_file sources: rows in the mix (default: as many as the first source to run out allows, no row repeated; a larger size repeats rows of the smaller sources).")
    validation_file: list[str] | None = arg(None, "Validation data files (same formats). Without them, --validation_split_percentage of train is held out.")
    validation_split_percentage: int = arg(5, "Percentage of train held out for validation when no validation split is given (0: none).")
    text_column: str | None = arg(None, "Column holding the text (default: 'text'; rows with name/before/message/diff fields are rendered).")
    edit_format: str = arg("carper", "How a change is written (docs/formats.md): carper (<NME> <BEF> <MSG> <DFF> and a unified diff), commit (OctoPack <commit_before> <commit_msg> <commit_after> and the whole new file), linediff (OctoPack's numbered -/+ lines) or search_replace (SEARCH/REPLACE blocks). Rows with name/before/message/diff fields are rendered in it; text is read as written in it; with --train_diff_model loss starts at its marker after the message.")
    keep_linebreaks: bool = arg(True, "For .txt files: keep line breaks.")
    skip_bad_records: bool = arg(False, "Skip bad JSON records (not JSON, not an object, text missing or not a string) and count them in the report instead of stopping at the first.")
    max_train_samples: int | None = arg(None, "Keep only the first N training rows (after preprocessing), for debugging or quick runs.")
    max_eval_samples: int | None = arg(None, "Keep only the first N evaluation rows (after preprocessing).")
    block_size: int | None = arg(None, "Row length in tokens (default: min(1024, the tokenizer's model_max_length)). Must not exceed the model's maximum positions.")
    preprocessing_num_workers: int | None = arg(None, "Processes used for tokenizing and labelling. Default: one (the main process).")
    overwrite_cache: bool = arg(False, "Recompute every preprocessing stage instead of reusing cached results.")
    # the reference script's flags
    train_diff_model: bool = arg(False, "Diff-model labels: the loss ignores every token before the diff (in the default carper format, before the <DFF> line that follows the last <MSG> line; in the other --edit_format's, before their target marker; --loss_on message+diff starts at the message). Always pass it for diff models.")
    loss_on: str = arg("diff", "What carries loss with --train_diff_model, in the --edit_format's markers (docs/formats.md): diff (from the target marker on: <DFF> in carper and search_replace, <commit_after> in commit and linediff) or message+diff (from the message marker on: <MSG>, <commit_msg>). Prompt/completion rows always train on the completion.", choices=["diff", "message+diff"])
    ignore_long_samples: bool = arg(False, "Drop samples of block_size tokens or more (one slot is left for EOS). Without it (and without --packing), --concatenate_texts is forced (and logged).")
    concatenate_texts: bool = arg(False, "Append EOS to each sample, concatenate all and cut into block_size rows. Otherwise each sample is left-padded to block_size.")
    packing: bool = arg(False, "Recommended for new runs. Pack whole samples into rows of at most block_size tokens (best-fit decreasing), with position_ids restarting per sample so no token attends to another sample; samples of block_size tokens or more are dropped. Replaces pad/concat.")
    load_from_disk: bool = arg(False, "--dataset_name is a folder written by save_to_disk (a Dataset or a DatasetDict).")
    save_final_dataset: bool = arg(False, "After preprocessing, save the final dataset with save_to_disk into --final_dataset_dir, unless that folder exists (it is never rewritten: delete it to rebuild).")
    final_dataset_dir: str = arg("final_dataset", "Folder for --save_final_dataset (written under a temporary name, then renamed).")
    skip_concat: bool = arg(False, "Skip the concatenate-or-pad step, for data that is already laid out (e.g. an earlier --save_final_dataset).")
    force_label: bool = arg(False, "Rebuild labels even when the data already has a labels column.")
    # streaming (docs/streaming.md)
    streaming: bool = arg(False, "Read --train_file (jsonl, jsonl.zst, parquet) as a stream: tokenized, labelled and laid out on the fly, one buffer at a time, each rank reading its own part; resumable. Needs --max_steps. Forces --ignore_data_skip (logged).")
    stream_buffer: int = arg(1000, "With --streaming: samples per rank (and dataloader worker) laid out at a time; packing is best-fit decreasing over this buffer, and its rows are shuffled.")
    stream_shuffle: bool = arg(True, "With --streaming: shuffle the rows of each buffer and the file order of each epoch, seeded by --seed (--stream_shuffle False keeps file order).")
    # edit quality while training (train/generation_eval.py)
    generation_eval_samples: int = arg(0, "At each evaluation, also write diffs (diff-aware, greedy) for the first N held-out samples and log eval_gen_parses / applies_strict / applies / exact / line_similarity / forced_share, plotted in generation.png beside loss.png. Needs --do_eval and raw samples (name/before/message/diff or rendered text); diff-aware decoding for --edit_format carper, plain greedy for the other formats; generates on the main process, so not with FSDP / ZeRO-3 or --streaming. 0: off.")
    generation_eval_max_new_tokens: int = arg(256, "With --generation_eval_samples: the longest diff written, in tokens.")


@dataclass
class LoraArguments:
    lora_r: int = field(default=0, metadata={"help": "LoRA rank. 0 trains every weight; R > 0 freezes the model and trains rank-R adapters on its linear layers (needs the peft package)."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator: an adapter's update is multiplied by lora_alpha / lora_r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the input of each LoRA adapter."})
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "Module names (or name suffixes, e.g. q_proj v_proj) to adapt. Default: every linear layer except the LM head, found by type."})
    lora_merge: bool = field(default=False, metadata={"help": "Also save a merged model (adapters folded into the weights) in OUTPUT_DIR/merged, loadable without peft."})


def lora_args_from(obj) -> LoraArguments:
    """A :class:`LoraArguments` from any object carrying the ``lora_*`` attributes (e.g. the training arguments)."""
    return LoraArguments(**{f.name: getattr(obj, f.name) for f in fields(LoraArguments) if hasattr(obj, f.name)})


def lora_problems(args: LoraArguments, model_name_or_path: str | None) -> list[str]:
    """Every problem of the LoRA flags, each naming the flag and the fix (empty when fine)."""
    problems = []
    if args.lora_r < 0:
        problems.append(f"--lora_r {args.lora_r} must be 0 (no LoRA) or a positive rank such as 8 or 16")
    if args.lora_r > 0:
        if args.lora_alpha <= 0:
            problems.append(f"--lora_alpha {args.lora_alpha} must be positive (typical: 16, or twice --lora_r)")
        if not 0 <= args.lora_dropout < 1:
            problems.append(f"--lora_dropout {args.lora_dropout} must be in [0, 1)")
        if not model_name_or_path:
            problems.append("--lora_r trains adapters on a frozen pretrained model: give --model_name_or_path (a model trained from scratch cannot be frozen)")
    if args.lora_merge and args.lora_r <= 0:
        problems.append("--lora_merge needs --lora_r above 0: there is no adapter to merge without LoRA")
    if args.lora_target_modules is not None and args.lora_r <= 0:
        problems.append("--lora_target_modules needs --lora_r above 0")
    return problems


#: The values of the tri-state speed flags.
AUTO_ON_OFF = ("auto", "on", "off")


@dataclass
class SpeedArguments:
    """How fast the packed path runs (:mod:`diffmodel.train.fast_path` decides ``auto`` and logs why)."""

    liger: str = field(default="auto", metadata={"help": "Fused linear cross-entropy and fused RMSNorm/SwiGLU/RoPE kernels (liger-kernel). auto: on with --packing on a GPU when liger-kernel is installed and supports the model and torch.compile is off (they fail together); the training log then has no mean_token_accuracy (no logits are made).", "choices": list(AUTO_ON_OFF)})
    padding_free: str = field(default="auto", metadata={"help": "Train each packed batch as one flattened row with the sample boundaries (no pad tokens). auto: on for flash attention (its kernels need it), off otherwise (rows are already packed full).", "choices": list(AUTO_ON_OFF)})
    compile: str = field(default="auto", metadata={"help": "torch.compile the model (sets --torch_compile). auto: on with --packing on a GPU unless --max_steps is under 300 (without --max_steps: the run's epochs make fewer steps), --max_train_time under 10 minutes (compiling takes up to a minute), liger-kernel is asked for, or --deepspeed / --fsdp shard the model; rows are then padded to --block_size so the shapes stay fixed.", "choices": list(AUTO_ON_OFF)})
    flex_kernel_options: str = field(default="auto", metadata={"help": "Tile sizes of flex_attention's kernels: auto, torch or a JSON object of flex_attention kernel_options ('{\"fwd_BLOCK_M\": 128}'). auto: the tiles inductor's autotuning picked on an H200 (forward + backward 1.15x torch's there) on a GPU of compute capability 9.0 for heads of 64 under --bf16/--fp16; torch's own elsewhere."})
    data_workers: str = field(default="auto", metadata={"help": "Processes that fetch and collate the next batches while a step runs (sets --dataloader_num_workers). auto: 2 with --packing on a GPU, unless --streaming or --dataloader_num_workers is given; else 0 (the main process)."})
    async_steps: str = field(default="auto", metadata={"help": "Let the host queue the next step while the GPU runs this one: batches copied from pinned memory without waiting, and Trainer's NaN/inf loss check (--logging_nan_inf_filter) done on the GPU with the same result. auto: on with --packing on a GPU.", "choices": list(AUTO_ON_OFF)})
    loss_logits: str = field(default="auto", metadata={"help": "Compute the output layer and the loss only at the positions whose next token bears loss (the diff), not at every position (same loss and gradients; no rows x width x vocabulary logits tensor); in Llama, Mistral and Qwen2/3 models the last decoder layer's MLP too, and with flex_attention (models whose key heads are not grouped) or sdpa on one-row batches that layer's attention for those positions' queries. Llama, Mistral, Qwen2/3 and GPT-2 models, with --packing. auto: on with --packing on a GPU, unless liger-kernel's fused loss is chosen or --deepspeed / --fsdp shard the model. output: the output layer and the loss only, the last decoder layer whole (if its pick fails for a model on some GPU).", "choices": [*AUTO_ON_OFF, "output"]})
    rotary_layout: str = field(default="auto", metadata={"help": "Apply the rotary embedding to queries and keys in the projections' own tokens-first memory order, so that torch.compile does not write them heads-first and copy the attention's output back (the same values; models with the standard apply_rotary_pos_emb: Llama, Mistral, Qwen2/3, ...). auto: off (no faster on an H100: benchmarks/rotary_layout.py).", "choices": list(AUTO_ON_OFF)})
    bf16_weights: str = field(default="auto", metadata={"help": "Keep the model's weights in bf16 while training, with an fp32 copy of each in the optimizer, which it updates and writes back rounded (so updates too small for bf16 add up in the copy); the residual stream and the gradients are bf16 and no weight is cast at each step, against fp32 weights under --bf16 autocast. The copies are saved with the optimizer's state, so a resumed run continues from them; the saved model is bf16. Gradients add up over --gradient_accumulation_steps, and are averaged across processes, in bf16. Not with --fp16, --lora_r, --deepspeed or --fsdp. auto: on for a compiled --packing --bf16 run on one GPU with torch's AdamW (--optim adamw_torch_fused, the default, or adamw_torch) and no gradient accumulation (on an H100 the ~110M packed step went from 57 to 53 ms); off otherwise, the log saying why.", "choices": list(AUTO_ON_OFF)})
    rotary_table: str = field(default="auto", metadata={"help": "In a compiled run: compute the rotary embedding's cos and sin tables once a forward and keep them, rather than let torch.compile recompute cos and sin for every query and key head in every layer's rotary kernels, forward and backward (the same values; models with a rotary embedding module: Llama, Mistral, Qwen2/3, ...). auto: on in a compiled run (an H100's ~1B step 402 to 393 ms, ~110M 53 to 52 ms; benchmarks/train_default.py arm pack_rotary_table).", "choices": list(AUTO_ON_OFF)})
    trace_block_mask: str = field(default="auto", metadata={"help": "With flex_attention in a compiled run: build the packed batch's block mask inside the model's compiled graph (torch's create_block_mask traced into it; the same mask) instead of as transformers does, by a compile of its own that breaks the model's graph at the forward's start. auto: on for compiled flex_attention runs.", "choices": list(AUTO_ON_OFF)})
    compile_cache: str = field(default="auto", metadata={"help": "Where torch.compile keeps its compiled kernels between runs: auto, off or a folder. auto: CACHE/diffmodel_compile with --cache_dir, else $DIFFMODEL_CACHE/compile (~/.cache/diffmodel/compile), so a later run on any machine that sees the folder skips most of the first step's compiling (an H100, a ~110M-wide Llama: the first step 47 s with the folder empty, 7 s warm); TORCHINDUCTOR_CACHE_DIR, when set, wins. off: inductor's own /tmp/torchinductor_<user>, lost with the machine."})
    adamw_one_pass: str = field(default="auto", metadata={"help": "With --bf16_weights in a compiled run and torch's AdamW: step the fp32 copies in one compiled pass over memory (the bf16 gradient read, the copy, its moments and the bf16 weight written together; no fp32 gradient made) instead of three (the gradients made fp32, torch's fused AdamW, the copies written back); gradient clipping's factor is applied inside it too. Compiling it adds to the first step (on an H100 34-44 s on a fresh machine, 4 s from the on-disk cache; benchmarks/adamw_one_pass.py). auto: on when the model's parameters times the run's steps (--max_steps, or its epochs') reach 1e13, where the step saved repays the compile (an H100: the ~1B step 410 to 405 ms, ~0.3 ms at ~110M; ~9,000 steps at ~1B, ~90,000 at ~110M); off when either is not known (a --max_train_time or streamed run).", "choices": list(AUTO_ON_OFF)})
    max_train_time: str | None = field(default=None, metadata={"help": "Stop training after this much training time and save a checkpoint: seconds (5400) or H:MM:SS (1:30:00). Ranks stop at the same step. For a Slurm time limit, or to compare runs at equal time. Default: no limit."})


def speed_args_from(obj) -> SpeedArguments:
    """A :class:`SpeedArguments` from any object carrying its attributes (e.g. the training arguments)."""
    return SpeedArguments(**{f.name: getattr(obj, f.name) for f in fields(SpeedArguments) if hasattr(obj, f.name)})


def parse_duration(text: str | None) -> float | None:
    """Seconds of ``--max_train_time``: ``5400``, ``90.5``, ``MM:SS`` or ``H:MM:SS``.

    Raises ValueError when unreadable, not positive and finite, or when a part is negative or a
    minutes / seconds part after another is 60 or more (``1:75:00``).
    """
    if text is None or text == "":
        return None
    parts = [float(p) for p in str(text).strip().split(":")]
    if len(parts) > 3 or not all(0 <= p < math.inf for p in parts) or any(p >= 60 for p in parts[1:]):
        raise ValueError(text)
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    if not seconds > 0:
        raise ValueError(text)
    return seconds


def speed_problems(args: SpeedArguments, training_args) -> list[str]:
    """Flags of the fast path that contradict each other or name a duration that cannot be read."""
    problems = []
    try:
        parse_duration(args.max_train_time)
    except ValueError:
        problems.append(f"--max_train_time {args.max_train_time!r} is not a duration; give seconds (5400) or H:MM:SS (1:30:00)")
    if args.compile == "off" and getattr(training_args, "torch_compile", False):
        problems.append("--compile off and --torch_compile contradict each other; pass one of them")
    if args.liger == "off" and getattr(training_args, "use_liger_kernel", False):
        problems.append("--liger off and --use_liger_kernel contradict each other; pass one of them")
    if args.bf16_weights == "on":
        for flag in bf16_weights_conflicts(training_args):
            problems.append(f"--bf16_weights on does not go with {flag} (" + BF16_WEIGHTS_CONFLICTS[flag] + "); drop one of them")
    return problems


def bf16_weights_conflicts(training_args) -> list[str]:
    """The flags given that bf16 weights with fp32 copies do not go with (:data:`BF16_WEIGHTS_CONFLICTS`)."""
    given = {"--fp16": getattr(training_args, "fp16", False),
             "--lora_r": (getattr(training_args, "lora_r", 0) or 0) > 0,
             "--deepspeed": getattr(training_args, "deepspeed", None),
             "--fsdp": getattr(training_args, "fsdp", None)}
    return [flag for flag in BF16_WEIGHTS_CONFLICTS if given[flag]]


#: Why --bf16_weights on refuses each flag.
BF16_WEIGHTS_CONFLICTS = {
    "--fp16": "fp16 training keeps fp32 weights for its loss scaling",
    "--lora_r": "LoRA freezes the weights; load them in bf16 with --torch_dtype bfloat16 instead",
    "--deepspeed": "DeepSpeed keeps its own fp32 weight copies",
    "--fsdp": "FSDP's mixed precision keeps its own",
}


@dataclass
class RunArguments:
    """Run options that are not the Trainer's: ``--no_progress``, and ``--overwrite_output_dir``, which transformers 5
    no longer has but reference command lines pass."""

    no_progress: bool = arg(False, "No progress bars: none while the data is loaded and preprocessed, the model loaded and saved, or while training and evaluating (implies --disable_tqdm True). The log lines stay.")
    overwrite_output_dir: bool = arg(False, "Start over in --output_dir instead of resuming from its last checkpoint.")


def run_problems(training_args) -> list[str]:
    """``--no_progress`` with ``--disable_tqdm False``, which asks for the Trainer's bars."""
    if getattr(training_args, "no_progress", False) and training_args.disable_tqdm is False:
        return ["--no_progress turns the Trainer's progress bars off, and --disable_tqdm False asks for them; drop one of them"]
    return []


#: The diff-model layout flags (the reference script's), shown first by ``diffmodel train --help``.
LAYOUT_FLAGS = ("train_diff_model", "loss_on", "packing", "ignore_long_samples", "concatenate_texts", "skip_concat", "force_label")

#: The sections of ``diffmodel train --help``, in order: (heading, dataclass, field names; None: the fields not shown yet).
HELP_SECTIONS = (
    ("diff-model layout flags", DataArguments, LAYOUT_FLAGS),
    ("data flags", DataArguments, None),
    ("model flags", ModelArguments, None),
    ("LoRA flags", LoraArguments, None),
    ("speed flags", SpeedArguments, None),
    ("run flags", RunArguments, None),
)

TRAIN_DESCRIPTION = (
    "Train a diff model. Takes every transformers TrainingArguments flag, the model/data flags of run_clm.py "
    "and the reference flags (--train_diff_model, --ignore_long_samples, --concatenate_texts, --load_from_disk, "
    "--save_final_dataset, --skip_concat, --force_label). A single .json or .yaml file of arguments may replace the command line."
)

PARSED = tuple[ModelArguments, DataArguments, "TrainingArguments"]


#: The usage line of a parse error (and of --help-all).
SHORT_USAGE = "diffmodel train [FLAGS] | diffmodel train ARGS.yaml|ARGS.json (flags: diffmodel train --help, or --help-all)"


def make_parser() -> HfArgumentParser:
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, LoraArguments, SpeedArguments, RunArguments))
    parser.prog = "diffmodel train"
    parser.usage = SHORT_USAGE  # argparse's own would list all ~150 Trainer flags above every bad-value error
    parser.description = TRAIN_DESCRIPTION
    return parser


def list_fields(parser: HfArgumentParser) -> set[str]:
    """Names of the arguments typed as a list (``list[X]`` or ``list[X] | None``; not ``str | list[str]``)."""
    names = set()
    for dtype in parser.dataclass_types:
        hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            hint = hints.get(f.name)
            if typing.get_origin(hint) in (typing.Union, types.UnionType):
                options = [a for a in typing.get_args(hint) if a is not type(None)]
            else:
                options = [hint]
            if len(options) == 1 and typing.get_origin(options[0]) is list:
                names.add(f.name)
    return names


def read_args_file(path: Path, as_lists: set[str]) -> dict:
    """The arguments of a JSON or YAML file; a single value given for a list argument becomes a one-element list.

    (``train_file: data.jsonl`` means ``[data.jsonl]``, as ``--train_file data.jsonl`` does on a command line.)
    """
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise DiffModelError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({err}); fix the file") from None
    if not isinstance(data, dict):
        raise DiffModelError(f"{path}: holds {type(data).__name__}, not a mapping of argument names to values (e.g. train_file: data.jsonl)")
    from diffmodel.data.mix import spec_of

    values = {k: [v] if k in as_lists and not isinstance(v, (list, tuple)) and v is not None else v for k, v in data.items()}
    if values.get("train_file"):  # a source may be {path: ..., weight: ...}
        values["train_file"] = [spec_of(item, f"{path}: ") for item in values["train_file"]]
    return values


#: Flags that need bf16 hardware; transformers refuses them while parsing, so they are checked by :func:`validate`.
BF16_FLAGS = ("bf16", "bf16_full_eval")


def bf16_problems(values) -> list[str]:
    """``--bf16`` / ``--bf16_full_eval`` on a machine without bf16 support and without ``--use_cpu``."""
    wanted = [f for f in BF16_FLAGS if values.get(f)]
    if not wanted:
        return []
    import torch
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    if values.get("use_cpu") or is_torch_bf16_gpu_available() or is_torch_xla_available():
        return []
    found = "a GPU without bf16 support (bf16 needs an Ampere or newer GPU)" if torch.cuda.is_available() else "no GPU"
    return [
        f"--{flag}: this machine has {found}, so it cannot train in bf16 here; drop --{flag} to train in float32, "
        "or add --use_cpu to run bf16 on the CPU (usually slower than float32)"
        for flag in wanted
    ]


def parse_args(argv: list[str] | None = None) -> PARSED:
    """Parse a command line, or a single JSON/YAML file of arguments.

    Problems that transformers raises while building ``TrainingArguments``
    become a :class:`DiffModelError`; bf16 flags the machine cannot run are
    parsed as given (without transformers' check) for :func:`validate` to
    report with every other problem.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    if len(argv) > 1 and argv[0].endswith((".json", ".yaml", ".yml")) and not argv[0].startswith("-"):
        raise DiffModelError(f"an arguments file replaces the whole command line: put {' '.join(argv[1:])} in {argv[0]}, "
                             "or give every argument as a flag")
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        path = Path(argv[0])
        if not path.is_file():
            raise DiffModelError(f"arguments file {path} does not exist")
        values, where = read_args_file(path, list_fields(parser)), f"{path}: "
    else:
        values, where = vars(parser.parse_args(argv)), ""
    if values.get("streaming"):  # run.py logs it; the stream state replaces Trainer's data skipping
        values = {**values, "ignore_data_skip": True}
    if values.get("no_progress") and values.get("disable_tqdm") is None:  # an explicit False is refused by validate()
        values = {**values, "disable_tqdm": True}
    compile_setting = values.get("compile", "auto")
    compiled_by_auto = False  # run.py takes it back when the run's epochs prove shorter than COMPILE_MIN_STEPS
    if not values.get("torch_compile") and (compile_setting == "on" or (compile_setting == "auto" and values.get("packing"))):
        from diffmodel.train.fast_path import choose_compile, probe_facts, seconds_of  # run.py logs the choice and its reason

        liger_forced = values.get("liger") == "on" or bool(values.get("use_liger_kernel"))
        if choose_compile(compile_setting, False, True, int(values.get("max_steps") or -1), probe_facts(bool(values.get("use_cpu"))), liger_forced,
                          seconds_of(values.get("max_train_time")), bool(values.get("deepspeed") or values.get("fsdp"))).value:
            values = {**values, "torch_compile": True}
            compiled_by_auto = compile_setting == "auto" and not (values.get("torch_compile_backend") or values.get("torch_compile_mode"))
    deferred = {f: values[f] for f in BF16_FLAGS if f in values} if bf16_problems(values) else {}
    try:
        parsed = parser.parse_dict({**values, **dict.fromkeys(deferred, False)})
    except ValueError as err:
        raise DiffModelError(f"{where}{err}") from None
    model_args, data_args, training_args, *rest = parsed
    for extra in rest:
        for name, value in vars(extra).items():
            setattr(training_args, name, value)
    for name, value in deferred.items():  # validate() reports them (training never starts with them)
        setattr(training_args, name, value)
    training_args.compiled_by_auto = compiled_by_auto
    return model_args, data_args, training_args


def streaming_problems(data_args, training_args) -> list[str]:
    """What is wrong with a ``--streaming`` command line (empty without ``--streaming``)."""
    if not getattr(data_args, "streaming", False):
        return []
    problems = []
    if training_args.do_train and (training_args.max_steps is None or training_args.max_steps <= 0):
        problems.append("--streaming needs --max_steps N: a stream has no length, so the number of training steps must be given")
    if data_args.dataset_name or data_args.load_from_disk:
        problems.append("--streaming reads --train_file files (jsonl, jsonl.zst, parquet; globs allowed); pass them instead of --dataset_name")
    if not data_args.train_file:
        problems.append("--streaming needs --train_file FILE... (jsonl, jsonl.zst, parquet; globs allowed)")
    if data_args.stream_buffer < 1:
        problems.append(f"--stream_buffer {data_args.stream_buffer} must be at least 1 (samples per rank laid out at a time; typical: 1000)")
    if data_args.skip_concat:
        problems.append("--streaming lays samples out itself; drop --skip_concat (already laid-out rows can be trained without --streaming)")
    if data_args.save_final_dataset:
        problems.append("--save_final_dataset writes the whole preprocessed data set, which --streaming never holds; drop one of them")
    if data_args.max_train_samples is not None:
        problems.append("--max_train_samples needs a data set of known length; with --streaming, bound the run with --max_steps")
    if data_args.mix_size is not None:
        problems.append("--mix_size sizes a loaded mix; a stream draws its sources by weight without end, so drop --mix_size and bound the run with --max_steps")
    if training_args.do_eval and not data_args.validation_file:
        problems.append("--do_eval with --streaming needs --validation_file (it is loaded whole); no validation split is cut from a stream")
    return problems


def data_problems(data_args: DataArguments) -> list[str]:
    """Every problem of the data flags, found without reading any data (shared by ``train`` and ``inspect``).

    Files and globs are checked to exist; the layout flags to agree.
    """
    from diffmodel import formats
    from diffmodel.data.load import expand_files

    problems = []
    if not data_args.dataset_name and not data_args.train_file:
        problems.append("no data: give --train_file FILE... or --dataset_name DIR")
    if data_args.load_from_disk and not data_args.dataset_name:
        problems.append("--load_from_disk needs --dataset_name, the folder written by save_to_disk")
    from diffmodel.data.mix import is_weighted, parse_sources

    sources, weight_problems = parse_sources(data_args.train_file)
    problems += weight_problems
    for flag, patterns in (("--train_file", [s.pattern for s in sources]), ("--validation_file", data_args.validation_file)):
        problems += expand_files(patterns or [], flag)[1]
    if data_args.mix_size is not None:
        if not is_weighted(sources):
            problems.append(f"--mix_size {data_args.mix_size} sizes a weighted mix; give every --train_file a :WEIGHT (e.g. a.jsonl:0.7 b.jsonl:0.3) or drop --mix_size")
        elif data_args.mix_size < 1:
            problems.append(f"--mix_size {data_args.mix_size} must be at least 1 (rows in the mix)")
    from diffmodel.formats import LOSS_ON

    if data_args.loss_on not in LOSS_ON:
        problems.append(f"--loss_on {data_args.loss_on!r} is not one of: {', '.join(LOSS_ON)}")
    elif data_args.loss_on != "diff" and not data_args.train_diff_model:
        problems.append(f"--loss_on {data_args.loss_on} chooses which tokens of a diff sample carry loss; add --train_diff_model (without it every token is trained)")
    try:
        formats.get(data_args.edit_format)
    except DiffModelError as err:
        problems.append(str(err))
    if data_args.packing and data_args.concatenate_texts:
        problems.append("--packing and --concatenate_texts are two different layouts; pass one of them")
    if data_args.block_size is not None and data_args.block_size < 2:
        problems.append(f"--block_size {data_args.block_size} is too small; use at least 2 (typical: 1024 or 2048)")
    if not 0 <= data_args.validation_split_percentage < 100:
        problems.append(f"--validation_split_percentage {data_args.validation_split_percentage} must be in 0..99")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(data_args, name)
        if value is not None and value < 1:
            problems.append(f"--{name} {value} must be at least 1")
    return problems


def _zero_stage(deepspeed) -> int | None:
    """The ZeRO stage of a ``--deepspeed`` configuration (a JSON file or a dict); None when unknown."""
    if not deepspeed:
        return None
    try:
        if isinstance(deepspeed, str):
            with open(deepspeed, encoding="utf-8") as f:
                deepspeed = json.load(f)
        return int(deepspeed.get("zero_optimization", {}).get("stage", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def generation_eval_problems(data_args: DataArguments, training_args) -> list[str]:
    """``--generation_eval_samples`` needs evaluations to hook on and raw held-out samples."""
    n = data_args.generation_eval_samples
    problems = []
    if n < 0:
        problems.append(f"--generation_eval_samples {n} must be 0 (off) or more")
    if data_args.generation_eval_max_new_tokens < 1:
        problems.append(f"--generation_eval_max_new_tokens {data_args.generation_eval_max_new_tokens} must be at least 1")
    if n > 0 and not training_args.do_eval:
        problems.append("--generation_eval_samples runs at each evaluation: add --do_eval (and --eval_strategy steps --eval_steps N to evaluate during training)")
    if n > 0 and data_args.streaming:
        problems.append("--generation_eval_samples does not work with --streaming yet; run diffmodel eval edits on a saved checkpoint instead")
    if n > 0 and (getattr(training_args, "fsdp", None) or _zero_stage(getattr(training_args, "deepspeed", None)) == 3):
        problems.append("--generation_eval_samples generates on the main process alone, which cannot hold the model when "
                        "FSDP or DeepSpeed ZeRO-3 shard it; drop --generation_eval_samples and run diffmodel eval edits on saved checkpoints")
    if n > 0 and data_args.skip_concat:
        problems.append("--generation_eval_samples needs raw samples, but --skip_concat data is already laid out; run diffmodel eval edits on a saved checkpoint instead")
    return problems


#: The problem of --do_eval without a validation split (found from the flags here, from the loaded splits in train/run.py).
NO_EVAL_SPLIT = "--do_eval needs a validation split: give --validation_file or a --validation_split_percentage above 0"


def trainer_problems(data_args: DataArguments, training_args) -> list[str]:
    """Trainer flags transformers would refuse only once the data is prepared (or with a traceback)."""
    from diffmodel.atomic import folder_problem

    problems = []
    if training_args.do_train and training_args.per_device_train_batch_size < 1:
        problems.append(f"--per_device_train_batch_size {training_args.per_device_train_batch_size} must be at least 1")
    if training_args.do_eval and training_args.per_device_eval_batch_size < 1:
        problems.append(f"--per_device_eval_batch_size {training_args.per_device_eval_batch_size} must be at least 1")
    if training_args.do_train and training_args.save_strategy == "steps" and training_args.save_steps <= 0:
        problems.append(f"--save_steps {training_args.save_steps:g} saves no checkpoint (nothing to resume from); give a positive "
                        "--save_steps, or --save_strategy no to save none")
    if training_args.do_train and training_args.gradient_accumulation_steps < 1:
        problems.append(f"--gradient_accumulation_steps {training_args.gradient_accumulation_steps} must be at least 1 (1: no accumulation)")
    if training_args.do_train and training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        problems.append(f"--num_train_epochs {training_args.num_train_epochs:g} trains no step; give a positive --num_train_epochs or --max_steps")
    if training_args.learning_rate < 0:
        problems.append(f"--learning_rate {training_args.learning_rate:g} must be 0 or more")
    if (training_args.do_eval and not data_args.streaming and not data_args.validation_file and not data_args.dataset_name
            and data_args.validation_split_percentage == 0):
        problems.append(NO_EVAL_SPLIT)
    if training_args.output_dir and (problem := folder_problem(training_args.output_dir)):
        problems.append(f"--output_dir {training_args.output_dir}: {problem}; choose another folder")
    if training_args.do_train and (problem := checkpoint_problem(training_args.resume_from_checkpoint, data_args)):
        problems.append(problem)
    return problems


def checkpoint_problem(checkpoint: str | None, data_args) -> str | None:
    """What keeps ``--resume_from_checkpoint`` from being resumed (None when it can be, or is not given).

    A checkpoint is complete once Trainer wrote its ``trainer_state.json`` (last; with ``--streaming``, then
    ``stream_state.json``): a folder without it is not a checkpoint, or one whose save was cut short.
    """
    if not checkpoint:
        return None
    flag = f"--resume_from_checkpoint {checkpoint}"
    fix = "give a complete checkpoint-N folder of a run's --output_dir, or drop the flag to resume from the last complete checkpoint in --output_dir"
    folder = Path(checkpoint)
    if not folder.exists():
        return f"{flag}: no such folder; {fix}"
    if not folder.is_dir():
        return f"{flag}: a file, not a checkpoint folder; {fix}"
    last = ["trainer_state.json"] + (["stream_state.json"] if getattr(data_args, "streaming", False) else [])
    missing = [name for name in last if not (folder / name).is_file()]
    if missing:
        return (f"{flag}: no {' or '.join(missing)} in it, so it is not a checkpoint, or one whose save was cut short; {fix}")
    return None


def validate(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Raise one DiffModelError listing every problem of the arguments, before any data or model is read."""
    problems = data_problems(data_args)
    if model_args.model_name_or_path:
        from diffmodel.checkpoint import check_model_folder

        try:
            check_model_folder(model_args.model_name_or_path)
        except DiffModelError as err:
            problems.append(f"--model_name_or_path: {err}")
    if not model_args.model_name_or_path and not (model_args.model_type or model_args.config_name):
        problems.append("no model: give --model_name_or_path DIR, or --model_type / --config_name to train from scratch")
    if not model_args.model_name_or_path and not model_args.tokenizer_name:
        problems.append("no tokenizer: give --tokenizer_name DIR (or --model_name_or_path)")
    if model_args.config_overrides and model_args.model_name_or_path:
        problems.append("--config_overrides only applies when training from scratch; drop it or drop --model_name_or_path")
    if not (training_args.do_train or training_args.do_eval or data_args.save_final_dataset):
        problems.append("nothing to do: pass --do_train, --do_eval or --save_final_dataset")
    problems += lora_problems(lora_args_from(training_args), model_args.model_name_or_path)
    problems += speed_problems(speed_args_from(training_args), training_args)
    if (data_args.packing or getattr(training_args, "padding_free", "auto") == "on" or getattr(training_args, "liger", "auto") == "on"
            or model_args.attn_implementation == "flex_attention"):
        from diffmodel.train import fast_path

        problems += fast_path.problems(speed_args_from(training_args), model_args.attn_implementation, data_args.packing,
                                      fast_path.probe_facts(training_args.use_cpu),
                                      half=bool(training_args.bf16 or training_args.fp16), training=training_args.do_train)
    problems += streaming_problems(data_args, training_args)
    problems += generation_eval_problems(data_args, training_args)
    problems += bf16_problems(vars(training_args))
    problems += trainer_problems(data_args, training_args)
    problems += run_problems(training_args)
    raise_if_problems(problems, "diffmodel train cannot start")
