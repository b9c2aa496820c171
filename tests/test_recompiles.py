"""torch.compile compiling again after the first step is said in the log (diffmodel.train.recompiles)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from diffmodel.train.recompiles import HINT, RecompileCallback, graph_count


@pytest.fixture
def logged(caplog):
    """What diffmodel.train has logged at INFO and above so far in the test."""
    caplog.set_level(logging.INFO, logger="diffmodel.train")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "diffmodel.train"]


def _steps(callback, first: int, made: list[int], between: list[int] | None = None):
    """Run ``callback`` through ``len(made)`` steps from ``first``: step i compiles made[i] graphs and takes i + 1
    seconds; ``between[i]`` graphs are compiled after step i ends (evaluation)."""
    clock, graphs = [0.0], [0]
    callback.clock, callback.count = (lambda: clock[0]), (lambda: graphs[0])
    callback.on_train_begin(None, SimpleNamespace(global_step=first), None)
    for i, n in enumerate(made):
        callback.on_step_begin(None, SimpleNamespace(global_step=first + i), None)
        clock[0] += i + 1
        graphs[0] += n
        callback.on_step_end(None, SimpleNamespace(global_step=first + i + 1), None)
        graphs[0] += (between or [0] * len(made))[i]
    callback.on_train_end(None, SimpleNamespace(global_step=first + len(made)), None)


def test_the_first_step_compiling_is_not_warned_a_later_one_is_with_its_step_and_time(logged):
    _steps(RecompileCallback(), 0, [7, 0, 2, 0])
    assert logged() == [
        f"torch.compile compiled 2 graph(s) again in step 3, which took 3.0 s: {HINT}",
        f"torch.compile compiled 2 graph(s) again after the first step, in 1 step(s) that took 3 s in all: {HINT}",
    ]


def test_a_run_that_compiles_only_in_its_first_step_logs_nothing(logged):
    _steps(RecompileCallback(), 0, [9, 0, 0, 0, 0])
    assert logged() == []


def test_after_three_warnings_later_steps_are_only_counted_and_summed_up(logged):
    _steps(RecompileCallback(), 0, [5, 1, 1, 1, 1, 1])
    messages = logged()
    assert [m.split(":")[0] for m in messages] == [
        "torch.compile compiled 1 graph(s) again in step 2, which took 2.0 s",
        "torch.compile compiled 1 graph(s) again in step 3, which took 3.0 s",
        "torch.compile compiled 1 graph(s) again in step 4, which took 4.0 s",
        "torch.compile compiled 5 graph(s) again after the first step, in 5 step(s) that took 20 s in all",
    ]
    assert messages[2].endswith("(later steps that compile are counted and summed up when training ends)")


def test_a_resumed_runs_first_step_is_its_first_and_evaluation_between_steps_is_left_out(logged):
    _steps(RecompileCallback(), 40, [6, 0, 0], between=[0, 4, 0])
    assert logged() == []


def test_graph_count_counts_what_torch_compile_compiles_again_for_a_new_shape():
    torch._dynamo.reset()
    double = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
    before = graph_count()
    double(torch.ones(3))
    double(torch.ones(3))
    once = graph_count()
    double(torch.ones(5))
    assert (once - before, graph_count() - once) == (1, 1)


@pytest.fixture
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=1, n_head=2))


def test_a_compiled_trainer_whose_third_batch_is_longer_warns_of_step_3(tmp_path, tiny_gpt2, logged):
    from transformers import Trainer, TrainingArguments

    torch._dynamo.reset()
    lengths = iter([8, 8, 12, 8, 8])

    def collate(features):
        n = next(lengths)
        ids = torch.arange(n).remainder(40).repeat(len(features), 1)
        return {"input_ids": ids, "labels": ids.clone()}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=5, use_cpu=True,
                             report_to="none", save_strategy="no", logging_steps=100, disable_tqdm=True,
                             torch_compile=True, torch_compile_backend="eager", dataloader_num_workers=0)
    trainer = Trainer(model=tiny_gpt2, args=args, train_dataset=[{"x": i} for i in range(5)], data_collator=collate)
    trainer.add_callback(RecompileCallback())
    trainer.train()
    messages = logged()
    steps = [m.split(" again in step ")[1].split(",")[0] for m in messages if " again in step " in m]
    assert steps == ["3"], messages
