"""The fast path of ``diffmodel train --packing``: decisions, flags, collators, padding-free batches, time budget.

The decisions are pure functions of the flags and of ``Facts`` (what a
machine has), so any machine is given here; liger-kernel is not installed in
the test environment, so its "installed" branch is reached by monkeypatching
``fast_path.liger_supports``. One real tiny ``diffmodel train`` run (module
fixture) serves the time budget and the ``data_wait_share`` tests.
"""

import contextlib
import json
from unittest import mock
import logging
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from transformers import TrainerControl, TrainerState

from diffmodel.errors import DiffModelError
from diffmodel.train import fast_path
from diffmodel.train.args import SpeedArguments, parse_args, parse_duration, speed_args_from, validate
from diffmodel.train.attention import check_isolation
from diffmodel.train.collate import PackedCollator, RowCollator
from diffmodel.train.fast_path import COMPILE_MIN_STEPS, Facts, choose, problems
from diffmodel.train.early_stop import EarlyStopCallback

sys.path.insert(0, str(Path(__file__).parent))
from packed_models import BACKENDS, EOS, PAD, X, one_by_one, packed, packed_rows, samples, sum_loss_and_grads  # noqa: E402
from packed_models import model as tiny_model  # noqa: E402
from sample_rows import edit_rows  # noqa: E402

GPU_FLASH = Facts(cuda=True, flash_attn=True, flex_attention=True, liger=False)
GPU = Facts(cuda=True, flash_attn=False, flex_attention=True, liger=False)
GPU_FLASH_LIGER = Facts(cuda=True, flash_attn=True, flex_attention=True, liger=True)
CPU = Facts(cuda=False, flash_attn=False, flex_attention=True, liger=False)


def _training(max_steps=-1, torch_compile=False, use_liger_kernel=False, fsdp="", deepspeed=None):
    return SimpleNamespace(max_steps=max_steps, torch_compile=torch_compile, use_liger_kernel=use_liger_kernel, fsdp=fsdp, deepspeed=deepspeed)


# (id, SpeedArguments fields, --attn_implementation, --packing, training args, machine, model type,
#  expected (attention, padding-free, liger, compile), a key phrase of each reason)
DECISIONS = [
    ("gpu-flash", {}, None, True, {}, GPU_FLASH, "llama",
     ("flash_attention_2", True, False, True),
     ("flash-attn is installed", "one-row batch", "not installed (pip install liger-kernel)", "fuses the many small kernels")),
    ("gpu-no-flash", {}, None, True, {}, GPU, "llama",
     ("flex_attention", False, False, True),
     ("flash-attn is not installed", "already nearly full", "not installed", "fuses")),
    ("gpu-liger-supported-but-compiling", {}, None, True, {}, GPU_FLASH_LIGER, "llama",
     ("flash_attention_2", True, False, True),
     ("varlen kernels", "one-row batch", "torch.compile is on: liger's fused loss fails under it", "fuses")),
    ("gpu-liger-supported-short-run", {}, None, True, {"max_steps": 100}, GPU_FLASH_LIGER, "llama",
     ("flash_attention_2", True, True, False),
     ("varlen kernels", "one-row batch", "fused linear cross-entropy never builds the logits", "--max_steps 100 is under")),
    ("gpu-liger-asked-for-is-not-compiled", {"liger": "on"}, None, True, {}, GPU_FLASH_LIGER, "llama",
     ("flash_attention_2", True, True, False),
     ("varlen kernels", "one-row batch", "set by --liger on", "liger-kernel was asked for")),
    ("gpu-liger-unsupported-model", {}, None, True, {}, GPU_FLASH_LIGER, "gpt2",
     ("flash_attention_2", True, False, True),
     ("varlen", "one-row", "no kernels for 'gpt2' models", "fuses")),
    ("cpu", {}, None, True, {}, CPU, "llama",
     ("sdpa", False, False, False),
     ("no GPU: sdpa", "sdpa would need one dense mask", "no GPU (liger's kernels are Triton", "no GPU (compiling for the CPU")),
    ("no-packing-is-the-reference", {}, None, False, {}, GPU_FLASH_LIGER, "llama",
     (None, False, False, False),
     ("the model's default (no --packing)", "no --packing", "no --packing", "no --packing")),
    ("short-run-not-compiled", {}, None, True, {"max_steps": 100}, GPU, "llama",
     ("flex_attention", False, False, False),
     ("flash-attn is not installed", "nearly full", "not installed", f"--max_steps 100 is under {COMPILE_MIN_STEPS}")),
    ("short-time-budget-not-compiled", {"max_train_time": "0:05:00"}, None, True, {}, GPU, "llama",
     ("flex_attention", False, False, False),
     ("flash-attn is not installed", "nearly full", "not installed", "--max_train_time 300 s is under 600 s")),
    ("long-time-budget-compiled", {"max_train_time": "2:00:00"}, None, True, {}, GPU, "llama",
     ("flex_attention", False, False, True),
     ("flash-attn is not installed", "nearly full", "not installed", "fuses")),
    ("sharded-not-compiled", {}, None, True, {"fsdp": "full_shard"}, GPU, "llama",
     ("flex_attention", False, False, False),
     ("flash-attn is not installed", "nearly full", "not installed", "DeepSpeed / FSDP shard the model")),
    ("run-of-the-threshold-compiled", {}, None, True, {"max_steps": COMPILE_MIN_STEPS}, GPU, "llama",
     ("flex_attention", False, False, True),
     ("flash-attn is not installed", "nearly full", "not installed", "fuses")),
    ("flags-on-on-a-cpu", {"liger": "on", "padding_free": "on", "compile": "on"}, None, True, {}, CPU, "llama",
     ("sdpa", True, True, True),
     ("no GPU", "set by --padding_free on", "set by --liger on", "set by --compile on")),
    ("flags-off-on-a-gpu", {"liger": "off", "padding_free": "off", "compile": "off"}, None, True, {}, GPU_FLASH_LIGER, "llama",
     ("flex_attention", False, False, False),
     ("--padding_free off rules out flash-attn", "set by --padding_free off", "set by --liger off", "set by --compile off")),
    ("gpu-without-flex-attention", {}, None, True, {}, Facts(cuda=True, flash_attn=False, flex_attention=False, liger=False), "llama",
     ("sdpa", False, False, True),
     ("(flash-attn is not installed; this torch has no flex_attention)", "sdpa would need", "not installed", "fuses")),
    ("compile-set-by-the-parser-keeps-its-reason", {}, None, True, {"torch_compile": True}, GPU, "llama",
     ("flex_attention", False, False, True),
     ("flash-attn is not installed", "nearly full", "not installed", "on a GPU it fuses the many small kernels")),
    ("torch-compile-given-for-a-short-run", {}, None, True, {"torch_compile": True, "max_steps": 10}, GPU, "llama",
     ("flex_attention", False, False, True),
     ("flash-attn is not installed", "nearly full", "not installed", "set by --torch_compile")),
    ("trainer-flags", {}, None, True, {"torch_compile": True, "use_liger_kernel": True}, CPU, "gpt2",
     ("sdpa", False, True, True),
     ("no GPU", "dense mask", "set by --use_liger_kernel", "set by --torch_compile")),
    ("given-backend", {}, "eager", True, {}, GPU_FLASH, "llama",
     ("eager", False, False, True),
     ("set by --attn_implementation", "eager would need one dense mask", "not installed", "fuses")),
    ("given-flash-is-flattened", {"padding_free": "auto"}, "flash_attention_3", True, {}, GPU_FLASH, "llama",
     ("flash_attention_3", True, False, True),
     ("set by --attn_implementation", "flash_attention_3 sees sample boundaries only in a one-row batch", "not installed", "fuses")),
]


@pytest.mark.parametrize("speed,attn,packing,training,facts,model_type,expected,reasons", [d[1:] for d in DECISIONS], ids=[d[0] for d in DECISIONS])
def test_decisions(monkeypatch, speed, attn, packing, training, facts, model_type, expected, reasons):
    monkeypatch.setattr(fast_path, "liger_supports", lambda t: t == "llama")  # as if liger-kernel were installed
    path = choose(SpeedArguments(**speed), attn, packing, _training(**training), facts, model_type)
    choices = (path.attention, path.padding_free, path.liger, path.compile)
    assert tuple(c.value for c in choices) == expected
    for choice, phrase in zip(choices, reasons):
        assert phrase in choice.reason


@pytest.mark.parametrize("setting,compiled,value,reason", [
    ("auto", False, False, "not compiled: eager PyTorch keeps the projections' memory order itself"),
    ("auto", True, False, "no faster on an H100 (~110M 57.5 ms a step either way, ~1B 416.3 against 416.8; benchmarks/rotary_layout.py); --rotary_layout on applies it"),
    ("on", False, True, "set by --rotary_layout on"),
    ("off", True, False, "set by --rotary_layout off"),
])
def test_rotary_layout_choice(setting, compiled, value, reason):
    path = choose(SpeedArguments(rotary_layout=setting, compile="on" if compiled else "off"), None, True, _training(), GPU, "llama")
    assert (path.rotary_layout.value, path.rotary_layout.reason) == (value, reason)


@pytest.mark.parametrize("setting,compiled,value,reason", [
    ("auto", False, False, "not compiled: eager PyTorch computes the tables once a forward itself"),
    ("auto", True, True, "torch.compile would compute cos and sin again in every layer's rotary kernels; on an H100 the "
                         "tables made the ~1B step 402 to 393 ms and the ~110M one 53 to 52 ms"),
    ("on", False, True, "set by --rotary_table on"),
    ("off", True, False, "set by --rotary_table off"),
])
def test_rotary_table_choice(setting, compiled, value, reason):
    path = choose(SpeedArguments(rotary_table=setting, compile="on" if compiled else "off"), None, True, _training(), GPU, "llama")
    assert (path.rotary_table.value, path.rotary_table.reason) == (value, reason)
    shown = path.settings().get("rotary tables kept")  # shown for compiled runs, and wherever it is on
    assert shown == (f"{'on' if value else 'off'} ({reason})" if compiled or value else None)


def test_liger_is_off_when_the_package_is_missing_whatever_facts_say():
    # liger-kernel is not installed here, so liger_supports is False for every model type
    assert fast_path.liger_supports("llama") is False
    path = choose(SpeedArguments(), None, True, _training(), GPU_FLASH_LIGER, "llama")
    assert (path.liger.value, path.liger.reason) == (False, "liger-kernel has no kernels for 'llama' models")


def test_lines_say_each_choice_and_its_reason():
    path = choose(SpeedArguments(), None, True, _training(max_steps=10), CPU, "gpt2")
    assert path.lines() == [
        "attention: sdpa (no GPU: sdpa keeps samples apart through position_ids)",
        "padding-free batches: off (sdpa would need one dense mask over a flattened batch)",
        "liger-kernel: off (no GPU (liger's kernels are Triton GPU kernels))",
        "torch.compile: off (no GPU (compiling for the CPU takes minutes and gains little))",
        "data loader workers: 0 (no GPU: the step itself runs on these CPUs)",
        "asynchronous steps: off (no GPU: host and step are the same processor)",
        "logits at the loss positions only: off (no GPU: measured on GPUs only; --loss_logits on computes the output layer only where the loss is)",
        "rotary embedding tokens-first: off (not compiled: eager PyTorch keeps the projections' memory order itself)",
        "bf16 weights: off (no GPU: measured on GPUs only; --bf16_weights on keeps them)",
    ]
    assert choose(SpeedArguments(), None, False, _training(), CPU, "gpt2").lines()[0] == "attention: model default (the model's default (no --packing))"


# (SpeedArguments fields, --attn_implementation, --packing, machine) -> the words of the one problem found
PROBLEMS = [
    ({"liger": "on"}, None, True, GPU, ("--liger on", "not installed", "pip install liger-kernel", "--liger auto")),
    ({"liger": "on"}, None, True, Facts(cuda=False, flash_attn=False, flex_attention=True, liger=True), ("--liger on needs a GPU", "--liger auto or off")),
    ({"padding_free": "on"}, None, False, CPU, ("--padding_free on", "add --packing")),
    ({"padding_free": "off"}, "flash_attention_2", True, GPU_FLASH, ("--padding_free off", "flash_attention_2", "drop --padding_free off")),
    ({}, "paged_attention", True, GPU, ("--attn_implementation paged_attention", "use one of sdpa, eager", "or drop --packing")),
    ({}, "flex_attention", True, CPU, ("--attn_implementation flex_attention", "no CPU backward", "use sdpa (the default) or eager")),
    ({"liger": "on", "compile": "on"}, None, True, GPU_FLASH_LIGER, ("--liger on and --compile on", "fails under torch.compile", "pass one of them")),
]


@pytest.mark.parametrize("speed,packing,training,facts,streaming,expected,reason", [
    ({}, True, {}, GPU, False, 2, "fetch and collate the next batches while the GPU runs a step"),
    ({}, True, {}, CPU, False, 0, "no GPU: the step itself runs on these CPUs"),
    ({}, False, {}, GPU, False, 0, "no --packing"),
    ({}, True, {}, GPU, True, 0, "--streaming reads its stream in the main process"),
    ({}, True, {"dataloader_num_workers": 6}, GPU, False, 6, "set by --dataloader_num_workers"),
    ({"data_workers": "0"}, True, {"dataloader_num_workers": 6}, GPU, False, 0, "set by --data_workers 0"),
    ({"data_workers": "3"}, False, {}, CPU, False, 3, "set by --data_workers 3"),
])
def test_data_loader_workers(speed, packing, training, facts, streaming, expected, reason):
    args = _training()
    args.dataloader_num_workers = training.get("dataloader_num_workers", 0)
    path = choose(SpeedArguments(**speed), None, packing, args, facts, "llama", streaming=streaming)
    assert (path.data_workers.value, path.data_workers.reason.startswith(reason) or reason in path.data_workers.reason) == (expected, True)


@pytest.mark.parametrize("speed,packing,facts,expected,reason", [
    ({}, True, GPU, True, "the host queues the next step while the GPU runs this one"),
    ({}, True, CPU, False, "no GPU: host and step are the same processor"),
    ({}, False, GPU, False, "no --packing"),
    ({"async_steps": "off"}, True, GPU, False, "set by --async_steps off"),
    ({"async_steps": "on"}, False, CPU, True, "set by --async_steps on"),
])
def test_asynchronous_steps(speed, packing, facts, expected, reason):
    path = choose(SpeedArguments(**speed), None, packing, _training(), facts, "llama")
    assert path.async_steps.value is expected
    assert path.async_steps.reason.startswith(reason)


@pytest.mark.parametrize("text", ["-1", "two", ""])
def test_data_workers_that_are_refused(text):
    [problem] = problems(SpeedArguments(data_workers=text), None, True, GPU)
    assert problem.startswith(f"--data_workers {text}: give auto or a number of processes")


@pytest.mark.parametrize("model_type,expected,phrase", [
    ("gpt2", "sdpa", "gpt2 models have no flex_attention"),
    ("gpt_bigcode", "sdpa", "gpt_bigcode models have no flex_attention"),
    ("llama", "flex_attention", "block-sparse mask"),
])
def test_a_backend_the_model_class_lacks_is_not_chosen(model_type, expected, phrase):
    from transformers import CONFIG_MAPPING

    backends = fast_path.backends_of(CONFIG_MAPPING[model_type]())
    assert {"eager", "sdpa"} <= backends
    path = choose(SpeedArguments(), None, True, _training(), GPU, model_type, backends)
    assert path.attention.value == expected and phrase in path.attention.reason
    flash_too = choose(SpeedArguments(), None, True, _training(), GPU_FLASH, model_type, frozenset({"eager", "sdpa"}))
    assert flash_too.attention.value == "sdpa"
    assert f"{model_type} models have no flash attention" in flash_too.attention.reason
    assert choose(SpeedArguments(), None, True, _training(), GPU, "x", frozenset({"eager"})).attention.value == "eager"


@pytest.mark.parametrize("speed,attn,packing,facts,words", PROBLEMS)
def test_problems_name_the_flag_and_the_fix(speed, attn, packing, facts, words):
    (found,) = problems(SpeedArguments(**speed), attn, packing, facts)
    for w in words:
        assert w in found


def test_no_problem_with_the_defaults_or_settings_the_machine_allows():
    assert problems(SpeedArguments(), None, True, CPU) == []
    assert problems(SpeedArguments(liger="on", padding_free="on"), "sdpa", True, GPU_FLASH_LIGER) == []
    assert problems(SpeedArguments(padding_free="off"), "sdpa", True, GPU_FLASH) == []
    assert problems(SpeedArguments(), "flex_attention", True, GPU) == []
    assert problems(SpeedArguments(), "flex_attention", True, CPU, training=False) == []  # its forward runs on a CPU


# --- through the real parser ------------------------------------------------------------------------------


@pytest.fixture
def argv(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "x"}\n')
    return ["--model_type", "gpt2", "--tokenizer_name", str(tmp_path), "--train_file", str(data),
            "--output_dir", str(tmp_path / "out"), "--do_train", "--report_to", "none"]


def _parse_and_validate(argv):
    parsed = parse_args(argv)
    validate(*parsed)
    return parsed


class TestCommandLine:
    @pytest.mark.parametrize("extra", [["--liger", "on"], ["--packing", "--liger", "on"]])
    def test_liger_on_without_liger_kernel_is_refused(self, argv, extra):
        with pytest.raises(DiffModelError, match=r"--liger on: liger-kernel is not installed; pip install liger-kernel, or pass --liger auto"):
            _parse_and_validate(argv + extra)

    @pytest.mark.parametrize("extra", [["--packing"], []])
    def test_flex_attention_training_without_a_gpu_is_refused_before_anything_loads(self, argv, extra, monkeypatch):
        monkeypatch.setattr(fast_path, "probe_facts", lambda use_cpu=False: CPU if use_cpu else GPU)
        flex = ["--model_type", "llama", "--attn_implementation", "flex_attention", *extra]
        _parse_and_validate(argv + flex)  # a GPU: fine
        with pytest.raises(DiffModelError, match=r"--attn_implementation flex_attention: torch has no CPU backward for "
                                                 r"flex_attention, so it cannot train without a GPU; use sdpa \(the default\) or eager"):
            _parse_and_validate(argv + flex + ["--use_cpu"])

    def test_use_cpu_on_a_gpu_machine_takes_the_cpu_path(self, argv, monkeypatch):
        asked = []
        monkeypatch.setattr(fast_path, "probe_facts", lambda use_cpu=False: asked.append(use_cpu) or (CPU if use_cpu else GPU))
        assert parse_args(argv + ["--packing"])[2].torch_compile is True
        assert parse_args(argv + ["--packing", "--use_cpu"])[2].torch_compile is False
        assert asked == [False, True]

    def test_compile_off_with_torch_compile_is_refused(self, argv):
        with pytest.raises(DiffModelError, match=r"--compile off and --torch_compile contradict each other"):
            _parse_and_validate(argv + ["--compile", "off", "--torch_compile"])

    def test_unreadable_max_train_time_is_refused(self, argv):
        with pytest.raises(DiffModelError, match=r"--max_train_time 'abc' is not a duration; give seconds \(5400\) or H:MM:SS"):
            _parse_and_validate(argv + ["--max_train_time", "abc"])

    def test_max_train_time_h_mm_ss(self, argv):
        _, _, training_args = _parse_and_validate(argv + ["--max_train_time", "1:30:00"])
        assert parse_duration(speed_args_from(training_args).max_train_time) == 5400

    @pytest.mark.parametrize("text,seconds", [("5400", 5400), ("90.5", 90.5), ("2:30", 150), ("1:30:00", 5400), ("0:00:01", 1), (None, None)])
    def test_durations(self, text, seconds):
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["abc", "0", "-5", "1:2:3:4", "1:-30:00", "1:75:00", "1:30:60", "nan", "inf"])
    def test_durations_that_are_refused(self, text):
        with pytest.raises(ValueError):
            parse_duration(text)

    def test_packing_on_a_gpu_machine_compiles(self, argv, monkeypatch):
        monkeypatch.setattr(fast_path, "probe_facts", lambda use_cpu=False: GPU)
        assert parse_args(argv + ["--packing"])[2].torch_compile is True
        assert parse_args(argv + ["--packing", "--max_steps", "50"])[2].torch_compile is False
        assert parse_args(argv + ["--packing", "--max_train_time", "0:05:00"])[2].torch_compile is False
        assert parse_args(argv + ["--packing", "--max_train_time", "3600"])[2].torch_compile is True
        assert parse_args(argv + ["--packing", "--liger", "on"])[2].torch_compile is False
        assert parse_args(argv + ["--packing", "--fsdp", "full_shard"])[2].torch_compile is False
        assert parse_args(argv + ["--packing", "--compile", "off"])[2].torch_compile is False
        assert parse_args(argv)[2].torch_compile is False  # no --packing: the reference's behaviour

    def test_compiling_decided_while_parsing_is_logged_with_its_reason(self, argv, monkeypatch):
        monkeypatch.setattr(fast_path, "probe_facts", lambda use_cpu=False: GPU)
        model_args, data_args, training_args = parse_args(argv + ["--packing"])
        path = choose(speed_args_from(training_args), model_args.attn_implementation, data_args.packing, training_args, GPU, "llama")
        assert (path.compile.value, path.compile.reason) == (True, "on a GPU it fuses the many small kernels of each layer; rows padded to --block_size keep one shape")

    def test_a_run_of_epochs_decides_again_once_its_steps_are_known(self, argv, monkeypatch):
        monkeypatch.setattr(fast_path, "liger_supports", lambda t: t == "llama")
        monkeypatch.setattr(fast_path, "probe_facts", lambda use_cpu=False: GPU_FLASH_LIGER)
        model_args, data_args, training_args = parse_args(argv + ["--packing"])
        assert (training_args.torch_compile, training_args.compiled_by_auto) == (True, True)
        speed = speed_args_from(training_args)
        short = choose(speed, None, True, training_args, GPU_FLASH_LIGER, "llama", epoch_steps=COMPILE_MIN_STEPS - 1)
        assert (short.compile.value, short.liger.value) == (False, True)  # liger's fused loss instead, as for --max_steps 100
        assert short.compile.reason == (f"this run's {COMPILE_MIN_STEPS - 1} steps (--num_train_epochs over its packed rows) "
                                        f"are under {COMPILE_MIN_STEPS}: compiling would cost more than it saves")
        long = choose(speed, None, True, training_args, GPU_FLASH_LIGER, "llama", epoch_steps=COMPILE_MIN_STEPS)
        assert (long.compile.value, long.liger.value) == (True, False)

    def test_compiling_the_user_asked_for_stays_whatever_the_epochs(self, argv, monkeypatch):
        monkeypatch.setattr(fast_path, "probe_facts", lambda use_cpu=False: GPU)
        for flags, reason in ((["--torch_compile"], "set by --torch_compile"), (["--compile", "on"], "set by --compile on"),
                              (["--torch_compile_mode", "default"], "set by --torch_compile")):
            model_args, data_args, training_args = parse_args(argv + ["--packing", *flags])
            assert (training_args.torch_compile, training_args.compiled_by_auto) == (True, False), flags
            path = choose(speed_args_from(training_args), None, True, training_args, GPU, "llama", epoch_steps=5)
            assert (path.compile.value, path.compile.reason) == (True, reason), flags

    def test_max_steps_decides_over_the_epochs(self, argv, monkeypatch):
        monkeypatch.setattr(fast_path, "probe_facts", lambda use_cpu=False: GPU)
        model_args, data_args, training_args = parse_args(argv + ["--packing", "--max_steps", str(COMPILE_MIN_STEPS)])
        assert choose(speed_args_from(training_args), None, True, training_args, GPU, "llama", epoch_steps=5).compile.value is True

    @pytest.mark.parametrize("rows,batch,accumulation,processes,epochs,steps", [
        (100, 8, 1, 1, 1, 13),  # 12 full batches and a last one of 4 rows
        (100, 8, 2, 2, 3, 12),  # 7 batches a process, 4 steps an epoch (the last of one batch)
        (5, 8, 4, 1, 0.5, 1),  # fewer batches than one step accumulates: still a step
        (96, 8, 1, 1, 2.5, 30),
    ])
    def test_epoch_steps(self, rows, batch, accumulation, processes, epochs, steps):
        assert fast_path.epoch_steps(rows, batch, accumulation, processes, epochs) == steps

    def test_packing_on_a_cpu_machine_does_not_compile(self, argv, monkeypatch):
        monkeypatch.setattr(fast_path, "probe_facts", lambda use_cpu=False: CPU)
        assert parse_args(argv + ["--packing"])[2].torch_compile is False

    def test_compile_on_compiles_with_or_without_packing(self, argv, monkeypatch):
        monkeypatch.setattr(fast_path, "probe_facts", lambda use_cpu=False: CPU)
        assert parse_args(argv + ["--packing", "--compile", "on"])[2].torch_compile is True
        assert parse_args(argv + ["--compile", "on"])[2].torch_compile is True


# --- collators ------------------------------------------------------------------------------------------


PACKED_ROWS = [
    {"input_ids": [5, 6, EOS], "labels": [X, 6, EOS], "position_ids": [0, 1, 2]},
    {"input_ids": [7, EOS, 8, 9, 4, EOS], "labels": [X, EOS, X, 9, 4, EOS], "position_ids": [0, 1, 0, 1, 2, 3]},
    {"input_ids": [3, EOS, 2, EOS], "labels": [X, EOS, X, EOS], "position_ids": [0, 1, 0, 1]},
]


def _as(kind, rows):
    convert = {"list": list, "numpy": np.asarray, "tensor": torch.tensor}[kind]
    return [{k: convert(v) for k, v in r.items()} for r in rows]


def _plain(batch):
    return {k: (v.dtype, v.tolist()) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


KINDS = ["list", "numpy", "tensor"]


class TestPackedCollator:
    @pytest.mark.parametrize("kind", KINDS)
    def test_rows_padded_with_a_segment_of_their_own(self, kind):
        batch = PackedCollator(PAD)(_as(kind, PACKED_ROWS))  # to a multiple of 8
        assert _plain(batch) == {
            "input_ids": (torch.int64, [[5, 6, EOS, PAD, PAD, PAD, PAD, PAD], [7, EOS, 8, 9, 4, EOS, PAD, PAD], [3, EOS, 2, EOS, PAD, PAD, PAD, PAD]]),
            "labels": (torch.int64, [[X, 6, EOS, X, X, X, X, X], [X, EOS, X, 9, 4, EOS, X, X], [X, EOS, X, EOS, X, X, X, X]]),
            "position_ids": (torch.int64, [[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 0, 1, 2, 3, 0, 1], [0, 1, 0, 1, 0, 1, 2, 3]]),
        }

    @pytest.mark.parametrize("kind", KINDS)
    def test_padded_to_the_block_width(self, kind):
        batch = PackedCollator(PAD, pad_to_multiple_of=12)(_as(kind, PACKED_ROWS[:2]))
        assert batch["input_ids"].tolist() == [[5, 6, EOS] + [PAD] * 9, [7, EOS, 8, 9, 4, EOS] + [PAD] * 6]
        assert batch["labels"].tolist() == [[X, 6, EOS] + [X] * 9, [X, EOS, X, 9, 4, EOS] + [X] * 6]
        assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5]]
        full = PackedCollator(PAD, pad_to_multiple_of=6)([PACKED_ROWS[1]])  # a full row gets no pad segment
        assert full["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3]]

    @pytest.mark.parametrize("kind", KINDS)
    def test_a_smaller_batch_is_filled_with_rows_of_pad_tokens_alone(self, kind):
        batch = PackedCollator(PAD, pad_to_multiple_of=6, loss_positions=True, batch_rows=3)(_as(kind, PACKED_ROWS[:2]))
        assert batch["input_ids"].tolist() == [[5, 6, EOS, PAD, PAD, PAD], [7, EOS, 8, 9, 4, EOS], [PAD] * 6]
        assert batch["labels"].tolist() == [[X, 6, EOS, X, X, X], [X, EOS, X, 9, 4, EOS], [X] * 6]
        assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]
        unfilled = PackedCollator(PAD, pad_to_multiple_of=6, loss_positions=True)(_as(kind, PACKED_ROWS[:2]))
        assert batch["loss_index"].tolist() == unfilled["loss_index"].tolist()  # the same positions bear loss
        assert batch["loss_targets"].tolist() == unfilled["loss_targets"].tolist()
        full = PackedCollator(PAD, batch_rows=3)(_as(kind, PACKED_ROWS))  # a full batch is left as it is
        assert full["input_ids"].tolist() == PackedCollator(PAD)(_as(kind, PACKED_ROWS))["input_ids"].tolist()

    @pytest.mark.parametrize("kind", KINDS)
    def test_flattened_with_the_sample_boundaries(self, kind):
        batch = PackedCollator(PAD, flatten=True)(_as(kind, PACKED_ROWS))
        assert _plain(batch) == {
            "input_ids": (torch.int64, [[5, 6, EOS, 7, EOS, 8, 9, 4, EOS, 3, EOS, 2, EOS]]),
            "labels": (torch.int64, [[X, 6, EOS, X, EOS, X, 9, 4, EOS, X, EOS, X, EOS]]),
            "position_ids": (torch.int64, [[0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 1, 0, 1]]),
            "cu_seq_lens_q": (torch.int32, [0, 3, 5, 9, 11, 13]),
            "cu_seq_lens_k": (torch.int32, [0, 3, 5, 9, 11, 13]),
            "max_length_q": 4,
            "max_length_k": 4,
        }

    @pytest.mark.parametrize("fmt", ["numpy", "torch"])
    def test_rows_of_a_formatted_dataset_give_the_batch_of_lists(self, fmt):
        rows = datasets.Dataset.from_list(PACKED_ROWS).with_format(fmt)
        for collator in (PackedCollator(PAD), PackedCollator(PAD, flatten=True), PackedCollator(PAD, pad_to_multiple_of=16)):
            assert _plain(collator([rows[i] for i in range(len(rows))])) == _plain(collator(PACKED_ROWS))


class TestRowCollator:
    ROWS = [
        {"input_ids": [PAD, PAD, 5, 6], "labels": [X, X, X, 6], "attention_mask": [0, 0, 1, 1], "position_ids": [0, 0, 0, 1]},
        {"input_ids": [7, 8], "labels": [X, 8], "attention_mask": [1, 1], "position_ids": [0, 1]},
    ]

    @pytest.mark.parametrize("kind", KINDS)
    def test_rows_of_different_lengths_are_right_padded(self, kind):
        batch = RowCollator(pad_id=9)(_as(kind, self.ROWS))
        assert _plain(batch) == {
            "input_ids": (torch.int64, [[PAD, PAD, 5, 6], [7, 8, 9, 9]]),
            "labels": (torch.int64, [[X, X, X, 6], [X, 8, X, X]]),
            "attention_mask": (torch.int64, [[0, 0, 1, 1], [1, 1, 0, 0]]),
            "position_ids": (torch.int64, [[0, 0, 0, 1], [0, 1, 0, 0]]),
        }

    @pytest.mark.parametrize("kind", KINDS)
    def test_a_mask_is_made_for_rows_without_one(self, kind):
        rows = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}]
        batch = RowCollator(pad_id=9)(_as(kind, rows))
        assert _plain(batch) == {
            "input_ids": (torch.int64, [[5, 6, 7], [8, 9, 9]]),
            "labels": (torch.int64, [[5, 6, 7], [8, X, X]]),
            "attention_mask": (torch.int64, [[1, 1, 1], [1, 0, 0]]),
        }


# --- padding-free and fixed-width batches keep samples apart ----------------------------------------------


class TestPaddingFreeEqualsOneByOne:
    @pytest.mark.parametrize("arch,attn", BACKENDS)
    @pytest.mark.parametrize("layout", ["flattened", "fixed width"])
    def test_loss_and_gradients_match(self, arch, attn, layout):
        collator = PackedCollator(PAD, flatten=True) if layout == "flattened" else PackedCollator(PAD, pad_to_multiple_of=32)
        model = tiny_model(arch, attn)
        ref_loss, ref_grads = sum_loss_and_grads(model, one_by_one(samples()))
        batches = packed(samples(), collator=collator)
        rows = len(packed_rows(samples()))
        assert rows >= 2
        if layout == "flattened":  # several rows become one, with every sample boundary
            assert batches[0]["input_ids"].shape == (1, sum(len(ids) + 1 for ids, _ in samples()))
            assert len(batches[0]["cu_seq_lens_q"]) == len(samples()) + 1
        else:  # every row has a pad segment up to the block width
            assert batches[0]["input_ids"].shape == (rows, 32)
        loss, grads = sum_loss_and_grads(model, batches)
        assert loss == pytest.approx(ref_loss, abs=1e-5)
        assert grads.keys() == ref_grads.keys()
        for k in ref_grads:
            torch.testing.assert_close(grads[k], ref_grads[k], atol=1e-5, rtol=1e-4)

    @pytest.mark.parametrize("arch", ["gpt2", "llama"])
    def test_isolation_probe_passes_on_flattened_batches(self, arch):
        assert check_isolation(tiny_model(arch, "sdpa"), PackedCollator(PAD, flatten=True)) < 1e-4


class TestPaddingFreeStartUpProbe:
    """``make_collator`` probes a padding-free sdpa batch on the CPU (only flash attention cannot run there)."""

    def test_a_leaking_backend_is_refused_for_padding_free_batches(self, monkeypatch):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        from diffmodel.train.run import make_collator

        original = ALL_ATTENTION_FUNCTIONS["sdpa"]

        def leaky(module, query, key, value, attention_mask, **kw):  # drops the mask: attends across samples
            return original(module, query, key, value, None, **dict(kw, is_causal=True))

        model = tiny_model("llama", "sdpa")
        tokenizer = SimpleNamespace(pad_token_id=PAD, eos_token_id=EOS)
        collator = make_collator(model, tokenizer, packing=True, padding_free=True)
        assert collator.flatten
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", leaky)
        with pytest.raises(DiffModelError, match="packed samples are not isolated with the 'sdpa' attention backend"):
            make_collator(model, tokenizer, packing=True, padding_free=True)


# --- --max_train_time -----------------------------------------------------------------------------------


class TestEarlyStopCallback:
    def test_stops_at_the_first_step_end_past_the_budget(self):
        times = iter([100.0, 100.7, 101.4, 102.1, 102.8])  # train begins, then the end of steps 1..4
        budget = EarlyStopCallback(2.0, clock=lambda: next(times))
        state = TrainerState()
        budget.on_train_begin(None, state, TrainerControl())
        seen = []
        for step in (1, 2, 3):
            state.global_step = step
            control = budget.on_step_end(None, state, TrainerControl())
            seen.append((control.should_save, control.should_training_stop))
        assert seen == [(False, False), (False, False), (True, True)]  # 2.1 s after the start: step 3
        assert budget.stopped_at == 3


    def test_sigterm_stops_at_the_step_end_with_a_checkpoint_and_the_handler_is_put_back(self):
        before = signal.getsignal(signal.SIGTERM)
        stopper = EarlyStopCallback(None)
        state = TrainerState()
        stopper.on_train_begin(None, state, TrainerControl())
        state.global_step = 1
        assert not stopper.on_step_end(None, state, TrainerControl()).should_training_stop
        signal.raise_signal(signal.SIGTERM)  # the process lives on: the handler only takes note
        state.global_step = 2
        control = stopper.on_step_end(None, state, TrainerControl())
        assert (control.should_save, control.should_training_stop) == (True, True)
        assert (stopper.stopped_at, stopper.stopped_by) == (2, "SIGTERM")
        stopper.on_train_end(None, state, TrainerControl())
        assert signal.getsignal(signal.SIGTERM) is before


class TestSigtermRun:
    def test_a_run_sent_sigterm_saves_a_checkpoint_exits_143_and_resumes(self, data_dir, tiny_gpt2_dir):
        out = data_dir / "sigterm"
        argv = [sys.executable, "-m", "diffmodel.cli", "train", "--model_name_or_path", str(tiny_gpt2_dir),
                "--train_file", str(data_dir / "data.jsonl"), "--validation_split_percentage", "0", "--output_dir", str(out),
                "--cache_dir", str(data_dir / "cache"), "--block_size", "128", "--train_diff_model", "--packing",
                "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
                "--disable_tqdm", "True", "--do_train", "--use_cpu"]
        proc = subprocess.Popen(argv + ["--max_steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in proc.stdout:  # the Trainer prints each step's log: training (and the handler) are running
            seen.append(line)
            if "'loss'" in line:
                proc.send_signal(signal.SIGTERM)
                break
        seen += proc.stdout.read().splitlines(keepends=True)
        assert proc.wait(timeout=300) == 143, "".join(seen)[-3000:]
        text = "".join(seen)
        steps = [int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")]
        assert len(steps) == 1 and (out / f"checkpoint-{steps[0]}" / "trainer_state.json").is_file()
        assert f"SIGTERM: saving a checkpoint of step {steps[0]} and stopping" in text
        assert "(exit status 143); the same command resumes from it" in text
        assert not (out / "train_results.json").exists() and not (out / "README.md").exists()  # the run is not over
        again = subprocess.run(argv + ["--max_steps", str(steps[0] + 2)], capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert f"resuming from the last checkpoint {out / f'checkpoint-{steps[0]}'}" in again.stdout + again.stderr
        assert json.loads((out / "trainer_state.json").read_text())["global_step"] == steps[0] + 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast_runs")
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in edit_rows()))
    return d


class _Records(list):
    """Log messages, with the warnings among them in ``warnings``."""

    def __init__(self):
        super().__init__()
        self.warnings: list[str] = []


@contextlib.contextmanager
def _log_records(level: int | None = None):
    """The messages diffmodel's loggers emit inside the block (at ``level`` and above, when given)."""
    records = _Records()
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage()) or (
        record.levelno >= logging.WARNING and records.warnings.append(record.getMessage()))
    root = logging.getLogger("diffmodel")
    before = root.level
    root.addHandler(handler)
    if level is not None:
        root.setLevel(level)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        if level is not None:
            root.setLevel(before)


def _train(model_dir, d: Path, name: str, *extra) -> dict:
    """A tiny ``diffmodel train`` run in ``d / name``; its exit code, folder and diffmodel log messages."""
    from diffmodel.commands.train import main as train_main

    args = [
        "--model_name_or_path", str(model_dir), "--train_file", str(d / "data.jsonl"), "--validation_split_percentage", "0",
        "--output_dir", str(d / name), "--cache_dir", str(d / "cache"), "--block_size", "128", "--train_diff_model",
        "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1", "--seed", "1", "--do_train", "--use_cpu", *extra,
    ]
    with _log_records() as records:
        code = train_main(args)
    return {"code": code, "out": d / name, "log": records}


@pytest.fixture(scope="module")
def budget_run(data_dir, tiny_gpt2_dir):
    """A packed, padding-free tiny run of --max_steps 10000 stopped by --max_train_time 2."""
    return _train(tiny_gpt2_dir, data_dir, "budget", "--packing", "--padding_free", "on", "--max_steps", "10000", "--max_train_time", "2")


class TestFirstStep:
    def test_the_callback_logs_the_first_step_once_with_its_time(self):
        from diffmodel.train.first_step import FirstStepCallback

        times = iter([100.0, 283.4, 284.0])
        callback = FirstStepCallback(clock=lambda: next(times), counts=lambda: (0, 0))
        with _log_records(logging.INFO) as records:
            callback.on_train_begin(None, SimpleNamespace(global_step=40), None)
            for step in (41, 42):
                callback.on_step_end(None, SimpleNamespace(global_step=step), None)
        assert records == ["torch.compile: the first step (step 41) took 183 s, compiling included"]

    def test_the_line_says_how_many_of_the_steps_graphs_the_compile_cache_had(self):
        from diffmodel.train.first_step import FirstStepCallback

        times, counts = iter([0.0, 7.2]), iter([(3, 10), (7, 12)])  # inductor's (hits, misses) before and after
        callback = FirstStepCallback(clock=lambda: next(times), counts=lambda: next(counts))
        with _log_records(logging.INFO) as records:
            callback.on_train_begin(None, SimpleNamespace(global_step=0), None)
            callback.on_step_end(None, SimpleNamespace(global_step=1), None)
        assert records == ["torch.compile: the first step (step 1) took 7 s, compiling included; 4 of its 6 compiled "
                           "graphs were found in the compile cache (--compile_cache)"]

    @pytest.mark.parametrize("compile_", ["on", "off"])
    def test_a_compiled_run_says_before_training_that_the_first_step_compiles(self, data_dir, tiny_gpt2_dir, compile_):
        from diffmodel.train.args import parse_args, validate
        from diffmodel.train.first_step import BEFORE, FirstStepCallback
        from diffmodel.train.recompiles import RecompileCallback
        from diffmodel.train.run import prepare

        argv = ["--model_name_or_path", str(tiny_gpt2_dir), "--train_file", str(data_dir / "data.jsonl"),
                "--validation_split_percentage", "0", "--output_dir", str(data_dir / f"first_{compile_}"),
                "--cache_dir", str(data_dir / "cache"), "--block_size", "128", "--train_diff_model", "--packing",
                "--report_to", "none", "--do_train", "--use_cpu", "--max_steps", "2", "--compile", compile_]
        with _log_records() as records:
            args = parse_args(argv)
            validate(*args)
            trainer = prepare(*args).trainer
        added = [any(isinstance(c, kind) for c in trainer.callback_handler.callbacks) for kind in (FirstStepCallback, RecompileCallback)]
        assert (added, BEFORE in records) == (([True, True], True) if compile_ == "on" else ([False, False], False))


def _prepared_packed(data_dir, model, output: str, flags: list[str]):
    """``prepare()`` of a 2-step packed CPU run of ``model`` with ``flags``, and the log records it made."""
    from diffmodel.train.args import parse_args, validate
    from diffmodel.train.run import prepare

    argv = ["--model_name_or_path", str(model), "--train_file", str(data_dir / "data.jsonl"),
            "--validation_split_percentage", "0", "--output_dir", str(data_dir / output),
            "--cache_dir", str(data_dir / "cache"), "--block_size", "128", "--train_diff_model", "--packing",
            "--report_to", "none", "--do_train", "--use_cpu", "--max_steps", "2", *flags]
    with _log_records() as records:
        args = parse_args(argv)
        validate(*args)
        return prepare(*args), records


@pytest.mark.parametrize("model_dir,wrapped", [("tiny_llama_dir", True), ("tiny_gpt2_dir", False)])
def test_rotary_layout_on_gives_the_model_the_tokens_first_rotary(data_dir, request, model_dir, wrapped):
    from transformers.models.llama import modeling_llama

    from diffmodel.train import rotary_layout

    prepared, records = _prepared_packed(data_dir, request.getfixturevalue(model_dir), f"rotary_{model_dir}",
                                         ["--rotary_layout", "on"])
    try:
        patched = getattr(modeling_llama.apply_rotary_pos_emb, rotary_layout.WRAPPED, None) is not None
        assert (patched, prepared.fast_path.rotary_layout.value) == (wrapped, wrapped)
        assert "fast path: rotary embedding tokens-first: on (set by --rotary_layout on)" in records
        if not wrapped:
            assert any("this gpt2 model has no standard apply_rotary_pos_emb; left as it is" in r for r in records)
    finally:
        rotary_layout.uninstall(prepared.trainer.model)


@pytest.mark.parametrize("model_dir,flags,kept", [
    ("tiny_llama_dir", ["--rotary_table", "on"], True),
    ("tiny_gpt2_dir", ["--rotary_table", "on"], False),
    ("tiny_llama_dir", ["--compile", "on"], True),  # auto: kept in a compiled run
    ("tiny_gpt2_dir", ["--compile", "on"], False),  # auto: nothing to keep, and no warning for what was not asked
])
def test_rotary_table_gives_the_models_rotary_embedding_the_hook(data_dir, request, model_dir, flags, kept):
    from diffmodel.train import fast_path, rotary_table

    prepared, records = _prepared_packed(data_dir, request.getfixturevalue(model_dir), f"table_{model_dir}_{flags[0]}", flags)
    try:
        hooked = [m for m in prepared.trainer.model.modules() if getattr(m, rotary_table.HANDLE, None) is not None]
        assert (len(hooked), prepared.fast_path.rotary_table.value) == ((1, True) if kept else (0, False))
        if kept:
            reason = "set by --rotary_table on" if "--rotary_table" in flags else fast_path.ROTARY_TABLE_MEASURED
            assert f"fast path: rotary tables kept: on ({reason})" in records
        else:
            note = [r for r in records if "this gpt2 model has no rotary embedding module; left as it is" in r]
            warned = [r for r in records.warnings if "rotary embedding module" in r]
            assert (len(note), len(warned)) == (1, 1 if "--rotary_table" in flags else 0)
            assert prepared.fast_path.rotary_table.reason == "the model has no rotary embedding module"
    finally:
        rotary_table.uninstall(prepared.trainer.model)


@pytest.mark.parametrize("arch,attn", BACKENDS)
def test_rows_of_pad_tokens_leave_the_loss_and_gradients_as_they_were(arch, attn):
    rows = packed_rows(samples(), 12)
    loss, grads = sum_loss_and_grads(tiny_model(arch, attn), [PackedCollator(PAD)(rows)])
    filled, filled_grads = sum_loss_and_grads(tiny_model(arch, attn), [PackedCollator(PAD, batch_rows=len(rows) + 2)(rows)])
    assert filled == pytest.approx(loss, abs=1e-6)
    assert all(torch.allclose(filled_grads[k], grads[k], atol=1e-6) for k in grads)


class TestFullBatches:
    @staticmethod
    def _trainer(data_dir, model_dir, name, *extra, validated=True):
        """``validated``: through validate() first, as ``diffmodel train`` does (off for set-ups it refuses on a CPU,
        such as training with flex_attention, whose preparation is still tested here)."""
        from diffmodel.train.args import parse_args, validate
        from diffmodel.train.run import prepare

        argv = ["--model_name_or_path", str(model_dir), "--train_file", str(data_dir / "data.jsonl"),
                "--validation_split_percentage", "0", "--output_dir", str(data_dir / name), "--cache_dir", str(data_dir / "cache"),
                "--block_size", "128", "--train_diff_model", "--packing", "--report_to", "none", "--do_train", "--use_cpu",
                "--max_steps", "2", *extra]
        args = parse_args(argv)
        if validated:
            validate(*args)
        return prepare(*args).trainer

    def test_compiled_training_fills_an_epochs_last_batch_and_leaves_evaluation_alone(self, data_dir, tiny_gpt2_dir):
        rows = len(self._trainer(data_dir, tiny_gpt2_dir, "full_probe", "--compile", "off").train_dataset)
        size = next(b for b in (3, 4, 5, 7) if rows % b)  # an epoch ends with a smaller batch
        for compile_ in ("on", "off"):
            trainer = self._trainer(data_dir, tiny_gpt2_dir, f"full_{compile_}", "--compile", compile_,
                                    "--per_device_train_batch_size", str(size))
            last = list(trainer.get_train_dataloader())[-1]
            assert len(last["input_ids"]) == (size if compile_ == "on" else rows % size)
            assert int((last["labels"] != X).sum()) > 0
            assert trainer.data_collator.batch_rows == 0  # the collator of evaluation batches is the one given

    def test_a_compiled_streaming_run_fills_its_batches_too(self, data_dir, tiny_gpt2_dir):
        trainer = self._trainer(data_dir, tiny_gpt2_dir, "full_stream", "--compile", "on", "--streaming",
                                "--per_device_train_batch_size", "3")
        inner = trainer.get_train_dataloader().base_dataloader.collate_fn.base
        assert inner.batch_rows == 3


class TestTimeBudgetRun:
    def test_ends_early_with_the_final_model_and_a_checkpoint_of_its_last_step(self, budget_run):
        assert budget_run["code"] == 0
        out = budget_run["out"]
        state = json.loads((out / "trainer_state.json").read_text())
        step = state["global_step"]
        assert 1 <= step < 10000
        assert [p.name for p in out.glob("checkpoint-*")] == [f"checkpoint-{step}"]
        assert json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())["global_step"] == step
        assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
        assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, step + 1))
        assert f"--max_train_time 2 s reached at step {step}: saving a checkpoint and stopping" in budget_run["log"]

    def test_the_fast_path_is_logged_with_its_reasons(self, budget_run):
        lines = [m for m in budget_run["log"] if m.startswith("fast path: ")]
        assert lines[0] == "fast path: attention: sdpa (no GPU: sdpa keeps samples apart through position_ids)"
        assert lines[1] == "fast path: padding-free batches: on (set by --padding_free on)"
        assert lines[4] == "fast path: data loader workers: 0 (no GPU: the step itself runs on these CPUs)"
        assert lines[5] == "fast path: asynchronous steps: off (no GPU: host and step are the same processor)"
        assert lines[7] == "fast path: rotary embedding tokens-first: off (not compiled: eager PyTorch keeps the projections' memory order itself)"
        assert lines[8] == "fast path: bf16 weights: off (no GPU: measured on GPUs only; --bf16_weights on keeps them)"
        assert len(lines) == 9
        assert any(m.startswith("packing: samples isolated with sdpa attention on cpu") for m in budget_run["log"])

    def test_the_model_card_records_the_fast_path_and_the_speed_flags(self, budget_run):
        card = (budget_run["out"] / "README.md").read_text()
        assert "| attention | sdpa (no GPU: sdpa keeps samples apart through position_ids) |" in card
        assert "| padding-free batches | on (set by --padding_free on) |" in card
        assert "| torch.compile | off (no GPU (compiling for the CPU takes minutes and gains little)) |" in card
        assert "| `--padding_free` | on |" in card and "| `--max_train_time` | 2 |" in card
        assert "`--liger`" not in card  # left at its default


class TestDataWorkers:
    def test_two_workers_train_on_the_same_batches_as_the_main_process(self, data_dir, tiny_gpt2_dir):
        runs = [_train(tiny_gpt2_dir, data_dir, f"workers{n}", "--packing", "--max_steps", "3", "--data_workers", str(n))
                for n in (0, 2)]
        assert [r["code"] for r in runs] == [0, 0]
        losses = [[h["loss"] for h in json.loads((r["out"] / "trainer_state.json").read_text())["log_history"] if "loss" in h]
                  for r in runs]
        assert len(losses[0]) == 3 and losses[0] == losses[1]
        assert "fast path: data loader workers: 2 (set by --data_workers 2)" in runs[1]["log"]


class TestAsyncSteps:
    def test_the_same_losses_and_trainers_filter_handed_to_the_device(self, data_dir, tiny_gpt2_dir):
        runs = [_train(tiny_gpt2_dir, data_dir, f"async_{s}", "--packing", "--max_steps", "3", "--async_steps", s)
                for s in ("off", "on")]
        assert [r["code"] for r in runs] == [0, 0]
        losses = [[h["loss"] for h in json.loads((r["out"] / "trainer_state.json").read_text())["log_history"] if "loss" in h]
                  for r in runs]
        assert len(losses[0]) == 3 and losses[0] == losses[1]
        assert "fast path: asynchronous steps: on (set by --async_steps on)" in runs[1]["log"]
        saved = [torch.load(r["out"] / "training_args.bin", weights_only=False).logging_nan_inf_filter for r in runs]
        assert saved == [True, False]


class TestLossLogits:
    @pytest.mark.parametrize("model", ["tiny_gpt2_dir", "tiny_llama_dir"])  # Llama: the last layer's MLP at the loss positions too
    def test_the_same_losses_and_accuracy_from_the_logits_at_the_loss_positions(self, data_dir, model, request):
        model_dir = request.getfixturevalue(model)
        runs = [_train(model_dir, data_dir, f"loss_logits_{model}_{s}", "--packing", "--max_steps", "3", "--loss_logits", s)
                for s in ("off", "on", "output")]
        assert [r["code"] for r in runs] == [0, 0, 0]
        logs = [[h for h in json.loads((r["out"] / "trainer_state.json").read_text())["log_history"] if "loss" in h] for r in runs]
        assert len(logs[0]) == 3
        for picked_log in logs[1:]:
            assert [h["loss"] for h in picked_log] == pytest.approx([h["loss"] for h in logs[0]], rel=1e-5)
            assert [h["mean_token_accuracy"] for h in picked_log] == [h["mean_token_accuracy"] for h in logs[0]]
            assert [h["num_loss_tokens"] for h in picked_log] == [h["num_loss_tokens"] for h in logs[0]]
        assert any(m.startswith("fast path: logits at the loss positions only: output (set by --loss_logits output: ") for m in runs[2]["log"])
        output_only = {"tiny_gpt2_dir": "the output layer and the loss",
                       "tiny_llama_dir": "the output layer and the loss (the last decoder layer whole: --loss_logits output)"}[model]
        assert f"fast path: at the loss positions only: {output_only}" in runs[2]["log"]
        assert "fast path: logits at the loss positions only: on (set by --loss_logits on)" in runs[1]["log"]
        picked = {"tiny_gpt2_dir": "the output layer and the loss",  # sdpa on the CPU, rows of several samples
                  "tiny_llama_dir": "the output layer and the loss, and the last decoder layer's MLP too, and its attention's "
                                    "queries on one-row batches"}[model]
        assert f"fast path: at the loss positions only: {picked}" in runs[1]["log"]
        assert any(m.startswith("loss logits: the loss at the loss positions is the full forward's on cpu") for m in runs[1]["log"])
        assert runs[0]["log"][-1] == (f"written to {runs[0]['out']}: README.md (model card); config.json (the model: "
                                      "diffmodel edit --model loads it); loss.png (loss plot); speed.png (speed plot); data_report.json "
                                      "(data report); train_results.json (train metrics)")

    @pytest.mark.parametrize("model", ["tiny_gpt2_dir", "tiny_llama_dir"])
    def test_evaluation_during_training_gives_the_same_loss_and_accuracy(self, data_dir, model, request):
        runs = [_train(request.getfixturevalue(model), data_dir, f"loss_logits_eval_{model}_{s}", "--packing", "--max_steps", "2", "--loss_logits", s,
                       "--do_eval", "--validation_split_percentage", "30", "--eval_strategy", "steps", "--eval_steps", "1")
                for s in ("off", "on")]
        assert [r["code"] for r in runs] == [0, 0]
        evals = [[(h["eval_loss"], h["eval_mean_token_accuracy"])
                  for h in json.loads((r["out"] / "trainer_state.json").read_text())["log_history"] if "eval_loss" in h] for r in runs]
        assert len(evals[0]) >= 2
        assert [e[0] for e in evals[1]] == pytest.approx([e[0] for e in evals[0]], rel=1e-5)
        assert [e[1] for e in evals[1]] == [e[1] for e in evals[0]]

    def test_a_streamed_run_gives_the_same_losses_and_accuracy(self, data_dir, tiny_gpt2_dir):
        runs = [_train(tiny_gpt2_dir, data_dir, f"loss_logits_stream_{s}", "--packing", "--streaming", "--max_steps", "3",
                       "--loss_logits", s) for s in ("off", "on")]
        assert [r["code"] for r in runs] == [0, 0]
        logs = [[(h["loss"], h["mean_token_accuracy"]) for h in json.loads((r["out"] / "trainer_state.json").read_text())["log_history"]
                 if "loss" in h] for r in runs]
        assert len(logs[0]) == 3
        assert [e[0] for e in logs[1]] == pytest.approx([e[0] for e in logs[0]], rel=1e-5)
        assert [e[1] for e in logs[1]] == [e[1] for e in logs[0]]

    @pytest.mark.parametrize("model", ["tiny_gpt2_dir", "tiny_llama_dir"])
    def test_under_lora_the_adapters_train_on_the_same_losses(self, data_dir, model, request):
        lora = ("--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0")
        model_dir = request.getfixturevalue(model)
        runs = [_train(model_dir, data_dir, f"lora_loss_logits_{model}_{s}", "--packing", "--max_steps", "2", "--loss_logits", s, *lora)
                for s in ("off", "on")]
        assert [r["code"] for r in runs] == [0, 0]
        losses = [[h["loss"] for h in json.loads((r["out"] / "trainer_state.json").read_text())["log_history"] if "loss" in h]
                  for r in runs]
        assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-5)

    def test_when_the_startup_check_fails_auto_trains_with_the_models_own_forward(self, data_dir, tiny_gpt2_dir, monkeypatch):
        from diffmodel.train import loss_logits

        real = loss_logits.loss_of  # a head whose logits are scaled: the check must fail
        monkeypatch.setattr(loss_logits, "loss_of", lambda logits, targets, n=None: real(logits * 1.5, targets, n))
        monkeypatch.setattr(fast_path, "choose_loss_logits", lambda setting, *a, **k: fast_path.Choice(setting != "off", "as on a GPU"))
        auto = _train(tiny_gpt2_dir, data_dir, "loss_logits_auto_falls_back", "--packing", "--max_steps", "2")
        off = _train(tiny_gpt2_dir, data_dir, "loss_logits_auto_off", "--packing", "--max_steps", "2", "--loss_logits", "off")
        assert [auto["code"], off["code"]] == [0, 0]
        [warning] = [m for m in auto["log"] if "--loss_logits auto trains with the output layer at every position instead" in m]
        assert warning.startswith("fast path: logits at the loss positions only: the loss at the loss positions (")
        assert "pass --loss_logits off" not in warning  # the fix is for --loss_logits on
        losses = [[h["loss"] for h in json.loads((r["out"] / "trainer_state.json").read_text())["log_history"] if "loss" in h]
                  for r in (auto, off)]
        assert len(losses[0]) == 2 and losses[0] == losses[1]  # the model's own forward: the same losses as off
        card = (auto["out"] / "README.md").read_text()
        assert "off (the start-up check found its loss differing from the full forward's)" in card
        with pytest.raises(loss_logits.Mismatch):  # asked for by name, it is refused
            _train(tiny_gpt2_dir, data_dir, "loss_logits_on_refused", "--packing", "--max_steps", "1", "--loss_logits", "on")

    def test_a_model_type_it_does_not_know_is_refused_with_the_fix(self, data_dir, tiny_gpt2_dir, monkeypatch):
        from diffmodel.train import loss_logits

        monkeypatch.setattr(loss_logits, "SUPPORTED", ("llama",))
        with pytest.raises(DiffModelError, match="--loss_logits on: gpt2 models are not supported .only llama.; pass --loss_logits auto or off"):
            _train(tiny_gpt2_dir, data_dir, "loss_logits_gpt2", "--packing", "--max_steps", "1", "--loss_logits", "on")


class TestDataWaitShare:
    def test_logged_from_the_second_log_on_as_a_share(self, data_dir, tiny_gpt2_dir):
        run = _train(tiny_gpt2_dir, data_dir, "short", "--ignore_long_samples", "--max_steps", "3")  # left-padded rows
        assert run["code"] == 0
        state = json.loads((run["out"] / "trainer_state.json").read_text())
        logs = [h for h in state["log_history"] if "loss" in h]
        assert [h["step"] for h in logs] == [1, 2, 3]
        assert "data_wait_share" not in logs[0]
        assert all(0 <= h["data_wait_share"] <= 1 for h in logs[1:])
        # the speed since the last log, at every log; no MFU on a CPU (its peak is not known)
        assert all(h["tokens_per_second"] > 0 and 0 < h["loss_tokens_per_second"] < h["tokens_per_second"] for h in logs)
        assert not any("mfu" in h for h in logs)


class TestTorchVarlenRun:
    def test_trains_like_sdpa_and_saves_a_model_that_loads_without_it(self, data_dir, tiny_gpt2_dir):
        from transformers import AutoModelForCausalLM

        runs = [_train(tiny_gpt2_dir, data_dir, f"attn_{a}", "--packing", "--max_steps", "3", "--dropout", "0", "--attn_implementation", a)
                for a in ("sdpa", "torch_varlen")]
        assert [r["code"] for r in runs] == [0, 0]
        losses = [[h["loss"] for h in json.loads((r["out"] / "trainer_state.json").read_text())["log_history"] if "loss" in h]
                  for r in runs]
        assert len(losses[1]) == 3 and losses[1] == pytest.approx(losses[0], abs=1e-4)
        assert "fast path: attention: torch_varlen (set by --attn_implementation)" in runs[1]["log"]
        assert any(m.startswith("packing: samples isolated with torch_varlen attention on cpu") for m in runs[1]["log"])
        loaded = AutoModelForCausalLM.from_pretrained(runs[1]["out"])  # the saved config names no attention backend
        assert loaded.config._attn_implementation != "torch_varlen"


def _logged_losses(out: Path) -> dict:
    """{step: training loss} of a run's trainer_state.json."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def _logged(out: Path, key: str) -> dict:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h[key] for h in history if key in h}


def test_clipping_folded_into_the_one_pass_trains_as_torchs_clipping(data_dir, tiny_llama_dir):
    """--max_grad_norm small enough to clip every step: with the one pass the trainer's clipping goes through the
    optimizer (no pass over the gradients of its own), and the losses and logged norms are those of torch's clipping
    and AdamW (--adamw_one_pass off)."""
    args = ("--packing", "--compile", "on", "--torch_compile_backend", "aot_eager", "--bf16_weights", "on",
            "--max_grad_norm", "0.05", "--max_steps", "3", "--lr_scheduler_type", "constant", "--save_strategy", "steps",
            "--save_steps", "3")
    from diffmodel.train import master_adamw

    factors = []  # the gradient factor each one pass was given
    update = master_adamw.update
    runs = {}
    for one_pass in ("on", "off"):
        with mock.patch.object(master_adamw, "update", lambda *a: factors.append(float(a[-1])) or update(*a)):
            runs[one_pass] = _train(tiny_llama_dir, data_dir, f"clip-{one_pass}", *args, "--adamw_one_pass", one_pass)
        assert runs[one_pass]["code"] == 0
    assert len(factors) == 3 and all(0 < f < 1 for f in factors), factors  # each step clipped inside the pass
    norms = {k: _logged(r["out"], "grad_norm") for k, r in runs.items()}
    assert sorted(norms["on"]) == [1, 2, 3] and all(n > 0.05 for n in norms["on"].values())  # clipped every step
    for step in (1, 2, 3):
        assert norms["on"][step] == pytest.approx(norms["off"][step], rel=1e-3)
        assert _logged(runs["on"]["out"], "loss")[step] == pytest.approx(_logged(runs["off"]["out"], "loss")[step], abs=1e-5)


class TestCompiledResume:
    """torch.compile does not break resuming: checkpoints hold the plain model, and a compiled run resumed from one
    trains as the uninterrupted compiled run does (aot_eager: the compiled wrapper without C++ code generation)."""

    ARGS = ("--packing", "--compile", "on", "--torch_compile_backend", "aot_eager", "--lr_scheduler_type", "constant",
            "--save_strategy", "steps", "--save_steps", "2")

    @pytest.mark.parametrize("extra", [(), ("--bf16_weights", "on", "--adamw_one_pass", "on")], ids=["fp32", "bf16_weights"])
    def test_a_compiled_run_resumes_from_its_checkpoint_as_if_never_stopped(self, data_dir, tiny_llama_dir, extra,
                                                                             monkeypatch):
        """With bf16 weights and --adamw_one_pass on, the optimizer's AdamW step is the one compiled pass
        (diffmodel.train.master_adamw)."""
        import torch
        from transformers import AutoModelForCausalLM

        from diffmodel.train import master_adamw

        passes = []
        update = master_adamw.update
        monkeypatch.setattr(master_adamw, "update", lambda *a: passes.append(len(a[0])) or update(*a))

        name = "compiled" + "-".join(extra)
        whole = _train(tiny_llama_dir, data_dir, f"{name}-whole", *self.ARGS, *extra, "--max_steps", "4")
        assert whole["code"] == 0
        assert any("torch.compile: on (set by --compile on)" in m for m in whole["log"]), whole["log"]
        if extra:
            assert any("bf16 weights: on (set by --bf16_weights on)" in m for m in whole["log"]), whole["log"]
            assert any("AdamW in one pass: on (set by --adamw_one_pass on)" in m for m in whole["log"]), whole["log"]
            state = torch.load(whole["out"] / "checkpoint-4" / "optimizer.pt", weights_only=True)["state"]
            assert {float(s["step"]) for s in state.values()} == {4.0}  # torch AdamW's state, each step counted
            assert len(passes) == 4 and len(set(passes)) == 1 and passes[0] > 0  # each step the pass, over every weight
            assert any(m.startswith("bf16 weights: AdamW steps the ") and m.endswith("in one compiled pass, from step 1")
                       for m in whole["log"]), whole["log"]
        first = _train(tiny_llama_dir, data_dir, f"{name}-cut", *self.ARGS, *extra, "--max_steps", "2")
        assert first["code"] == 0
        checkpoint = first["out"] / "checkpoint-2"
        from safetensors.torch import load_file

        keys = load_file(checkpoint / "model.safetensors").keys()
        assert keys and not any("_orig_mod" in k for k in keys)  # the plain model, not the compiled wrapper
        again = _train(tiny_llama_dir, data_dir, f"{name}-cut", *self.ARGS, *extra, "--max_steps", "4")
        assert again["code"] == 0
        assert any("resuming from the last checkpoint" in m for m in again["log"]), again["log"]

        want, got = _logged_losses(whole["out"]), _logged_losses(again["out"])
        assert sorted(got) == [1, 2, 3, 4] and sorted(want) == [1, 2, 3, 4]
        for step in (3, 4):  # the steps trained after resuming
            assert got[step] == pytest.approx(want[step], abs=1e-5)
        a = AutoModelForCausalLM.from_pretrained(whole["out"])
        b = AutoModelForCausalLM.from_pretrained(again["out"])
        for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)


ON_ONE_GPU = dict(bf16=True, optim="adamw_torch_fused", gradient_accumulation_steps=1, world_size=1)
BF16_ON = "the residual stream and the gradients in bf16 and no weight cast at each step, fp32 copies in the optimizer"


@pytest.mark.parametrize("setting,facts,packing,extra,value,reason", [
    ("auto", GPU, True, {}, True, BF16_ON),
    ("auto", GPU, True, {"optim": "adamw_torch"}, True, BF16_ON),
    ("on", GPU, True, {}, True, "set by --bf16_weights on"),
    ("off", GPU, True, {}, False, "set by --bf16_weights off"),
    ("auto", CPU, True, {}, False, "no GPU: measured on GPUs only; --bf16_weights on keeps them"),
    ("auto", GPU, False, {}, False, "not --packing, where it was measured"),
    ("auto", GPU, True, {"bf16": False}, False, "training is not --bf16"),
    ("auto", GPU, True, {"fp16": True}, False, "--fp16 is given (fp16 training keeps fp32 weights for its loss scaling)"),
    ("auto", GPU, True, {"lora_r": 8}, False, "--lora_r is given (LoRA freezes the weights"),
    ("auto", GPU, True, {"fsdp": "full_shard"}, False, "--fsdp is given (FSDP's mixed precision keeps its own)"),
    ("auto", GPU, True, {"max_steps": 50}, False, "not compiled: measured with torch.compile only"),
    ("auto", GPU, True, {"optim": "adamw_bnb_8bit"}, False, "--optim adamw_bnb_8bit is not torch's AdamW"),
    ("auto", GPU, True, {"gradient_accumulation_steps": 4}, False,
     "the gradients would add up over 4 accumulation steps in bf16; --bf16_weights on accepts that"),
    ("auto", GPU, True, {"world_size": 8}, False,
     "the gradients would be averaged across 8 processes in bf16; --bf16_weights on accepts that"),
])
def test_bf16_weights_choice(setting, facts, packing, extra, value, reason):
    training = SimpleNamespace(**{**vars(_training()), **ON_ONE_GPU, **extra})
    path = choose(SpeedArguments(bf16_weights=setting), None, packing, training, facts, "llama")
    assert path.bf16_weights.value is value
    assert path.bf16_weights.reason.startswith(reason)
    assert f"bf16 weights: {'on' if value else 'off'} ({path.bf16_weights.reason})" in path.lines()
    if value and setting == "auto":
        assert path.compile.value is True  # measured compiled


@pytest.mark.parametrize("extra,flag", [(("--fp16",), "--fp16"), (("--lora_r", "4"), "--lora_r")])
def test_bf16_weights_refuses_the_flags_it_does_not_go_with(data_dir, tiny_llama_dir, extra, flag):
    from diffmodel.errors import DiffModelError
    from diffmodel.train.args import BF16_WEIGHTS_CONFLICTS, parse_args, validate

    argv = ["--model_name_or_path", str(tiny_llama_dir), "--train_file", str(data_dir / "data.jsonl"),
            "--output_dir", str(data_dir / "bf16w_refused"), "--train_diff_model", "--packing", "--report_to", "none",
            "--do_train", "--use_cpu", "--bf16_weights", "on", *extra]
    with pytest.raises(DiffModelError) as err:
        validate(*parse_args(argv))
    assert f"--bf16_weights on does not go with {flag} ({BF16_WEIGHTS_CONFLICTS[flag]}); drop one of them" in str(err.value)


class TestBf16Weights:
    """``--bf16_weights on``: a bf16 model trained through fp32 copies, saved bf16, resumed from the copies."""

    ARGS = ("--packing", "--bf16_weights", "on", "--lr_scheduler_type", "constant", "--save_strategy", "steps",
            "--save_steps", "2")

    def test_a_run_trains_bf16_weights_and_resumes_from_the_fp32_copies_as_if_never_stopped(self, data_dir, tiny_llama_dir):
        import torch
        from safetensors.torch import load_file

        from diffmodel.train import master_weights

        whole = _train(tiny_llama_dir, data_dir, "bf16w-whole", *self.ARGS, "--max_steps", "4")
        assert whole["code"] == 0
        assert "fast path: bf16 weights: on (set by --bf16_weights on)" in whole["log"]
        assert any(m.startswith("fast path: bf16 weights: ") and "parameters cast to bf16" in m for m in whole["log"])
        weights = load_file(whole["out"] / "model.safetensors")
        assert {t.dtype for t in weights.values()} == {torch.bfloat16}
        first = _train(tiny_llama_dir, data_dir, "bf16w-cut", *self.ARGS, "--max_steps", "2")
        assert first["code"] == 0
        state = torch.load(first["out"] / "checkpoint-2" / "optimizer.pt", weights_only=True)
        copies = state[master_weights.STATE_KEY]
        saved = load_file(first["out"] / "checkpoint-2" / "model.safetensors")
        assert {c.dtype for c in copies} == {torch.float32} and len(copies) == len(saved)
        # the copies hold what the bf16 checkpoint rounded away
        assert sum(t.numel() for t in saved.values()) == sum(c.numel() for c in copies)
        assert any(not torch.equal(c, c.bfloat16().float()) for c in copies)
        again = _train(tiny_llama_dir, data_dir, "bf16w-cut", *self.ARGS, "--max_steps", "4")
        assert again["code"] == 0
        assert any("resuming from the last checkpoint" in m for m in again["log"]), again["log"]

        want, got = _logged_losses(whole["out"]), _logged_losses(again["out"])
        assert sorted(got) == [1, 2, 3, 4] and sorted(want) == [1, 2, 3, 4]
        for step in (3, 4):
            assert got[step] == want[step]
        a, b = load_file(whole["out"] / "model.safetensors"), load_file(again["out"] / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)

    @pytest.mark.parametrize("extra,warned", [(("--torch_dtype", "bfloat16"), True),
                                              (("--torch_dtype", "bfloat16", "--bf16_weights", "on"), False),
                                              ((), False)])
    def test_bf16_weights_trained_as_they_are_are_warned_of(self, data_dir, tiny_llama_dir, extra, warned):
        from diffmodel.train.args import parse_args, validate
        from diffmodel.train.run import prepare

        argv = ["--model_name_or_path", str(tiny_llama_dir), "--train_file", str(data_dir / "data.jsonl"),
                "--validation_split_percentage", "0", "--output_dir", str(data_dir / "bf16w_warned"),
                "--cache_dir", str(data_dir / "cache"), "--block_size", "128", "--train_diff_model", "--packing",
                "--report_to", "none", "--do_train", "--use_cpu", "--max_steps", "2", *extra]
        with _log_records() as records:
            args = parse_args(argv)
            validate(*args)
            prepare(*args)
        warning = ("the model's weights are bfloat16 (--torch_dtype or the checkpoint's own) and train as they are: updates "
                   "under half of their spacing are rounded away; --bf16_weights on keeps fp32 copies of bf16 weights in the optimizer")
        assert (warning in records) == warned


def test_use_cpu_on_a_gpu_machine_prepares_the_cpus_fast_path(data_dir, tiny_llama_dir, monkeypatch):
    """--use_cpu where a GPU is present: the run's choices are the CPU's (no flex_attention, compile or workers)."""
    from diffmodel.train.args import parse_args, validate
    from diffmodel.train.run import prepare

    monkeypatch.setattr(fast_path, "probe_facts", lambda use_cpu=False: CPU if use_cpu else GPU)
    args = parse_args(["--model_name_or_path", str(tiny_llama_dir), "--train_file", str(data_dir / "data.jsonl"),
                       "--validation_split_percentage", "0", "--output_dir", str(data_dir / "use_cpu_on_gpu"),
                       "--cache_dir", str(data_dir / "cache"), "--block_size", "128", "--train_diff_model", "--packing",
                       "--report_to", "none", "--do_train", "--use_cpu", "--max_steps", "2"])
    validate(*args)
    path = prepare(*args).fast_path
    assert (path.attention.value, path.compile.value, path.data_workers.value) == ("sdpa", False, 0)
    assert path.attention.reason.startswith("no GPU")


@pytest.mark.parametrize("attn,flags,traced,line", [
    ("flex_attention", ("--compile", "on"), True, "block mask traced into the compiled graph: on (transformers compiles"),
    ("flex_attention", ("--compile", "on", "--trace_block_mask", "off"), False,
     "block mask traced into the compiled graph: off (set by --trace_block_mask off)"),
    ("flex_attention", ("--compile", "off"), False, "block mask traced into the compiled graph: off (not compiled"),
    ("sdpa", ("--compile", "on"), False, None),
])
def test_a_compiled_flex_attention_run_builds_its_block_mask_inside_the_graph(data_dir, tiny_llama_dir, monkeypatch,
                                                                              attn, flags, traced, line):
    from transformers import masking_utils

    from diffmodel.train import compiled_mask

    monkeypatch.setattr(masking_utils, "create_block_mask", masking_utils.create_block_mask)  # put back afterwards
    monkeypatch.setattr(compiled_mask, "TRACED", compiled_mask.TRACED)
    with _log_records(logging.INFO) as records:
        trainer = TestFullBatches._trainer(data_dir, tiny_llama_dir, f"mask_{attn}_{'_'.join(flags)}", "--attn_implementation",
                                           attn, *flags, "--loss_logits", "off", validated=False)
    assert trainer is not None
    shown = [m for m in records if "block mask traced into the compiled graph" in m]
    assert (shown[0].startswith(f"fast path: {line}") if line else shown == []), shown
    assert compiled_mask.TRACED is traced
    assert bool(getattr(masking_utils.create_block_mask, compiled_mask.WRAPPED, False)) is traced


@pytest.mark.parametrize("setting,attn,compiled,value,reason", [
    ("auto", "flex_attention", True, True, "transformers compiles the mask apart"),
    ("off", "flex_attention", True, False, "set by --trace_block_mask off"),
    ("on", "flex_attention", False, False, "not compiled: no compiled graph"),
    ("on", "sdpa", True, False, "attention is sdpa, not flex_attention"),
])
def test_trace_block_mask_choice(setting, attn, compiled, value, reason):
    from diffmodel.train.fast_path import choose_trace_block_mask

    choice = choose_trace_block_mask(setting, attn, compiled)
    assert choice.value is value and choice.reason.startswith(reason)


@pytest.mark.parametrize("setting,bf16w,compiled,optim,parameters,steps,value,reason", [
    ("auto", True, True, "adamw_torch_fused", 1_100_000_000, 10_000, True, "1,100M parameters x 10,000 steps: on an H100"),
    ("auto", True, True, "adamw_torch_fused", 110_000_000, 100_000, True, "110M parameters x 100,000 steps"),
    ("auto", True, True, "adamw_torch_fused", 1_100_000_000, 9_000, False, "1,100M parameters x 9,000 steps is under 1e+13"),
    ("auto", True, True, "adamw_torch_fused", 110_000_000, 30_000, False, "110M parameters x 30,000 steps is under"),
    ("auto", True, True, "adamw_torch_fused", 1_100_000_000, None, False, "the run's steps are not known"),
    ("auto", True, True, "adamw_torch_fused", None, 10_000, False, "the model's size is not known"),
    ("on", True, True, "adamw_torch_fused", None, None, True, "set by --adamw_one_pass on"),
    ("on", True, True, "adamw_torch", 1000, 1, True, "set by --adamw_one_pass on"),
    ("off", True, True, "adamw_torch", 1_100_000_000, 10_000, False, "set by --adamw_one_pass off"),
    ("on", False, True, "adamw_torch_fused", None, None, False, "no bf16 weights"),
    ("on", True, False, "adamw_torch_fused", None, None, False, "not compiled"),
    ("auto", True, True, "adafactor", 1_100_000_000, 10_000, False, "--optim adafactor is not torch's AdamW"),
])
def test_adamw_one_pass_choice(setting, bf16w, compiled, optim, parameters, steps, value, reason):
    from diffmodel.train.fast_path import choose_adamw_one_pass

    choice = choose_adamw_one_pass(setting, bf16w, compiled, SimpleNamespace(optim=optim), parameters, steps)
    assert choice.value is value and choice.reason.startswith(reason), choice.reason


@pytest.mark.parametrize("max_steps,epoch_steps,parameters,value", [
    (100_000, None, 110_000_000, True),  # --max_steps decides
    (-1, 100_000, 110_000_000, True),  # a run given by epochs: its steps
    (-1, None, 110_000_000, False),  # a streamed run (no epoch steps): its steps are not known
    (50_000, 100_000, 110_000_000, False),  # --max_steps before the epochs' steps
])
def test_choose_gives_the_one_pass_the_runs_steps(max_steps, epoch_steps, parameters, value):
    training = SimpleNamespace(**{**vars(_training(max_steps=max_steps)), **ON_ONE_GPU})
    path = choose(SpeedArguments(bf16_weights="on", compile="on"), None, True, training, GPU, "llama",
                  epoch_steps=epoch_steps, parameters=parameters)
    assert path.adamw_one_pass.value is value, path.adamw_one_pass.reason


def test_the_one_pass_line_is_shown_with_bf16_weights_only():
    training = SimpleNamespace(**{**vars(_training()), **ON_ONE_GPU})
    on = choose(SpeedArguments(bf16_weights="on"), None, True, training, GPU, "llama")
    lines = on.lines()
    at = lines.index("bf16 weights: on (set by --bf16_weights on)")
    assert lines[at + 1].startswith("AdamW in one pass: off (the model's size is not known"), lines[at + 1]
    off = choose(SpeedArguments(bf16_weights="off"), None, True, training, GPU, "llama")
    assert not any(line.startswith("AdamW in one pass") for line in off.lines())


@pytest.mark.parametrize("compile_,unguarded", [("on", True), ("off", False)])
def test_a_compiled_run_at_the_loss_positions_fuses_their_reductions_unguarded(data_dir, tiny_llama_dir, non_strict_fusion,
                                                                               compile_, unguarded):
    from diffmodel.train import loss_logits

    prepared, records = _prepared_packed(data_dir, tiny_llama_dir, f"unguarded_{compile_}",
                                         ["--compile", compile_, "--loss_logits", "on"])
    try:
        assert non_strict_fusion() is unguarded
        logged = [r for r in records if "fuses the loss positions' reductions without guarding their number" in r]
        assert len(logged) == (1 if unguarded else 0)
    finally:
        loss_logits.uninstall(prepared.trainer.model)
