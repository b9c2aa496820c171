"""The sandbox child's guard as a module: inert on import, its path check exact, its text what the child runs."""

from __future__ import annotations

import builtins
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffmodel.evaluate import guard, sandbox


class TestImportingTheGuardChangesNothing:
    def test_os_open_and_socket_are_the_real_ones_after_import(self):
        import socket
        import subprocess as sp

        assert os.fork.__module__ == "posix" and os.system.__module__ == "posix"
        assert builtins.open is io.open and os.open.__module__ == "posix"
        assert sp.Popen.__module__ == "subprocess" and socket.socket.__module__ == "socket"
        assert sys.modules.get("ctypes", "absent") is not None


class TestInside:
    @pytest.fixture
    def home(self, tmp_path, monkeypatch):
        (tmp_path / "sub").mkdir()
        monkeypatch.chdir(tmp_path)
        return os.path.realpath(tmp_path)

    @pytest.mark.parametrize("path", ["a.txt", "sub/b.txt", ".", "sub/../c.txt", b"d.txt", Path("sub")])
    def test_names_in_the_folder_are_inside(self, home, path):
        assert guard.inside(path, home)

    @pytest.mark.parametrize("path", ["..", "../x", "/etc/passwd", "sub/../../x"])
    def test_names_that_leave_it_are_not(self, home, path):
        assert not guard.inside(path, home)

    def test_a_folder_beside_it_with_the_same_prefix_is_not_inside(self, home):
        assert not guard.inside(home + "-other/x", home)

    def test_a_symlink_that_leads_out_is_not_inside(self, home):
        os.symlink("/etc", "link")
        assert not guard.inside("link/passwd", home)

    def test_a_descriptor_is_let_through_and_an_unreadable_path_is_not(self, home):
        assert guard.inside(3, home)
        assert not guard.inside(object(), home)

    def test_a_name_relative_to_dir_fd_is_taken_from_that_folder(self, home):
        fd = os.open("/", os.O_RDONLY)
        try:
            assert not guard.inside("x", home, dir_fd=fd)
        finally:
            os.close(fd)
        fd = os.open(os.path.join(home, "sub"), os.O_RDONLY)
        try:
            assert guard.inside("x", home, dir_fd=fd)
        finally:
            os.close(fd)


def test_the_child_runs_this_modules_text():
    assert sandbox.guard_source() == Path(guard.__file__).read_text(encoding="utf-8")


SECRET = "0123456789abcdef"


def run_child(folder: Path, program: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the guard as the sandbox does (without the kernel layers) on ``program``; (process, report lines)."""
    (folder / "program.py").write_text(program)
    report = folder / "report"
    fd = os.open(report, os.O_WRONLY | os.O_CREAT, 0o600)
    secret_read, secret_write = os.pipe()
    os.write(secret_write, SECRET.encode())
    os.close(secret_write)
    try:
        cfg = {"report_fd": fd, "nonce_fd": secret_read, "memory": 512 * 1024 * 1024, "cpu": 10, "fsize": 1024 * 1024,
               "uid": None, "gid": None, "guard": True, "pid_namespace": False}
        done = subprocess.run([sys.executable, "-I", "-S", "-c", sandbox.guard_source(), json.dumps(cfg)], cwd=folder,
                              capture_output=True, text=True, pass_fds=(fd, secret_read), timeout=60)
    finally:
        os.close(fd)
        os.close(secret_read)
    return done, report.read_text().splitlines()


def test_the_guard_as_a_main_program_runs_program_py_and_reports_its_end(tmp_path):
    done, report = run_child(tmp_path, "print('ran')\n")
    assert (done.returncode, done.stdout) == (0, "ran\n")
    assert report == [f"{guard.COMPLETED}:{SECRET}"]


def test_the_secret_is_gone_before_the_program_runs(tmp_path):
    # its pipe is closed, and it is in no argument, variable or descriptor the program is given
    program = ("import os, sys\n"
               "fds = [f for f in os.listdir('/proc/self/fd') if os.path.exists('/proc/self/fd/' + f)]\n"
               "print([os.readlink('/proc/self/fd/' + f) for f in fds])\n"
               "print(open('/proc/self/cmdline').read(), dict(os.environ), sys.orig_argv)\n")
    done, report = run_child(tmp_path, program)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].count("pipe:") == 2  # stdout and stderr: the secret's pipe is closed
    assert SECRET not in done.stdout
    assert report == [f"{guard.COMPLETED}:{SECRET}"]


def test_a_blocked_call_is_reported_once_and_ends_the_child_with_status_3(tmp_path):
    done, report = run_child(tmp_path, "import os\ntry:\n    os.system('true')\nexcept BaseException:\n    pass\nos.fork()\n")
    assert done.returncode == 3
    assert report == ["violation:os.system"]
