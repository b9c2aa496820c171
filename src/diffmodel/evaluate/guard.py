"""The sandbox child's guard: run first in the child, it sets limits, blocks escapes, then runs ``program.py``.

:mod:`diffmodel.evaluate.sandbox` starts the child as
``python -I [-S] -c GUARD_SOURCE CONFIG`` in the run's folder, where
``GUARD_SOURCE`` is this file's text and ``CONFIG`` a JSON object:
``report_fd`` (a descriptor to report on), ``memory``, ``cpu``, ``fsize``
(the rlimits) and ``uid``/``gid`` (a user to drop to, or null). :func:`main`
then, in this order: sets ``RLIMIT_CORE``, ``RLIMIT_FSIZE`` and
``RLIMIT_CPU``; drops to ``uid``/``gid``; sets ``RLIMIT_NPROC`` = 0;
replaces the calls of :data:`BLOCKED_OS`, ``subprocess``, the socket
constructors and makes :data:`BLOCKED_MODULES` unimportable; lets files be
opened for writing, and the calls of :data:`GUARDED_PATHS` act, only
:func:`inside` the run's folder; sets ``RLIMIT_AS``; runs ``program.py`` as
``__main__``. It reports one line per event on ``report_fd``:
``violation:WHAT`` (the first blocked call), ``exception:NAME``,
``systemexit:CODE``, ``nolimit:RLIMIT_...``, and :data:`COMPLETED` when the
program ran to its last line.

Invariants:
- Standard library only: the child runs with ``-S`` and cannot import diffmodel.
- Importing this module changes nothing; every effect is inside :func:`main`,
  which runs only when the file is the child's main program.
- A blocked call raises ``SandboxViolation`` (a ``BaseException``, so
  ``except Exception`` does not swallow it), and the first one is reported;
  exit status 3 after a violation, 4 after a MemoryError, the program's own
  status after SystemExit (1 outside 1..255), 1 after another exception, 0
  only after :data:`COMPLETED` was reported.
"""

import os
import sys

#: The last line the guard reports when the program ran to its end.
COMPLETED = "completed"

#: ``os``/``posix`` functions a program may not call (new processes, signals, leaving the guard).
BLOCKED_OS = (
    "fork", "forkpty", "system", "popen", "execv", "execve", "execl", "execle", "execlp", "execlpe",
    "execvp", "execvpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp",
    "spawnlpe", "posix_spawn", "posix_spawnp", "kill", "killpg", "_exit", "setuid", "setgid", "plock",
)

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


def main():
    """Guard this process, then run ``program.py`` from the current folder; never returns."""
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
        for _name in BLOCKED_OS:
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
    for _name in BLOCKED_MODULES:
        sys.modules[_name] = None
    _home = _os.path.realpath(_os.getcwd())
    def _guard_path(what, path, dir_fd=None):
        if not inside(path, _home, dir_fd):
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
    for _name, _n in GUARDED_PATHS:
        if hasattr(_os, _name):
            _guarded = _path_guard(_name, _n)
            setattr(_os, _name, _guarded)
            if hasattr(_posix, _name):
                setattr(_posix, _name, _guarded)
    _limit("RLIMIT_AS", _cfg["memory"])
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
    _report(COMPLETED)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    _exit(0)


if __name__ == "__main__":
    main()
