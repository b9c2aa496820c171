"""Requests shared out between the processes of one launch: ``torchrun --nproc_per_node N -m diffmodel.cli edit --jsonl``
(and ``eval edits`` / ``eval humanevalfix``).

Batch generation keeps its output a piece at a time (:mod:`diffmodel.infer.partial`: 16 batches a piece). Under
torchrun (``WORLD_SIZE`` > 1) each process takes a contiguous run of whole pieces, as evenly as the pieces divide:
the pieces one process would generate, each sampled with the seed one process gives it, so N processes write what
one writes. Each keeps its own ``OUT.K-of-N.partial`` (resumed as one process's ``OUT.partial`` is); when every
process is done (a barrier over gloo, which waits as long as the slowest share takes), process 0 joins the shares in
order: ``edit`` writes ``OUT``, ``eval`` scores and writes the report while the other processes stop
(:class:`OtherProcessReports`). A process uses the GPU of its ``LOCAL_RANK`` unless ``--device`` names one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

#: How long the processes wait for the slowest share at the barrier.
WAIT = timedelta(days=7)


class OtherProcessReports(Exception):
    """Raised in the processes other than 0 once their share is kept: process 0 reports."""


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def span(self, total: int, piece: int) -> tuple[int, int]:
        """The requests ``[first, end)`` of this process: whole pieces of ``piece`` requests, as evenly as they divide."""
        pieces = -(-total // piece) if total else 0
        return (min(total, self.rank * pieces // self.world * piece),
                min(total, (self.rank + 1) * pieces // self.world * piece))

    def out(self, path: str | os.PathLike, rank: int | None = None) -> Path:
        """The output whose ``.partial`` this process (or process ``rank``) keeps: ``path`` itself for one process."""
        path = Path(path)
        rank = self.rank if rank is None else rank
        return path if self.world == 1 else path.with_name(f"{path.name}.{rank}-of-{self.world}")

    def wait(self) -> None:
        """Return once every process got here (nothing to wait for with one)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=WAIT)
        dist.barrier()

    def device(self, device: str | None) -> str | None:
        """``device``, or this process's GPU when several processes share a machine's GPUs and none is named."""
        if device is not None or self.world == 1:
            return device
        import torch

        return f"cuda:{self.local_rank}" if torch.cuda.is_available() else None


def current() -> Shard:
    """This process's share, from torchrun's environment (one process without it)."""
    return Shard(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def finish() -> None:
    """Leave the process group, when there is one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["OtherProcessReports", "Shard", "current", "finish"]
