"""Run untrusted Python (model-written code and its tests) in a contained child process.

``run_python(source)`` runs one program and returns a :class:`RunResult` whose
``status`` is one of :class:`Outcome`: ``passed`` (ran to its end), ``failed``
(raised, or exited early), ``timed_out`` (wall clock or CPU limit), ``crashed``
(killed by a signal, out of memory, or stopped for a blocked operation);
``did_not_apply`` is used by callers for a diff that gave no program to run.
``run_many(sources)`` runs many in parallel, results in input order.

What contains a run, outside in:

1. Its own process (its own session, so the whole group is killed on timeout),
   started with ``python -I`` (isolated: no ``PYTHON*`` variables, no user
   site, no script folder on ``sys.path``) and, by default, ``-S`` (no
   site-packages: tests need only the standard library), with a minimal
   environment (``PATH``, ``LANG``, ``HOME`` and ``TMPDIR`` set to the run's
   folder), stdin closed, in a fresh empty temporary folder that is deleted
   afterwards.
2. The network: when ``unshare -n`` works (root or user namespaces), the
   child gets a network namespace of its own, with no interface up.
3. Resource limits set in the child before the program runs: ``RLIMIT_AS``
   (memory), ``RLIMIT_CPU`` (CPU seconds: SIGXCPU, then SIGKILL a second
   later), ``RLIMIT_FSIZE`` (largest file
   written, stdout and stderr included), ``RLIMIT_NPROC`` = 0 (no new
   process or thread; the kernel does not enforce it for root), no core
   files. When the evaluator runs as root and the interpreter can be used by
   ``nobody``, the child also drops to that user (see :func:`protections`).
4. The guard (:mod:`diffmodel.evaluate.guard`, whose text the child runs
   as ``python -c``) that runs before the program and replaces the
   functions a program would use to escape: ``os.fork``/``forkpty``/
   ``system``/``popen``/``exec*``/``spawn*``/``posix_spawn*``/``kill``/
   ``killpg``/``_exit``, ``subprocess.Popen`` and ``_posixsubprocess``,
   ``socket.socket`` and friends, and ``ctypes`` (not importable); it allows
   opening files for writing (and removing, renaming, creating folders)
   only inside the run's folder. A blocked call raises
   :class:`SandboxViolation` (a ``BaseException``, so ``except Exception``
   does not swallow it) and is recorded; any recorded violation makes the
   run ``crashed`` with ``violation`` naming the call.

Invariants:
- ``passed`` means exit status 0 *and* the guard saw the program run to
  its last line: a program that calls ``sys.exit(0)`` before its tests, or
  ``os._exit``, does not pass.
- The guard reports to a file descriptor the program does not know the
  meaning of, and stdout/stderr go to files outside the run's folder; only
  the last :attr:`Limits.max_output` characters of each are kept.
- Layers 1-3 are enforced by the kernel; layer 4 stops ordinary code
  (model-written mistakes, an accidental ``rm``), not a determined
  attacker with ``gc`` tricks. Where the kernel layers are missing (not
  root and no user namespaces, or root without a usable ``nobody``),
  :func:`protections` says so.
"""

from __future__ import annotations

import json
import os
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


# -- what the kernel can add ---------------------------------------------------------------------


def _probe(command: list[str], cfg_uid: int | None = None, cfg_gid: int | None = None, timeout: float = 20.0) -> bool:
    """Does a contained child start and import the standard library this way?"""
    try:
        with tempfile.TemporaryDirectory(prefix="diffmodel-probe-") as tmp:
            os.chmod(tmp, 0o755)
            if cfg_uid is not None:
                os.chown(tmp, cfg_uid, cfg_gid)
            with open(os.path.join(tmp, "program.py"), "w", encoding="utf-8") as f:
                f.write("import math, json, re, collections, itertools, hashlib, string, random\n")
            os.chmod(os.path.join(tmp, "program.py"), 0o644)
            fd, path = tempfile.mkstemp(prefix="diffmodel-probe-report-")
            try:
                cfg = _config(fd, Limits(), cfg_uid, cfg_gid)
                proc = subprocess.run(
                    [*command, sys.executable, "-I", "-S", "-c", guard_source(), json.dumps(cfg)],
                    cwd=tmp, env=_environment(tmp), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, pass_fds=(fd,), timeout=timeout, start_new_session=True,
                )
                with open(path, encoding="utf-8", errors="replace") as f:
                    report = f.read().split()
                return proc.returncode == 0 and COMPLETED in report
            finally:
                os.close(fd)
                os.unlink(path)
    except (OSError, subprocess.SubprocessError):
        return False


@lru_cache(maxsize=1)
def protections() -> dict:
    """Which kernel layers this machine gives a run (probed once per process).

    ``network_namespace``: the ``unshare`` command used (``["unshare", "-n"]``,
    ``["unshare", "-rn"]``) or ``None``; ``run_as``: ``"nobody"`` when the
    child drops from root to that user, else the evaluator's own user;
    ``nproc_enforced``: whether ``RLIMIT_NPROC`` stops forks at the kernel.
    Set ``DIFFMODEL_SANDBOX_NO_UNSHARE=1`` to skip the namespace.
    """
    wrapper: list[str] | None = None
    if shutil.which("unshare") and os.environ.get("DIFFMODEL_SANDBOX_NO_UNSHARE") != "1":
        for cmd in (["unshare", "-n", "--"], ["unshare", "-rn", "--"]):
            if _probe(cmd):
                wrapper = cmd
                break
    uid = gid = None
    if os.geteuid() == 0:
        try:
            import pwd

            nobody = pwd.getpwnam("nobody")
            if _probe(["unshare", "-n", "--"] if wrapper == ["unshare", "-n", "--"] else [], nobody.pw_uid, nobody.pw_gid):
                uid, gid = nobody.pw_uid, nobody.pw_gid
        except (KeyError, ImportError):
            pass
    return {
        "network_namespace": wrapper,
        "run_as": "nobody" if uid is not None else ("root" if os.geteuid() == 0 else "self"),
        "uid": uid,
        "gid": gid,
        "nproc_enforced": os.geteuid() != 0 or uid is not None,
    }


def _config(report_fd: int, limits: Limits, uid: int | None, gid: int | None) -> dict:
    return {
        "report_fd": report_fd,
        "memory": int(limits.memory_mb) * 1024 * 1024,
        "cpu": limits.cpu_limit(),
        "fsize": int(limits.file_size_mb) * 1024 * 1024,
        "uid": uid,
        "gid": gid,
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


def classify(returncode: int | None, report: list[str], timed_out: bool, limits: Limits) -> tuple[Outcome, str | None, str]:
    """(status, violation, detail) from how the child ended and what the guard reported."""
    violation = next((line.split(":", 1)[1] for line in report if line.startswith("violation:")), None)
    exception = next((line.split(":", 1)[1] for line in report if line.startswith("exception:")), None)
    exited = next((line.split(":", 1)[1] for line in report if line.startswith("systemexit:")), None)
    if timed_out:
        return Outcome.TIMED_OUT, violation, f"wall clock {limits.timeout:g} s"
    if returncode is not None and returncode < 0:
        sig = -returncode
        if sig == signal.SIGXCPU:
            return Outcome.TIMED_OUT, violation, f"CPU limit {limits.cpu_limit()} s (SIGXCPU)"
        return Outcome.CRASHED, violation, f"killed by {_signal_name(sig)}"
    if violation is not None:
        return Outcome.CRASHED, violation, f"blocked: {violation}"
    if exception == "MemoryError":
        return Outcome.CRASHED, None, f"MemoryError (memory limit {limits.memory_mb} MiB)"
    if returncode == 0 and report and report[-1] == COMPLETED:
        return Outcome.PASSED, None, ""
    if exception:
        return Outcome.FAILED, None, exception
    if exited is not None:
        return Outcome.FAILED, None, f"exited before its end (SystemExit {exited})"
    return Outcome.FAILED, None, f"exit status {returncode} without finishing"


def run_python(source: str, limits: Limits = Limits()) -> RunResult:
    """Run ``source`` as a program in a contained child; never raises for anything the program does."""
    prot = protections()
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
        if prot["uid"] is not None:
            os.chmod(base, 0o755)
            os.chown(work, prot["uid"], prot["gid"])
            os.chown(program, prot["uid"], prot["gid"])
        report_path = os.path.join(ctl, "report")
        out_path, err_path = os.path.join(ctl, "stdout"), os.path.join(ctl, "stderr")
        command = [*(prot["network_namespace"] or []), sys.executable, "-I"]
        if not limits.site_packages:
            command.append("-S")
        report_fd = os.open(report_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        timed_out = False
        start = time.perf_counter()
        try:
            cfg = _config(report_fd, limits, prot["uid"], prot["gid"])
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                try:
                    proc = subprocess.Popen(
                        [*command, "-c", guard_source(), json.dumps(cfg)],
                        cwd=work, env=_environment(work), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                        pass_fds=(report_fd,), start_new_session=True, close_fds=True,
                    )
                except OSError as e:
                    raise SandboxError(f"cannot start the sandboxed interpreter: {e}") from e
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
        status, violation, detail = classify(None if timed_out else proc.returncode, report, timed_out, limits)
        return RunResult(status, None if timed_out else proc.returncode, seconds,
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
) -> list[RunResult]:
    """Run every source in its own sandbox, ``workers`` at a time; results in input order."""
    items: Sequence[str] = list(sources)
    if not items:
        return []
    protections()  # probe once, before the threads start
    workers = workers or default_workers()

    def one(src: str) -> RunResult:
        result = run_python(src, limits)
        if progress is not None:
            progress(1)
        return result

    if workers == 1:
        return [one(s) for s in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, items))


__all__ = ["Limits", "Outcome", "RunResult", "SandboxError", "classify", "guard_source", "protections", "run_many", "run_python"]
