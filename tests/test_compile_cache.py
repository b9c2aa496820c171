"""--compile_cache: where torch.compile keeps its kernels between runs (diffmodel.train.compile_cache)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from diffmodel.errors import DiffModelError
from diffmodel.train.compile_cache import ENV, apply, choose, inductor_default
from sample_rows import edit_rows
from test_fast_path import _train


def test_auto_keeps_the_kernels_beside_the_cache_dir_or_in_diffmodels_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMODEL_CACHE", str(tmp_path / "home"))
    assert choose("auto", str(tmp_path / "c"), True, env={})[0] == tmp_path / "c" / "diffmodel_compile"
    folder, reason = choose("auto", None, True, env={})
    assert folder == tmp_path / "home" / "compile" and "reuse the kernels" in reason
    # inductor writes its own default into the environment once used: that is not a user's setting
    assert choose("auto", None, True, env={ENV: inductor_default()})[0] == tmp_path / "home" / "compile"


def test_a_users_variable_a_folder_and_off_win_and_uncompiled_runs_keep_nothing(tmp_path, monkeypatch):
    assert choose("auto", str(tmp_path / "c"), True, env={ENV: "/shared/inductor"}) == \
        (Path("/shared/inductor"), f"set by {ENV}")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert choose("~/kernels", None, True, env={}) == (tmp_path / "kernels", "set by --compile_cache")
    assert choose("off", str(tmp_path / "c"), True, env={})[0] is None
    assert choose("auto", str(tmp_path / "c"), False, env={}) == (None, "not compiled")


def test_apply_makes_the_folder_and_points_inductor_at_it(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "/before")
    apply(tmp_path / "a" / "b")
    assert os.environ[ENV] == str((tmp_path / "a" / "b").resolve()) and (tmp_path / "a" / "b").is_dir()
    apply(None)
    assert os.environ[ENV] == str((tmp_path / "a" / "b").resolve())
    (tmp_path / "file").write_text("x")
    with pytest.raises(DiffModelError, match="--compile_cache: cannot make the folder .*--compile_cache off"):
        apply(tmp_path / "file" / "sub")
    apply(tmp_path / "file" / "sub", asked_for=False)  # auto's folder: given up, inductor keeps its own
    assert os.environ[ENV] == str((tmp_path / "a" / "b").resolve())


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in edit_rows()))
    return tmp_path


def test_a_compiled_run_keeps_its_kernels_in_the_folder_and_a_second_run_reads_them(tmp_path, data_dir, tiny_llama_dir):
    """Two tiny compiled runs (inductor on the CPU) with --compile_cache: the first writes inductor's graph cache
    there, the second finds its graphs in it, and each run leaves the environment as it found it."""
    import torch
    from torch._dynamo.utils import counters

    before = os.environ.get(ENV)
    kernels = tmp_path / "kernels"
    hits, logged = [], []
    for name in ("cache-first", "cache-second"):
        torch._dynamo.reset()
        counters.clear()
        run = _train(tiny_llama_dir, data_dir, name, "--packing", "--compile", "on", "--attn_implementation", "sdpa",
                     "--max_steps", "2", "--compile_cache", str(kernels))
        assert run["code"] == 0
        assert any(f"torch.compile cache: {kernels} (set by --compile_cache)" in m for m in run["log"]), run["log"]
        assert os.environ.get(ENV) == before
        hits.append(counters["inductor"]["fxgraph_cache_hit"])
        logged.append(next(m for m in run["log"] if "the first step (step 1) took" in m))
    assert any((kernels / "fxgraph").rglob("*")), "the first run wrote its graphs there"
    assert hits[0] == 0 < hits[1]
    assert "; 0 of its " in logged[0] and f"; {hits[1]} of its " in logged[1], logged


def test_the_benchmark_reads_the_first_steps_seconds_from_the_log_line_diffmodel_writes(caplog):
    """benchmarks/compile_cache.py parses the line FirstStepCallback logs."""
    import logging
    import sys

    from transformers import TrainerControl, TrainerState

    from diffmodel.train.first_step import FirstStepCallback

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from compile_cache import FIRST_STEP

    clock = iter([100.0, 137.4])
    callback = FirstStepCallback(clock=lambda: next(clock), counts=lambda: (0, 0))
    callback.on_train_begin(None, TrainerState(), TrainerControl())
    with caplog.at_level(logging.INFO, logger="diffmodel.train"):
        callback.on_step_end(None, TrainerState(global_step=1), TrainerControl())
    assert [float(m.group(1)) for m in map(FIRST_STEP.search, caplog.messages) if m] == [37.0]


def test_the_log_shows_the_folder_and_the_model_card_leaves_it_out(tmp_path, monkeypatch):
    from diffmodel.train import fast_path
    from diffmodel.train.args import SpeedArguments
    from test_fast_path import GPU, _training

    monkeypatch.delenv(ENV, raising=False)
    path = fast_path.choose(SpeedArguments(), None, True, _training(), GPU, "llama", cache_dir=str(tmp_path))
    assert path.compile.value and path.compile_cache.value == tmp_path / "diffmodel_compile"
    assert path.settings()["torch.compile cache"].startswith(f"{tmp_path / 'diffmodel_compile'} (kept beside --cache_dir")
    assert "torch.compile cache" not in path.settings(local=False)
    assert set(path.settings()) - set(path.settings(local=False)) == {"torch.compile cache"}
    uncompiled = fast_path.choose(SpeedArguments(compile="off"), None, True, _training(), GPU, "llama", cache_dir=str(tmp_path))
    assert uncompiled.compile_cache.value is None and "torch.compile cache" not in uncompiled.settings()


def test_an_empty_value_or_a_file_is_refused_before_anything_loads(tmp_path):
    from diffmodel.train import fast_path
    from diffmodel.train.args import SpeedArguments
    from test_fast_path import GPU

    (tmp_path / "f").write_text("x")
    assert fast_path.problems(SpeedArguments(compile_cache=" "), None, True, GPU) == \
        ["--compile_cache is empty: give auto, off or a folder for torch.compile's kernels"]
    assert fast_path.problems(SpeedArguments(compile_cache=str(tmp_path / "f")), None, True, GPU) == \
        [f"--compile_cache {tmp_path / 'f'} is a file: give a folder (made if missing), auto or off"]
    assert fast_path.problems(SpeedArguments(compile_cache=str(tmp_path / "new")), None, True, GPU) == []
