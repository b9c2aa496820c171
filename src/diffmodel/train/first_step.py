"""How long the first training step took, when torch.compile makes it long.

Compiled (``--compile``, on by default with ``--packing`` on a GPU), the first step compiles the model's kernels
before it trains: 29-83 s for a ~110M model on an H200 (warm and cold compile caches), about three minutes on a
fresh H100 before the step was compiled once instead of twice (benchmarks/RESULTS.md), while the progress bar stays
at step 0. The start-up log
says so before training starts, and :class:`FirstStepCallback` logs how long that step took once it ends.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

logger = logging.getLogger("diffmodel.train")

BEFORE = ("torch.compile: the first step compiles the model's kernels before it trains (a minute or more, a few on a "
          "fresh machine; later runs that see the same --compile_cache folder reuse much of it); the log says how long "
          "it took")


class FirstStepCallback(TrainerCallback):
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.started: float | None = None
        self.done = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.done = self.clock(), False

    def on_step_end(self, args, state, control, **kwargs):
        if not self.done and self.started is not None:
            self.done = True
            logger.info("torch.compile: the first step (step %d) took %.0f s, compiling included", state.global_step,
                        self.clock() - self.started)
        return control
