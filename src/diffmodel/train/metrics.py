"""Token metrics in the Trainer log: ``mean_token_accuracy``, ``num_tokens``, ``num_loss_tokens``.

The metrics TRL users read, computed from the logits the training (or eval)
forward pass already returns, so they cost one ``argmax`` and no extra pass:

- ``mean_token_accuracy``: the share of loss-bearing tokens (label not
  :data:`~diffmodel.preprocess.labels.IGNORE_INDEX`) that the model's argmax
  at the position before predicts (logits at ``i`` against the label at
  ``i + 1``, the shift HF models apply to their loss). Packed rows need
  nothing special: the label of a sample's first token is ignored already.
- ``num_tokens``: input tokens read since training began (the attention
  mask's ones; every token of a row without a mask, which for packed batches
  includes the pad segment that rounds a batch up to a multiple of 8).
- ``num_loss_tokens``: loss-bearing tokens since training began.
- ``data_wait_share``: the share of the wall time since the last log that the
  training loop spent fetching its next batches (dataloader, collator, copy
  to the device), i.e. an upper bound on the time the GPU starved for data.
- ``tokens_per_second``, ``loss_tokens_per_second`` and, where the device's
  peak is known, ``mfu``: the speed since the last log
  (:mod:`diffmodel.train.throughput`).

:class:`TokenMetricsMixin` counts in ``compute_loss`` (once per micro-batch,
so gradient accumulation is counted whole) and reports at every logging
step: the accuracy over the micro-batches since the last log, the counts
cumulative (continued from the last logged value when a run resumes). Counts
are summed over all ranks when logged, so the numbers are those of the whole
global batch under DDP / DeepSpeed / FSDP. Eval adds
``eval_mean_token_accuracy``, ``eval_num_tokens`` and ``eval_num_loss_tokens``
to the metrics ``evaluate`` returns (and so to ``eval_results.json``).

Invariants:
- Counts stay on the device between logs (no host sync per step).
- When the model returns no logits (liger-kernel's fused loss) the counts
  are still taken from the batch; only the accuracy is left out.
"""

from __future__ import annotations

import time

import torch
from transformers import Trainer

from diffmodel.preprocess.labels import IGNORE_INDEX
from diffmodel.train import loss_logits, throughput
from diffmodel.train.async_steps import DeviceLossFilter
from diffmodel.train.full_batches import FullBatchesMixin

#: the keys added to the training log
TRAIN_KEYS = ("mean_token_accuracy", "num_tokens", "num_loss_tokens", "data_wait_share",
              "tokens_per_second", "loss_tokens_per_second", "mfu")


def token_accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, counted): argmax of ``logits[..., i, :]`` against ``labels[..., i + 1]``, labels != IGNORE_INDEX only."""
    return picked_accuracy_counts(logits[..., :-1, :], labels[..., 1:])


def picked_accuracy_counts(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, counted) of (..., vocabulary) logits against the tokens they predict (IGNORE_INDEX not counted)."""
    counted = targets != IGNORE_INDEX
    return (logits.argmax(dim=-1).eq(targets) & counted).sum(), counted.sum()


def loss_token_count(labels: torch.Tensor) -> torch.Tensor:
    """Loss-bearing tokens of a batch: labels after the shift that are not IGNORE_INDEX."""
    return (labels[..., 1:] != IGNORE_INDEX).sum()


def input_token_count(inputs: dict) -> torch.Tensor:
    """Input tokens of a batch: the attention mask's ones, else every token (made on the batch's device: a
    host number copied there would make the host wait for the GPU)."""
    mask = inputs.get("attention_mask")
    if mask is not None:
        return mask.sum()
    ids = inputs["input_ids"]
    return torch.full((), ids.numel(), dtype=torch.int64, device=ids.device)


class _Counts:
    """Running sums (correct, tokens whose prediction was checked, loss tokens, input tokens, sum of sequence
    lengths squared) as device tensors."""

    def __init__(self):
        self.values: torch.Tensor | None = None

    def add(self, correct, checked, counted, tokens, squares) -> None:
        row = torch.stack([correct, checked, counted, tokens.to(correct.device), squares.to(correct.device)]).to(torch.int64)
        self.values = row if self.values is None else self.values + row.to(self.values.device)

    def take(self, reduce) -> tuple[float | None, int, int, int] | None:
        """(accuracy or None, loss tokens, input tokens, squares) summed over every rank (``reduce``: a sum over ranks), then zero.

        None when no rank counted anything. Every rank calls ``reduce``, also one that counted nothing
        (it adds zeros), so no rank waits for another. The accuracy is None when no logits were seen.
        """
        mine = self.values if self.values is not None else torch.zeros(5, dtype=torch.int64)
        self.values = None
        correct, checked, counted, tokens, squares = (int(v) for v in reduce(mine).tolist())
        if not (counted or tokens):
            return None
        return (correct / checked if checked else None), counted, tokens, squares


def tied_names(model: torch.nn.Module) -> set[str]:
    """The names under which ``model`` holds a parameter it also holds under an earlier name (tied weights)."""
    seen, tied = set(), set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        seen.add(id(param))
    return tied


class TokenMetricsMixin:
    """Put before ``Trainer`` in the bases: adds the token metrics of the module docstring."""

    def _token_counts(self, split: str) -> _Counts:
        store = self.__dict__.setdefault("_token_metric_counts", {})
        return store.setdefault(split, _Counts())

    def _sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(values.to(self.args.device), reduction="sum")

    def floating_point_ops(self, inputs: dict) -> int:
        """Trainer's count for ``total_flos`` (6 x the input's tokens x the parameters without the embeddings), the
        parameters counted once a run: Trainer counts them at every step by walking every module, host time that a
        small model's step waits for (0.30 ms a step for the ~110M Llama on a 2-core CPU: benchmarks/step_host_time.py)."""
        model = self.model
        main = getattr(model, "main_input_name", "input_ids")
        if main not in inputs or not hasattr(model, "num_parameters"):
            return super().floating_point_ops(inputs)
        known = self.__dict__.get("_flops_parameters")
        if known is None or known[0] is not model:
            known = self.__dict__["_flops_parameters"] = (model, model.num_parameters(exclude_embeddings=True))
        return 6 * inputs[main].numel() * known[1]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        tokens = input_token_count(inputs) if "input_ids" in inputs else None
        if model.training and "_rate_since" not in self.__dict__:
            self.__dict__["_rate_since"] = time.perf_counter()  # the speed is measured from the first step on
        loss, outputs = super().compute_loss(model, loss_logits.dynamic_positions(inputs), return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        picked = outputs.get(loss_logits.LOGITS) if isinstance(outputs, dict) else None
        if labels is not None and tokens is not None:
            with torch.no_grad():
                if picked is not None:  # logits at the loss positions only (--loss_logits)
                    correct, counted = picked_accuracy_counts(picked.detach(), inputs[loss_logits.TARGETS].to(picked.device))
                    checked = counted
                elif logits is not None:
                    correct, counted = token_accuracy_counts(logits.detach(), labels.to(logits.device))
                    checked = counted
                else:  # a fused loss made no logits: counts only
                    counted = loss_token_count(labels)
                    correct = checked = torch.zeros_like(counted)
                self._token_counts("train" if model.training else "eval").add(
                    correct, checked, counted, tokens, throughput.square_sum(inputs))
        return (loss, outputs) if return_outputs else loss

    def _run_epoch(self, *args, **kwargs):
        # Trainer checks --max_steps only after a step: a run resumed from a checkpoint that already reached it
        # (the same command run again after it finished, or after it died while saving the final model) would
        # train one step past it. No step is taken then.
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _issue_warnings_after_load(self, load_result):
        # A resumed model whose output layer shares the input embedding's weight (GPT-2) was saved without it, and
        # Trainer warns of that "missing key" on every resume; the weight was loaded, under the embedding's name.
        tied = tied_names(self.model)
        missing = [key for key in load_result.missing_keys if key not in tied]
        if len(missing) < len(load_result.missing_keys):
            load_result = load_result._replace(missing_keys=missing)
        return super()._issue_warnings_after_load(load_result)

    def get_batch_samples(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return super().get_batch_samples(*args, **kwargs)
        finally:
            self.__dict__["_data_wait"] = self.__dict__.get("_data_wait", 0.0) + time.perf_counter() - started

    def _data_wait_share(self, now: float) -> float | None:
        """Share of the wall time since the last training log spent fetching batches; None at the first log."""
        since = self.__dict__.get("_data_wait_since")
        waited = self.__dict__.get("_data_wait", 0.0)
        self.__dict__["_data_wait_since"], self.__dict__["_data_wait"] = now, 0.0
        if since is None or now <= since:
            return None
        return min(1.0, waited / (now - since))

    def _model_shape(self):
        if "_flops_shape" not in self.__dict__:
            self.__dict__["_flops_shape"] = throughput.model_shape(self.accelerator.unwrap_model(self.model))
        return self.__dict__["_flops_shape"]

    def _peak_flops(self) -> float | None:
        if "_peak" not in self.__dict__:
            device = self.args.device
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
            self.__dict__["_peak"] = throughput.peak_flops(name, bool(self.args.bf16 or self.args.fp16))
        return self.__dict__["_peak"]

    def _cumulative_base(self) -> tuple[int, int]:
        """The counts logged last before this process trained (a resumed run continues them)."""
        if "_token_metric_base" not in self.__dict__:
            last = next((h for h in reversed(self.state.log_history) if "num_tokens" in h), {})
            self._token_metric_base = [int(last.get("num_tokens", 0)), int(last.get("num_loss_tokens", 0))]
        return self._token_metric_base

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # a training step's log: every rank gets here (the loss is gathered too)
            taken = self._token_counts("train").take(self._sum_over_ranks)
            now = time.perf_counter()
            since = self.__dict__.get("_rate_since")
            self.__dict__["_rate_since"] = now
            if taken is not None:
                accuracy, counted, tokens, squares = taken
                base = self._cumulative_base()
                base[0] += tokens
                base[1] += counted
                if accuracy is not None:
                    logs["mean_token_accuracy"] = accuracy
                logs["num_tokens"] = base[0]
                logs["num_loss_tokens"] = base[1]
                if since is not None:
                    logs.update(throughput.rates(tokens, counted, squares, now - since, self._model_shape(),
                                                 self.args.world_size, self._peak_flops()))
            share = self._data_wait_share(now)
            if share is not None:
                logs["data_wait_share"] = round(share, 4)
        return super().log(logs, *args, **kwargs)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        self._token_counts("eval").values = None
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        prefix = metric_key_prefix
        taken = self._token_counts("eval").take(self._sum_over_ranks)
        if taken is not None:
            accuracy, counted, tokens, _ = taken
            if accuracy is not None:
                output.metrics[f"{prefix}_mean_token_accuracy"] = accuracy
            output.metrics[f"{prefix}_num_tokens"] = tokens
            output.metrics[f"{prefix}_num_loss_tokens"] = counted
        return output


class DiffTrainer(DeviceLossFilter, FullBatchesMixin, TokenMetricsMixin, Trainer):
    """``Trainer`` with the token metrics (what ``diffmodel train`` trains with, unless it streams)."""
