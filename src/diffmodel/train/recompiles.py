"""torch.compile compiling again after the first step: said in the log, not left to show as a slow run.

A compiled run compiles its graphs in the first step (:mod:`diffmodel.train.first_step`); every step after it
should reuse them. When a later step meets a batch of a shape the graphs were not compiled for, or a guard
torch.compile placed on the model or the step no longer holds, that step compiles again while the device waits
(up to what the first step's compile took: 29-83 s for a ~110M model on an H200), and past torch's recompile limit
the function runs uncompiled from then on. The progress bar shows this only as a slow step or a slow run. :class:`RecompileCallback` counts the
graphs torch.compile made during each training step (forward, backward and optimizer; evaluation between steps is
left out: it compiles graphs of its own, without gradients) and warns for the first :data:`WARNINGS` steps that made
any, with the step and its time, then sums them up when training ends.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

logger = logging.getLogger("diffmodel.train")

#: Steps after the first that get a warning of their own; later ones are only counted, for the summary.
WARNINGS = 3

HINT = ("a batch of a new shape or a guard that no longer holds; TORCH_LOGS=recompiles names the guard "
        "(--packing pads every row to --block_size, so its batches keep one shape; with --loss_logits the number of "
        "loss positions changes from batch to batch, and a batch with fewer or more than any before can break a "
        "bound torch.compile set on it)")


def graph_count() -> int:
    """Graphs torch.compile has compiled in this process so far (first compiles and recompiles)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class RecompileCallback(TrainerCallback):
    def __init__(self, clock=time.monotonic, count=graph_count):
        self.clock, self.count = clock, count
        self.on_train_begin(None, None, None)

    def on_train_begin(self, args, state, control, **kwargs):
        self.first: int | None = None  # the step the run started with; its compiles are the first step's
        self.began: tuple[float, int] | None = None  # (clock, graphs) at the current step's start
        self.steps = self.graphs = 0
        self.seconds = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first is None:
            self.first = state.global_step
        self.began = (self.clock(), self.count())

    def on_step_end(self, args, state, control, **kwargs):
        if self.began is None:
            return control
        (started, before), self.began = self.began, None
        made = self.count() - before
        if made <= 0 or state.global_step <= self.first + 1:
            return control
        took = self.clock() - started
        self.steps, self.graphs, self.seconds = self.steps + 1, self.graphs + made, self.seconds + took
        if self.steps <= WARNINGS:
            more = " (later steps that compile are counted and summed up when training ends)" if self.steps == WARNINGS else ""
            logger.warning("torch.compile compiled %d graph(s) again in step %d, which took %.1f s: %s%s",
                           made, state.global_step, took, HINT, more)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.steps:
            logger.warning("torch.compile compiled %d graph(s) again after the first step, in %d step(s) that took "
                           "%.0f s in all: %s", self.graphs, self.steps, self.seconds, HINT)
        return control
