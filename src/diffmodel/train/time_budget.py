"""``--max_train_time``: stop training after a wall-clock budget, with a checkpoint.

:class:`TimeBudgetCallback` starts its clock when training begins (after
loading, preprocessing and the model's set-up) and, at the end of the first
optimizer step past the budget, asks Trainer to save a checkpoint and stop;
the run then ends as one that reached ``--max_steps`` does (final model,
metrics, plots, card). A resumed run gets a fresh budget.

Under several processes every rank must stop at the same step (a rank that
stops alone leaves the others waiting in a collective): the main process's
clock decides, and its decision reaches the others through one broadcast of
a single number per step.
"""

from __future__ import annotations

import logging
import time

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def _decide_together(stop: bool, device) -> bool:
    """Rank 0's decision on every rank (``stop`` itself when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_world_size() == 1:
        return stop
    flag = torch.tensor([1 if stop else 0], device=device)
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


class TimeBudgetCallback(TrainerCallback):
    def __init__(self, seconds: float, device=None, clock=time.monotonic):
        self.seconds = seconds
        self.device = device if device is not None else torch.device("cpu")
        self.clock = clock
        self.started: float | None = None
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        over = self.started is not None and self.clock() - self.started >= self.seconds
        if _decide_together(over, self.device) and self.stopped_at is None:
            self.stopped_at = state.global_step
            logger.info("--max_train_time %.0f s reached at step %d: saving a checkpoint and stopping", self.seconds, state.global_step)
            control.should_save = True
            control.should_training_stop = True
        return control
