"""The sandbox child's harness and guard: run first in the child, it sets limits, blocks escapes, runs ``program.py``.

:mod:`diffmodel.evaluate.sandbox` starts the child as
``python -I [-S] -c GUARD_SOURCE CONFIG`` in the run's folder (inside
bubblewrap or ``unshare`` when those layers are on), where ``GUARD_SOURCE``
is this file's text and ``CONFIG`` a JSON object: ``report_fd`` (a
descriptor to report on), ``nonce_fd`` (the read end of a pipe holding this
run's secret), ``memory``, ``cpu``, ``fsize`` (the rlimits), ``uid``/``gid``
(a user to drop to, or null), ``guard`` (apply the in-process guard) and
``pid_namespace`` (the child has a PID namespace of its own). :func:`main`
then, in this order: reads the secret and closes ``nonce_fd``; sets
``RLIMIT_CORE``, ``RLIMIT_FSIZE`` and ``RLIMIT_CPU`` (SIGXCPU reports
``cpulimit``, also when the child is PID 1 of its namespace, where a default
SIGXCPU would be ignored); drops to ``uid``/``gid``; sets ``RLIMIT_NPROC`` =
0; with ``guard``, replaces the calls of :data:`BLOCKED_OS`,
:data:`BLOCKED_SIGNAL`, ``subprocess``, the socket constructors, makes
:data:`BLOCKED_MODULES` unimportable, hands out the guarded module when a
program builds a fresh copy of one of :data:`GUARDED_MODULES` (through
``importlib``/``_imp``), and lets files be opened for writing, and the calls
of :data:`GUARDED_PATHS` act, only :func:`inside` the run's folder; sets
``RLIMIT_AS``; runs ``program.py`` as ``__main__``. It reports one line per
event on ``report_fd``: ``violation:WHAT`` (the first blocked call),
``exception:NAME``, ``systemexit:CODE``, ``nolimit:RLIMIT_...``,
``cpulimit``, and ``completed:SECRET`` (:data:`COMPLETED`) when the program
ran to its last line in the first process, and, in a PID namespace, no other
process or thread was created.

Invariants:
- Standard library only: the child runs with ``-S`` and cannot import diffmodel.
- Importing this module changes nothing; every effect is inside :func:`main`,
  which runs only when the file is the child's main program.
- The secret is read and its pipe closed before the program runs; it is in
  no file, argument or environment variable the program can see. Only the
  ``completed`` line carrying it counts as a pass (the report descriptor is
  open to the program, so any other line it writes may be forged).
- A blocked call raises ``SandboxViolation`` (a ``BaseException``, so
  ``except Exception`` does not swallow it), and the first one is reported;
  exit status 3 after a violation, 4 after a MemoryError, 5 at the CPU limit,
  the program's own status after SystemExit (1 outside 1..255), 1 after
  another exception, 0 only after :data:`COMPLETED` was reported.
"""

import os
import sys

#: The last line the guard reports when the program ran to its end: ``completed:SECRET``.
COMPLETED = "completed"

#: ``os``/``posix`` functions a program may not call (new processes, signals, leaving the guard).
BLOCKED_OS = (
    "fork", "forkpty", "system", "popen", "execv", "execve", "execl", "execle", "execlp", "execlpe",
    "execvp", "execvpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp",
    "spawnlpe", "posix_spawn", "posix_spawnp", "kill", "killpg", "_exit", "setuid", "setgid", "plock",
    "pidfd_open",
)

#: ``signal``/``_signal`` functions a program may not call (signals to other processes or threads).
BLOCKED_SIGNAL = ("pidfd_send_signal", "pthread_kill", "sigqueue")

#: Built-in and extension modules the guard changes: a fresh copy built through ``importlib`` is the guarded one.
GUARDED_MODULES = ("posix", "_signal", "signal", "_io", "_socket", "_posixsubprocess")

#: Modules a program may not import.
BLOCKED_MODULES = ("ctypes", "_ctypes", "multiprocessing", "_multiprocessing")

#: ``os`` functions that act only inside the run's folder: (name, how many leading arguments are paths).
GUARDED_PATHS = (
    ("remove", 1), ("unlink", 1), ("rmdir", 1), ("mkdir", 1), ("rename", 2), ("replace", 2),
    ("symlink", 2), ("link", 2), ("chmod", 1), ("chown", 1), ("lchown", 1), ("truncate", 1),
    ("utime", 1), ("mkfifo", 1), ("mknod", 1), ("removexattr", 1), ("setxattr", 1),
)


#: Bound at start-up, so a program that replaces ``os.path.realpath`` does not change the check.
_fspath, _realpath, _abspath = os.fspath, os.path.realpath, os.path.abspath


def inside(path, home, dir_fd=None):
    """Is ``path`` (str, bytes, path-like, or a descriptor) ``home`` or under it, after symlinks?

    A relative path is taken from the current folder, or from the folder of
    ``dir_fd`` when given; a descriptor is let through; a path that cannot be
    resolved is not inside.
    """
    if isinstance(path, int):
        return True
    try:
        path = _fspath(path)
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        if dir_fd is not None and not path.startswith("/"):
            path = os.readlink("/proc/self/fd/%d" % dir_fd) + "/" + path
        full = _realpath(_abspath(path))
    except Exception:
        return False
    return full == home or full.startswith(home + "/")


def _read_all(fd, read):
    """Everything left to read on ``fd`` (until end of file)."""
    chunks = []
    while True:
        chunk = read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _last_pid(real_open):
    """The last process id handed out in this PID namespace, or None when it cannot be read."""
    try:
        with real_open("/proc/sys/kernel/ns_last_pid", "r") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def main():
    """Guard this process, then run ``program.py`` from the current folder; never returns."""
    _cfg = __import__("json").loads(sys.argv[1])
    sys.argv[:] = ["program.py"]
    import os as _os, posix as _posix, resource as _resource, signal as _signal, traceback as _traceback
    _secret = _read_all(_cfg["nonce_fd"], _os.read).decode("ascii")
    _os.close(_cfg["nonce_fd"])
    _report_fd = _cfg["report_fd"]
    _write, _exit, _getpid = _os.write, _os._exit, _os.getpid
    _first_pid = _getpid()
    def _report(line):
        try:
            _write(_report_fd, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
    sys.dont_write_bytecode = True
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)
    def _cpu_limit(signum, frame):
        _report("cpulimit")
        _exit(5)
    _signal.signal(_signal.SIGXCPU, _cpu_limit)
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
    import io as _io_mod, _io, builtins as _builtins
    _real_open = _io.open
    class SandboxViolation(BaseException):
        pass
    _seen = []
    def _violation(what):
        if not _seen:
            _seen.append(what)
            _report("violation:" + what)
        raise SandboxViolation("blocked by the sandbox: " + what)
    if _cfg["guard"]:
        _guard(_cfg, _violation)
    _pids_before = _last_pid(_real_open) if _cfg["pid_namespace"] else None
    _limit("RLIMIT_AS", _cfg["memory"])
    _code = None
    try:
        with _real_open("program.py", "r", encoding="utf-8") as _f:
            _code = compile(_f.read(), "program.py", "exec")
        exec(_code, {"__name__": "__main__", "__builtins__": _builtins})
        if _getpid() != _first_pid:
            _exit(1)  # a copy of the process made behind the guard's back never reports
        if _pids_before is not None and _last_pid(_real_open) != _pids_before:
            _violation("a new process or thread")
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
    _report(COMPLETED + ":" + _secret)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    _exit(0)


def _guard(cfg, violation):
    """Replace the escape hatches of this process (see the module docstring); ``violation(what)`` raises."""
    import os as _os, posix as _posix, signal as _signal_mod, _signal, _imp
    import io as _io_mod, _io, builtins as _builtins, socket as _socket_mod, _socket, subprocess as _subprocess, _posixsubprocess
    def _blocker(what):
        def blocked(*args, **kwargs):
            violation(what)
        return blocked
    for _mod in (_os, _posix):
        for _name in BLOCKED_OS:
            if hasattr(_mod, _name):
                setattr(_mod, _name, _blocker("os." + _name))
    for _mod in (_signal_mod, _signal):
        for _name in BLOCKED_SIGNAL:
            if hasattr(_mod, _name):
                setattr(_mod, _name, _blocker("signal." + _name))
    _posixsubprocess.fork_exec = _blocker("subprocess")
    _subprocess.Popen = _blocker("subprocess.Popen")
    class _BlockedSocket(_socket.socket):
        def __init__(self, *args, **kwargs):
            violation("socket.socket")
    _socket_mod.socket = _socket.socket = _socket_mod.SocketType = _socket.SocketType = _BlockedSocket
    for _mod in (_socket_mod, _socket):
        for _name in ("socketpair", "fromfd", "create_connection", "create_server", "dup"):
            if hasattr(_mod, _name):
                setattr(_mod, _name, _blocker("socket." + _name))
    for _name in BLOCKED_MODULES:
        sys.modules[_name] = None
    # a fresh copy of a guarded module (importlib.util.module_from_spec, _imp.create_builtin) is the guarded one,
    # and executing a module again does not restore what the guard replaced
    _guarded = {name: sys.modules[name] for name in GUARDED_MODULES if sys.modules.get(name) is not None}
    def _creator(real):
        def create(spec, *args):
            name = getattr(spec, "name", None)
            return _guarded[name] if name in _guarded else real(spec, *args)
        return create
    def _executor(real):
        def execute(module):
            if any(module is m for m in _guarded.values()):
                return 0
            return real(module)
        return execute
    _imp.create_builtin = _creator(_imp.create_builtin)
    _imp.create_dynamic = _creator(_imp.create_dynamic)
    _imp.exec_builtin = _executor(_imp.exec_builtin)
    _imp.exec_dynamic = _executor(_imp.exec_dynamic)
    _home = _os.path.realpath(_os.getcwd())
    def _guard_path(what, path, dir_fd=None):
        if not inside(path, _home, dir_fd):
            violation(what + " " + str(path))
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
    for _name, _n in GUARDED_PATHS:
        if hasattr(_os, _name):
            _guarded_call = _path_guard(_name, _n)
            setattr(_os, _name, _guarded_call)
            if hasattr(_posix, _name):
                setattr(_posix, _name, _guarded_call)


if __name__ == "__main__":
    main()
