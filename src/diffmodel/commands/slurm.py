"""``diffmodel slurm``: write (or print) an sbatch script for a ``diffmodel train`` command line.

    diffmodel slurm --nodes 8 --gpus_per_node 8 --launcher torchrun --partition gpu --time 2-00:00:00 \\
        --nccl NCCL_DEBUG=WARN --output train.sbatch -- \\
        --model_name_or_path MODEL --train_file data/*.jsonl.zst --output_dir out --do_train --bf16 ...

Everything after ``--`` is passed to ``diffmodel train`` unchanged (a leading
``diffmodel train`` or ``train`` is accepted and dropped). See
:mod:`diffmodel.launch.slurm` for what the script does.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from diffmodel.errors import DiffModelError
from diffmodel.launch.slurm import LAUNCHERS, SlurmOptions, check_train_args, missing_here, render_script


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffmodel slurm",
        description="Write an sbatch script that runs 'diffmodel train' on N nodes x G GPUs, requeued and resumed on preemption.",
        epilog="Put the diffmodel train arguments after --. Example: diffmodel slurm --nodes 2 --gpus_per_node 8 -- "
        "--model_name_or_path M --train_file data.jsonl --output_dir out --do_train --bf16",
    )
    p.add_argument("--nodes", type=int, default=1, help="Number of nodes (default 1).")
    p.add_argument("--gpus_per_node", type=int, default=8, help="GPUs per node = ranks per node (default 8).")
    p.add_argument("--launcher", choices=LAUNCHERS, default="torchrun", help="Launcher run on each node (default torchrun, c10d rendezvous).")
    p.add_argument("--job_name", default="diffmodel", help="Slurm job name (default diffmodel); also names the log file.")
    p.add_argument("--partition", help="Slurm partition.")
    p.add_argument("--account", help="Slurm account.")
    p.add_argument("--qos", help="Slurm quality of service.")
    p.add_argument("--time", help="Time limit, e.g. 2-00:00:00 or 12:00:00.")
    p.add_argument("--cpus_per_task", type=int, help="CPUs per node (one task per node).")
    p.add_argument("--mem", help="Memory per node, e.g. 0 (all) or 500G.")
    p.add_argument("--gres", help="Use '#SBATCH --gres=VALUE' (e.g. gpu:8) instead of --gpus-per-node, for clusters that want it.")
    p.add_argument("--master_port", type=int, default=29500, help="Rendezvous port on the first node (default 29500).")
    p.add_argument("--nccl", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help="NCCL settings to export, e.g. NCCL_DEBUG=WARN NCCL_IB_HCA=mlx5 (repeatable).")
    p.add_argument("--env", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help="Other environment variables to export, e.g. HF_HOME=/scratch/hf (repeatable).")
    p.add_argument("--setup", action="append", default=[], metavar="LINE", help="Shell line run before launching, e.g. 'source ~/venv/bin/activate' (repeatable).")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION", help="Extra sbatch option, e.g. --sbatch=--constraint=h100 (repeatable).")
    p.add_argument("--workdir", default=".", help="Folder the job runs in (default: the current one); relative train paths are relative to it.")
    p.add_argument("--log_dir", default="logs", help="Log folder, relative to --workdir (default logs); created when the script is written.")
    p.add_argument("--no_requeue", dest="requeue", action="store_false", help="Do not requeue on preemption or time limit.")
    p.add_argument("--signal_seconds", type=int, default=120, help="Seconds before the end at which Slurm sends USR1 to requeue (default 120).")
    p.add_argument("--accelerate_config", help="accelerate config file for --launcher accelerate (default: the shipped accelerate_ddp.yaml).")
    p.add_argument("--python", default="python3", help="Python interpreter on the nodes (default python3, after the --setup lines).")
    p.add_argument("-o", "--output", help="Script to write (default JOB_NAME.sbatch).")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="Print the script instead of writing it; create nothing.")
    return p


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(slurm options, train arguments) split at the first ``--``."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    train = argv[i + 1:]
    if train[:2] == ["diffmodel", "train"]:
        train = train[2:]
    elif train[:1] == ["train"]:
        train = train[1:]
    return argv[:i], train


def check_syntax(script: str) -> None:
    """Run ``bash -n`` on the script, if bash is here."""
    bash = shutil.which("bash")
    if bash is None:
        return
    proc = subprocess.run([bash, "-n"], input=script, text=True, capture_output=True)
    if proc.returncode != 0:
        raise DiffModelError(f"the generated script does not parse (bash -n): {proc.stderr.strip()}; check the --setup lines")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, train_args = split_argv(argv)
    ns = make_parser().parse_args(own)
    opts = SlurmOptions(**{k: v for k, v in vars(ns).items() if k not in ("output", "dry_run")})
    notes = check_train_args(train_args, opts) + missing_here(train_args, opts.workdir)
    script = render_script(opts, train_args)
    check_syntax(script)
    for note in notes:
        print(f"diffmodel slurm: note: {note}", file=sys.stderr)
    if ns.dry_run:
        sys.stdout.write(script)
        return 0
    from diffmodel.atomic import make_folder, write_text

    out = write_text(ns.output or f"{opts.job_name}.sbatch", script)
    out.chmod(out.stat().st_mode | 0o111)
    log_dir = make_folder(Path(opts.workdir).resolve() / opts.log_dir)
    print(f"wrote {out} ({opts.nodes} node(s) x {opts.gpus_per_node} GPU(s), {opts.launcher}); logs go to {log_dir}")
    print(f"submit with: sbatch {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
