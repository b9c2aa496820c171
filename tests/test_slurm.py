"""diffmodel slurm: the sbatch script parses, starts the right launcher on every node, and requeues then resumes.

No Slurm here: small executables first on PATH stand in for it. ``srun``
starts ``$SLURM_NTASKS`` copies of its command with SLURM_PROCID / NODEID /
LOCALID set, records its pid, and passes SIGTERM on; ``scontrol show
hostnames`` prints ``$FAKE_HOSTS`` (default ``localhost``); ``scontrol requeue
ID`` records the call and stops the running srun, as Slurm would.
"""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffmodel.cli import main as cli_main
from diffmodel.errors import DiffModelError
from diffmodel.launch import config_path
from diffmodel.commands.slurm import main as slurm_main
from diffmodel.commands.slurm import split_argv
from diffmodel.launch.slurm import LAUNCHERS, SlurmOptions, check_train_args, missing_here, format_args, render_script
from sample_rows import edit_rows

FAKE_SRUN = f"""#!{sys.executable}
import os, signal, subprocess, sys
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
with open(os.path.join(os.environ["FAKE_SLURM_DIR"], "srun.pid"), "w") as f:
    f.write(str(os.getpid()))
tasks = int(os.environ.get("SLURM_NTASKS", "1"))
per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", "1"))
procs = []
for i in range(tasks):
    env = dict(os.environ, SLURM_PROCID=str(i), SLURM_NODEID=str(i // per_node), SLURM_LOCALID=str(i % per_node))
    procs.append(subprocess.Popen(args, env=env))
signal.signal(signal.SIGTERM, lambda sig, frame: [p.send_signal(sig) for p in procs])
codes = [p.wait() for p in procs]
sys.exit(next((c for c in codes if c), 0))
"""

FAKE_SCONTROL = """#!/bin/bash
if [ "$1" = show ] && [ "$2" = hostnames ]; then
  for h in ${FAKE_HOSTS:-localhost}; do echo "$h"; done
elif [ "$1" = requeue ]; then
  echo "requeue $2" >> "$FAKE_SLURM_DIR/scontrol.log"
  kill -TERM "$(cat "$FAKE_SLURM_DIR/srun.pid")"
else
  echo "fake scontrol: unexpected $*" >&2; exit 1
fi
"""

# stands in for python on the nodes: records its arguments and part of its environment
FAKE_PYTHON = """#!/bin/bash
printf '%s\\0' "$@" > "$FAKE_SLURM_DIR/argv-$SLURM_NODEID"
env | grep -E '^(MASTER_ADDR|MASTER_PORT|NNODES|GPUS_PER_NODE|NCCL_[A-Z_]*|HF_HOME|SLURM_NODEID)=' | sort > "$FAKE_SLURM_DIR/env-$SLURM_NODEID"
"""


def _exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    _exe(bin_dir / "srun", FAKE_SRUN)
    _exe(bin_dir / "scontrol", FAKE_SCONTROL)
    state = tmp_path / "slurm_state"
    state.mkdir()
    env = dict(
        os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM_DIR=str(state),
        SLURM_JOB_ID="777", SLURM_JOB_NAME="diffmodel", SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1", SLURM_NTASKS="1",
        SLURM_NTASKS_PER_NODE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
    )
    return {"bin": bin_dir, "state": state, "env": env}


def _bash_n(script: str):
    proc = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr


TRAIN = ["--model_name_or_path", "m", "--train_file", "d.jsonl", "--output_dir", "out", "--do_train"]


class TestScriptParses:
    @pytest.mark.parametrize("launcher", LAUNCHERS)
    @pytest.mark.parametrize("requeue", [True, False])
    def test_bash_n(self, launcher, requeue, tmp_path):
        o = SlurmOptions(nodes=8, gpus_per_node=8, launcher=launcher, requeue=requeue, partition="gpu", time="2-00:00:00",
                         nccl=["NCCL_DEBUG=WARN", "NCCL_SOCKET_IFNAME=^lo,docker"], env=["HF_HOME=/scratch/hf home"],
                         setup=["source ~/venv/bin/activate"], cpus_per_task=96, mem="0", workdir=str(tmp_path))
        script = render_script(o, [*TRAIN, "--bf16", "--deepspeed", str(config_path("ds_zero3.json")), "--run_name", "a b;$HOME"])
        _bash_n(script)

    def test_sbatch_header(self, tmp_path):
        script = render_script(SlurmOptions(nodes=8, gpus_per_node=8, partition="gpu", time="12:00:00", account="proj",
                                            workdir=str(tmp_path), sbatch=["--constraint=h100"]), TRAIN)
        header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
        for expected in ("--nodes=8", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu", "--time=12:00:00",
                         "--account=proj", "--requeue", "--signal=B:USR1@120", "--open-mode=append", "--constraint=h100",
                         f"--chdir={tmp_path}", f"--output={tmp_path}/logs/%x-%j.out"):
            assert f"#SBATCH {expected}" in header
        assert 'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"' in script
        assert "trap requeue_job USR1" in script

    def test_no_requeue_and_gres(self, tmp_path):
        script = render_script(SlurmOptions(requeue=False, gres="gpu:a100:4", workdir=str(tmp_path)), TRAIN)
        assert "#SBATCH --no-requeue" in script and "#SBATCH --gres=gpu:a100:4" in script
        assert "--signal" not in script and "trap requeue_job" not in script and "--gpus-per-node" not in script

    def test_train_arguments_one_flag_per_line(self):
        assert format_args(["--a", "1", "2", "--b", "--c", "x y"]) == "  --a 1 2\n  --b\n  --c 'x y'"


def _run_fake(script_path: Path, env: dict, cwd: Path, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script_path)], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _argv(state: Path, node: int) -> list[str]:
    return (state / f"argv-{node}").read_bytes().decode().split("\0")[:-1]


class TestLaunchersOnEveryNode:
    """Two fake nodes; the node command runs with a stand-in python that records its arguments."""

    TRICKY = [*TRAIN, "--train_file", "my data/a b.jsonl", "it's.jsonl", "--run_name", "x;$HOME `id`", "--bf16"]

    def _launch(self, fake_slurm, tmp_path, launcher, **extra):
        py = _exe(tmp_path / "fakepython", FAKE_PYTHON)
        env = dict(fake_slurm["env"], SLURM_NNODES="2", SLURM_NTASKS="2", FAKE_HOSTS="nodeA nodeB", SLURM_JOB_NODELIST="nodeA,nodeB")
        o = SlurmOptions(nodes=2, gpus_per_node=4, launcher=launcher, python=str(py), master_port=29511, workdir=str(tmp_path),
                         nccl=["NCCL_DEBUG=INFO"], env=["HF_HOME=/x y"], **extra)
        path = tmp_path / "job.sbatch"
        path.write_text(render_script(o, self.TRICKY))
        proc = _run_fake(path, env, tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "srun ended with status 0" in proc.stdout
        return fake_slurm["state"]

    def test_torchrun_c10d_rendezvous(self, fake_slurm, tmp_path):
        state = self._launch(fake_slurm, tmp_path, "torchrun")
        for node in (0, 1):
            assert _argv(state, node) == [
                "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=4", "--rdzv_backend=c10d",
                "--rdzv_endpoint=nodeA:29511", "--rdzv_id=777", "--max_restarts=0", "-m", "diffmodel.cli", "train", *self.TRICKY,
            ]
            env = (state / f"env-{node}").read_text().splitlines()
            assert "MASTER_ADDR=nodeA" in env and "MASTER_PORT=29511" in env and "NCCL_DEBUG=INFO" in env
            assert "HF_HOME=/x y" in env and f"SLURM_NODEID={node}" in env

    def test_accelerate_static_rendezvous_with_node_rank(self, fake_slurm, tmp_path):
        state = self._launch(fake_slurm, tmp_path, "accelerate")
        for node in (0, 1):
            assert _argv(state, node) == [
                "-m", "accelerate.commands.launch", f"--config_file={config_path('accelerate_ddp.yaml')}", "--num_machines=2",
                "--num_processes=8", f"--machine_rank={node}", "--main_process_ip=nodeA", "--main_process_port=29511",
                "--rdzv_backend=static", "--same_network", "-m", "diffmodel.cli", "train", *self.TRICKY,
            ]

    def test_accelerate_arguments_parse_with_accelerate(self, fake_slurm, tmp_path):
        from accelerate.commands.launch import launch_command_parser

        state = self._launch(fake_slurm, tmp_path, "accelerate", accelerate_config=str(config_path("accelerate_fsdp.yaml")))
        args = launch_command_parser().parse_args(_argv(state, 1)[2:])
        assert args.machine_rank == 1 and args.num_processes == 8 and args.num_machines == 2
        assert args.config_file == str(config_path("accelerate_fsdp.yaml"))
        assert args.module and args.training_script == "diffmodel.cli" and args.training_script_args == ["train", *self.TRICKY]

    def test_deepspeed_no_ssh_with_hostfile(self, fake_slurm, tmp_path):
        state = self._launch(fake_slurm, tmp_path, "deepspeed")
        hostfile = tmp_path.resolve() / "logs" / "hostfile-777"
        assert hostfile.read_text() == "nodeA slots=4\nnodeB slots=4\n"
        for node in (0, 1):
            assert _argv(state, node) == [
                "-m", "deepspeed.launcher.runner", f"--hostfile={hostfile}", "--no_ssh", f"--node_rank={node}",
                "--master_addr=nodeA", "--master_port=29511", "--num_gpus=4", "--no_local_rank", "--module",
                "diffmodel.cli", "train", *self.TRICKY,
            ]


class TestTrainArgumentChecks:
    def test_overwrite_output_dir_refused_with_requeue(self):
        with pytest.raises(DiffModelError, match=r"--overwrite_output_dir with requeueing would restart from step 0.*--no_requeue"):
            check_train_args([*TRAIN, "--overwrite_output_dir"], SlurmOptions())
        assert check_train_args([*TRAIN, "--overwrite_output_dir"], SlurmOptions(requeue=False)) == []

    def test_overwrite_output_dir_in_an_arguments_file(self, tmp_path):
        path = tmp_path / "args.json"
        path.write_text(json.dumps({"output_dir": "out", "do_train": True, "overwrite_output_dir": True}))
        with pytest.raises(DiffModelError, match="--overwrite_output_dir"):
            check_train_args([str(path)], SlurmOptions())

    def test_fixed_resume_checkpoint_refused_with_requeue(self):
        with pytest.raises(DiffModelError, match="--resume_from_checkpoint with requeueing"):
            check_train_args([*TRAIN, "--resume_from_checkpoint", "out/checkpoint-10"], SlurmOptions())

    def test_notes(self):
        notes = check_train_args([*TRAIN, "--save_strategy", "no"], SlurmOptions(launcher="deepspeed"))
        assert any("no checkpoint to resume from" in n for n in notes)
        assert any("without --deepspeed" in n and "ds_zero3.json" in n for n in notes)
        assert check_train_args([*TRAIN, "--deepspeed", "ds.json"], SlurmOptions(launcher="deepspeed")) == []

    def test_accelerate_deepspeed_config_needs_bf16(self):
        o = SlurmOptions(launcher="accelerate", accelerate_config=str(config_path("accelerate_deepspeed.yaml")))
        with pytest.raises(DiffModelError, match="add --bf16"):
            check_train_args(TRAIN, o)
        assert check_train_args([*TRAIN, "--bf16"], o) == []

    def test_accelerate_fsdp_config_and_fsdp_flag_conflict(self):
        o = SlurmOptions(launcher="accelerate", accelerate_config=str(config_path("accelerate_fsdp.yaml")))
        with pytest.raises(DiffModelError, match="already sets up FSDP"):
            check_train_args([*TRAIN, "--bf16", "--fsdp", "full_shard auto_wrap"], o)

    def test_unknown_train_flag(self):
        with pytest.raises(DiffModelError, match="diffmodel train does not know --learningrate 1"):
            check_train_args([*TRAIN, "--learningrate", "1"], SlurmOptions())

    def test_no_train_arguments(self):
        with pytest.raises(DiffModelError, match="put them after --"):
            check_train_args([], SlurmOptions())

    def test_bad_options_reported_together(self):
        with pytest.raises(DiffModelError) as err:
            render_script(SlurmOptions(nodes=0, gpus_per_node=0, master_port=70000, time="two days", launcher="mpi"), TRAIN)
        msg = str(err.value)
        for flag in ("--nodes 0", "--gpus_per_node 0", "--master_port 70000", "--time 'two days'", "--launcher 'mpi'"):
            assert flag in msg

    def test_nccl_settings_must_be_nccl_variables(self):
        with pytest.raises(DiffModelError, match=r"--nccl DEBUG is not an NCCL variable.*--env"):
            render_script(SlurmOptions(nccl=["DEBUG=INFO"]), TRAIN)
        with pytest.raises(DiffModelError, match=r"--env 'HF HOME=x' is not KEY=VALUE"):
            render_script(SlurmOptions(env=["HF HOME=x"]), TRAIN)


class TestCommandLine:
    def test_dry_run_prints_and_writes_nothing(self, tmp_path, capsys, monkeypatch):
        monkeypatch.chdir(tmp_path)
        for spelling in ("--dry_run", "--dry-run"):
            assert slurm_main(["--nodes", "2", spelling, "--", *TRAIN]) == 0
            out = capsys.readouterr().out
            assert out.startswith("#!/bin/bash") and "#SBATCH --nodes=2" in out
            assert list(tmp_path.iterdir()) == []

    def test_writes_executable_script_and_log_folder(self, tmp_path, capsys):
        path = tmp_path / "jobs" / "train.sbatch"
        assert slurm_main(["--output", str(path), "--workdir", str(tmp_path), "--job_name", "dm", "--", *TRAIN]) == 0
        assert path.stat().st_mode & stat.S_IXUSR and (tmp_path / "logs").is_dir()
        assert f"sbatch {path}" in capsys.readouterr().out
        _bash_n(path.read_text())

    def test_files_this_machine_lacks_are_noted(self, tmp_path, capsys):
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "config.json").write_text("{}")
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "a.jsonl").write_text("")
        here = tmp_path.resolve()
        args = ["--model_name_or_path", "m", "--train_file", "data/a.jsonl:0.5", "data/b*.jsonl:0.5", "--validation_file", "v.jsonl",
                "--tokenizer_name", "./tok", "--deepspeed", "ds.json", "--output_dir", "out", "--do_train"]
        assert missing_here(args, str(tmp_path)) == [
            f"--train_file data/b*.jsonl: the glob matches no file (seen from {here} on this machine: the job fails at its start unless the nodes have it)",
            f"--validation_file v.jsonl: no such file (seen from {here} on this machine: the job fails at its start unless the nodes have it)",
            f"--tokenizer_name ./tok: no such folder (seen from {here} on this machine: the job fails at its start unless the nodes have it)",
            f"--deepspeed ds.json: no such file (seen from {here} on this machine: the job fails at its start unless the nodes have it)",
        ]
        (tmp_path / "data" / "b1.jsonl").write_text("")
        (tmp_path / "v.jsonl").write_text("")
        (tmp_path / "ds.json").write_text("{}")
        (tmp_path / "tok").mkdir()
        (tmp_path / "tok" / "tokenizer.json").write_text("{}")
        assert missing_here(args, str(tmp_path)) == []
        path = tmp_path / "job.sbatch"
        assert slurm_main(["--output", str(path), "--workdir", str(tmp_path), "--", *TRAIN]) == 0
        assert "diffmodel slurm: note: --train_file d.jsonl: no such file" in capsys.readouterr().err
        assert path.is_file()

    def test_through_the_diffmodel_command_with_a_clear_error(self, capsys):
        assert cli_main(["slurm", "--dry_run", "--", *TRAIN, "--overwrite_output_dir"]) == 2
        err = capsys.readouterr().err
        assert "diffmodel slurm: error:" in err and "--overwrite_output_dir" in err

    def test_leading_diffmodel_train_is_dropped(self):
        assert split_argv(["--nodes", "2", "--", "diffmodel", "train", "--do_train"]) == (["--nodes", "2"], ["--do_train"])
        assert split_argv(["--", "train", "--do_train"]) == ([], ["--do_train"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_requeued_job_skips_a_checkpoint_cut_short(tmp_path, tiny_gpt2_dir):
    from diffmodel.commands.train import main as train_main

    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in edit_rows()))
    out = tmp_path / "out"
    args = [
        "--model_name_or_path", str(tiny_gpt2_dir), "--train_file", str(tmp_path / "data.jsonl"), "--validation_split_percentage", "0",
        "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--block_size", "256", "--train_diff_model",
        "--ignore_long_samples", "--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy", "steps",
        "--save_steps", "2", "--do_train", "--use_cpu",
    ]
    assert train_main([*args, "--max_steps", "2"]) == 0
    # the kill came while checkpoint-4 was being written: its weights are there, nothing else
    (out / "checkpoint-4").mkdir()
    shutil.copy(out / "checkpoint-2" / "config.json", out / "checkpoint-4" / "config.json")
    assert train_main([*args, "--max_steps", "4"]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
class TestRunsUnderFakeSlurm:
    """1 node x 2 CPU "GPUs": torchrun + gloo trains the tiny GPT-2; USR1 requeues; the requeued job resumes."""

    MAX_STEPS, SAVE_STEPS = 40, 10

    def test_requeue_then_resume(self, fake_slurm, tmp_path, tiny_gpt2_dir):
        (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in edit_rows()))
        script = tmp_path / "job.sbatch"
        assert slurm_main([
            "--nodes", "1", "--gpus_per_node", "2", "--launcher", "torchrun", "--master_port", str(_free_port()),
            "--python", sys.executable, "--workdir", str(tmp_path), "--output", str(script), "--nccl", "NCCL_DEBUG=WARN", "--",
            "--model_name_or_path", str(tiny_gpt2_dir), "--train_file", "data.jsonl", "--validation_split_percentage", "0",
            "--output_dir", "out", "--cache_dir", "cache", "--block_size", "256", "--train_diff_model", "--ignore_long_samples",
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "steps",
            "--save_steps", str(self.SAVE_STEPS), "--logging_steps", "1", "--max_steps", str(self.MAX_STEPS), "--seed", "1",
            "--do_train", "--use_cpu", "--ddp_backend", "gloo",
        ]) == 0
        _bash_n(script.read_text())
        out = tmp_path / "out"

        # first attempt: USR1 once the first checkpoint is complete
        with open(tmp_path / "attempt1.log", "w") as log:
            job = subprocess.Popen(["bash", str(script)], env=fake_slurm["env"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.time() + 240
            while not (out / f"checkpoint-{self.SAVE_STEPS}" / "trainer_state.json").exists():
                assert job.poll() is None, (tmp_path / "attempt1.log").read_text()[-4000:]
                assert time.time() < deadline, "no checkpoint within 240 s"
                time.sleep(0.05)
            job.send_signal(signal.SIGUSR1)
            job.wait(timeout=120)
        first = (tmp_path / "attempt1.log").read_text()
        assert "USR1 received, requeueing job 777" in first
        assert (fake_slurm["state"] / "scontrol.log").read_text() == "requeue 777\n"
        assert not (out / "train_results.json").exists(), "the first attempt was stopped before the end"
        last = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
        assert last < self.MAX_STEPS

        # the requeued job: same script, same command line
        env = dict(fake_slurm["env"], SLURM_RESTART_COUNT="1")
        proc = _run_fake(script, env, tmp_path, timeout=300)
        second = proc.stdout + proc.stderr
        assert proc.returncode == 0, second[-4000:]
        assert "(restart 1)" in second
        assert "resuming from the last checkpoint" in second and f"checkpoint-{last}" in second
        state = json.loads((out / "trainer_state.json").read_text())
        assert state["global_step"] == self.MAX_STEPS
        assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, self.MAX_STEPS + 1))
        assert (out / "model.safetensors").is_file() and (out / "train_results.json").is_file()

    def test_accelerate_launcher_trains_on_both_ranks(self, fake_slurm, tmp_path, tiny_gpt2_dir):
        (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in edit_rows()))
        script = tmp_path / "job.sbatch"
        assert slurm_main([
            "--nodes", "1", "--gpus_per_node", "2", "--launcher", "accelerate", "--master_port", str(_free_port()),
            "--python", sys.executable, "--workdir", str(tmp_path), "--output", str(script), "--no_requeue", "--",
            "--model_name_or_path", str(tiny_gpt2_dir), "--train_file", "data.jsonl", "--validation_split_percentage", "0",
            "--output_dir", "out", "--cache_dir", "cache", "--block_size", "256", "--train_diff_model", "--ignore_long_samples",
            "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no", "--max_steps", "3",
            "--do_train", "--use_cpu", "--ddp_backend", "gloo",
        ]) == 0
        proc = _run_fake(script, fake_slurm["env"], tmp_path, timeout=300)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        results = json.loads((tmp_path / "out" / "train_results.json").read_text())
        assert results["epoch"] == pytest.approx(0.3)  # 3 steps x 2 rows x 2 ranks of 40 rows
