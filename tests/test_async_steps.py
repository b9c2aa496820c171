"""Asynchronous steps: the NaN/inf loss filter on the device logs what Trainer's own filter logs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import ModelOutput

from diffmodel.train.async_steps import DeviceLossFilter, apply, finite_or_mean


class TestFiniteOrMean:
    def test_a_finite_loss_is_kept(self):
        assert finite_or_mean(torch.tensor(1.5), torch.tensor(6.0), 2).item() == 1.5

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
    def test_a_loss_that_is_not_finite_becomes_the_mean_since_the_last_log(self, bad):
        # Trainer: tr_loss / (1 + global_step - last logged step)
        assert finite_or_mean(torch.tensor(bad), torch.tensor(6.0), 2).item() == 2.0

    def test_with_nothing_since_the_last_log_it_becomes_zero(self):
        assert finite_or_mean(torch.tensor(math.nan), None, 0).item() == 0.0


class TestApply:
    def _args(self, tmp_path, **kw):  # not use_cpu, which turns pinning off
        return TrainingArguments(output_dir=str(tmp_path), report_to="none", **kw)

    def test_pinned_batches_are_copied_without_blocking_and_the_filter_moves(self, tmp_path):
        args = self._args(tmp_path)
        assert (args.accelerator_config.non_blocking, args.logging_nan_inf_filter) == (False, True)
        assert apply(args) is True
        assert (args.accelerator_config.non_blocking, args.logging_nan_inf_filter) == (True, False)

    def test_unpinned_batches_stay_blocking(self, tmp_path):
        args = self._args(tmp_path, dataloader_pin_memory=False)
        apply(args)
        assert args.accelerator_config.non_blocking is False

    def test_a_filter_the_user_turned_off_stays_off(self, tmp_path):
        assert apply(self._args(tmp_path, logging_nan_inf_filter=False)) is False


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 1)

    def forward(self, x, labels):
        return ModelOutput(loss=((self.linear(x).squeeze(-1) - labels) ** 2).mean())


class Points(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


# steps (1-based) whose logged loss is made NaN or inf after their backward ran
BAD = {3: math.nan, 4: math.inf, 7: -math.inf, 8: math.nan}


class Inject:
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = BAD.get(self.state.global_step + 1)
        return loss + bad if bad is not None else loss


class WithTrainersFilter(Inject, Trainer):
    pass


class WithDeviceFilter(DeviceLossFilter, Inject, Trainer):
    pass


def _logged_losses(trainer_cls, tmp_path, filter_on_device: bool, gradient_accumulation_steps: int = 1) -> list[float]:
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=10, logging_steps=3,
                             per_device_train_batch_size=4, learning_rate=0.05, save_strategy="no", seed=0,
                             gradient_accumulation_steps=gradient_accumulation_steps, disable_tqdm=True)
    if filter_on_device:
        assert apply(args)
    trainer = trainer_cls(model=Regression(), args=args, train_dataset=Points())
    trainer.nan_filter_on_device = filter_on_device
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_device_filter_logs_exactly_what_trainers_filter_logs(tmp_path, accumulation):
    reference = _logged_losses(WithTrainersFilter, tmp_path / "trainer", False, accumulation)
    on_device = _logged_losses(WithDeviceFilter, tmp_path / "device", True, accumulation)
    assert len(reference) == 3 and all(math.isfinite(v) for v in reference)
    assert on_device == reference


def test_without_either_filter_the_bad_steps_reach_the_log(tmp_path):
    # what the two filters above have to remove: the same injection, no filter at all
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=10, logging_steps=3,
                             per_device_train_batch_size=4, save_strategy="no", logging_nan_inf_filter=False, disable_tqdm=True)
    trainer = WithDeviceFilter(model=Regression(), args=args, train_dataset=Points())
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert not all(math.isfinite(v) for v in logged)
