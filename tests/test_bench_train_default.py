"""benchmarks/train_default.py: its token accounting on hand-made batches, and a tiny run of the script."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_default import Meter, _attention_kernels, _inductor_settings, _earlier_loss_logits, diffmodel_argv, pieces  # noqa: E402

from diffmodel.preprocess.labels import IGNORE_INDEX as X  # noqa: E402

PAD, EOS = 0, 9


def test_pieces_of_pad_and_concat_rows_end_after_each_eos():
    batch = {
        "input_ids": torch.tensor([[PAD, PAD, 4, 5, EOS], [3, EOS, 4, 5, 6]]),
        "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]),
        "labels": torch.tensor([[X, X, X, 5, EOS], [3, EOS, X, 5, 6]]),
    }
    assert pieces(batch, PAD, EOS) == [3, 2, 3]


def test_pieces_of_packed_rows_skip_the_collators_pad_segment_only():
    batch = {
        "input_ids": torch.tensor([[3, 4, EOS, 5, EOS, PAD, PAD, PAD], [PAD, 6, EOS, 7, 8, 8, 8, EOS]]),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 0, 1, 2, 3, 4]]),
        "labels": torch.tensor([[X, 4, EOS, X, EOS, X, X, X], [X, 6, EOS, X, 8, 8, 8, EOS]]),
    }
    # row 0: samples of 3 and 2, then the pad segment (all pad ids, all ignored); row 1: a sample that
    # starts with the pad id but carries labels is real
    assert pieces(batch, PAD, EOS) == [3, 2, 3, 5]


def test_nocudnn_arms_are_their_base_arm_with_cudnn_attention_left_out(tmp_path):
    from types import SimpleNamespace

    a = SimpleNamespace(model="tiny", vocab_size=100, block_size=64, tokenizer="tok", batch_size=2, workers=1, device="cpu")
    assert diffmodel_argv("concat_nocudnn", a, tmp_path / "d", tmp_path / "o", tmp_path / "c") == \
        diffmodel_argv("concat", a, tmp_path / "d", tmp_path / "o", tmp_path / "c")
    with _attention_kernels("concat_nocudnn"):
        q = torch.randn(1, 2, 4, 8)
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)  # a kernel is still allowed
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()  # put back
    with _attention_kernels("concat"):
        assert torch.backends.cuda.cudnn_sdp_enabled()


def test_inductor_arms_are_the_defaults_compiled_with_their_settings_while_they_train(tmp_path):
    from types import SimpleNamespace

    import torch._inductor.config as inductor

    a = SimpleNamespace(model="tiny", vocab_size=100, block_size=64, tokenizer="tok", batch_size=2, workers=1, device="cpu")
    assert diffmodel_argv("pack_cdt", a, tmp_path / "d", tmp_path / "o", tmp_path / "c") == \
        diffmodel_argv("pack", a, tmp_path / "d", tmp_path / "o", tmp_path / "c")
    assert (inductor.coordinate_descent_tuning, inductor.combo_kernels) == (False, False)
    with _inductor_settings("pack_cdt"):
        assert (inductor.coordinate_descent_tuning, inductor.combo_kernels) == (True, False)
    with _inductor_settings("pack_combo"):
        assert (inductor.coordinate_descent_tuning, inductor.combo_kernels) == (False, True)
    with _inductor_settings("pack_cpp_wrapper"):
        assert (inductor.cpp_wrapper, inductor.combo_kernels) == (True, False)
    with _inductor_settings("pack"):
        assert (inductor.coordinate_descent_tuning, inductor.combo_kernels, inductor.cpp_wrapper) == (False, False, False)
    assert (inductor.coordinate_descent_tuning, inductor.combo_kernels, inductor.cpp_wrapper) == (False, False, False)


@pytest.mark.parametrize("arm, flags", [("pack_one_pass", ["--adamw_one_pass", "on"]),
                                        ("pack_three_passes", ["--adamw_one_pass", "off"]),
                                        ("pack_one_pass_repeat", ["--adamw_one_pass", "on"]),
                                        ("pack_one_pass_combo", ["--adamw_one_pass", "on"]),
                                        ("pack_one_pass_device_scalars", ["--adamw_one_pass", "on"]),
                                        ("pack_mask_apart", ["--trace_block_mask", "off"]),
                                        ("pack_rotary_table", ["--rotary_table", "on"]),
                                        ("pack_no_rotary_table", ["--rotary_table", "off"])])
def test_the_flag_arms_are_the_defaults_with_their_flag(tmp_path, arm, flags):
    from types import SimpleNamespace

    a = SimpleNamespace(model="tiny", vocab_size=100, block_size=64, tokenizer="tok", batch_size=2, workers=1, device="cuda")
    assert diffmodel_argv(arm, a, tmp_path / "d", tmp_path / "o", tmp_path / "c") == \
        diffmodel_argv("pack", a, tmp_path / "d", tmp_path / "o", tmp_path / "c") + flags


def test_the_repeat_arm_gives_grouped_models_the_loss_positions_queries_while_it_trains(tmp_path, monkeypatch):
    """build_diffmodel sets loss_queries.REPEAT_GROUPED for the arm it builds (read at each forward) and clears it
    for the next arm's build."""
    from types import SimpleNamespace

    import train_default

    from diffmodel.train import loss_queries, run

    monkeypatch.setattr(loss_queries, "REPEAT_GROUPED", False)
    seen = []
    monkeypatch.setattr(run, "prepare", lambda *args: seen.append(loss_queries.REPEAT_GROUPED) or SimpleNamespace(
        trainer=None, fast_path=SimpleNamespace(settings=dict)))
    from diffmodel.train import args as train_args

    monkeypatch.setattr(train_args, "validate", lambda *args: None)  # no files: prepare() is not run
    a = SimpleNamespace(model="tiny", vocab_size=100, block_size=64, tokenizer="tok", batch_size=2, workers=1, device="cpu")
    for arm in ("pack_one_pass_repeat", "pack_one_pass", "pack_one_pass_repeat_nocudnn"):
        train_default.build_diffmodel(arm, a, tmp_path / "d.jsonl", tmp_path)
    assert seen == [True, False, True] and loss_queries.REPEAT_GROUPED


def test_the_one_pass_combo_arm_compiles_the_pass_with_combo_kernels(tmp_path, monkeypatch):
    """build_diffmodel sets master_adamw.EXTRA_OPTIONS for the arm it builds, empty for the others, and the pass's
    settings carry them beside the precision-cast one."""
    from types import SimpleNamespace

    import train_default

    from diffmodel.train import args as train_args
    from diffmodel.train import master_adamw, run

    monkeypatch.setattr(master_adamw, "EXTRA_OPTIONS", {})
    seen = []
    monkeypatch.setattr(run, "prepare", lambda *args: seen.append(master_adamw._options()) or SimpleNamespace(
        trainer=None, fast_path=SimpleNamespace(settings=dict)))
    monkeypatch.setattr(train_args, "validate", lambda *args: None)
    a = SimpleNamespace(model="tiny", vocab_size=100, block_size=64, tokenizer="tok", batch_size=2, workers=1, device="cpu")
    monkeypatch.setattr(master_adamw, "SCALARS_ON_DEVICE", False)
    on_device = []
    monkeypatch.setattr(run, "prepare", lambda *args: seen.append(master_adamw._options()) or on_device.append(
        master_adamw.SCALARS_ON_DEVICE) or SimpleNamespace(trainer=None, fast_path=SimpleNamespace(settings=dict)))
    for arm in ("pack_one_pass_combo", "pack_one_pass", "pack_one_pass_device_scalars", "pack_one_pass"):
        train_default.build_diffmodel(arm, a, tmp_path / "d.jsonl", tmp_path)
    assert [o.get("combo_kernels") for o in seen] == [True, None, None, None]
    assert on_device == [False, False, True, False]
    assert all(o.get("emulate_precision_casts") for o in seen)


def test_a_failed_rounds_row_names_the_exception_not_torchs_advice_after_it():
    from train_default import error_line

    stderr = ("Traceback (most recent call last):\n  File \"x.py\", line 3, in f\n    raise\n"
              "torch._inductor.exc.InductorError: RuntimeError: Triton Error [CUDA]: invalid argument\n\n"
              "Set TORCHDYNAMO_VERBOSE=1 for the internal stack trace (please do this especially if you're reporting a bug "
              "to PyTorch). For even more developer context, set TORCH_LOGS=\"+dynamo\"\n")
    assert error_line(stderr) == "torch._inductor.exc.InductorError: RuntimeError: Triton Error [CUDA]: invalid argument"
    assert error_line("killed\n") == "killed"


def test_the_earlier_loss_logits_arms_install_it_as_it_was_measured_then(tmp_path):
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoModelForCausalLM

    from diffmodel.train import loss_logits

    a = SimpleNamespace(model="tiny", vocab_size=100, block_size=64, tokenizer="tok", batch_size=2, workers=1, device="cpu")
    assert diffmodel_argv("pack_output_only", a, tmp_path / "d", tmp_path / "o", tmp_path / "c") == \
        diffmodel_argv("pack_loss_logits", a, tmp_path / "d", tmp_path / "o", tmp_path / "c")
    config = AutoConfig.for_model("llama", vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=2)
    assert diffmodel_argv("pack_all_queries", a, tmp_path / "d", tmp_path / "o", tmp_path / "c") == \
        diffmodel_argv("pack_loss_logits", a, tmp_path / "d", tmp_path / "o", tmp_path / "c")
    config._attn_implementation = "sdpa"
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 10]]), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2]]),
             "loss_index": torch.tensor([1, 4]), "loss_targets": torch.tensor([7, 10])}  # one row: sdpa takes the queries
    picked_where, queries = [], []
    for arm in ("pack_output_only", "pack_all_queries", "pack_loss_logits"):
        model = AutoModelForCausalLM.from_config(config)
        with _earlier_loss_logits(arm):
            loss_logits.install(model)
        q_proj = model.model.layers[-1].self_attn.q_proj
        q_proj.register_forward_hook(lambda module, args, out: queries.append(args[0].reshape(-1, 16).shape[0]))
        model(**batch)
        picked_where.append("forward" in model.model.layers[-1].__dict__)
    assert picked_where == [False, True, True] and queries == [6, 6, 2]
    assert loss_logits.LAST_LAYER == loss_logits.LAST_QUERIES == ("llama", "mistral", "qwen2", "qwen3")  # put back


def test_the_meter_counts_graphs_compiled_between_its_marks_only():
    from types import SimpleNamespace

    f = torch.compile(lambda x: x * 2 + 1, backend="eager")
    f(torch.ones(3))  # compiled before the first mark (warm-up)

    def run(meter, between):
        for step in (1, 2, 3):
            meter.callback.on_step_end(None, SimpleNamespace(global_step=step), SimpleNamespace(should_training_stop=False))
            if step == 1:
                between()

    steady, recompiled = Meter(1, 2, cuda=False), Meter(1, 2, cuda=False)
    run(steady, lambda: f(torch.ones(3)))  # the shape it was compiled for
    run(recompiled, lambda: f(torch.ones(5)))  # a new shape: one more graph
    assert len(steady.marks) == len(recompiled.marks) == 2
    assert (steady.compiled, recompiled.compiled) == (0, 1)


def test_the_meter_tells_the_timed_steps_that_compiled_and_their_time():
    from types import SimpleNamespace

    def run(meter, compile_in):  # warm-up steps 1-2, timed steps 3-5; compile_in: the step that meets a new shape
        torch._dynamo.reset()  # the same code object each run: none of its graphs kept
        f = torch.compile(lambda x: x * 3 - 1, backend="eager", dynamic=False)
        f(torch.ones(3))
        callbacks = (meter.recompiles, meter.callback)  # as attach() orders them
        for step in (1, 2, 3, 4, 5):
            for c in callbacks:
                c.on_step_begin(None, SimpleNamespace(global_step=step - 1), None)
            f(torch.ones(5 if step == compile_in else 3))
            for c in callbacks:
                c.on_step_end(None, SimpleNamespace(global_step=step), SimpleNamespace(should_training_stop=False))

    in_warmup, in_timed, steady = Meter(2, 3, cuda=False), Meter(2, 3, cuda=False), Meter(2, 3, cuda=False)
    run(in_warmup, compile_in=2)
    run(in_timed, compile_in=5)  # the last timed step: counted before the mark reads the count
    run(steady, compile_in=None)
    assert (in_warmup.compiling_steps, in_timed.compiling_steps, steady.compiling_steps) == (0, 1, 0)
    assert in_timed.compiling_s > 0 and in_warmup.compiling_s == steady.compiling_s == 0.0
    assert (in_warmup.compiled, in_timed.compiled) == (0, 1)


def test_the_meter_reads_the_trainers_own_recompile_callback_or_gives_it_one():
    from types import SimpleNamespace

    from diffmodel.train.recompiles import RecompileCallback

    own = RecompileCallback()
    trainers = [SimpleNamespace(callback_handler=SimpleNamespace(callbacks=cbs), training_step=None) for cbs in ([own], [])]
    for t in trainers:
        t.add_callback = t.callback_handler.callbacks.append
    with_own, without = Meter(1, 2, cuda=False), Meter(1, 2, cuda=False)
    with_own.attach(trainers[0])
    without.attach(trainers[1])
    assert with_own.recompiles is own and trainers[0].callback_handler.callbacks == [own, with_own.callback]
    assert trainers[1].callback_handler.callbacks == [without.recompiles, without.callback]


def test_the_step_time_without_the_steps_that_compiled():
    from train_default import other_ms, step_ms

    r = {"seconds": 52.48, "steps": 72, "compiling_steps": 1, "compiling_s": 41.4}
    assert round(other_ms(r), 1) == round(11.08 / 71 * 1e3, 1)
    assert other_ms({"seconds": 2.0, "steps": 1, "compiling_steps": 1, "compiling_s": 2.0}) is None
    assert other_ms({"seconds": 1.0, "steps": 4}) == 250.0  # rounds kept before the count: every step
    row = {"step_ms": 728.9, "round_ms": [728.9], "compiled": 1, "compiling_steps": 1, "other_ms": 156.06}
    assert step_ms(row) == "729, 1 graph(s) compiled while timed; 156 without the 1 step(s) that compiled"


def test_a_tiny_cpu_run_prints_a_row_per_arm(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_default.py"), "--tiny", "--arms", "concat,pack",
         "--workers", "1", "--workdir", str(tmp_path), "--json", str(tmp_path / "r.jsonl")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| concat |") or line.startswith("| pack |")]
    assert len(rows) == 2 and "failed" not in "".join(rows)
    assert "fast path" not in rows[1] and "sdpa (no GPU" in proc.stdout  # the choices printed for the pack arm
    # the loss-bearing tokens a step (a column) and the batches of the epoch the timed steps trained on
    import json

    table = json.loads((tmp_path / "r.jsonl").read_text())["table"]
    for row in table:
        assert row["loss_tok_step"] > 0 and row["epoch_batches"] >= 1
        assert f"{row['arm']}: timed on batches 2-3 of an epoch of {row['epoch_batches']}" in proc.stdout


def test_steps_are_a_number_or_the_rest_of_the_first_epoch():
    import argparse

    from train_default import steps_arg, timed_steps

    assert steps_arg("30") == 30 and steps_arg("epoch") == "epoch"
    for bad in ("0", "-3", "ten"):
        with pytest.raises(argparse.ArgumentTypeError, match="give a number of steps"):
            steps_arg(bad)
    assert timed_steps(30, 4, 94) == 30 and timed_steps(30, 4, None) == 30
    assert timed_steps("epoch", 4, 94) == 89  # batches 5-93: the 94th, partial, left out
    with pytest.raises(ValueError, match="a stream"):
        timed_steps("epoch", 4, None)
    with pytest.raises(ValueError, match="leaves none to time after --warmup 4"):
        timed_steps("epoch", 4, 5)


def test_the_window_names_the_batches_timed_and_says_when_they_run_past_the_epoch():
    from train_default import epoch_batches, window

    assert epoch_batches(range(33), 16) == 3 and epoch_batches(range(32), 16) == 2
    assert epoch_batches(iter(()), 16) is None  # a stream: no length
    assert window(4, 80, 94) == "batches 5-84 of an epoch of 94"
    assert window(4, 80, 60) == "batches 5-84 of an epoch of 60 (the timed steps run into the next epoch)"
    assert window(4, 10, None) == "batches 5-14"
    assert window(4, 10, 94) == ("batches 5-14 of an epoch of 94 (11% of it: its tokens a batch may differ from the "
                                 "epoch's by several percent; raise --steps to compare tokens/s)")


def test_kernel_names_are_sorted_into_kinds():
    from step_profile import kind_of, summarize

    assert kind_of("nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNN") == "matmul"
    assert kind_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert kind_of("triton_tem_fused_flex_attention_0") == "attention"  # flex's Triton template is attention
    assert kind_of("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>") == "attention"
    assert kind_of("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0") == "compiled (Triton)"
    assert kind_of("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert kind_of("Memcpy HtoD (Pinned -> Device)") == "copies"
    assert kind_of("aten::addmm") == "matmul" and kind_of("aten::cat") == "copies" and kind_of("aten::gelu") == "other"
    rows = summarize({"aten::mm": 3000.0, "aten::addmm": 1000.0, "aten::gelu": 1000.0, "aten::cat": 5000.0}, 2)
    assert rows == [("copies", 2.5, 0.5), ("matmul", 2.0, 0.4), ("other", 0.5, 0.1)]


def test_profile_writes_a_table_per_arm_after_the_timed_steps(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_default.py"), "--tiny", "--arms", "pack",
         "--workers", "1", "--workdir", str(tmp_path), "--profile", str(tmp_path / "prof"), "--profile_steps", "2"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = (tmp_path / "prof" / "profile_pack.md").read_text()
    assert text.startswith("# pack, model tiny") and "2 steps," in text
    kinds = [line.split(" | ")[0][2:] for line in text.split("| kind |")[1].splitlines()[2:] if line.startswith("| ")]
    assert "matmul" in kinds and "attention" in kinds
    assert "| pack | " in proc.stdout and "2 steps in" in proc.stdout  # the timed steps are still reported


def test_device_times_leave_out_annotated_ranges():
    from types import SimpleNamespace

    from step_profile import kernel_times
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    def event(i, name, start, end, device=DeviceType.CUDA, annotation=False):
        return FunctionEvent(id=i, name=name, thread=0, start_us=start, end_us=end, device_type=device,
                             is_user_annotation=annotation)

    events = [event(1, "nvjet_gemm", 0, 30), event(2, "Optimizer.step#AdamW.step", 30, 60, annotation=True),
              event(3, "multi_tensor_apply_kernel", 30, 50), event(4, "nvjet_gemm", 60, 70),
              event(5, "aten::mm", 0, 100, device=DeviceType.CPU)]
    assert kernel_times(SimpleNamespace(events=lambda: events), cuda=True) == \
        {"nvjet_gemm": 40.0, "multi_tensor_apply_kernel": 20.0}


def test_isolate_runs_each_round_of_each_arm_in_a_process_of_its_own(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_default.py"), "--tiny", "--arms", "pack,pack_torch_tiles",
         "--workers", "1", "--workdir", str(tmp_path), "--isolate"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "info"},  # the rounds write transformers' log to their error output
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    pids = [line.split("process ")[1] for line in proc.stdout.splitlines() if ": a round in process " in line]
    assert len(pids) == 2 and len(set(pids)) == 2
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| pack |", "| pack_torch_tiles |"))]
    assert len(rows) == 2 and "failed" not in "".join(rows)
    assert "flex_attention tiles" not in proc.stdout  # sdpa on the CPU: no tiles to choose
    for arm in ("pack", "pack_torch_tiles"):  # each round's error output stays in a file, and showed as it came
        kept = (tmp_path / f"round_{arm}.stderr").read_text()
        assert kept.strip() and kept in proc.stderr


def test_a_rounds_error_output_shows_as_it_comes_and_stays_in_its_file(tmp_path):
    import io

    from train_default import tee

    echo = io.StringIO()
    lines = iter(["[__recompiles] Recompiling function forward\n", "    triggered by the following guard failure(s):\n"])
    assert tee(lines, tmp_path / "round.stderr", echo) == "".join(
        ["[__recompiles] Recompiling function forward\n", "    triggered by the following guard failure(s):\n"])
    assert (tmp_path / "round.stderr").read_text() == echo.getvalue() == (
        "[__recompiles] Recompiling function forward\n    triggered by the following guard failure(s):\n")


def test_merge_adds_rounds_and_keeps_the_peak():
    from train_default import merge

    results = {}
    first = {"seconds": 1.0, "loss_tok": 10, "real_tok": 20, "useful": 5.0, "steps": 2, "rows": 4, "mem": 7,
             "setup_s": [3.0], "choices": {"a": 1}, "compiled": 0, "compiling_steps": 0, "compiling_s": 0.0}
    merge(results, "pack", dict(first, setup_s=[3.0], round_ms=[500.0]))
    merge(results, "pack", {**first, "seconds": 2.0, "mem": 5, "setup_s": [1.0], "round_ms": [1000.0], "compiled": 2,
                            "compiling_steps": 1, "compiling_s": 1.5})
    assert results["pack"] == {"seconds": 3.0, "loss_tok": 20, "real_tok": 40, "useful": 10.0, "steps": 4, "rows": 8,
                               "mem": 7, "setup_s": [3.0, 1.0], "round_ms": [500.0, 1000.0], "choices": {"a": 1},
                               "compiled": 2, "compiling_steps": 1, "compiling_s": 1.5}


def test_the_step_time_shows_each_round_where_there_were_several():
    from train_default import step_ms

    assert step_ms({"step_ms": 55.4, "round_ms": [54.2, 56.6]}) == "55 (54, 57)"
    assert step_ms({"step_ms": 55.4, "round_ms": [55.4]}) == "55"
    assert step_ms({"step_ms": 816.4, "round_ms": [816.4], "compiled": 2}) == "816, 2 graph(s) compiled while timed"
    assert step_ms({"step_ms": 55.4, "round_ms": [55.4], "compiled": 0}) == "55"


def test_sigterm_stops_the_round_process_and_reports_what_finished(tmp_path):
    # `timeout N python train_default.py --isolate ...` used to stop the benchmark but not the round's process,
    # which went on holding the GPU and the output pipe
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "train_default.py"), "--tiny", "--arms", "pack,pack_torch_tiles",
         "--workers", "1", "--workdir", str(tmp_path), "--isolate"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    child = None
    for line in proc.stdout:
        if ": a round in process " in line:
            child = int(line.split("process ")[1])
            break
    assert child is not None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped (SIGTERM) in round 0" in out
    assert "| pack | failed: stopped before a round of it finished |" in out
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_the_rotary_arm_changes_the_modeling_module_for_its_own_run_only(tmp_path, capsys):
    from transformers.models.llama import modeling_llama

    import train_default
    from diffmodel.train import rotary_layout

    own = modeling_llama.apply_rotary_pos_emb
    assert train_default.main(["--tiny", "--arms", "pack_rotary,pack", "--rounds", "1", "--workers", "1",
                               "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "'rotary embedding tokens-first': 'on (set by --rotary_layout on)'" in out
    assert "'rotary embedding tokens-first': \"off (not compiled" in out  # the pack arm, after it, in the same process
    assert modeling_llama.apply_rotary_pos_emb is own
    assert getattr(own, rotary_layout.WRAPPED, None) is None


@pytest.mark.parametrize("arm, line", [("pack_bf16w", "'bf16 weights': 'on (set by --bf16_weights on)'"),
                                       ("pack_fp32w", "'bf16 weights': 'off (set by --bf16_weights off)'")])
def test_an_arm_runs_with_its_flag(tmp_path, capsys, arm, line):
    import train_default

    assert train_default.main(["--tiny", "--arms", arm, "--rounds", "1", "--workers", "1",
                               "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert line in out
    assert f"| {arm} |" in out and "failed" not in out
