"""Batch generation shared out between the processes of ``torchrun --nproc_per_node 2`` (CPU, gloo): the same output as
one process, sampled with the same seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from edit_model import SAMPLES, trained_edit_model

from diffmodel.cli import main as cli_main
from diffmodel.infer.shards import Shard

ROWS = 40  # with --batch_size 1, pieces of 16 requests: process 0 takes one piece, process 1 the other two


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return trained_edit_model(tmp_path_factory)


def test_shares_are_whole_pieces_as_even_as_they_divide():
    assert [Shard(r, 2).span(40, 16) for r in range(2)] == [(0, 16), (16, 40)]
    assert [Shard(r, 3).span(100, 10) for r in range(3)] == [(0, 30), (30, 60), (60, 100)]
    assert [Shard(r, 4).span(20, 16) for r in range(4)] == [(0, 0), (0, 16), (16, 16), (16, 20)]
    assert Shard().span(7, 16) == (0, 7) and Shard(1, 2).span(0, 16) == (0, 0)


def _rows():
    keys = list(SAMPLES)
    return [{"name": SAMPLES[k]["name"], "before": SAMPLES[k]["before"], "message": SAMPLES[k]["message"], "id": i}
            for i, k in enumerate(keys[i % len(keys)] for i in range(ROWS))]


def _torchrun(argv, cwd) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "diffmodel.cli", *argv]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc.stdout + proc.stderr


SAMPLING = ["--batch_size", "1", "--temperature", "0.7", "--seed", "5", "--max_new_tokens", "40", "--no_progress"]


def test_edit_jsonl_under_torchrun_writes_what_one_process_writes(model_dir, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert cli_main(["edit", "--model", str(model_dir), "--jsonl", str(src), str(one), *SAMPLING]) == 0
    log = _torchrun(["edit", "--model", str(model_dir), "--jsonl", str(src), str(two), *SAMPLING], tmp_path)
    assert "requests 16-39 kept in two.jsonl.1-of-2.partial; process 0 finishes the run" in log
    assert two.read_text() == one.read_text() and len(one.read_text().splitlines()) == ROWS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "one.jsonl", "two.jsonl"]  # no share left behind


def test_eval_edits_under_torchrun_reports_what_one_process_reports(model_dir, tmp_path):
    data = tmp_path / "heldout.jsonl"
    keys = ["calc", "greet", "crlf", "marker"]
    data.write_text("".join(json.dumps({"name": SAMPLES[k]["name"], "before": SAMPLES[k]["before"], "message": SAMPLES[k]["message"],
                                        "diff": SAMPLES[k]["diff"]}) + "\n" for k in keys * 10))
    flags = ["eval", "edits", "--model", str(model_dir), "--data", str(data), *SAMPLING]
    assert cli_main([*flags, "--out", str(tmp_path / "one" / "edits.json")]) == 0
    _torchrun([*flags, "--out", str(tmp_path / "two" / "edits.json")], tmp_path)
    one, two = (json.loads((tmp_path / d / "edits.json").read_text()) for d in ("one", "two"))
    assert (two["metrics"], two["statuses"]) == (one["metrics"], one["statuses"]) and one["metrics"]["samples"] == 40
    assert (tmp_path / "two" / "edits.samples.jsonl").read_text() == (tmp_path / "one" / "edits.samples.jsonl").read_text()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["edits.json", "edits.md", "edits.samples.jsonl"]


def test_eval_humanevalfix_under_torchrun_makes_the_bugs_once_and_reports_what_one_process_reports(model_dir, tmp_path):
    problems = tmp_path / "problems.jsonl"  # files short enough for the tiny model's 256 positions
    problems.write_text("".join(json.dumps({
        "task_id": f"Tiny/{i}", "prompt": f"def {name}(a, b):\n", "canonical_solution": f"    return a {op} b\n",
        "test": f"def check(f):\n    assert f(7, 2) == {value}\n", "entry_point": name}) + "\n"
        for i, (name, op, value) in enumerate([("add", "+", 9), ("sub", "-", 5), ("mul", "*", 14)] * 7)))
    flags = ["eval", "humanevalfix", "--model", str(model_dir), "--problems", str(problems), "--num_samples", "2", "--k", "1",
             "--bugs_cache", str(tmp_path / "cache"), *SAMPLING]
    _torchrun([*flags, "--out", str(tmp_path / "two" / "hef.json")], tmp_path)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one bug set, the same for both processes
    assert cli_main([*flags, "--out", str(tmp_path / "one" / "hef.json")]) == 0
    one, two = (json.loads((tmp_path / d / "hef.json").read_text()) for d in ("one", "two"))
    assert two["metrics"] == {**one["metrics"], "forced_share": two["metrics"]["forced_share"]}
    assert two["metrics"]["forced_share"] == pytest.approx(one["metrics"]["forced_share"])
    assert one["metrics"]["problems_with_bug"] == 21 and two["statuses"] == one["statuses"]
    assert (tmp_path / "two" / "hef.samples.jsonl").read_text() == (tmp_path / "one" / "hef.samples.jsonl").read_text()


def test_process_0_refuses_a_share_another_process_made_for_other_requests_or_settings(tmp_path, monkeypatch):
    """The check after the barrier, with the other process's share written beforehand (the barrier left out)."""
    from diffmodel.errors import DiffModelError
    from diffmodel.infer import partial as pieces
    from diffmodel.infer import shards
    from diffmodel.infer.prompt import Edit, EditStatus

    class Writer:
        def edit_many(self, requests, **options):
            return [[Edit("", None, EditStatus.FAILED)] for _ in requests]

    monkeypatch.setattr(shards, "current", lambda: Shard(0, 2))
    monkeypatch.setattr(Shard, "wait", lambda self: None)
    requests = [("x = 1\n", "m", f"f{i}.py") for i in range(4)]
    lines = lambda chunk, edits: [pieces.edits_line(e) for e in edits]  # noqa: E731
    out = tmp_path / "out.jsonl"
    for fingerprint, fails in (({"seed": 1}, False), ({"seed": 2}, True)):  # process 1 ran with other settings the second time
        other = pieces.PartialOutput(Shard(1, 2).out(out), {"seed": 1, "span": [2, 4]})
        other.start()
        other.add(lines(requests[2:], Writer().edit_many(requests[2:])), 2)
        if fails:
            with pytest.raises(DiffModelError, match=r"process 1 did not generate requests 2-3 of this run \(out\.jsonl\.1-of-2\.partial\)"):
                pieces.generate_share(Writer(), requests, out, fingerprint, 2, {}, lines)
        else:
            got = pieces.generate_share(Writer(), requests, out, fingerprint, 2, {}, lines)
            assert got.spans == [(0, 2), (2, 4)] and len(got.made) == 2
