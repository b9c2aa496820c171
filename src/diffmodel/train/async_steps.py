"""The host queues the next training step while the GPU runs this one (``--async_steps``).

Whenever the host waits for the GPU inside a step, the GPU then waits for the host: it idles while the
host fetches the next batch and launches the optimizer and the next forward pass. On an H200 at ~110M the
packed step's kernels took 56 ms of its 66-72 ms (``torch.cuda.set_sync_debug_mode``, benchmarks/RESULTS.md),
and the host waited at three places each step:

- the batch's copy to the GPU (accelerate's ``send_to_device``: a blocking copy waits for the GPU's queue);
- Trainer's NaN/inf check of each step's loss (``--logging_nan_inf_filter``, a Python ``if`` on a GPU tensor);
- the input-token count of the training metrics (a host number made a GPU tensor; now built on the GPU,
  :func:`diffmodel.train.metrics.input_token_count`, whatever this setting).

With ``--async_steps`` on, batches are copied from pinned memory without blocking
(``accelerator_config.non_blocking``, when ``--dataloader_pin_memory`` is on, its default), and the
NaN/inf filter runs on the GPU (:class:`DeviceLossFilter`): a step whose loss is not finite is logged as the
mean loss since the last log, exactly as Trainer's filter does, through ``torch.where`` instead of a host
branch. Trainer's own check is then off (``logging_nan_inf_filter`` is saved False with the arguments).
Nothing else changes: the same batches, the same gradients, the same logged losses.
"""

from __future__ import annotations

import torch


def apply(training_args) -> bool:
    """Switch the run to asynchronous steps; True when the NaN/inf filter moves to the device
    (the trainer's :attr:`DeviceLossFilter.nan_filter_on_device` must then be set)."""
    if training_args.dataloader_pin_memory and training_args.accelerator_config is not None:
        training_args.accelerator_config.non_blocking = True
    moved = bool(training_args.logging_nan_inf_filter)
    training_args.logging_nan_inf_filter = False
    return moved


def finite_or_mean(loss: torch.Tensor, since_log: torch.Tensor | None, steps_since_log: int) -> torch.Tensor:
    """``loss`` when finite, else the sum of the losses since the last log over ``1 + steps_since_log``
    (Trainer's replacement for a NaN/inf step loss), without the host looking at either."""
    mean = since_log / (1 + steps_since_log) if since_log is not None else torch.zeros_like(loss)
    return torch.where(torch.isfinite(loss), loss, mean.to(loss.dtype))


class DeviceLossFilter:
    """Put before ``Trainer`` in the bases: with :attr:`nan_filter_on_device`, the step losses handed to
    Trainer's log are filtered on the device (see the module docstring)."""

    nan_filter_on_device = False

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not self.nan_filter_on_device:
            return loss
        since = self.__dict__.setdefault("_losses_since_log", [None, self.state.global_step])
        kept = finite_or_mean(loss, since[0], self.state.global_step - since[1])
        since[0] = kept.detach() if since[0] is None else since[0] + kept.detach()
        return kept

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and "_losses_since_log" in self.__dict__:  # Trainer starts its running loss again here
            self._losses_since_log = [None, self.state.global_step]
        return super().log(logs, *args, **kwargs)
