"""How long the first training step took, when torch.compile makes it long.

Compiled (``--compile``, on by default with ``--packing`` on a GPU), the first step compiles the model's kernels
before it trains: 29-83 s for a ~110M model on an H200 (warm and cold compile caches), about three minutes on a
fresh H100 before the step was compiled once instead of twice (benchmarks/RESULTS.md), while the progress bar stays
at step 0. The start-up log
says so before training starts, and :class:`FirstStepCallback` logs how long that step took once it ends, and how
many of the graphs it compiled inductor found in its on-disk cache (``--compile_cache``).
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

logger = logging.getLogger("diffmodel.train")

BEFORE = ("torch.compile: the first step compiles the model's kernels before it trains (a minute or more, a few on a "
          "fresh machine; later runs that see the same --compile_cache folder reuse much of it); the log says how long "
          "it took")


def graph_cache_counts() -> tuple[int, int]:
    """(graphs inductor found in its on-disk cache, graphs it compiled) so far in this process."""
    from torch._dynamo.utils import counters

    found = counters["inductor"]
    return found["fxgraph_cache_hit"], found["fxgraph_cache_miss"]


def cache_note(before: tuple[int, int], after: tuple[int, int]) -> str:
    """What the compile cache gave the first step, from the counts before and after it ("" when nothing compiled)."""
    hits, misses = after[0] - before[0], after[1] - before[1]
    if not hits + misses:
        return ""
    return f"; {hits} of its {hits + misses} compiled graphs were found in the compile cache (--compile_cache)"


class FirstStepCallback(TrainerCallback):
    def __init__(self, clock=time.monotonic, counts=graph_cache_counts):
        self.clock, self.counts = clock, counts
        self.started: float | None = None
        self.counted: tuple[int, int] = (0, 0)
        self.done = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.counted, self.done = self.clock(), self.counts(), False

    def on_step_end(self, args, state, control, **kwargs):
        if not self.done and self.started is not None:
            self.done = True
            logger.info("torch.compile: the first step (step %d) took %.0f s, compiling included%s", state.global_step,
                        self.clock() - self.started, cache_note(self.counted, self.counts()))
        return control
