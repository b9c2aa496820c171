"""The model and generation flags that edit and eval share: the same checks, all problems at once; fast --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from diffmodel.cli import main as diffmodel

#: flags each out of range, and the message each gives (the same for edit and eval)
BAD_GENERATION = ["--top_p", "1.5", "--top_k", "-1", "--temperature", "-1", "--max_new_tokens", "0", "--batch_size", "0"]
PROBLEMS = [
    "  - --temperature must be 0 (greedy) or more, got -1.0",
    "  - --top_p must be in (0, 1], got 1.5",
    "  - --top_k must be 0 (off) or more, got -1",
    "  - --max_new_tokens must be at least 1, got 0",
    "  - --batch_size must be at least 1, got 0",
]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "heldout.jsonl"
    row = {"name": "a.py", "before": "x = 1\n", "message": "Set x", "diff": "@@ -1 +1 @@\n-x = 1\n+x = 2\n"}
    path.write_text(json.dumps(row) + "\n")
    return path


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.startswith("  - ")]


class TestEvalChecksGenerationFlagsAsEditDoes:
    def test_eval_edits_reports_every_bad_generation_flag_at_once(self, data, tmp_path, capsys):
        out = tmp_path / "edits.json"
        code = diffmodel(["eval", "edits", "--calibrate", "oracle", "--data", str(data), "--out", str(out), *BAD_GENERATION])
        assert code == 2
        assert _error_lines(capsys) == PROBLEMS
        assert not out.exists()

    def test_eval_humanevalfix_reports_them_with_its_own_problems(self, tmp_path, capsys):
        code = diffmodel(["eval", "humanevalfix", "--calibrate", "empty", "--limit", "0", "--out", str(tmp_path / "h.json"),
                          *BAD_GENERATION])
        assert code == 2
        assert _error_lines(capsys) == PROBLEMS + ["  - --limit must be at least 1, got 0"]

    def test_edit_reports_the_same_lines(self, tmp_path, capsys):
        model = tmp_path / "model"
        model.mkdir()
        (model / "config.json").write_text("{}")
        source = tmp_path / "a.py"
        source.write_text("x = 1\n")
        code = diffmodel(["edit", "--model", str(model), str(source), "-m", "Set x", *BAD_GENERATION])
        assert code == 2
        assert _error_lines(capsys) == PROBLEMS

    def test_several_samples_without_sampling_is_refused_by_eval_as_by_edit(self, data, tmp_path, capsys):
        model = tmp_path / "model"
        model.mkdir()
        (model / "config.json").write_text("{}")
        message = ("  - --num_samples 3 needs sampling: set --temperature above 0 (e.g. 0.8); "
                   "greedy decoding gives identical samples")
        assert diffmodel(["eval", "edits", "--model", str(model), "--data", str(data), "--num_samples", "3"]) == 2
        assert _error_lines(capsys) == [message]
        assert diffmodel(["edit", "--model", str(model), str(data), "-m", "m", "--num_samples", "3"]) == 2
        assert _error_lines(capsys) == [message]


@pytest.mark.parametrize("command", ["edit", "eval", "apply"])
def test_help_imports_no_torch_transformers_or_datasets(command):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "diffmodel.cli", command, "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"usage: diffmodel {command}" in done.stdout
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    heavy = [name for name in imported if name.split(".")[0] in ("torch", "transformers", "datasets")]
    assert imported and heavy == []


@pytest.mark.parametrize("command", [["edit", "f.py", "-m", "msg"], ["eval", "loss", "--data", "x.jsonl"]])
def test_a_cuda_device_this_machine_lacks_is_a_usage_problem_before_anything_loads(command, tmp_path, capsys):
    import torch

    code = diffmodel([*command, "--model", str(tmp_path), "--device", "cuda:99"])
    err = capsys.readouterr().err
    assert code == 2 and "--device: device 'cuda:99': " in err
    if not torch.cuda.is_available():
        assert "no CUDA GPU here" in err and "use cpu" in err
    else:
        assert f"this machine has {torch.cuda.device_count()} CUDA GPU" in err


def test_the_model_identity_a_resumed_run_must_match_names_the_tokenizer_files(tmp_path):
    import argparse

    from diffmodel.commands.options import model_identity

    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "vocab.json", "merges.txt", "README.md", "loss.png", "trainer_state.json"):
        (tmp_path / name).write_text(name)
    args = argparse.Namespace(model=str(tmp_path), dtype="auto", device="cpu")
    named = [entry[0] for entry in model_identity(args)["model_files"]]
    assert named == ["config.json", "generation_config.json", "merges.txt", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "vocab.json"]
    before = model_identity(args)
    (tmp_path / "tokenizer.json").write_text("another tokenizer")
    assert model_identity(args) != before
