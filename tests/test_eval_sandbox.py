"""The sandbox contains and reports what generated code may do: loop, allocate, fork, write, connect."""

from __future__ import annotations

import os
import tempfile
import textwrap

import pytest

from diffmodel.evaluate.sandbox import Limits, Outcome, classify, protections, run_many, run_python

QUICK = Limits(timeout=5.0, memory_mb=512)


def run(src: str, limits: Limits = QUICK):
    return run_python(textwrap.dedent(src), limits)


class TestOrdinaryPrograms:
    def test_a_program_that_runs_to_its_end_passes_and_its_output_is_kept(self):
        r = run("print('hello'); import sys; print('err', file=sys.stderr)")
        assert r.status is Outcome.PASSED and r.returncode == 0
        assert r.stdout == "hello\n" and r.stderr == "err\n"

    def test_a_failing_assertion_fails_with_its_exception_named(self):
        r = run("def f(x):\n    return x + 1\nassert f(1) == 3\n")
        assert r.status is Outcome.FAILED
        assert r.detail == "AssertionError"
        assert "AssertionError" in r.stderr

    def test_an_early_exit_with_status_zero_is_not_a_pass(self):
        # a fix that exits before the tests run must not count as passing
        r = run("import sys\nsys.exit(0)\nassert False\n")
        assert r.status is Outcome.FAILED
        assert "exited before its end" in r.detail

    def test_os_exit_is_blocked(self):
        r = run("import os\nos._exit(0)\n")
        assert r.status is Outcome.CRASHED and r.violation == "os._exit"

    def test_each_run_gets_a_fresh_empty_folder_and_a_clean_environment(self, monkeypatch, tmp_path):
        monkeypatch.setenv("DIFFMODEL_TEST_SECRET", "do-not-leak")
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the evaluator makes each run's folder
        src = """
            import os, sys
            assert sorted(os.listdir('.')) == ['program.py'], os.listdir('.')
            assert 'DIFFMODEL_TEST_SECRET' not in os.environ
            assert set(os.environ) <= {'PATH', 'LANG', 'LC_ALL', 'HOME', 'TMPDIR', 'LC_CTYPE', 'PWD'}, sorted(os.environ)
            assert os.environ['HOME'] == os.environ['TMPDIR'] == os.getcwd() == os.environ.get('PWD', os.getcwd())
            assert sys.flags.isolated == 1
            open('scratch.txt', 'w').write('allowed inside the folder')
            os.mkdir('sub'); open('sub/x', 'w').write('1'); os.remove('sub/x'); os.rmdir('sub')
        """
        first, second = run(src), run(src)  # the second would see the first's scratch.txt in a shared folder
        assert first.status is Outcome.PASSED, first.stderr
        assert second.status is Outcome.PASSED, second.stderr
        assert list(tmp_path.iterdir()) == []  # every run's folder is removed afterwards

    def test_output_is_capped(self):
        r = run("import sys\nfor _ in range(100000):\n    print('x' * 100)\n", Limits(timeout=10, file_size_mb=1, max_output=500))
        assert len(r.stdout) <= 500
        assert r.status is Outcome.FAILED  # writing past RLIMIT_FSIZE raises "File too large"

    def test_run_many_keeps_input_order(self):
        results = run_many([f"print({i})" for i in range(6)], QUICK, workers=3)
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)]


class TestContainment:
    def test_a_program_that_loops_forever_is_killed_and_reported_timed_out(self):
        r = run("while True:\n    pass\n", Limits(timeout=1.0))
        assert r.status is Outcome.TIMED_OUT and r.returncode is None
        assert r.seconds < 5

    def test_a_sleeping_program_is_killed_on_the_wall_clock(self):
        r = run("import time\ntime.sleep(60)\n", Limits(timeout=1.0))
        assert r.status is Outcome.TIMED_OUT and r.seconds < 5

    def test_the_cpu_limit_stops_a_busy_loop_before_the_wall_clock(self):
        r = run("while True:\n    pass\n", Limits(timeout=30.0, cpu_seconds=1))
        assert r.status is Outcome.TIMED_OUT
        assert "SIGXCPU" in r.detail
        assert r.seconds < 10

    def test_unbounded_allocation_is_stopped_and_reported_crashed(self):
        r = run("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))\n", Limits(timeout=20, memory_mb=256))
        assert r.status is Outcome.CRASHED
        assert "memory" in r.detail.lower()

    def test_one_huge_allocation_is_stopped(self):
        r = run("x = bytearray(8 * 1024 ** 3)\n", Limits(timeout=20, memory_mb=256))
        assert r.status is Outcome.CRASHED and "MemoryError" in r.detail

    @pytest.mark.parametrize("src, blocked", [
        ("import os\npid = os.fork()\nif pid == 0:\n    open('child', 'w').write('1')\n", "os.fork"),
        ("import subprocess\nsubprocess.run(['touch', 'child'])\n", "subprocess.Popen"),
        ("import os\nos.system('touch child')\n", "os.system"),
        ("import os\nos.execv('/bin/sh', ['sh', '-c', 'touch child'])\n", "os.execv"),
        ("import posix\nposix.fork()\n", "os.fork"),
        ("import pty\npty.fork()\n", "os.forkpty"),
    ])
    def test_forking_or_spawning_is_blocked_and_reported(self, src, blocked):
        r = run(src)
        assert r.status is Outcome.CRASHED
        assert r.violation == blocked
        assert "blocked" in r.detail

    def test_a_violation_caught_by_the_program_still_marks_the_run(self):
        r = run("import os\ntry:\n    os.fork()\nexcept BaseException:\n    pass\nprint('carried on')\n")
        assert r.status is Outcome.CRASHED and r.violation == "os.fork"

    @pytest.mark.parametrize("layers", [("bwrap",), ("bwrap", "guard"), ("guard",)])
    def test_a_program_that_forges_the_report_and_exits_zero_does_not_pass(self, layers):
        # it writes `completed` lines to every descriptor and leaves with status 0 through a fresh posix module:
        # only the harness's line with this run's secret passes, never the exit status
        src = ("import importlib.util, os\n"
               "for fd in range(3, 256):\n"
               "    try:\n"
               "        os.write(fd, b'completed\\ncompleted:0\\n')\n"
               "    except OSError:\n"
               "        pass\n"
               "spec = importlib.util.find_spec('posix')\n"
               "posix = importlib.util.module_from_spec(spec)\n"
               "spec.loader.exec_module(posix)\n"
               "posix._exit(0)\n")
        r = run_python(src, QUICK, layers=layers)
        assert r.status is not Outcome.PASSED
        assert r.returncode == (3 if "guard" in layers else 0)  # the guard hands out its own posix: _exit is blocked

    def test_ctypes_cannot_be_imported(self):
        r = run("import ctypes\n")
        assert r.status is Outcome.FAILED and r.detail in ("ImportError", "ModuleNotFoundError")

    @pytest.mark.parametrize("how", [
        "open(TARGET, 'w').write('escaped')",
        "open(TARGET, 'a').write('escaped')",
        "import io; io.open(TARGET, 'x').write('escaped')",
        "import os; fd = os.open(TARGET, os.O_WRONLY | os.O_CREAT); os.write(fd, b'escaped')",
        "import pathlib; pathlib.Path(TARGET).write_text('escaped')",
        "import _io; _io.FileIO(TARGET, 'w').write(b'escaped')",
        "import os; open('inside', 'w').write('x'); os.rename('inside', TARGET)",
        "import os; os.symlink(TARGET, 'link'); open('link', 'w').write('escaped')",
        "import os; os.chdir('..'); open(TARGET, 'w').write('escaped')",
    ])
    def test_writing_outside_its_folder_is_blocked_and_the_file_never_appears(self, tmp_path, how):
        # a folder anyone may write to, so only the sandbox stands in the way
        outside = tmp_path / "outside"
        outside.mkdir()
        os.chmod(outside, 0o777)
        target = outside / "escaped.txt"
        r = run(f"TARGET = {str(target)!r}\n{how}\n")
        assert r.status is Outcome.CRASHED, (r.status, r.detail, r.stderr)
        assert r.violation is not None
        assert not target.exists()
        assert not (outside / "link").exists()

    def test_removing_files_outside_its_folder_is_blocked(self, tmp_path):
        victim = tmp_path / "keep.txt"
        victim.write_text("precious")
        os.chmod(tmp_path, 0o777)
        r = run(f"import os, shutil\nshutil.rmtree({str(tmp_path)!r})\n")
        assert r.status is not Outcome.PASSED  # bubblewrap: no such folder there; the guard alone: blocked
        assert victim.read_text() == "precious"

    @pytest.mark.parametrize("src, blocked", [
        ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n", "socket.socket"),
        ("import socket\nsocket.create_connection(('127.0.0.1', 9))\n", "socket.create_connection"),
        ("import _socket\n_socket.socket()\n", "socket.socket"),
        ("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/')\n", "socket.create_connection"),
    ])
    def test_opening_a_socket_is_blocked_and_reported(self, src, blocked):
        r = run(src)
        assert r.status is Outcome.CRASHED
        assert r.violation == blocked

    def test_the_network_namespace_has_no_interface_but_loopback(self):
        r = run("lines = open('/proc/self/net/dev').read().splitlines()[2:]\nprint(sorted(l.split(':')[0].strip() for l in lines))\n")
        assert r.status is Outcome.PASSED, r.stderr
        assert r.stdout.strip() == "['lo']"

    def test_the_kernel_refuses_new_processes_and_threads(self):
        # as root the child drops to nobody inside bubblewrap, so RLIMIT_NPROC 0 holds at the kernel
        assert protections()["nproc_enforced"]
        r = run("import resource\nprint(resource.getrlimit(resource.RLIMIT_NPROC))\n")
        assert r.stdout.strip() == "(0, 0)"
        threaded = run("import threading\nthreading.Thread(target=print).start()\n", )
        assert threaded.status is Outcome.FAILED and threaded.detail == "RuntimeError"  # can't start new thread


class TestClassify:
    def test_statuses_from_exit_and_report(self):
        lim = Limits(timeout=3)
        assert classify(0, ["completed:s3cret"], False, lim, "s3cret")[0] is Outcome.PASSED
        assert classify(0, [], False, lim, "s3cret")[0] is Outcome.FAILED
        assert classify(1, ["exception:ValueError"], False, lim, "s3cret")[:1] == (Outcome.FAILED,)
        assert classify(None, [], True, lim, "s3cret")[0] is Outcome.TIMED_OUT
        assert classify(-9, [], False, lim, "s3cret")[0] is Outcome.CRASHED
        assert classify(-24, [], False, lim, "s3cret")[0] is Outcome.TIMED_OUT  # SIGXCPU
        assert classify(5, ["cpulimit"], False, lim, "s3cret")[0] is Outcome.TIMED_OUT  # the guard's SIGXCPU handler
        assert classify(3, ["violation:os.fork"], False, lim, "s3cret")[:2] == (Outcome.CRASHED, "os.fork")
        assert classify(0, ["violation:socket.socket", "completed:s3cret"], False, lim, "s3cret")[0] is Outcome.CRASHED
        assert classify(4, ["exception:MemoryError"], False, lim, "s3cret")[0] is Outcome.CRASHED

    def test_exit_status_zero_or_a_completed_line_without_the_secret_never_passes(self):
        lim = Limits(timeout=3)
        assert classify(0, ["completed"], False, lim, "s3cret")[0] is Outcome.FAILED
        assert classify(0, ["completed:guess"], False, lim, "s3cret")[0] is Outcome.FAILED
        assert classify(0, ["completed:s3cret", "completed:forged"], False, lim, "s3cret")[0] is Outcome.FAILED
        assert classify(1, ["completed:s3cret"], False, lim, "s3cret")[0] is Outcome.FAILED
