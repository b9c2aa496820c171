"""diffmodel train under ``torchrun --nproc_per_node=2`` on CPU (gloo), with a tiny GPT-2.

One interrupted run (3 steps, checkpoint-3) and its resumption (to the end of
the second epoch) are made once for the module; each test checks one property:
the ranks split every epoch between them, the weights are the same on every
rank and in the saved checkpoint, only rank 0 preprocessed, and the resumed run
continued at step 4 with the rows the first run had not seen.

``tests/ddp_probe.py`` records, per rank, the rows of every batch and a hash of
the final weights.
"""

import json
import math
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from ddp_probe import row_hash, weights_hash  # noqa: E402

N_ROWS, BATCH, RANKS = 40, 4, 2
STEPS_PER_EPOCH = math.ceil(N_ROWS / (BATCH * RANKS))  # 5


def _rows(n=N_ROWS):
    rows = []
    for i in range(n):
        before = "".join(f"x{j} = {j}\n" for j in range(i % 7 + 2))
        rows.append({"name": f"f{i}.py", "before": before, "message": f"set x0 to {i}", "diff": f"@@ -1 +1 @@\n-x0 = 0\n+x0 = {i}\n"})
    return rows


def _torchrun(args, probe: Path, cwd: Path, **env_extra) -> str:
    probe.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DIFFMODEL_PROBE_DIR=str(probe), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}", str(Path(__file__).parent / "ddp_probe.py"), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    return log


def _steps(probe: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (probe / f"rank{rank}-steps.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, tiny_gpt2_dir):
    d = tmp_path_factory.mktemp("ddp")
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    base = [
        "--model_name_or_path", str(tiny_gpt2_dir), "--train_file", str(d / "data.jsonl"), "--validation_split_percentage", "0",
        "--output_dir", str(d / "out"), "--cache_dir", str(d / "cache"), "--block_size", "256", "--train_diff_model", "--ignore_long_samples",
        "--per_device_train_batch_size", str(BATCH), "--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "steps",
        "--save_steps", "3", "--logging_steps", "1", "--seed", "1", "--do_train", "--use_cpu", "--ddp_backend", "gloo",
        "--log_level_replica", "info",
    ]
    first = _torchrun([*base, "--max_steps", "3"], d / "probe1", d)
    second = _torchrun([*base, "--num_train_epochs", "2"], d / "probe2", d)
    return {"dir": d, "first": first, "second": second, "probe1": d / "probe1", "probe2": d / "probe2"}


def _train_rows(d: Path) -> list[str]:
    (layout,) = (d / "cache" / "diffmodel_preprocess").glob("layout-*")
    return [row_hash(ids) for ids in datasets.load_from_disk(str(layout))["input_ids"]]


class TestRanksSplitTheData:
    def test_every_epoch_covers_each_row_once_across_both_ranks(self, ddp):
        rows = _train_rows(ddp["dir"])
        assert len(rows) == N_ROWS and len(set(rows)) == N_ROWS  # every sample became one distinct padded row
        steps = {r: _steps(ddp["probe1"], r) + _steps(ddp["probe2"], r) for r in range(RANKS)}
        for r in range(RANKS):
            assert [s["step"] for s in steps[r]] == list(range(2 * STEPS_PER_EPOCH)), f"rank {r} ran every step once"
        for epoch in range(2):
            seen = Counter()
            per_rank = []
            for r in range(RANKS):
                mine = [h for s in steps[r][epoch * STEPS_PER_EPOCH:(epoch + 1) * STEPS_PER_EPOCH] for h in s["rows"]]
                per_rank.append(set(mine))
                seen.update(mine)
            assert not per_rank[0] & per_rank[1], f"epoch {epoch}: the ranks shared rows"
            assert seen == Counter(rows), f"epoch {epoch}: each row exactly once"

    def test_steps_per_epoch_follow_from_world_size(self, ddp):
        state = json.loads((ddp["dir"] / "out" / "trainer_state.json").read_text())
        assert state["global_step"] == 2 * STEPS_PER_EPOCH  # ceil(40 / (4 * 2)) per epoch, not ceil(40 / 4)
        assert state["max_steps"] == 2 * STEPS_PER_EPOCH


class TestSameWeightsEverywhere:
    def test_ranks_agree_and_match_the_saved_model(self, ddp):
        finals = [json.loads((ddp["probe2"] / f"rank{r}-final.json").read_text()) for r in range(RANKS)]
        assert finals[0]["global_step"] == finals[1]["global_step"] == 2 * STEPS_PER_EPOCH
        assert finals[0]["weights"] == finals[1]["weights"]
        saved = AutoModelForCausalLM.from_pretrained(str(ddp["dir"] / "out"))
        assert weights_hash(saved.state_dict()) == finals[0]["weights"]

    def test_first_run_checkpoint_matches_both_ranks(self, ddp):
        finals = [json.loads((ddp["probe1"] / f"rank{r}-final.json").read_text()) for r in range(RANKS)]
        assert finals[0]["weights"] == finals[1]["weights"]
        ckpt = AutoModelForCausalLM.from_pretrained(str(ddp["dir"] / "out" / "checkpoint-3"))
        assert weights_hash(ckpt.state_dict()) == finals[0]["weights"]


class TestPreprocessedOnce:
    def test_one_encode_and_one_layout_folder(self, ddp):
        root = ddp["dir"] / "cache" / "diffmodel_preprocess"
        assert len(list(root.glob("encode-*"))) == 1
        assert len(list(root.glob("layout-*"))) == 1

    def test_rank_1_reused_what_rank_0_built(self, ddp):
        rank0 = (ddp["probe1"] / "rank0.log").read_text()
        rank1 = (ddp["probe1"] / "rank1.log").read_text()
        assert "reusing cached result" not in rank0
        assert "stage encode: reusing cached result" in rank1 and "stage layout: reusing cached result" in rank1
        # the resumed run tokenizes nothing on either rank
        for r in range(RANKS):
            log = (ddp["probe2"] / f"rank{r}.log").read_text()
            assert "stage encode: reusing cached result" in log and "stage layout: reusing cached result" in log


class TestProcessGroupEndsWithTheRun:
    def test_no_gloo_thread_runs_once_train_has_returned(self, ddp):
        # diffmodel train destroys the process group before returning; its gloo threads
        # (pt_gloo_runloop workers, gloo_tcp_loop) must be joined by then, not left to interpreter shutdown
        for probe in ("probe1", "probe2"):
            for r in range(RANKS):
                threads = json.loads((ddp[probe] / f"rank{r}-final.json").read_text())["threads_after_main"]
                assert threads and not [t for t in threads if "gloo" in t], f"{probe} rank {r}: {threads}"


def test_two_nodes_sharing_a_cache_preprocess_once(tmp_path, tiny_gpt2_dir):
    """Two torchrun agents on this machine stand for two nodes of one rank each, with one shared cache."""
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    probe = tmp_path / "probe"
    probe.mkdir()
    env = dict(os.environ, DIFFMODEL_PROBE_DIR=str(probe), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        "--model_name_or_path", str(tiny_gpt2_dir), "--train_file", "data.jsonl", "--validation_split_percentage", "0",
        "--output_dir", "out", "--cache_dir", "cache", "--block_size", "256", "--train_diff_model", "--ignore_long_samples",
        "--per_device_train_batch_size", str(BATCH), "--report_to", "none", "--save_strategy", "no", "--max_steps", "1",
        "--do_train", "--use_cpu", "--ddp_backend", "gloo", "--log_level_replica", "info",
    ]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
             f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=two-nodes", str(Path(__file__).parent / "ddp_probe.py"), *args],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for _ in range(2)
    ]
    try:
        logs = [p.communicate(timeout=300)[0] for p in nodes]
    except subprocess.TimeoutExpired:
        for p in nodes:
            p.kill()
        logs = [p.communicate()[0] for p in nodes]
        pytest.fail("the two torchrun agents did not finish in 300 s:\n" + logs[0][-3000:] + "\n----\n" + logs[1][-3000:])
    assert all(p.returncode == 0 for p in nodes), logs[0][-3000:] + logs[1][-3000:]
    ranks = [(probe / f"rank{r}.log").read_text() for r in range(2)]
    # one of the two ranks built the stages, the other reused them
    assert sum("stage encode: reusing cached result" in log for log in ranks) == 1


class TestResume:
    def test_continues_at_step_4_from_checkpoint_3(self, ddp):
        rank0 = (ddp["probe2"] / "rank0.log").read_text()
        assert "resuming from the last checkpoint" in rank0 and "checkpoint-3" in rank0
        for r in range(RANKS):
            assert [s["step"] for s in _steps(ddp["probe1"], r)] == [0, 1, 2]
            assert _steps(ddp["probe2"], r)[0]["step"] == 3
        state = json.loads((ddp["dir"] / "out" / "trainer_state.json").read_text())
        assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, 2 * STEPS_PER_EPOCH + 1))

    def test_resumed_rows_are_the_ones_the_first_run_had_not_reached(self, ddp):
        first = {h for r in range(RANKS) for s in _steps(ddp["probe1"], r) for h in s["rows"]}
        rest_of_epoch = {h for r in range(RANKS) for s in _steps(ddp["probe2"], r)[:STEPS_PER_EPOCH - 3] for h in s["rows"]}
        assert len(first) == 3 * BATCH * RANKS
        assert not first & rest_of_epoch
        assert len(first | rest_of_epoch) == N_ROWS


class TestTokenMetricsSumOverRanks:
    def test_each_epoch_counts_every_token_of_the_data_once(self, ddp):
        # 40 rows = 5 steps x 4 rows x 2 ranks: an epoch reads each row once across the ranks
        report = json.loads((ddp["dir"] / "out" / "data_report.json").read_text())["train"]
        state = json.loads((ddp["dir"] / "out" / "trainer_state.json").read_text())
        logs = {h["step"]: h for h in state["log_history"] if "loss" in h}
        for epoch in (1, 2):  # the first run stopped at step 3; the resumed one continued the counts
            end = logs[epoch * STEPS_PER_EPOCH]
            assert (end["num_tokens"], end["num_loss_tokens"]) == (epoch * report["tokens"], epoch * report["loss_tokens"])
        assert all(0 <= h["mean_token_accuracy"] <= 1 for h in logs.values())


def test_max_train_time_stops_every_rank_at_the_step_rank_0_chose(tmp_path, tiny_gpt2_dir):
    """Rank 1's clock is frozen: only rank 0's decision, broadcast at each step, can stop it."""
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    args = [
        "--model_name_or_path", str(tiny_gpt2_dir), "--train_file", "data.jsonl", "--validation_split_percentage", "0",
        "--output_dir", "out", "--cache_dir", "cache", "--block_size", "256", "--train_diff_model", "--packing",
        "--per_device_train_batch_size", str(BATCH), "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
        "--max_steps", "10000", "--max_train_time", "3", "--do_train", "--use_cpu", "--ddp_backend", "gloo", "--log_level_replica", "info",
    ]
    probe = tmp_path / "probe"
    _torchrun(args, probe, tmp_path, DIFFMODEL_PROBE_FROZEN_CLOCK_RANKS="1")
    finals = [json.loads((probe / f"rank{r}-final.json").read_text()) for r in range(RANKS)]
    step = finals[0]["global_step"]
    assert 1 <= step < 10000
    assert finals[1]["global_step"] == step and finals[1]["weights"] == finals[0]["weights"]
    for r in range(RANKS):
        assert [s["step"] for s in _steps(probe, r)] == list(range(step))
    assert f"--max_train_time 3 s reached at step {step}: saving a checkpoint and stopping" in (probe / "rank0.log").read_text()
    assert [p.name for p in (tmp_path / "out").glob("checkpoint-*")] == [f"checkpoint-{step}"]
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == step


def test_async_steps_and_loss_logits_under_ddp_train_the_same_rows_to_the_same_losses(tmp_path, tiny_gpt2_dir):
    """Both ranks of a run with --async_steps on --loss_logits on see the batches and log the losses of a run without."""
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    runs = {}
    for name, extra in (("plain", ["--async_steps", "off", "--loss_logits", "off"]), ("fast", ["--async_steps", "on", "--loss_logits", "on"])):
        args = [
            "--model_name_or_path", str(tiny_gpt2_dir), "--train_file", "data.jsonl", "--validation_split_percentage", "0",
            "--output_dir", f"out_{name}", "--cache_dir", "cache", "--block_size", "256", "--train_diff_model", "--packing",
            "--per_device_train_batch_size", str(BATCH), "--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "no",
            "--logging_steps", "1", "--seed", "1", "--max_steps", "3", "--do_train", "--use_cpu", "--ddp_backend", "gloo",
            "--log_level_replica", "info", *extra,
        ]
        probe = tmp_path / f"probe_{name}"
        _torchrun(args, probe, tmp_path)
        finals = [json.loads((probe / f"rank{r}-final.json").read_text()) for r in range(RANKS)]
        assert finals[0]["weights"] == finals[1]["weights"]  # the ranks agree
        state = json.loads((tmp_path / f"out_{name}" / "trainer_state.json").read_text())
        runs[name] = {"losses": [h["loss"] for h in state["log_history"] if "loss" in h],
                      "rows": [[s["rows"] for s in _steps(probe, r)] for r in range(RANKS)],
                      "log": (probe / "rank0.log").read_text()}
    assert runs["fast"]["rows"] == runs["plain"]["rows"]
    assert len(runs["plain"]["losses"]) == 3
    assert runs["fast"]["losses"] == pytest.approx(runs["plain"]["losses"], rel=1e-5)
    assert "fast path: asynchronous steps: on (set by --async_steps on)" in runs["fast"]["log"]
    assert "fast path: logits at the loss positions only: on (set by --loss_logits on)" in runs["fast"]["log"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the Trainer joins the processes by itself where there are GPUs")
def test_processes_the_trainer_would_not_join_are_refused_before_any_work(tmp_path, tiny_gpt2_dir):
    """Without --use_cpu on a machine without GPUs, transformers runs each torchrun process on its own: every one
    would train a model of its own and write the same --output_dir. Each rank stops with an error that names the fix."""
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    args = [
        "--model_name_or_path", str(tiny_gpt2_dir), "--train_file", "data.jsonl", "--validation_split_percentage", "0",
        "--output_dir", "out", "--cache_dir", "cache", "--block_size", "256", "--train_diff_model", "--packing",
        "--per_device_train_batch_size", str(BATCH), "--report_to", "none", "--max_steps", "2", "--do_train",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}", "-m", "diffmodel.cli", "train", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    error = ("diffmodel train: error: the launcher started 2 processes (WORLD_SIZE=2), but the Trainer would run each alone: "
             "every one would train its own model on all the data and write to the same --output_dir. This machine has no GPU: "
             "add --use_cpu, and the processes train together over gloo")
    assert log.count(error) == RANKS, log[-3000:]
    assert "diffmodel/train/run.py" not in log  # an error message, no traceback of diffmodel's
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # nothing preprocessed, trained or written


def test_bf16_weights_train_alike_on_every_rank(tmp_path, tiny_gpt2_dir):
    """--bf16_weights on under DDP: each rank's optimizer steps its own fp32 copies from the same averaged bf16
    gradients, so the ranks' weights stay equal, and equal to the saved model's."""
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(16)))
    args = [
        "--model_name_or_path", str(tiny_gpt2_dir), "--train_file", str(tmp_path / "data.jsonl"), "--validation_split_percentage", "0",
        "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), "--block_size", "256", "--train_diff_model",
        "--packing", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "no",
        "--seed", "1", "--do_train", "--use_cpu", "--ddp_backend", "gloo", "--max_steps", "3", "--bf16_weights", "on",
    ]
    log = _torchrun(args, tmp_path / "probe", tmp_path)
    assert "fast path: bf16 weights: on (set by --bf16_weights on)" in log
    finals = [json.loads((tmp_path / "probe" / f"rank{r}-final.json").read_text()) for r in range(RANKS)]
    assert finals[0]["global_step"] == finals[1]["global_step"] == 3
    assert finals[0]["weights"] == finals[1]["weights"]
    saved = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert {p.dtype for p in saved.parameters()} == {torch.bfloat16}
    assert weights_hash(saved.state_dict()) == finals[0]["weights"]
