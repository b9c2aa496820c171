"""Load a saved model and its tokenizer: the one way ``edit``, ``eval`` and :class:`~diffmodel.infer.DiffModel` do it.

- :func:`check_model_folder`: a clear error for a path that cannot hold a saved
  model (missing, a file, no ``config.json``), before anything is loaded;
- :func:`resolve_device` / :func:`resolve_dtype`: the defaults (CUDA when
  available; bf16 on a GPU, fp16 where bf16 is unsupported, fp32 on the CPU);
- :func:`load_checkpoint`: tokenizer + causal LM in that dtype, on that device;
- :func:`max_positions`: the longest sequence a config allows (training's
  block size and inference's prompt limit both read it here).

Invariants:
- Every problem with the folder, the device or the dtype is a
  :class:`~diffmodel.errors.DiffModelError` that names the path or value and the fix.
- transformers is imported inside :func:`load_checkpoint` only.
"""

from __future__ import annotations

import os

import torch

from diffmodel.errors import DiffModelError
from diffmodel.progress import bars_off


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DiffModelError(f"unknown device {device!r} ({err}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            built = f"torch {torch.__version__} " + ("has CUDA but sees no GPU" if torch.version.cuda else "is a build without CUDA")
            raise DiffModelError(f"device {str(device)!r}: no CUDA GPU here ({built}); use cpu")
        if dev.index is not None and dev.index >= count:
            raise DiffModelError(f"device {str(device)!r}: this machine has {count} CUDA GPU{'s' if count > 1 else ''} "
                                 f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    return dev


_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``: bf16 on a GPU (fp16 where bf16 is unsupported), fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise DiffModelError(f"unknown dtype {dtype!r}; use one of bf16, fp16, fp32")
    return _DTYPES[dtype]


def _looks_like_hub_id(path: str) -> bool:
    """``gpt2``, ``owner/name``: a name the Hugging Face Hub (or its local cache) may hold, not a path of this machine.
    ``runs/diff`` where ``runs`` is a folder here is a local path that does not exist (a typo, or a run not yet made),
    not a Hub id: loading it would wait on the Hub before failing."""
    if path.count("/") > 1 or path.startswith((".", "/", "~")) or os.sep != "/":
        return False
    return "/" not in path or not os.path.isdir(path.split("/", 1)[0])


def check_model_folder(path: str | os.PathLike) -> str:
    """A clear :class:`DiffModelError` for a folder that cannot hold a saved model."""
    path = str(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "adapter_config.json")):
            merged = os.path.join(path, "merged")
            where = (f"the merged model of that run is {merged!r}" if os.path.isfile(os.path.join(merged, "config.json"))
                     else "train with --lora_merge to write the merged model to OUTPUT_DIR/merged, or fold the adapter in "
                          "(peft's AutoPeftModelForCausalLM.from_pretrained(folder).merge_and_unload(), then save_pretrained)")
            raise DiffModelError(f"model folder {path!r} holds a LoRA adapter, not a whole model: {where}")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise DiffModelError(
                f"model folder {path!r} has no config.json: give a folder written by save_pretrained "
                "or by diffmodel train (its --output_dir, or a checkpoint-N folder inside it)"
            )
        return path
    if os.path.exists(path):
        raise DiffModelError(f"model {path!r} is a file; give the folder that holds config.json and the weights")
    if _looks_like_hub_id(path):
        return path  # may be in the local Hugging Face cache
    raise DiffModelError(f"model folder {path!r} does not exist")


#: Files of which a folder written by a tokenizer's ``save_pretrained`` holds at least one.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")


def check_tokenizer_source(path: str | os.PathLike, flag: str) -> str:
    """A clear :class:`DiffModelError` for a ``flag`` value that cannot hold a tokenizer (a missing folder, a file, a
    folder without tokenizer files); a Hub id is let through (it may be in the local cache)."""
    path = str(path)
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
            raise DiffModelError(f"{flag} {path}: the folder holds no tokenizer ({' / '.join(TOKENIZER_FILES[:2])}); give a folder "
                                 "written by save_pretrained, e.g. a diffmodel train --output_dir")
        return path
    if os.path.exists(path):
        raise DiffModelError(f"{flag} {path}: is a file; give the folder that holds the tokenizer")
    if _looks_like_hub_id(path):
        return path
    raise DiffModelError(f"{flag} {path}: no such folder")


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    quiet: bool = False,
    **model_kwargs,
):
    """``(model, tokenizer)`` from ``path`` (a folder, e.g. a training ``--output_dir``).

    ``device``: default CUDA when available, else CPU. ``dtype``: default
    bf16 on a GPU, fp32 on the CPU. ``quiet``: no "Loading weights" progress
    bar on stderr. ``model_kwargs`` go to
    ``AutoModelForCausalLM.from_pretrained`` (e.g. ``attn_implementation``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = check_model_folder(path)
    if os.path.isdir(name) and not any(os.path.isfile(os.path.join(name, f)) for f in TOKENIZER_FILES):
        # AutoTokenizer would give an empty tokenizer of the config's type, and every edit would come out empty
        raise DiffModelError(f"model folder {name!r} holds no tokenizer ({' / '.join(TOKENIZER_FILES[:2])}); save the "
                             "tokenizer next to the model (tokenizer.save_pretrained(folder)), as diffmodel train does")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as err:
        raise DiffModelError(
            f"cannot load a tokenizer from {name!r}: {err}. Save the tokenizer next to the model "
            "(tokenizer.save_pretrained(folder))"
        ) from None
    try:
        with bars_off(quiet, datasets=False):
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, **model_kwargs)
    except (OSError, ValueError) as err:
        raise DiffModelError(f"cannot load a causal language model from {name!r}: {err}") from None
    model.to(dev)
    return model, tokenizer


def max_positions(config) -> int | None:
    """The longest sequence the model's position embeddings allow, if the config says."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


__all__ = ["check_model_folder", "load_checkpoint", "max_positions", "resolve_device", "resolve_dtype"]
