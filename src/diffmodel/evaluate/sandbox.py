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
4. A prelude that runs in the child before the program and replaces the
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
- ``passed`` means exit status 0 *and* the prelude saw the program run to
  its last line: a program that calls ``sys.exit(0)`` before its tests, or
  ``os._exit``, does not pass.
- The prelude reports to a file descriptor the program does not know the
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


# -- the prelude: runs in the child before the program ------------------------------------------

#: Codes the prelude writes to its report descriptor, one per line.
_COMPLETED = "completed"

PRELUDE = r'''
import sys
_cfg = __import__("json").loads(sys.argv[1])
sys.argv[:] = ["program.py"]
import os as _os, posix as _posix, resource as _resource, signal as _signal, traceback as _traceback
_report_fd = _cfg["report_fd"]
_write, _exit = _os.write, _os._exit
def _report(line):
    try:
        _write(_report_fd, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass
sys.dont_write_bytecode = True
_signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)
def _limit(name, value, hard=None):
    try:
        _resource.setrlimit(getattr(_resource, name), (value, value if hard is None else hard))
    except (ValueError, OSError, AttributeError):
        _report("nolimit:" + name)
_limit("RLIMIT_CORE", 0)
_limit("RLIMIT_FSIZE", _cfg["fsize"])
_limit("RLIMIT_CPU", _cfg["cpu"], _cfg["cpu"] + 1)
if _cfg["uid"] is not None:
    _os.setgroups([])
    _os.setgid(_cfg["gid"])
    _os.setuid(_cfg["uid"])
_limit("RLIMIT_NPROC", 0)
import io as _io_mod, _io, builtins as _builtins, socket as _socket_mod, _socket, subprocess as _subprocess, _posixsubprocess
class SandboxViolation(BaseException):
    pass
_seen = []
def _violation(what):
    if not _seen:
        _seen.append(what)
        _report("violation:" + what)
    raise SandboxViolation("blocked by the sandbox: " + what)
def _blocker(what):
    def blocked(*args, **kwargs):
        _violation(what)
    return blocked
for _mod in (_os, _posix):
    for _name in ("fork", "forkpty", "system", "popen", "execv", "execve", "execl", "execle", "execlp", "execlpe",
                  "execvp", "execvpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp",
                  "spawnlpe", "posix_spawn", "posix_spawnp", "kill", "killpg", "_exit", "setuid", "setgid", "plock"):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _blocker("os." + _name))
_posixsubprocess.fork_exec = _blocker("subprocess")
_subprocess.Popen = _blocker("subprocess.Popen")
class _BlockedSocket(_socket.socket):
    def __init__(self, *args, **kwargs):
        _violation("socket.socket")
_socket_mod.socket = _socket.socket = _socket_mod.SocketType = _socket.SocketType = _BlockedSocket
for _mod in (_socket_mod, _socket):
    for _name in ("socketpair", "fromfd", "create_connection", "create_server", "dup"):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _blocker("socket." + _name))
for _name in ("ctypes", "_ctypes", "multiprocessing", "_multiprocessing"):
    sys.modules[_name] = None
_home = _os.path.realpath(_os.getcwd())
_realpath, _abspath, _fspath = _os.path.realpath, _os.path.abspath, _os.fspath
def _inside(path, dir_fd=None):
    if isinstance(path, int):
        return True
    try:
        path = _fspath(path)
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        if dir_fd is not None and not path.startswith("/"):
            path = _os.readlink("/proc/self/fd/%d" % dir_fd) + "/" + path
        full = _realpath(_abspath(path))
    except Exception:
        return False
    return full == _home or full.startswith(_home + "/")
def _guard_path(what, path, dir_fd=None):
    if not _inside(path, dir_fd):
        _violation(what + " " + str(path))
_real_open = _io.open
def _open(file, mode="r", *args, **kwargs):
    if any(c in str(mode) for c in "wax+"):
        _guard_path("open for writing", file)
    return _real_open(file, mode, *args, **kwargs)
_builtins.open = _io_mod.open = _io.open = _open
_WRITE_FLAGS = _os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_APPEND | _os.O_TRUNC
_real_os_open = _os.open
def _os_open(path, flags, *args, **kwargs):
    if flags & _WRITE_FLAGS:
        _guard_path("os.open for writing", path, kwargs.get("dir_fd"))
    return _real_os_open(path, flags, *args, **kwargs)
_os.open = _posix.open = _os_open
class _FileIO(_io.FileIO):
    def __init__(self, file, mode="r", *args, **kwargs):
        if any(c in str(mode) for c in "wax+"):
            _guard_path("FileIO for writing", file)
        super().__init__(file, mode, *args, **kwargs)
_io.FileIO = _io_mod.FileIO = _FileIO
def _path_guard(name, nargs):
    real = getattr(_os, name)
    def guarded(*args, **kwargs):
        fds = [kwargs.get("dir_fd"), kwargs.get("src_dir_fd"), kwargs.get("dst_dir_fd")]
        for i, p in enumerate(args[:nargs]):
            _guard_path("os." + name, p, fds[0] if fds[0] is not None else fds[1 + i] if i < 2 else None)
        return real(*args, **kwargs)
    return guarded
for _name, _n in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("mkdir", 1), ("rename", 2), ("replace", 2),
                  ("symlink", 2), ("link", 2), ("chmod", 1), ("chown", 1), ("lchown", 1), ("truncate", 1),
                  ("utime", 1), ("mkfifo", 1), ("mknod", 1), ("removexattr", 1), ("setxattr", 1)):
    if hasattr(_os, _name):
        _guarded = _path_guard(_name, _n)
        setattr(_os, _name, _guarded)
        if hasattr(_posix, _name):
            setattr(_posix, _name, _guarded)
_limit("RLIMIT_AS", _cfg["memory"])
del _mod, _name
_code = None
try:
    with _real_open("program.py", "r", encoding="utf-8") as _f:
        _code = compile(_f.read(), "program.py", "exec")
    exec(_code, {"__name__": "__main__", "__builtins__": _builtins})
except SandboxViolation:
    _exit(3)
except MemoryError:
    _report("exception:MemoryError")
    _exit(4)
except SystemExit as _e:
    _c = _e.code
    _report("systemexit:" + repr(_c))
    _exit(_c if isinstance(_c, int) and 0 < _c < 256 else 1)
except BaseException as _e:
    _report("exception:" + type(_e).__name__)
    try:
        _traceback.print_exc()
        sys.stderr.flush()
    except BaseException:
        pass
    _exit(1)
_report("''' + _COMPLETED + r'''")
try:
    sys.stdout.flush()
    sys.stderr.flush()
except BaseException:
    pass
_exit(0)
'''


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
                    [*command, sys.executable, "-I", "-S", "-c", PRELUDE, json.dumps(cfg)],
                    cwd=tmp, env=_environment(tmp), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, pass_fds=(fd,), timeout=timeout, start_new_session=True,
                )
                with open(path, encoding="utf-8", errors="replace") as f:
                    report = f.read().split()
                return proc.returncode == 0 and _COMPLETED in report
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
    """(status, violation, detail) from how the child ended and what the prelude reported."""
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
    if returncode == 0 and report and report[-1] == _COMPLETED:
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
                        [*command, "-c", PRELUDE, json.dumps(cfg)],
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


__all__ = ["Limits", "Outcome", "PRELUDE", "RunResult", "SandboxError", "classify", "protections", "run_many", "run_python"]
