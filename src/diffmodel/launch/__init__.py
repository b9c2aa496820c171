"""Launching ``diffmodel train`` on many GPUs and nodes: shipped configurations and Slurm scripts.

The configurations in ``configs/`` are installed with the package; find them
with :func:`config_path` (or ``python -c "from diffmodel.launch import
config_path; print(config_path('ds_zero3.json'))"``):

``ds_zero2.json``  DeepSpeed ZeRO-2 (optimizer states and gradients sharded), for ``--deepspeed FILE``.
``ds_zero3.json``  DeepSpeed ZeRO-3 (parameters sharded too; a normal 16-bit checkpoint is gathered on save).
``fsdp.json``      FSDP2 full shard, one unit per transformer block, activation checkpointing,
                   for ``--fsdp "full_shard auto_wrap" --fsdp_config FILE`` (or ``--fsdp --fsdp_config FILE``).
``accelerate_ddp.yaml`` / ``accelerate_fsdp.yaml`` / ``accelerate_deepspeed.yaml``
                   ``accelerate launch --config_file FILE`` for DDP, FSDP2 (full shard, bf16,
                   activation checkpointing) and DeepSpeed ZeRO-3.

Invariants:
- Every value that ``TrainingArguments`` also sets (batch sizes, gradient
  accumulation, clipping, bf16/fp16) is ``"auto"`` in the DeepSpeed files, so
  the command line stays the one source of truth and nothing disagrees.
- The DeepSpeed files name no optimizer and no scheduler: ``Trainer`` builds
  them from ``--optim``, ``--learning_rate``, ``--lr_scheduler_type`` and
  ``--warmup_steps``, exactly as without DeepSpeed.
- Mixed precision is chosen on the command line (``--bf16``); the FSDP JSON has
  no dtype of its own because ``TrainingArguments`` reads none from it.
"""

from __future__ import annotations

from pathlib import Path

from diffmodel.errors import DiffModelError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_names() -> list[str]:
    """Names of the shipped configuration files."""
    return sorted(p.name for p in CONFIG_DIR.iterdir() if p.suffix in (".json", ".yaml"))


def config_path(name: str) -> Path:
    """Absolute path of a shipped configuration, e.g. ``config_path("ds_zero3.json")``.

    The suffix may be left out (``"ds_zero3"``); an unknown name raises
    :class:`DiffModelError` listing the known ones.
    """
    names = config_names()
    for candidate in (name, f"{name}.json", f"{name}.yaml"):
        if candidate in names:
            return CONFIG_DIR / candidate
    raise DiffModelError(f"no shipped launch configuration named {name!r}; the shipped ones are: {', '.join(names)}")
