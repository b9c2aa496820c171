"""LoRA through PEFT: low-rank adapters on the model's linear layers, saved alone or merged.

``--lora_r 0`` (the default) leaves the model untouched. With ``--lora_r R``
every linear layer except the LM head gets a rank-R adapter and only the
adapters train; the base weights stay frozen and bit-identical.

Target layers are found by type, not by name: every ``torch.nn.Linear`` and
every ``transformers`` ``Conv1D`` (GPT-2's linear layer) that is not the
model's output embedding (``model.get_output_embeddings()``). No
architecture-specific module path is written anywhere, so any causal LM works.

Saving (:func:`save_lora`): the adapter (``adapter_config.json``,
``adapter_model.safetensors``) and the tokenizer go to ``output_dir``; with
``--lora_merge`` a plain checkpoint with the adapters folded into the weights
(``W + scaling * B @ A``) goes to ``output_dir/merged``, loadable with
``AutoModelForCausalLM.from_pretrained`` and giving the same logits as the
adapter model. The merge works on the full state dict that the engine gathers
(plain, DDP, FSDP or DeepSpeed ZeRO-3), so under those engines
:func:`save_lora` must be called on every rank; only the main process writes.

The flags (:class:`~diffmodel.train.args.LoraArguments`) and their
validation (:func:`~diffmodel.train.args.lora_problems`) live with the other
arguments in :mod:`diffmodel.train.args`, which imports nothing heavy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diffmodel.errors import DiffModelError
from diffmodel.train.args import LoraArguments

logger = logging.getLogger(__name__)

#: Name of the adapter that :func:`apply_lora` creates (PEFT's default).
ADAPTER = "default"

#: Folder under ``output_dir`` for the merged checkpoint.
MERGED_DIR = "merged"


def _peft():
    try:
        import peft
    except ImportError:
        raise DiffModelError("--lora_r needs the peft package: pip install 'diffmodel[lora]' (or pip install peft), or drop --lora_r") from None
    return peft


def _linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear layer of ``model`` by full name, the LM head (output embedding) excepted."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    types = _linear_types()
    return {name: m for name, m in model.named_modules() if isinstance(m, types) and m is not head and name}


def default_target_modules(model: nn.Module) -> list[str]:
    """PEFT ``target_modules`` naming exactly :func:`linear_layers`.

    Short leaf names (``c_attn``, ``q_proj``) are used where a leaf name
    belongs only to target layers; a leaf name shared with any other module
    (the LM head, a non-linear block) is replaced by the full names of its
    target layers, so nothing else is ever adapted.
    """
    targets = linear_layers(model)
    if not targets:
        raise DiffModelError(f"{type(model).__name__} has no linear layer besides its LM head: nothing for LoRA to adapt")
    leaves_of_targets: dict[str, list[str]] = {}
    for name in targets:
        leaves_of_targets.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    other_leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name and name not in targets}
    out: list[str] = []
    for leaf, names in leaves_of_targets.items():
        out.extend(names if leaf in other_leaves else [leaf])
    return out


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    names = [n for n, _ in model.named_modules() if n]
    linear = linear_layers(model)
    problems = []
    for t in targets:
        hit = [n for n in names if _matches(n, t)]
        if not hit:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
            problems.append(f"--lora_target_modules {t!r} names no module of the model; its linear layers are named: {', '.join(leaves)}")
        elif not any(n in linear for n in hit):
            problems.append(f"--lora_target_modules {t!r} names {hit[0]!r}, which is not a linear layer (or is the LM head)")
    if problems:
        raise DiffModelError("LoRA cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def apply_lora(model, args: LoraArguments):
    """Wrap ``model`` in a PEFT LoRA model with only the adapters trainable; a no-op when ``lora_r`` is 0."""
    if args.lora_r <= 0:
        return model
    peft = _peft()
    if args.lora_target_modules:
        targets = list(args.lora_target_modules)
        _check_targets(model, targets)
    else:
        targets = default_target_modules(model)
    from transformers.pytorch_utils import Conv1D

    chosen = [m for n, m in model.named_modules() if n and any(_matches(n, t) for t in targets)]
    config = peft.LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        # Conv1D stores its weight as (in, out); PEFT needs to know when every target is one
        fan_in_fan_out=bool(chosen) and all(isinstance(m, Conv1D) for m in chosen),
    )
    wrapped = peft.get_peft_model(model, config)
    # adapter_config.json names the base model as it was given; a relative folder would only be found again from
    # this working directory (elsewhere PEFT looks it up on the Hub), so it is recorded as an absolute path
    base = wrapped.peft_config[ADAPTER].base_model_name_or_path
    if base and not Path(base).is_absolute() and Path(base).is_dir():
        wrapped.peft_config[ADAPTER].base_model_name_or_path = str(Path(base).resolve())
    # with gradient checkpointing and a frozen embedding, the checkpointed blocks
    # would see inputs that need no grad and give the adapters none
    if hasattr(wrapped, "enable_input_require_grads"):
        wrapped.enable_input_require_grads()
    trainable, total = count_parameters(wrapped)
    n_layers = sum(1 for m in wrapped.modules() if isinstance(m, peft.tuners.lora.LoraLayer))
    logger.info(
        "LoRA r=%d alpha=%s dropout=%s on %d layers (%s): %s trainable parameters of %s (%.2f%%)",
        args.lora_r, args.lora_alpha, args.lora_dropout, n_layers, ", ".join(targets[:8]) + (", ..." if len(targets) > 8 else ""),
        f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1),
    )
    return wrapped


# --- merging ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraLayerInfo:
    """What merging one adapted layer needs besides its tensors."""

    scaling: float
    fan_in_fan_out: bool


def lora_layer_info(peft_model, adapter: str = ADAPTER) -> dict[str, LoraLayerInfo]:
    """{module name in the PEFT model's state dict: scaling and weight layout} for each adapted layer."""
    from peft.tuners.lora import LoraLayer

    return {
        name: LoraLayerInfo(float(m.scaling[adapter]), bool(getattr(m, "fan_in_fan_out", False)))
        for name, m in peft_model.named_modules()
        if isinstance(m, LoraLayer) and adapter in getattr(m, "scaling", {})
    }


def merged_state_dict(state_dict: Mapping[str, torch.Tensor], layers: Mapping[str, LoraLayerInfo], adapter: str = ADAPTER, prefix: str = "base_model.model.") -> dict[str, torch.Tensor]:
    """The state dict of the base model with every adapter folded in: ``W + scaling * (B @ A)``.

    ``state_dict`` is the PEFT model's (keys ``PREFIX<layer>.base_layer.weight``,
    ``PREFIX<layer>.lora_A.<adapter>.weight``, ...); the result has the base
    model's own keys (``<layer>.weight``), no ``lora_`` entries, and each
    weight in its original dtype (the sum is done in float32).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if ".lora_" in key:
            continue
        module, _, leaf = key.rpartition(".")
        if module.endswith(".base_layer"):
            layer = module[: -len(".base_layer")]
            info = layers.get(layer)
            if info is None:
                raise DiffModelError(f"cannot merge: {key} belongs to an adapted layer whose LoRA settings are unknown")
            if leaf == "weight":
                a = state_dict[f"{layer}.lora_A.{adapter}.weight"].float()
                b = state_dict[f"{layer}.lora_B.{adapter}.weight"].float()
                delta = b @ a
                if info.fan_in_fan_out:
                    delta = delta.T
                value = (value.float() + info.scaling * delta).to(value.dtype)
            key = f"{layer}.{leaf}"
        if key.startswith(prefix):
            key = key[len(prefix):]
        out[key] = value
    return out


def save_merged(base_config, state_dict: Mapping[str, torch.Tensor], out_dir: Path, generation_config=None) -> Path:
    """Build the base architecture on the meta device, load the merged weights into it, save it."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(base_config)
    missing, unexpected = model.load_state_dict(dict(state_dict), strict=False, assign=True)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {}) | set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise DiffModelError(f"merged weights do not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    if generation_config is not None:
        model.generation_config = generation_config
    model.save_pretrained(str(out_dir))
    return out_dir


def save_lora(trainer_or_model, output_dir, args: LoraArguments, tokenizer=None) -> dict[str, Path | None]:
    """Save the adapter (and tokenizer) in ``output_dir``, and with ``lora_merge`` a merged model in ``output_dir/merged``.

    Pass the ``Trainer`` after training (call it on every rank: gathering the
    weights is collective under FSDP / ZeRO-3), or a PEFT model. Returns the
    paths written (``merged`` is None without ``lora_merge``).
    """
    from transformers import Trainer

    out = Path(output_dir)
    merged_dir = out / MERGED_DIR if args.lora_merge else None
    trainer = trainer_or_model if isinstance(trainer_or_model, Trainer) else None
    model = trainer.accelerator.unwrap_model(trainer.model) if trainer else trainer_or_model
    if not hasattr(model, "get_base_model"):
        raise DiffModelError("save_lora needs a model wrapped by apply_lora (a PEFT model); was --lora_r 0?")
    if trainer:
        trainer.save_model(str(out))  # the adapter (a PEFT model saves only it) and the tokenizer
        tokenizer = tokenizer or trainer.processing_class
        is_main = trainer.args.should_save
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model) if args.lora_merge else None
    else:
        is_main = True
        model.save_pretrained(str(out))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        state = model.state_dict() if args.lora_merge else None
    if args.lora_merge and is_main:
        merged = merged_state_dict(state, lora_layer_info(model))
        base = model.get_base_model()
        save_merged(base.config, merged, merged_dir, getattr(base, "generation_config", None))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(merged_dir))
        logger.info("LoRA adapter saved to %s; merged model saved to %s", out, merged_dir)
    elif is_main:
        logger.info("LoRA adapter saved to %s", out)
    return {"adapter": out, "merged": merged_dir}
