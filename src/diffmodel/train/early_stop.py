"""Stopping training early with a checkpoint: ``--max_train_time`` and SIGTERM.

:class:`EarlyStopCallback` ends training at the end of an optimizer step,
asking Trainer to save a checkpoint first, when

- ``--max_train_time`` is spent: its clock starts when training begins
  (after loading, preprocessing and the model's set-up); a resumed run gets
  a fresh budget. The run then ends as one that reached ``--max_steps`` does
  (final model, metrics, plots, card; exit status 0);
- the process got SIGTERM (a scheduler's preemption or time limit, ``kill``,
  ``timeout``): the step in progress finishes and the checkpoint is saved;
  nothing else is written (no final model, metrics or card: the run is not
  over, and a scheduler's grace time is short) and ``diffmodel train`` exits
  with 143 (128 + SIGTERM); the same command resumes from that checkpoint. A second SIGTERM ends the process at once. The handler is
  installed while ``Trainer.train`` runs (main thread only) and the previous
  one is put back afterwards.

Under several processes every rank must stop at the same step (a rank that
stops alone leaves the others waiting in a collective): rank 0 decides, and
its decision reaches the others through one broadcast of a single number per
step, on the CPU (a gloo group made for it when training runs on NCCL), so
the GPU is never waited for.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

#: What :func:`_decide_together` broadcasts.
GO_ON, TIME_SPENT, SIGNALLED = 0, 1, 2
#: ``diffmodel train``'s exit status after a stop on SIGTERM.
SIGTERM_EXIT = 128 + signal.SIGTERM


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def control_group():
    """A process group for a CPU tensor: the default one when it is gloo, else a new gloo group (every rank must call this)."""
    dist = torch.distributed
    if dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def _decide_together(reason: int, group) -> int:
    """Rank 0's reason on every rank (``reason`` itself when not distributed)."""
    if not _distributed():
        return reason
    flag = torch.tensor([reason])
    torch.distributed.broadcast(flag, src=0, group=group)
    return int(flag.item())


class EarlyStopCallback(TrainerCallback):
    """``seconds``: the --max_train_time budget (None: none); ``watch_sigterm``: stop with a checkpoint on SIGTERM."""

    def __init__(self, seconds: float | None = None, clock=time.monotonic, watch_sigterm: bool = True):
        self.seconds = seconds
        self.clock = clock
        self.group = None
        self.watch_sigterm = watch_sigterm
        self.started: float | None = None
        self.stopped_at: int | None = None
        self.stopped_by: str | None = None
        self.signalled = False
        self._previous = None  # the SIGTERM handler before ours, while ours is installed
        self._installed = False

    # -- SIGTERM ----------------------------------------------------------------------------------

    def _on_sigterm(self, signum, frame) -> None:
        if self.signalled:  # a second SIGTERM: end now, as without the handler
            self._restore()
            signal.raise_signal(signal.SIGTERM)
            return
        self.signalled = True

    def _install(self) -> None:
        if not self.watch_sigterm or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True

    def _restore(self) -> None:
        if self._installed:  # None: the handler before was not set from Python, so the default one
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
            self._installed, self._previous = False, None

    # -- Trainer events ---------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        if _distributed():
            self.group = control_group()
        self.started = self.clock()
        self._install()

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()

    def on_step_end(self, args, state, control, **kwargs):
        reason = GO_ON
        if self.signalled:
            reason = SIGNALLED
        elif self.seconds is not None and self.started is not None and self.clock() - self.started >= self.seconds:
            reason = TIME_SPENT
        reason = _decide_together(reason, self.group)
        if reason != GO_ON and self.stopped_at is None:
            self.stopped_at = state.global_step
            if reason == SIGNALLED:
                self.stopped_by = "SIGTERM"
                logger.warning("SIGTERM: saving a checkpoint of step %d and stopping; run the same command to resume", state.global_step)
            else:
                self.stopped_by = "max_train_time"
                logger.info("--max_train_time %.0f s reached at step %d: saving a checkpoint and stopping", self.seconds, state.global_step)
            control.should_save = True
            control.should_training_stop = True
        return control
