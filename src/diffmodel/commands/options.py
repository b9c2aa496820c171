"""The model flags and generation flags that ``edit`` and ``eval`` share: added once, checked once.

- :func:`add_model_flags`: ``--model`` (and, for ``eval``, ``--calibrate``), ``--device``, ``--dtype``;
- :func:`add_generation_flags`: ``--num_samples``, ``--temperature``, ``--top_p``,
  ``--top_k``, ``--max_new_tokens``, ``--batch_size``, ``--seed`` (the defaults a
  command wants are parameters), ``--unconstrained`` (diff-aware decoding is
  on unless it is given), ``--no_speculation`` (greedy diff-aware decoding
  copies proposals from the prompt unless it is given) and ``--no_cuda_graphs``
  (on a GPU diff-aware decoding replays its passes as CUDA graphs unless it is given);
- :func:`add_format_flag`: ``--edit_format`` (the format the model was trained
  on; ``edit``, ``eval loss``, ``eval edits``, ``eval humanevalfix``);
- :func:`check_model` and :func:`check_generation` append every problem to
  the command's list, so the command reports all of them at once;
- :func:`generation_options`: the keyword arguments of
  :meth:`DiffModel.edit_many <diffmodel.infer.DiffModel.edit_many>` (``constrained``
  is what runs: off for a format other than ``carper``); :func:`generation_settings`:
  the ``settings`` an eval report records: the same, with ``speculation`` (whether
  speculation ran: diff-aware, greedy and no ``--no_speculation``) in place of
  ``speculate``, plus ``constrained_note`` (why diff-aware decoding is off);
- :func:`load_model`: the :class:`~diffmodel.infer.DiffModel` of ``--model``; :func:`model_identity`: that
  model as the fingerprint of a resumable run names it (folder, weight files, precision).

Invariants:
- No torch, transformers or datasets at import time (``--help`` stays fast);
  :func:`check_model` and :func:`load_model` import them when called.
- A check never raises: it only appends a message that names the flag and the fix.
"""

from __future__ import annotations

import argparse
import os

from diffmodel import formats
from diffmodel.errors import DiffModelError
from diffmodel.infer.prompt import decoding

#: ``--dtype`` choices (see :func:`diffmodel.checkpoint.resolve_dtype`).
DTYPES = ("bf16", "fp16", "fp32")


def add_model_flags(parser: argparse.ArgumentParser, required: bool = True, calibrations: tuple[str, ...] = ()) -> None:
    """``--model DIR`` (required unless ``calibrations`` offer ``--calibrate``), ``--device``, ``--dtype``."""
    parser.add_argument("--model", required=required, metavar="DIR",
                        help="saved model and tokenizer (diffmodel train --output_dir, or a checkpoint-N folder)")
    if calibrations:
        parser.add_argument("--calibrate", choices=calibrations,
                            help="instead of a model: 'oracle' writes the true diff, 'empty' writes none (checks the harness)")
    parser.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPES, help="weights' precision (default: bf16 on a GPU, fp32 on the CPU)")


def add_generation_flags(parser: argparse.ArgumentParser, num_samples: int = 1, temperature: float = 0.0,
                         batch_size: int = 8, seed: int | None = None) -> None:
    """The generation flags, in a group of their own, with the command's defaults."""
    g = parser.add_argument_group("generation")
    g.add_argument("--num_samples", "--num-samples", type=int, default=num_samples, metavar="N",
                   help="samples per request (needs --temperature > 0; default: %(default)s)")
    g.add_argument("--temperature", type=float, default=temperature, metavar="T",
                   help="0 for greedy decoding, above 0 to sample (default: %(default)s)")
    g.add_argument("--top_p", "--top-p", type=float, default=0.95, metavar="P",
                   help="nucleus sampling threshold when sampling (default: %(default)s)")
    g.add_argument("--top_k", "--top-k", type=int, default=0, metavar="K",
                   help="when sampling, keep only the K likeliest tokens (default: 0, off)")
    g.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=512, metavar="N",
                   help="longest diff, in tokens (default: %(default)s)")
    g.add_argument("--batch_size", "--batch-size", type=int, default=batch_size, metavar="N",
                   help="prompts generated together (default: %(default)s)")
    g.add_argument("--seed", type=int, default=seed, metavar="N",
                   help="random seed for sampling" + ("" if seed is None else " (default: %(default)s)"))
    g.add_argument("--unconstrained", action="store_true",
                   help="plain decoding: turn off diff-aware decoding (by default every diff is written over the file's "
                        "own lines, so it applies strictly; see docs/edit.md)")
    g.add_argument("--no_speculation", "--no-speculation", action="store_true",
                   help="greedy diff-aware decoding without speculation (by default it proposes tokens copied from the "
                        "file and keeps those the model would pick: the same edits in fewer forward passes; docs/edit.md)")
    g.add_argument("--no_cuda_graphs", "--no-cuda-graphs", action="store_true",
                   help="on a GPU, run every pass of diff-aware decoding eagerly (by default its rows keep fixed places "
                        "in the KV cache and each pass is replayed from a CUDA graph: the same edits, faster; docs/edit.md)")


def add_format_flag(parser: argparse.ArgumentParser) -> None:
    """``--edit_format``: how the model was trained to write a change (docs/formats.md)."""
    parser.add_argument("--edit_format", "--edit-format", choices=tuple(formats.FORMATS), default=formats.DEFAULT,
                        help="the edit format the model was trained on (diffmodel train --edit_format): its prompt, its "
                             "next-sample stop, its parser and applier; diff-aware decoding is for carper only, the others "
                             "are decoded unconstrained (default: %(default)s; docs/formats.md)")


def check_model(args: argparse.Namespace, problems: list[str]) -> None:
    """``--model`` names a saved model folder (or, where offered, ``--calibrate`` replaces it)."""
    calibrate = getattr(args, "calibrate", None)
    if calibrate and args.model:
        problems.append("--model and --calibrate both given; --calibrate replaces the model")
    elif not calibrate and not args.model:
        problems.append("--model DIR is required" + (" (or --calibrate oracle|empty)" if hasattr(args, "calibrate") else ""))
    elif args.model:
        from diffmodel.checkpoint import check_model_folder

        try:
            check_model_folder(args.model)
        except DiffModelError as err:
            problems.append(f"--model: {err}")
    if getattr(args, "device", None) is not None:
        from diffmodel.checkpoint import resolve_device

        try:
            resolve_device(args.device)
        except DiffModelError as err:
            problems.append(f"--device: {err}")


def check_generation(args: argparse.Namespace, problems: list[str]) -> None:
    """Every generation flag in range; several samples need sampling (unless ``--calibrate`` replaces the model)."""
    if args.num_samples < 1:
        problems.append(f"--num_samples must be at least 1, got {args.num_samples}")
    elif args.num_samples > 1 and args.temperature <= 0 and not getattr(args, "calibrate", None):
        problems.append(f"--num_samples {args.num_samples} needs sampling: set --temperature above 0 (e.g. 0.8); greedy decoding gives identical samples")
    if args.temperature < 0:
        problems.append(f"--temperature must be 0 (greedy) or more, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        problems.append(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        problems.append(f"--top_k must be 0 (off) or more, got {args.top_k}")
    if args.max_new_tokens < 1:
        problems.append(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}")
    if args.batch_size < 1:
        problems.append(f"--batch_size must be at least 1, got {args.batch_size}")


def model_id(model: str) -> str:
    """``--model`` as a run's record names it: a folder's absolute path, else the name as given."""
    return os.path.abspath(model) if os.path.isdir(model) else model


#: The files of a model folder that make the model (:func:`model_identity`): weights, adapters, config, tokenizer.
MODEL_FILES = (".safetensors", ".bin", ".pt", ".pth", "config.json", "tokenizer.json", "vocab.json", "merges.txt",
               "tokenizer.model", "vocab.txt")


def model_identity(args: argparse.Namespace) -> dict:
    """The model whose generations a kept run holds (``edit --jsonl``, ``eval edits`` / ``humanevalfix``), for the
    fingerprint a resumed run must match: :func:`model_id`, the name, size and modification time of each weight and
    config file of the folder (a model trained again into the same folder is another model), and the precision the
    weights load in (``--dtype``, or its default on ``--device``)."""
    from diffmodel.checkpoint import resolve_device, resolve_dtype

    files = []
    if os.path.isdir(args.model):
        for entry in sorted(os.scandir(args.model), key=lambda e: e.name):
            if entry.is_file() and entry.name.endswith(MODEL_FILES):
                stat = entry.stat()
                files.append([entry.name, stat.st_size, stat.st_mtime_ns])
    dtype = resolve_dtype(args.dtype, resolve_device(args.device))
    return {"model": model_id(args.model), "model_files": files, "dtype": str(dtype).removeprefix("torch.")}


def generation_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``edit_many`` from the generation flags (also an eval report's ``settings``)."""
    edit_format = getattr(args, "edit_format", formats.DEFAULT)
    return {"num_samples": args.num_samples, "temperature": args.temperature, "top_p": args.top_p,
            "top_k": args.top_k, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
            "seed": args.seed, "constrained": decoding(edit_format, not args.unconstrained)[0],
            "speculate": not args.no_speculation, "cuda_graphs": not args.no_cuda_graphs, "edit_format": edit_format}


def generation_settings(args: argparse.Namespace) -> dict:
    """:func:`generation_options` as a report records them: ``speculation`` (whether it ran) next to
    ``constrained``, ``cuda_graphs`` (whether passes could be replayed: a GPU run without --no_cuda_graphs), and
    ``constrained_note`` when the ``--edit_format`` turned diff-aware decoding off."""
    from diffmodel.checkpoint import resolve_device

    note = decoding(getattr(args, "edit_format", formats.DEFAULT), not args.unconstrained)[1]
    settings = {}
    for key, value in generation_options(args).items():
        if key == "speculate":
            continue
        if key == "cuda_graphs":
            value = value and resolve_device(args.device).type == "cuda"
        settings[key] = value
        if key == "constrained":
            settings["speculation"] = value and args.temperature <= 0 and not args.no_speculation
    return {**settings, **({"constrained_note": note} if note else {})}


def load_model(args: argparse.Namespace, quiet: bool = False):
    """The :class:`~diffmodel.infer.DiffModel` of ``--model`` on ``--device`` (under torchrun: by default the GPU of this
    process's ``LOCAL_RANK``, :mod:`diffmodel.infer.shards`) in ``--dtype``."""
    from diffmodel.infer import DiffModel, shards

    return DiffModel.from_pretrained(args.model, device=shards.current().device(args.device), dtype=args.dtype, quiet=quiet)


__all__ = [
    "DTYPES", "add_format_flag", "add_generation_flags", "add_model_flags", "check_generation", "check_model",
    "generation_options", "generation_settings", "load_model", "model_id", "model_identity",
]
