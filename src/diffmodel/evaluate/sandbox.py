"""Run untrusted Python (model-written code and its tests) in a contained child process.

``run_python(source)`` runs one program and returns a :class:`RunResult` whose
``status`` is one of :class:`Outcome`: ``passed`` (ran to its end), ``failed``
(raised, or exited early), ``timed_out`` (wall clock or CPU limit), ``crashed``
(killed by a signal, out of memory, or stopped for a blocked operation);
``did_not_apply`` is used by callers for a diff that gave no program to run.
``run_many(sources)`` runs many in parallel, results in input order.

What contains a run, outside in (layers probed once by :func:`protections`;
``run_python(source, layers=...)`` picks some, e.g. one alone in tests):

1. An OS layer, the strongest that can start a run here: ``bwrap``
   (bubblewrap: fresh PID, network, IPC and UTS namespaces, no
   capabilities, a read-only view of ``/usr``, the interpreter and the
   program, a private tmpfs :data:`SANDBOX_HOME` as the only writable place,
   nothing else of the host), else ``unshare`` (fresh PID, network, IPC, UTS
   and mount namespaces over the host's files). Either way nothing
   outlives the run and no process outside it can be signalled. When
   neither works, :func:`protections` gives a ``warning`` naming what is
   missing and how to get it (:data:`HOW_TO_GET`).
2. Its own process and session (the group is killed on timeout), started
   with ``python -I`` and, by default, ``-S`` (no site-packages), a minimal
   environment, stdin closed, a fresh folder deleted afterwards.
3. Resource limits set in the child (``RLIMIT_AS``, ``RLIMIT_CPU``,
   ``RLIMIT_FSIZE``, ``RLIMIT_NPROC`` = 0, no core files); as root the child
   drops to ``nobody`` (always in bubblewrap, whose view makes the
   interpreter reachable; under ``unshare`` or alone only when ``nobody``
   can read the interpreter), so ``RLIMIT_NPROC`` holds at the kernel.
4. The guard (:mod:`diffmodel.evaluate.guard`, whose text the child runs
   as ``python -c``): replaces the calls a program would use to escape
   and allows writes only inside the run's folder; a blocked call raises
   ``SandboxViolation`` and makes the run ``crashed``.

Invariants:
- ``passed`` means exit status 0 *and* the last report line is
  ``completed:SECRET`` with this run's secret: 128 random bits written into
  a pipe that the harness reads and closes before the program runs, and
  reported only when the program ran to its last line in the first process
  (:func:`classify`). Exit status alone, or a line the program wrote, never
  passes.
- stdout/stderr go to files outside the run's view; only the last
  :attr:`Limits.max_output` characters of each are kept.
- The kernel layers hold against code written to break out of Python; the
  guard stops ordinary code (model-written mistakes, an accidental ``rm``)
  and the calls it names, not a determined attacker with ``gc`` tricks.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from enum import Enum
from functools import lru_cache
from importlib import resources

from diffmodel.evaluate.guard import COMPLETED


class Outcome(str, Enum):
    """What became of one run (or of a diff that gave nothing to run)."""

    PASSED = "passed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CRASHED = "crashed"
    DID_NOT_APPLY = "did_not_apply"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Limits:
    """Limits of one run."""

    timeout: float = 10.0
    """Wall-clock seconds before the process group is killed (``timed_out``)."""
    memory_mb: int = 1024
    """Address space of the child (``RLIMIT_AS``); allocating past it raises MemoryError (``crashed``)."""
    cpu_seconds: int | None = None
    """CPU seconds (``RLIMIT_CPU``); default: the timeout rounded up, plus one."""
    file_size_mb: int = 16
    """Largest file the child may write, stdout and stderr included (``RLIMIT_FSIZE``)."""
    max_output: int = 4000
    """Characters of stdout and of stderr kept in the result (the end of each)."""
    site_packages: bool = False
    """Let the program import installed packages (drops ``-S``); tests of HumanEval need none."""

    def cpu_limit(self) -> int:
        return int(self.cpu_seconds if self.cpu_seconds is not None else int(self.timeout + 0.999) + 1)


@dataclass
class RunResult:
    status: Outcome
    #: exit status; negative: killed by that signal; None when killed on timeout
    returncode: int | None
    seconds: float
    stdout: str = ""
    stderr: str = ""
    #: the first blocked operation (e.g. ``os.fork``, ``socket.socket``, ``open for writing /tmp/x``), else None
    violation: str | None = None
    #: one line on why: ``AssertionError``, ``MemoryError``, ``killed by SIGKILL``, ``wall clock 10.0 s``...
    detail: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = str(self.status)
        return d


class SandboxError(RuntimeError):
    """The sandbox itself could not start a run (not the program's fault)."""


# -- the guard: runs in the child before the program (diffmodel/evaluate/guard.py) ------------------


@lru_cache(maxsize=1)
def guard_source() -> str:
    """The text of :mod:`diffmodel.evaluate.guard`, run by the child as ``python -c``."""
    return resources.files("diffmodel.evaluate").joinpath("guard.py").read_text(encoding="utf-8")


# -- the layers ----------------------------------------------------------------------------------

#: The OS layers, strongest first; a run uses at most one of them.
OS_LAYERS = ("bwrap", "unshare")
#: Every layer a run may use; the guard is always the innermost.
LAYERS = (*OS_LAYERS, "guard")
#: The run's folder inside bubblewrap: a private tmpfs, the only writable place there.
SANDBOX_HOME = "/sandbox"
#: Python modules imported by the start-up probe: a run must get this far.
PROBE_PROGRAM = "import math, json, re, collections, itertools, hashlib, string, random\n"

_USERNS = ("when not running as root, allow unprivileged user namespaces "
           "(sysctl -w kernel.unprivileged_userns_clone=1 where that setting exists, and user.max_user_namespaces above 0)")
#: How to get each OS layer, for warnings and errors.
HOW_TO_GET = {
    "bwrap": f"install bubblewrap (apt-get install bubblewrap; scripts/setup.sh does it when run as root) and, {_USERNS}",
    "unshare": f"install util-linux (apt-get install util-linux) and, {_USERNS}",
}


@dataclass(frozen=True)
class Plan:
    """How one run is contained: its OS layer (or None), the guard, and the user the child drops to."""

    os_layer: str | None
    guard: bool
    uid: int | None = None
    gid: int | None = None

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(name for name in (self.os_layer, "guard" if self.guard else None) if name)


def _nobody() -> tuple[int, int] | None:
    """(uid, gid) of ``nobody`` when the evaluator is root (65534 where there is no such user), else None."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (KeyError, ImportError):
        return 65534, 65534


def _interpreter(site_packages: bool) -> tuple[str, list[tuple[str, str]]]:
    """The interpreter to start and the folders it needs, as (host path, path in the sandbox) pairs."""
    real = os.path.realpath(sys.executable)
    binds = [(os.path.realpath(sys.base_prefix),) * 2, (os.path.dirname(real),) * 2]
    if not site_packages:
        return real, binds
    # a virtualenv: its pyvenv.cfg and site-packages, reached through the path it was started by
    return sys.executable, [*binds, (os.path.realpath(sys.prefix), os.path.abspath(sys.prefix))]


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _bwrap_argv(binds: list[tuple[str, str]], program: str, tmpfs_bytes: int, keep_setuid: bool) -> list[str]:
    """bubblewrap: fresh PID, network, IPC and UTS namespaces, a read-only view of the interpreter, a private tmpfs."""
    argv = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if keep_setuid:  # root: only what the guard needs to drop to nobody, lost with the drop
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    bound = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    made: set[str] = set()
    for source, dest in sorted(set(binds), key=lambda b: b[1]):
        if any(_under(dest, b) for b in bound):
            continue
        parts = dest.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/" + "/".join(parts[:i])
            if parent not in made:  # created traversable, whatever the host's mode (e.g. /root is 0700)
                argv += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        argv += ["--ro-bind", source, dest]
        bound.append(dest)
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "0777", "--size", str(tmpfs_bytes), "--tmpfs", SANDBOX_HOME,
             "--ro-bind", program, SANDBOX_HOME + "/program.py", "--chdir", SANDBOX_HOME, "--"]
    return argv


def _unshare_argv() -> list[str]:
    """unshare: fresh PID (the child is PID 1, killed with unshare), network, IPC, UTS and mount namespaces."""
    argv = ["unshare", "--pid", "--fork", "--kill-child", "--net", "--ipc", "--uts", "--mount", "--mount-proc"]
    if os.geteuid() != 0:
        argv.append("--map-root-user")
    return [*argv, "--"]


@lru_cache(maxsize=None)
def _probe(os_layer: str | None) -> tuple[bool, int | None, int | None]:
    """(works, uid, gid): can a run start under ``os_layer`` here, and as which user (nobody when root can drop)?"""
    if os_layer is not None and shutil.which(os_layer) is None:
        return False, None, None
    nobody = _nobody()
    for uid, gid in ([nobody] if nobody else []) + [(None, None)]:
        try:
            if _execute(PROBE_PROGRAM, Limits(timeout=20.0), Plan(os_layer, False, uid, gid)).status is Outcome.PASSED:
                return True, uid, gid
        except (OSError, SandboxError):
            pass
    return False, None, None


def plan(layers: Iterable[str] | None = None) -> Plan:
    """The plan for ``layers`` (default: :func:`protections`' ``layers``); SandboxError if one is not available."""
    chosen = tuple(protections()["layers"] if layers is None else layers)
    unknown = [name for name in chosen if name not in LAYERS]
    if unknown:
        raise ValueError(f"unknown sandbox layer(s) {unknown}; the layers are {list(LAYERS)}")
    os_layers = [name for name in chosen if name in OS_LAYERS]
    if len(os_layers) > 1:
        raise ValueError(f"a run uses at most one OS layer, got {os_layers}")
    os_layer = os_layers[0] if os_layers else None
    works, uid, gid = _probe(os_layer)
    if not works:
        where = f"the {os_layer} layer" if os_layer else "the plain interpreter"
        raise SandboxError(f"{where} cannot start a run on this machine; {HOW_TO_GET.get(os_layer, 'check the interpreter')}")
    return Plan(os_layer, "guard" in chosen, uid, gid)


@lru_cache(maxsize=1)
def protections() -> dict:
    """The layers runs use here, probed once per process: the strongest OS layer that works, then the guard.

    ``layers`` (e.g. ``["bwrap", "guard"]``), ``available`` (each layer: can it
    start a run here), ``run_as`` (``"nobody"`` when the child drops from
    root to that user, else ``"root"`` or ``"self"``), ``nproc_enforced``
    (whether ``RLIMIT_NPROC`` stops forks at the kernel), ``uid``/``gid``,
    and ``warning``: None when bubblewrap is in force, else what is missing
    and how to get it.
    """
    available = {name: _probe(name)[0] for name in OS_LAYERS}
    available["guard"] = True
    os_layer = next((name for name in OS_LAYERS if available[name]), None)
    _, uid, gid = _probe(os_layer)
    layers = [os_layer, "guard"] if os_layer else ["guard"]
    return {
        "layers": layers,
        "available": available,
        "run_as": "nobody" if uid is not None else ("root" if os.geteuid() == 0 else "self"),
        "uid": uid,
        "gid": gid,
        "nproc_enforced": os.geteuid() != 0 or uid is not None,
        "warning": None if os_layer == OS_LAYERS[0] else missing_layer_message(available),
    }


def missing_layer_message(available: dict) -> str:
    """What is missing when bubblewrap cannot be used, what runs have instead, and how to get it."""
    why = "is not installed" if shutil.which("bwrap") is None else "is installed but cannot start a sandbox here"
    instead = " + ".join(name for name in LAYERS if available.get(name) and name != "bwrap")
    return (f"bubblewrap (bwrap) {why}, so generated code runs under {instead} only: it can read host files "
            f"(unshare and the guard do not hide them) and, as root, keeps more power. To get it: {HOW_TO_GET['bwrap']}.")


def describe(prot: dict) -> str:
    """One line: the layers in force and the user runs drop to."""
    return f"sandbox layers: {' + '.join(prot['layers'])} (runs as {prot['run_as']})"


def _config(report_fd: int, nonce_fd: int, limits: Limits, run: Plan) -> dict:
    return {
        "report_fd": report_fd,
        "nonce_fd": nonce_fd,
        "memory": int(limits.memory_mb) * 1024 * 1024,
        "cpu": limits.cpu_limit(),
        "fsize": int(limits.file_size_mb) * 1024 * 1024,
        "uid": run.uid,
        "gid": run.gid,
        "guard": run.guard,
        "pid_namespace": run.os_layer is not None,
    }


def _environment(home: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home, "TMPDIR": home}


def _tail(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * limit))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")[-limit:]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify(returncode: int | None, report: list[str], timed_out: bool, limits: Limits,
             secret: str) -> tuple[Outcome, str | None, str]:
    """(status, violation, detail) from how the child ended and what it reported.

    ``passed`` needs exit status 0, no violation, and the last report line to
    be ``completed:SECRET`` with this run's secret: the exit status alone, or a
    ``completed`` line the program wrote itself, never passes.
    """
    violation = next((line.split(":", 1)[1] for line in report if line.startswith("violation:")), None)
    exception = next((line.split(":", 1)[1] for line in report if line.startswith("exception:")), None)
    exited = next((line.split(":", 1)[1] for line in report if line.startswith("systemexit:")), None)
    if timed_out:
        return Outcome.TIMED_OUT, violation, f"wall clock {limits.timeout:g} s"
    if "cpulimit" in report or returncode == -signal.SIGXCPU:
        return Outcome.TIMED_OUT, violation, f"CPU limit {limits.cpu_limit()} s (SIGXCPU)"
    if returncode is not None and returncode < 0:
        return Outcome.CRASHED, violation, f"killed by {_signal_name(-returncode)}"
    if violation is not None:
        return Outcome.CRASHED, violation, f"blocked: {violation}"
    if exception == "MemoryError":
        return Outcome.CRASHED, None, f"MemoryError (memory limit {limits.memory_mb} MiB)"
    if returncode == 0 and report and report[-1] == f"{COMPLETED}:{secret}":
        return Outcome.PASSED, None, ""
    if exception:
        return Outcome.FAILED, None, exception
    if exited is not None:
        return Outcome.FAILED, None, f"exited before its end (SystemExit {exited})"
    return Outcome.FAILED, None, f"exit status {returncode} without the harness's report of its end"


def run_python(source: str, limits: Limits = Limits(), layers: Iterable[str] | None = None) -> RunResult:
    """Run ``source`` as a program in a contained child; never raises for anything the program does.

    ``layers``: the layers to use (default: all that :func:`protections` found),
    e.g. ``("bwrap",)`` for bubblewrap without the guard; SandboxError if one
    is not available here.
    """
    return _execute(source, limits, plan(layers))


def _execute(source: str, limits: Limits, run: Plan) -> RunResult:
    base = tempfile.mkdtemp(prefix="diffmodel-sandbox-")
    try:
        work = os.path.join(base, "work")
        os.mkdir(work, 0o755)
        ctl = os.path.join(base, "ctl")
        os.mkdir(ctl, 0o700)
        program = os.path.join(work, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(source)
        os.chmod(program, 0o644)
        if run.uid is not None and run.os_layer != "bwrap":
            os.chmod(base, 0o755)
            os.chown(work, run.uid, run.gid)
            os.chown(program, run.uid, run.gid)
        report_path = os.path.join(ctl, "report")
        out_path, err_path = os.path.join(ctl, "stdout"), os.path.join(ctl, "stderr")
        python, binds = _interpreter(limits.site_packages)
        if run.os_layer == "bwrap":
            prefix, home = _bwrap_argv(binds, program, 4 * int(limits.file_size_mb) * 1024 * 1024, run.uid is not None), SANDBOX_HOME
        elif run.os_layer == "unshare":
            prefix, home = _unshare_argv(), work
        else:
            prefix, home = [], work
        command = [*prefix, python, "-I"] + ([] if limits.site_packages else ["-S"])
        secret = secrets.token_hex(16)
        nonce_read, nonce_write = os.pipe()
        os.write(nonce_write, secret.encode("ascii"))
        os.close(nonce_write)
        report_fd = os.open(report_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        timed_out = False
        start = time.perf_counter()
        try:
            cfg = _config(report_fd, nonce_read, limits, run)
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                try:
                    proc = subprocess.Popen(
                        [*command, "-c", guard_source(), json.dumps(cfg)],
                        cwd=work, env=_environment(home), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                        pass_fds=(report_fd, nonce_read), start_new_session=True, close_fds=True,
                    )
                except OSError as e:
                    raise SandboxError(f"cannot start the sandboxed interpreter: {e}") from e
                finally:
                    os.close(nonce_read)
                try:
                    proc.wait(timeout=limits.timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    _kill_group(proc)
        finally:
            os.close(report_fd)
        seconds = time.perf_counter() - start
        with open(report_path, encoding="utf-8", errors="replace") as f:
            report = [line.strip() for line in f if line.strip()]
        returncode = None if timed_out else proc.returncode
        if run.os_layer == "bwrap" and returncode is not None and returncode > 128 \
                and not any(line.startswith("systemexit:") for line in report):
            returncode = 128 - returncode  # bubblewrap exits 128 + N when its child is killed by signal N
        status, violation, detail = classify(returncode, report, timed_out, limits, secret)
        return RunResult(status, returncode, seconds,
                         _tail(out_path, limits.max_output), _tail(err_path, limits.max_output), violation, detail)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill whatever is left of the child's session and reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def default_workers() -> int:
    return max(1, min(32, (os.cpu_count() or 1)))


def run_many(
    sources: Iterable[str],
    limits: Limits = Limits(),
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    layers: Iterable[str] | None = None,
) -> list[RunResult]:
    """Run every source in its own sandbox, ``workers`` at a time; results in input order."""
    items: Sequence[str] = list(sources)
    if not items:
        return []
    run = plan(layers)  # probed once, before the threads start
    workers = workers or default_workers()

    def one(src: str) -> RunResult:
        result = _execute(src, limits, run)
        if progress is not None:
            progress(1)
        return result

    if workers == 1:
        return [one(s) for s in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, items))


__all__ = [
    "HOW_TO_GET", "LAYERS", "Limits", "OS_LAYERS", "Outcome", "Plan", "RunResult", "SandboxError", "classify", "describe",
    "guard_source", "missing_layer_message", "plan", "protections", "run_many", "run_python",
]
