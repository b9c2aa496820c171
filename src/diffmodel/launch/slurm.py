"""An sbatch script for ``diffmodel train`` on N nodes x G GPUs.

:func:`render_script` turns :class:`SlurmOptions` and a ``diffmodel train``
command line into a bash script for ``sbatch``; :func:`check_train_args`
refuses train arguments that would defeat requeueing and returns notes about
the others. Both are pure (no file is written, nothing is run).

What the script does, in order:

1. ``#SBATCH`` lines: one task per node (the launcher starts the G ranks of
   its node), G GPUs per node, the log file ``LOG_DIR/%x-%j.out`` opened in
   append mode (a requeued job adds to the same log), and unless requeueing is
   off ``--requeue`` with ``--signal=B:USR1@SECONDS``.
2. The environment: ``MASTER_ADDR`` = first host of
   ``scontrol show hostnames $SLURM_JOB_NODELIST``, ``MASTER_PORT``, the NCCL
   settings and other variables asked for, then the setup lines (module load,
   source venv/bin/activate, ...).
3. ``srun`` starts one launcher per node in the background:
   ``torchrun`` (c10d rendezvous at ``MASTER_ADDR:MASTER_PORT``, so node ranks
   need no bookkeeping), ``accelerate launch`` (static rendezvous,
   ``--machine_rank $SLURM_NODEID``) or the ``deepspeed`` launcher (a hostfile
   written from the node list, ``--no_ssh --node_rank $SLURM_NODEID``). The
   train arguments travel as a bash array, so no quoting is lost.
4. Requeue on preemption or time limit: Slurm sends USR1 to the batch shell
   SECONDS before the end; the trap calls ``scontrol requeue $SLURM_JOB_ID``.
   The requeued job runs the same command, and ``diffmodel train`` resumes from
   the last checkpoint in ``--output_dir`` by itself (it does unless
   ``--overwrite_output_dir`` or ``--resume_from_checkpoint`` is given, which
   is why :func:`check_train_args` refuses those with requeueing). Work since
   the last checkpoint is lost: choose ``--save_steps`` accordingly.

The batch shell waits for ``srun`` with ``wait`` in a loop, because bash runs
a trap only between commands: a foreground ``srun`` would hold the trap back
until training ended.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from diffmodel.errors import DiffModelError, raise_if_problems

LAUNCHERS = ("torchrun", "accelerate", "deepspeed")

#: The module every launcher starts: the diffmodel command line, with ``train`` as its first argument.
ENTRY = ("-m", "diffmodel.cli", "train")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


@dataclass
class SlurmOptions:
    nodes: int = 1
    gpus_per_node: int = 8
    launcher: str = "torchrun"
    job_name: str = "diffmodel"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    gres: str | None = None
    master_port: int = 29500
    nccl: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    sbatch: list[str] = field(default_factory=list)
    workdir: str = "."
    log_dir: str = "logs"
    requeue: bool = True
    signal_seconds: int = 120
    accelerate_config: str | None = None
    python: str = "python3"

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


def parse_assignments(items: list[str], flag: str, prefixes: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``KEY=VALUE`` strings as pairs; every malformed one is reported at once."""
    pairs, problems = [], []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.match(key):
            problems.append(f"{flag} {item!r} is not KEY=VALUE with KEY a variable name (e.g. {flag} NCCL_DEBUG=INFO)")
        elif prefixes and not key.startswith(prefixes):
            problems.append(f"{flag} {key} is not an NCCL variable (names start with {' or '.join(prefixes)}); pass other variables with --env")
        else:
            pairs.append((key, value))
    raise_if_problems(problems, "diffmodel slurm cannot write the script")
    return pairs


def option_problems(o: SlurmOptions) -> list[str]:
    problems = []
    if o.nodes < 1:
        problems.append(f"--nodes {o.nodes} must be at least 1")
    if o.gpus_per_node < 1:
        problems.append(f"--gpus_per_node {o.gpus_per_node} must be at least 1")
    if o.launcher not in LAUNCHERS:
        problems.append(f"--launcher {o.launcher!r} is unknown; use one of {', '.join(LAUNCHERS)}")
    if not 1 <= o.master_port <= 65535:
        problems.append(f"--master_port {o.master_port} must be a TCP port (1-65535)")
    if o.requeue and o.signal_seconds < 1:
        problems.append(f"--signal_seconds {o.signal_seconds} must be at least 1 (how long before the end Slurm warns the job)")
    if o.time is not None and not _SLURM_TIME.match(o.time):
        problems.append(f"--time {o.time!r} is not a Slurm time (MINUTES, HH:MM:SS or D-HH:MM:SS)")
    if not o.job_name or re.search(r"\s", o.job_name):
        problems.append(f"--job_name {o.job_name!r} must be one word")
    if o.cpus_per_task is not None and o.cpus_per_task < 1:
        problems.append(f"--cpus_per_task {o.cpus_per_task} must be at least 1")
    if o.accelerate_config and o.launcher != "accelerate":
        problems.append("--accelerate_config only applies to --launcher accelerate")
    return problems


def _accelerate_config(o: SlurmOptions) -> Path:
    from diffmodel.launch import config_path

    path = Path(o.accelerate_config) if o.accelerate_config else config_path("accelerate_ddp.yaml")
    if not path.is_file():
        raise DiffModelError(f"--accelerate_config {path} does not exist; use one of the shipped ones (diffmodel.launch.config_path) or your own")
    return path


def _read_train_args(train_args: list[str]) -> dict:
    """The train options named on the command line (or in the single JSON/YAML argument file), as a dict."""
    if len(train_args) == 1 and train_args[0].endswith((".json", ".yaml", ".yml")):
        path = Path(train_args[0])
        if not path.is_file():
            raise DiffModelError(f"arguments file {path} does not exist")
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise DiffModelError(f"{path} must hold a mapping of diffmodel train options")
        return data
    from diffmodel.train.args import make_parser

    parser = make_parser()
    try:
        namespace, unknown = parser.parse_known_args(train_args)
    except SystemExit:
        raise DiffModelError("the diffmodel train arguments after -- do not parse (see the message above); check them with 'diffmodel train --help'") from None
    if unknown:
        raise DiffModelError(f"diffmodel train does not know {' '.join(unknown)}; see 'diffmodel train --help'")
    return vars(namespace)


def check_train_args(train_args: list[str], o: SlurmOptions) -> list[str]:
    """Refuse what would break requeue-and-resume; return notes about the rest (to print)."""
    if not train_args:
        raise DiffModelError("no diffmodel train arguments: put them after --, e.g. diffmodel slurm --nodes 2 -- --model_name_or_path M --train_file F --output_dir out --do_train")
    args = _read_train_args(train_args)
    problems, notes = [], []
    if o.requeue and args.get("overwrite_output_dir"):
        problems.append(
            "--overwrite_output_dir with requeueing would restart from step 0 after every preemption; drop it "
            "(use a new or empty --output_dir to start fresh), or pass --no_requeue"
        )
    if o.requeue and args.get("resume_from_checkpoint"):
        problems.append(
            "--resume_from_checkpoint with requeueing would go back to that checkpoint after every preemption; drop it "
            "(diffmodel train resumes from the last checkpoint in --output_dir by itself), or pass --no_requeue"
        )
    if o.requeue and str(args.get("save_strategy", "steps")).lower().endswith("no"):
        notes.append("--save_strategy no: a requeued job has no checkpoint to resume from and starts over")
    if o.launcher == "deepspeed" and not args.get("deepspeed"):
        notes.append("--launcher deepspeed without --deepspeed CONFIG in the train arguments trains with plain DDP; add e.g. --deepspeed " + str(_shipped("ds_zero3.json")))
    if o.launcher == "accelerate":
        config = yaml.safe_load(_accelerate_config(o).read_text()) or {}
        kind = str(config.get("distributed_type", ""))
        if config.get("mixed_precision") == "bf16" and not args.get("bf16"):
            if kind == "DEEPSPEED":
                problems.append(f"{_accelerate_config(o).name} asks for bf16 and DeepSpeed refuses to start when the train arguments disagree: add --bf16")
            else:
                notes.append(f"{_accelerate_config(o).name} trains in bf16 autocast although the train arguments have no --bf16")
        if kind == "FSDP" and args.get("fsdp"):
            problems.append(f"{_accelerate_config(o).name} already sets up FSDP: drop --fsdp/--fsdp_config from the train arguments, or use the DDP config")
        if kind == "DEEPSPEED" and args.get("deepspeed"):
            notes.append(f"--deepspeed in the train arguments replaces the DeepSpeed settings of {_accelerate_config(o).name}")
    raise_if_problems(problems, "diffmodel slurm cannot write the script")
    return notes


def missing_here(train_args: list[str], workdir: str) -> list[str]:
    """What the train arguments name that this machine does not have, seen from ``workdir`` (where the job starts):
    data files and globs, the model and tokenizer folders, the DeepSpeed config. Notes, not errors: the nodes may
    see files this machine does not (node-local scratch); where they share its file system, the job would fail."""
    from diffmodel.checkpoint import check_model_folder, check_tokenizer_source
    from diffmodel.data.load import expand_files
    from diffmodel.data.mix import parse_sources, spec_of

    args = _read_train_args(train_args)
    listed = lambda value: [] if value in (None, "") else [value] if isinstance(value, str) else list(value)
    found = []
    here = os.getcwd()
    try:
        os.chdir(workdir)
    except OSError:
        return [f"--workdir {workdir} does not exist on this machine, so the train arguments' files were not checked"]
    try:
        sources, _ = parse_sources([spec_of(item, "") for item in listed(args.get("train_file"))])
        found += expand_files([s.pattern for s in sources], "--train_file")[1]
        found += expand_files(listed(args.get("validation_file")), "--validation_file")[1]
        for flag, check in (("model_name_or_path", check_model_folder),
                            ("tokenizer_name", lambda path: check_tokenizer_source(path, "--tokenizer_name"))):
            if args.get(flag):
                try:
                    check(args[flag])
                except DiffModelError as err:
                    found.append(str(err) if str(err).startswith(f"--{flag}") else f"--{flag}: {err}")
        config = args.get("deepspeed")
        if isinstance(config, str) and config and not config.lstrip().startswith("{") and not os.path.isfile(config):
            found.append(f"--deepspeed {args['deepspeed']}: no such file")
    finally:
        os.chdir(here)
    return [f"{problem} (seen from {Path(workdir).resolve()} on this machine: the job fails at its start unless the nodes have it)"
            for problem in found]


def _shipped(name: str) -> Path:
    from diffmodel.launch import config_path

    return config_path(name)


def format_args(args: list[str], indent: str = "  ") -> str:
    """Shell-quoted arguments, one flag (with its values) per line."""
    lines: list[list[str]] = []
    for a in args:
        if a.startswith("--") or not lines:
            lines.append([a])
        else:
            lines[-1].append(a)
    return "\n".join(indent + " ".join(shlex.quote(x) for x in line) for line in lines)


def node_command(o: SlurmOptions) -> str:
    """The command each node runs (single-quoted for ``bash -c``; ``$SLURM_NODEID`` expands on the node)."""
    entry = " ".join(ENTRY)
    if o.launcher == "torchrun":
        cmd = (
            '"$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE" '
            '--rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$SLURM_JOB_ID" --max_restarts=0'
        )
    elif o.launcher == "accelerate":
        cmd = (
            '"$PYTHON" -m accelerate.commands.launch --config_file="$DIFFMODEL_ACCELERATE_CONFIG" '
            '--num_machines="$NNODES" --num_processes="$((NNODES * GPUS_PER_NODE))" --machine_rank="$SLURM_NODEID" '
            '--main_process_ip="$MASTER_ADDR" --main_process_port="$MASTER_PORT" --rdzv_backend=static --same_network'
        )
    else:
        cmd = (
            '"$PYTHON" -m deepspeed.launcher.runner --hostfile="$DIFFMODEL_HOSTFILE" --no_ssh --node_rank="$SLURM_NODEID" '
            '--master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --num_gpus="$GPUS_PER_NODE" --no_local_rank --module'
        )
        entry = " ".join(ENTRY[1:])
    return f"exec {cmd} {entry} \"$@\""


def render_script(o: SlurmOptions, train_args: list[str]) -> str:
    """The sbatch script (bash) for ``o`` running ``diffmodel train TRAIN_ARGS``."""
    raise_if_problems(option_problems(o), "diffmodel slurm cannot write the script")
    nccl = parse_assignments(o.nccl, "--nccl", ("NCCL_", "TORCH_NCCL_"))
    env = parse_assignments(o.env, "--env")
    workdir = Path(o.workdir).resolve()
    log_dir = (workdir / o.log_dir).resolve()
    q = shlex.quote

    sb = [f"--job-name={o.job_name}", f"--nodes={o.nodes}", "--ntasks-per-node=1"]
    sb.append(f"--gres={o.gres}" if o.gres else f"--gpus-per-node={o.gpus_per_node}")
    for flag, value in (("cpus-per-task", o.cpus_per_task), ("mem", o.mem), ("partition", o.partition),
                        ("account", o.account), ("qos", o.qos), ("time", o.time)):
        if value is not None:
            sb.append(f"--{flag}={value}")
    sb += [f"--chdir={workdir}", f"--output={log_dir}/%x-%j.out", "--open-mode=append"]
    sb += ["--requeue", f"--signal=B:USR1@{o.signal_seconds}"] if o.requeue else ["--no-requeue"]
    sb += list(o.sbatch)

    out = [
        "#!/bin/bash",
        f"# diffmodel train on {o.nodes} node(s) x {o.gpus_per_node} GPU(s) = {o.world_size} ranks, started by {o.launcher} under srun.",
        f"# Written by 'diffmodel slurm'. Submit with: sbatch THIS_FILE. The log folder must exist first: diffmodel slurm "
        f"creates it when it writes this file (after --dry_run: mkdir -p {q(str(log_dir))}).",
    ]
    out += [f"#SBATCH {line}" for line in sb]
    out += [
        "",
        "set -uo pipefail",
        f"cd {q(str(workdir))} || exit 1",
        "",
        f"export PYTHON={q(o.python)}",
        f'export NNODES="${{SLURM_NNODES:-{o.nodes}}}"',
        f"export GPUS_PER_NODE={o.gpus_per_node}",
        'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"',
        "export MASTER_ADDR",
        f"export MASTER_PORT={o.master_port}",
        "export PYTHONUNBUFFERED=1",
        "# srun does not inherit --cpus-per-task from sbatch (Slurm >= 22.05)",
        'if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi',
    ]
    if nccl:
        out += ["", "# NCCL settings (--nccl)"] + [f"export {k}={q(v)}" for k, v in nccl]
    if env:
        out += ["", "# environment (--env)"] + [f"export {k}={q(v)}" for k, v in env]
    if o.setup:
        out += ["", "# setup (--setup)"] + list(o.setup)
    out += ["", f"LOG_DIR={q(str(log_dir))}", 'mkdir -p "$LOG_DIR"']
    if o.launcher == "accelerate":
        out.append(f"export DIFFMODEL_ACCELERATE_CONFIG={q(str(_accelerate_config(o).resolve()))}")
    if o.launcher == "deepspeed":
        out += [
            "# the deepspeed launcher learns the nodes from a hostfile: one line per node, G slots each",
            'export DIFFMODEL_HOSTFILE="$LOG_DIR/hostfile-$SLURM_JOB_ID"',
            'scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\\$/ slots=$GPUS_PER_NODE/" > "$DIFFMODEL_HOSTFILE"',
        ]
    out += [
        'echo "[diffmodel] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST: $NNODES node(s) x $GPUS_PER_NODE GPU(s), rendezvous $MASTER_ADDR:$MASTER_PORT"',
        "",
        "# diffmodel train arguments. A requeued job runs them again and resumes from the last checkpoint in --output_dir.",
        "TRAIN_ARGS=(",
        format_args(train_args),
        ")",
    ]
    if o.requeue:
        out += [
            "",
            "# Slurm sends USR1 before the time limit or a preemption (--signal=B:USR1@SECONDS): requeue the job.",
            "requeue_job() {",
            '  echo "[diffmodel] $(date): USR1 received, requeueing job $SLURM_JOB_ID; it resumes from the last checkpoint"',
            '  scontrol requeue "$SLURM_JOB_ID"',
            "}",
            "trap requeue_job USR1",
        ]
    out += [
        "",
        "# one launcher per node; it starts that node's GPUS_PER_NODE ranks",
        'srun --label --kill-on-bad-exit=1 --nodes="$NNODES" --ntasks-per-node=1 \\',
        f"  bash -c {q(node_command(o))} diffmodel-train \"${{TRAIN_ARGS[@]}}\" &",
        "SRUN_PID=$!",
        "# wait in a loop: a trapped signal ends 'wait' early while srun still runs",
        "while true; do",
        '  wait "$SRUN_PID"',
        "  STATUS=$?",
        '  kill -0 "$SRUN_PID" 2>/dev/null || break',
        "done",
        'echo "[diffmodel] srun ended with status $STATUS"',
        'exit "$STATUS"',
        "",
    ]
    return "\n".join(out)
