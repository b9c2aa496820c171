"""``diffmodel edit`` end to end on CPU with a tiny model trained in the test."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time

import pytest

from diffmodel.cli import main as cli_main
from diffmodel.commands.edit import colorize
from diffmodel.infer import DiffModel
from diffmodel.infer.requests import prompt_name
from edit_model import SAMPLES, count_calls, trained_edit_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return trained_edit_model(tmp_path_factory)


def _write(folder, key):
    s = SAMPLES[key]
    path = folder / s["name"]
    path.write_bytes(s["before"].encode())
    return path


def _edit(argv, capsys):
    code = cli_main(["edit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


class TestOneFile:
    def test_prints_the_diff_and_leaves_the_file_alone(self, model_dir, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        path = _write(tmp_path, "calc")
        code, out, err = _edit(["--model", str(model_dir), "calc.py", "-m", "Fix add", "--max_new_tokens", "100"], capsys)
        assert code == 0
        assert out == SAMPLES["calc"]["diff"]
        assert "calc.py: applies (strict)" in err
        assert path.read_text() == SAMPLES["calc"]["before"]

    def test_no_speculation_reaches_the_decoder_and_prints_the_same_diff(self, model_dir, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        _write(tmp_path, "calc")
        seen = []
        real = DiffModel.edit_many

        def spy(self, *args, **kwargs):
            seen.append(kwargs["speculate"])
            return real(self, *args, **kwargs)

        monkeypatch.setattr(DiffModel, "edit_many", spy)
        outs = []
        for flags in ([], ["--no_speculation"]):
            code, out, _ = _edit(["--model", str(model_dir), "calc.py", "-m", "Fix add", *flags], capsys)
            assert code == 0
            outs.append(out)
        assert seen == [True, False] and outs == [SAMPLES["calc"]["diff"]] * 2

    def test_no_cuda_graphs_reaches_the_decoder(self, model_dir, tmp_path, monkeypatch, capsys):
        from diffmodel.infer.constrained import ConstrainedDecoder

        monkeypatch.chdir(tmp_path)
        _write(tmp_path, "calc")
        seen = []
        real = ConstrainedDecoder._generate

        def spy(self, *args):
            seen.append(args[-1])  # graphs
            return real(self, *args)

        monkeypatch.setattr(ConstrainedDecoder, "_generate", spy)
        for flags in ([], ["--no_cuda_graphs"]):
            code, out, _ = _edit(["--model", str(model_dir), "calc.py", "-m", "Fix add", *flags], capsys)
            assert code == 0 and out == SAMPLES["calc"]["diff"]
        assert seen == [True, False]

    def test_apply_writes_the_edited_file_keeping_its_mode(self, model_dir, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        path = _write(tmp_path, "crlf")
        os.chmod(path, 0o640)
        code, out, err = _edit(["--model", str(model_dir), "setup.cfg", "-m", "Turn debug off", "--apply"], capsys)
        assert code == 0 and out == SAMPLES["crlf"]["diff"]
        assert path.read_bytes() == b"[tool]\r\ndebug = false\r\n"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        assert "wrote setup.cfg" in err
        assert [p.name for p in tmp_path.iterdir()] == ["setup.cfg"], "no temporary file left behind"

    def test_apply_through_a_symlink_edits_the_file_it_points_to_and_keeps_the_link(self, model_dir, tmp_path, monkeypatch,
                                                                                       capsys):
        monkeypatch.chdir(tmp_path)
        real = tmp_path / "real"
        real.mkdir()
        target = _write(real, "calc")
        (tmp_path / "calc.py").symlink_to(target)
        code, out, err = _edit(["--model", str(model_dir), "calc.py", "-m", "Fix add", "--apply"], capsys)
        assert code == 0 and out == SAMPLES["calc"]["diff"] and "wrote calc.py" in err
        assert os.readlink(tmp_path / "calc.py") == str(target)
        assert target.read_text() == SAMPLES["calc"]["after"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["calc.py", "real"]
        assert [p.name for p in real.iterdir()] == ["calc.py"], "no temporary file left behind"

    def test_lenient_edit_applies(self, model_dir, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        path = _write(tmp_path, "shift")
        code, _, err = _edit(["--model", str(model_dir), "shift.py", "-m", "Bump y", "--apply", "--unconstrained"], capsys)
        assert code == 0 and "(lenient)" in err
        assert path.read_text() == "x = 1\ny = 3\n"

    def test_by_default_the_diff_is_written_over_the_files_lines(self, model_dir, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        path = _write(tmp_path, "wrong")  # unconstrained, the model removes a line "b = 1" the file does not have
        code, out, err = _edit(["--model", str(model_dir), "other.py", "-m", "Set b", "--apply"], capsys)
        assert code == 0 and "applies (strict)" in err
        assert out == "@@ -1 +1 @@\n-a = 1\n+b = 2\n"
        assert path.read_text() == "b = 2\n"

    def test_new_file_from_an_empty_one(self, model_dir, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        path = _write(tmp_path, "greet")
        assert path.read_text() == ""
        code, _, _ = _edit(["--model", str(model_dir), "greet.py", "-m", "Add greet", "--apply"], capsys)
        assert code == 0 and path.read_text() == SAMPLES["greet"]["after"]

    def test_failed_edit_writes_nothing_and_exits_1(self, model_dir, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        path = _write(tmp_path, "wrong")
        code, out, err = _edit(["--model", str(model_dir), "other.py", "-m", "Set b", "--apply", "--unconstrained"], capsys)
        assert code == 1
        assert out == SAMPLES["wrong"]["diff"]
        assert "does not apply" in err and "nothing written" in err
        assert path.read_text() == "a = 1\n"

    def test_header_without_new_range_is_not_applied(self, model_dir, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        path = _write(tmp_path, "half")
        code, out, err = _edit(["--model", str(model_dir), "half.py", "-m", "Pad half", "--apply", "--unconstrained"], capsys)
        assert code == 1
        assert out == SAMPLES["half"]["diff"]
        assert "half.py: does not apply" in err and "nothing written" in err
        assert "note: hunk 1: FAILED: the hunk header has no +NEW range and the hunk has no context" in err
        assert path.read_text() == SAMPLES["half"]["before"]

    def test_name_flag_and_path_outside_the_current_folder(self, model_dir, tmp_path, monkeypatch, capsys):
        folder = tmp_path / "proj"
        folder.mkdir()
        elsewhere = tmp_path / "cwd"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        path = folder / "renamed.py"
        path.write_text(SAMPLES["calc"]["before"])
        # the model only knows the edit under the name calc.py
        code, out, _ = _edit(["--model", str(model_dir), str(path), "--name", "calc.py", "-m", "Fix add"], capsys)
        assert code == 0 and out == SAMPLES["calc"]["diff"]

    def test_colour_always(self, model_dir, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        _write(tmp_path, "calc")
        _, out, _ = _edit(["--model", str(model_dir), "calc.py", "-m", "Fix add", "--color", "always"], capsys)
        assert out == colorize(SAMPLES["calc"]["diff"])

    def test_several_samples(self, model_dir, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        path = _write(tmp_path, "calc")
        code, out, err = _edit(["--model", str(model_dir), "calc.py", "-m", "Fix add", "--num_samples", "3",
                                "--temperature", "0.5", "--seed", "0", "--apply"], capsys)
        assert out.count("# sample ") == 3
        assert len(re.findall(r"^calc\.py \(sample \d\): ", err, re.M)) == 3
        if code == 0:
            assert path.read_text() == SAMPLES["calc"]["after"]
        else:
            assert path.read_text() == SAMPLES["calc"]["before"]


class TestColour:
    def test_exact_codes(self):
        diff = "@@ -1 +1 @@ def f\n-a\n+b\n c\n"
        assert colorize(diff) == (
            "\033[36m@@ -1 +1 @@ def f\033[0m\n\033[31m-a\033[0m\n\033[32m+b\033[0m\n c\n"
        )

    def test_not_on_a_pipe(self, model_dir, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        _write(tmp_path, "calc")
        _, out, _ = _edit(["--model", str(model_dir), "calc.py", "-m", "Fix add"], capsys)
        assert "\033[" not in out


def _rows():
    rows = []
    for i, key in enumerate(SAMPLES):
        s = SAMPLES[key]
        if i % 2:
            rows.append({"path": s["name"], "code": s["before"], "message": s["message"], "id": i})
        else:
            rows.append({"name": s["name"], "before": s["before"], "message": s["message"], "id": i})
    return rows


class TestJsonl:
    def test_batch_mode_gives_the_one_by_one_results(self, model_dir, tmp_path, capsys):
        src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        rows = _rows()
        src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
        code, out, err = _edit(["--model", str(model_dir), "--jsonl", str(src), str(dst), "--batch_size", "4", "--unconstrained"], capsys)
        assert code == 0 and out == ""
        got = [json.loads(line) for line in dst.read_text().splitlines()]

        model = DiffModel.from_pretrained(model_dir)
        assert len(got) == len(rows)
        for row, result in zip(rows, got):
            edit = model.edit(row.get("before", row.get("code")), row["message"], row.get("name", row.get("path")), max_new_tokens=512,
                              constrained=False)
            assert result == {**row, "diff": edit.diff, "new_code": edit.new_code, "status": str(edit.status), "notes": edit.notes}
        by_id = {r["id"]: r for r in got}
        for i, (key, s) in enumerate(SAMPLES.items()):
            assert (by_id[i]["diff"], by_id[i]["new_code"], by_id[i]["status"]) == (s["diff"], s["after"], s["status"])
        assert "editing" in err  # the progress bar
        assert "7 requests, 7 edits" in err and "strict 4, lenient 1, failed 2" in err
        assert "forced" not in err  # --unconstrained

    def test_a_run_that_dies_resumes_where_it_stopped_and_writes_what_an_unbroken_run_writes(self, model_dir, tmp_path, capsys,
                                                                                             monkeypatch):
        from diffmodel.infer import partial as pieces

        src = tmp_path / "in.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
        monkeypatch.setattr(pieces, "PIECE_BATCHES", 1)  # pieces of --batch_size requests
        flags = ["--model", str(model_dir), "--batch_size", "2", "--temperature", "0.7", "--seed", "1", "--no_progress"]
        unbroken = tmp_path / "unbroken.jsonl"
        assert _edit([*flags, "--jsonl", str(src), str(unbroken)], capsys)[0] == 0

        count_calls(monkeypatch, dies_at=3)
        dst = tmp_path / "out.jsonl"
        assert _edit([*flags, "--jsonl", str(src), str(dst)], capsys)[0] == 130  # Ctrl-C
        assert not dst.exists() and len((tmp_path / "out.jsonl.partial").read_text().splitlines()) == 4
        with open(tmp_path / "out.jsonl.partial", "a") as handle:  # a piece appended but never recorded as done
            handle.write('{"half": "written"}\n')

        sizes = count_calls(monkeypatch)
        code, _, err = _edit([*flags, "--jsonl", str(src), str(dst)], capsys)
        assert code == 0 and "resuming: 4 of 7 requests were done (out.jsonl.partial)" in err
        assert "7 requests, 7 edits (3 in this run) in" in err
        assert sizes == [2, 1]  # only the requests not done
        assert dst.read_text() == unbroken.read_text()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl", "unbroken.jsonl"]

    def test_a_partial_output_of_another_run_is_not_resumed(self, model_dir, tmp_path, capsys):
        src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
        (tmp_path / "out.jsonl.partial").write_text('{"from": "another run"}\n')
        (tmp_path / "out.jsonl.partial.json").write_text(json.dumps({"fingerprint": {"in": "other"}, "done": 1, "bytes": 24}))
        code, _, err = _edit(["--model", str(model_dir), "--jsonl", str(src), str(dst), "--no_progress"], capsys)
        assert code == 0 and "note: out.jsonl.partial came from another run (other requests, model or settings): starting over" in err
        assert len(dst.read_text().splitlines()) == 7 and "another run" not in dst.read_text()

    def test_the_output_of_a_run_still_going_is_left_alone_and_of_a_dead_one_resumed(self, model_dir, tmp_path, capsys):
        import socket
        import subprocess

        src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
        flags = ["--model", str(model_dir), "--jsonl", str(src), str(dst), "--no_progress"]
        assert _edit(flags, capsys)[0] == 0
        whole = dst.read_text()
        kept = "".join(whole.splitlines(keepends=True)[:2])
        record = tmp_path / "out.jsonl.partial.json"
        dst.unlink()
        with subprocess.Popen(["sleep", "60"]) as other:  # a live process of this machine wrote the record
            (tmp_path / "out.jsonl.partial").write_text(kept)
            saved = {"fingerprint": None, "done": 2, "bytes": len(kept.encode()), "pid": other.pid, "host": socket.gethostname()}
            record.write_text(json.dumps(saved))
            code, _, err = _edit(flags, capsys)
            other.kill()
        assert code != 0 and f"{tmp_path / 'out.jsonl.partial'} is being written by process {other.pid} on this machine" in err
        assert (tmp_path / "out.jsonl.partial").read_text() == kept and json.loads(record.read_text()) == saved  # untouched
        code, _, err = _edit(flags, capsys)  # the process is gone: its record is another run's (fingerprint None)
        assert code == 0 and dst.read_text() == whole and "starting over" in err

    def test_files_with_unicode_line_separators_are_counted_as_one_line_each(self, model_dir, tmp_path, capsys):
        src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"  # JSON keeps U+2028, U+2029 and U+0085 unescaped
        rows = [{**r, key: r[key] + "# \u2028 \u2029 \x85\n"} for r in _rows() for key in ["code" if "code" in r else "before"]]
        src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        code, _, err = _edit(["--model", str(model_dir), "--jsonl", str(src), str(dst), "--no_progress"], capsys)
        assert code == 0 and f"{len(rows)} requests, {len(rows)} edits" in err
        with open(dst, encoding="utf-8", newline="\n") as handle:
            got = [json.loads(line) for line in handle]
        assert [{k: g[k] for k in r} for g, r in zip(got, rows)] == rows and len(got) == len(rows)

    def test_reference_diff_kept_and_samples_numbered(self, model_dir, tmp_path, capsys):
        src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        s = SAMPLES["calc"]
        src.write_text(json.dumps({"name": s["name"], "before": s["before"], "message": s["message"], "diff": "REF"}) + "\n")
        code, _, err = _edit(["--model", str(model_dir), "--jsonl", str(src), str(dst), "--num_samples", "2",
                              "--temperature", "0.7", "--seed", "1", "--no_progress"], capsys)
        assert code == 0 and "reference_diff" in err and "editing" not in err
        got = [json.loads(line) for line in dst.read_text().splitlines()]
        assert [r["sample"] for r in got] == [0, 1]
        assert all(r["reference_diff"] == "REF" for r in got)
        from diffmodel.evaluate.edits import forced_share

        again = DiffModel.from_pretrained(model_dir).edit_many([(s["before"], s["message"], s["name"])], num_samples=2,
                                                               temperature=0.7, top_p=0.95, seed=1, max_new_tokens=512)
        assert [e.diff for e in again[0]] == [r["diff"] for r in got]
        assert f"edits/s, {forced_share(again):.0%} of tokens forced)" in err


class TestErrors:
    def test_missing_model_folder(self, tmp_path, capsys):
        (tmp_path / "a.py").write_text("x\n")
        code, _, err = _edit(["--model", str(tmp_path / "nope"), str(tmp_path / "a.py"), "-m", "m"], capsys)
        assert code == 2
        assert f"--model: model folder {str(tmp_path / 'nope')!r} does not exist" in err

    def test_model_folder_without_config(self, tmp_path, capsys):
        (tmp_path / "a.py").write_text("x\n")
        code, _, err = _edit(["--model", str(tmp_path), str(tmp_path / "a.py"), "-m", "m"], capsys)
        assert code == 2 and "has no config.json" in err

    def test_every_problem_at_once_before_loading(self, tmp_path, capsys):
        code, _, err = _edit(["--model", str(tmp_path / "nope"), str(tmp_path / "missing.py"), "--num_samples", "2"], capsys)
        assert code == 2
        assert "does not exist" in err and "missing.py" in err
        assert "-m/--message" in err and "--temperature above 0" in err

    def test_missing_file(self, model_dir, tmp_path, capsys):
        code, _, err = _edit(["--model", str(model_dir), str(tmp_path / "missing.py"), "-m", "m"], capsys)
        assert code == 2 and f"FILE {str(tmp_path / 'missing.py')!r} does not exist" in err

    def test_file_not_utf8(self, model_dir, tmp_path, capsys):
        path = tmp_path / "bin.py"
        path.write_bytes(b"\xff\xfe\x00")
        code, _, err = _edit(["--model", str(model_dir), str(path), "-m", "m"], capsys)
        assert code == 2 and "is not UTF-8 text" in err
        code, _, err = _edit(["--model", str(tmp_path / "nope"), str(path), "-m", "m", "--num_samples", "3"], capsys)
        assert code == 2 and "is not UTF-8 text" in err and "does not exist" in err and "--num_samples" in err  # at once

    def test_a_pipe_is_refused_before_the_model_loads_instead_of_blocking(self, model_dir, tmp_path, capsys, monkeypatch):
        from diffmodel.commands import edit as edit_command

        monkeypatch.setattr(edit_command, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
        fifo = tmp_path / "pipe.py"
        os.mkfifo(fifo)
        stop = threading.Event()

        def feed():  # a reader of the pipe gets a line, so that a read does not block the test
            while not stop.is_set():
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:  # no reader
                    time.sleep(0.05)
                    continue
                os.write(fd, b"x = 1\n")
                os.close(fd)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            code, out, err = _edit(["--model", str(model_dir), str(fifo), "-m", "m"], capsys)
        finally:
            stop.set()
            feeder.join()
        assert code == 2 and out == ""
        assert f"FILE {str(fifo)!r} is not a regular file (a pipe, socket or device); give a text file" in err

    def test_jsonl_text_that_is_not_valid_unicode_is_named_by_line_before_the_model_loads(self, model_dir, tmp_path, capsys,
                                                                                          monkeypatch):
        from diffmodel.commands import edit as edit_command

        monkeypatch.setattr(edit_command, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
        src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        src.write_text('{"name": "a.py", "before": "", "message": "ok"}\n'
                       '{"name": "b.py", "before": "x\\ud800\\n", "message": "m"}\n'
                       '{"name": "c.py", "before": "", "message": "m", "meta": {"tags": ["\\udc00"]}}\n')
        code, _, err = _edit(["--model", str(model_dir), "--jsonl", str(src), str(dst)], capsys)
        assert code == 2
        assert (f"{src}:2: 'before' holds a lone surrogate \\ud800 at character 1, not valid Unicode; write the text "
                "as UTF-8") in err
        assert f"{src}:3: 'meta' holds a lone surrogate \\udc00 at character 0, not valid Unicode" in err
        assert f"{src}:1" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]

    def test_jsonl_out_must_not_be_in(self, model_dir, tmp_path, capsys):
        src = tmp_path / "in.jsonl"
        src.write_text('{"name": "a.py", "before": "", "message": "ok"}\n')
        code, _, err = _edit(["--model", str(model_dir), "--jsonl", str(src), str(src)], capsys)
        assert code == 2 and "is IN: give another file" in err
        assert src.read_text() == '{"name": "a.py", "before": "", "message": "ok"}\n'

    def test_bad_jsonl_lines_named_by_file_and_line(self, model_dir, tmp_path, capsys):
        src = tmp_path / "in.jsonl"
        src.write_text(
            '{"name": "a.py", "before": "", "message": "ok"}\n'
            '{"name": "a.py", "before": ""\n'
            '{"name": "a.py", "before": ""}\n'
            '\n'
            '[1, 2]\n'
            '{"path": "a.py", "code": 3, "message": "m"}\n'
        )
        code, _, err = _edit(["--model", str(model_dir), "--jsonl", str(src), str(tmp_path / "out.jsonl")], capsys)
        assert code == 2
        assert f"{src}:2: not valid JSON" in err
        assert f"{src}:3: missing 'message'" in err
        assert f"{src}:5: expected a JSON object, got list" in err
        assert f"{src}:6: 'code' must be a string, got int" in err
        assert f"{src}:1" not in err and f"{src}:4" not in err
        assert not (tmp_path / "out.jsonl").exists()

    def test_jsonl_does_not_mix_with_file_flags(self, model_dir, tmp_path, capsys):
        src = tmp_path / "in.jsonl"
        src.write_text('{"name": "a.py", "before": "", "message": "ok"}\n')
        code, _, err = _edit(["--model", str(model_dir), "a.py", "-m", "x", "--apply", "--jsonl", str(src), str(tmp_path / "o.jsonl")], capsys)
        assert code == 2
        assert "FILE does not go with --jsonl" in err and "--apply does not go with --jsonl" in err

    def test_missing_jsonl_input(self, model_dir, tmp_path, capsys):
        code, _, err = _edit(["--model", str(model_dir), "--jsonl", str(tmp_path / "no.jsonl"), str(tmp_path / "o.jsonl")], capsys)
        assert code == 2 and "--jsonl IN" in err and "does not exist" in err


class TestPromptName:
    def test_relative_inside_the_current_folder(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        (tmp_path / "src").mkdir()
        assert prompt_name("src/app.py") == "src/app.py"
        assert prompt_name(str(tmp_path / "src" / "app.py")) == "src/app.py"
        assert prompt_name("./src/../src/app.py") == "src/app.py"

    def test_base_name_outside_it(self, tmp_path, monkeypatch):
        (tmp_path / "here").mkdir()
        monkeypatch.chdir(tmp_path / "here")
        assert prompt_name(str(tmp_path / "other" / "app.py")) == "app.py"
