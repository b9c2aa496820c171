"""diffmodel train run again in a finished --output_dir, and arguments refused before any data is read."""

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffmodel.commands.train import main as train_main
from diffmodel.errors import DiffModelError
from diffmodel.sample import render
from diffmodel.tiny import save_tiny_checkpoint
from sample_rows import edit_rows


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rerun")
    rows = edit_rows()
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_tiny_checkpoint(d / "gpt2", "gpt2", [render(**r) for r in rows], n_positions=256)
    return d


def _args(workdir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(workdir / "gpt2"), "--train_file", str(workdir / "data.jsonl"), "--output_dir", str(out),
        "--block_size", "128", "--train_diff_model", "--packing", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3", "--report_to", "none", "--cache_dir", str(workdir / "cache"), "--logging_steps", "1",
        "--save_strategy", "steps", "--save_steps", "2", "--seed", "1", "--do_train", "--use_cpu", "--no_progress", *extra,
    ]


def _logged_steps(out: Path) -> list[int]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["step"] for h in state["log_history"] if "loss" in h]


class TestRerunOfAFinishedRun:
    @pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streaming"])
    def test_trains_no_step_past_max_steps(self, workdir, tmp_path, caplog, streaming):
        out = tmp_path / "out"
        args = _args(workdir, out, "--max_steps", "2", *(["--streaming", "--stream_buffer", "8"] if streaming else []))
        assert train_main(args) == 0
        first = load_file(str(out / "model.safetensors"))
        (out / "model.safetensors").unlink()  # as if the run had died while saving its final model

        caplog.set_level(logging.INFO, logger="diffmodel")
        assert train_main(args) == 0
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
        assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
        assert _logged_steps(out) == [1, 2]
        again = load_file(str(out / "model.safetensors"))
        assert sorted(again) == sorted(first) and all(torch.equal(again[k], first[k]) for k in first)
        assert "train_loss" not in json.loads((out / "train_results.json").read_text())
        assert any(r.getMessage() == (
            f"{out}/checkpoint-2 already reached --max_steps 2 (step 2): no step is trained; the final model, metrics and "
            "plots are written from it (raise --max_steps to train on, or pass --overwrite_output_dir to start over)")
            for r in caplog.records)

    def test_a_larger_max_steps_still_trains_on(self, workdir, tmp_path):
        out = tmp_path / "out"
        assert train_main(_args(workdir, out, "--max_steps", "2")) == 0
        assert train_main(_args(workdir, out, "--max_steps", "3")) == 0
        assert _logged_steps(out) == [1, 2, 3]
        assert "train_loss" in json.loads((out / "train_results.json").read_text())


FIX = ("give a complete checkpoint-N folder of a run's --output_dir, or drop the flag to resume from the last complete "
       "checkpoint in --output_dir")


class TestResumeFromCheckpointIsChecked:
    def _problems(self, workdir, tmp_path, checkpoint, *extra) -> str:
        with pytest.raises(DiffModelError) as err:
            train_main(_args(workdir, tmp_path / "out", "--max_steps", "2", "--resume_from_checkpoint", str(checkpoint), *extra))
        return str(err.value)

    def test_a_folder_that_does_not_exist(self, workdir, tmp_path):
        msg = self._problems(workdir, tmp_path, tmp_path / "nope")
        assert msg == f"diffmodel train cannot start:\n  - --resume_from_checkpoint {tmp_path}/nope: no such folder; {FIX}"

    def test_a_checkpoint_whose_save_was_cut_short(self, workdir, tmp_path):
        cut = tmp_path / "checkpoint-4"
        cut.mkdir()
        (cut / "model.safetensors").write_bytes(b"")
        msg = self._problems(workdir, tmp_path, cut)
        assert msg == (f"diffmodel train cannot start:\n  - --resume_from_checkpoint {cut}: no trainer_state.json in it, "
                       f"so it is not a checkpoint, or one whose save was cut short; {FIX}")

    def test_streaming_also_needs_the_stream_state(self, workdir, tmp_path):
        cut = tmp_path / "checkpoint-4"
        cut.mkdir()
        (cut / "trainer_state.json").write_text("{}")
        msg = self._problems(workdir, tmp_path, cut, "--streaming")
        assert msg == (f"diffmodel train cannot start:\n  - --resume_from_checkpoint {cut}: no stream_state.json in it, "
                       f"so it is not a checkpoint, or one whose save was cut short; {FIX}")

    def test_a_file(self, workdir, tmp_path):
        (tmp_path / "f").write_text("x")
        msg = self._problems(workdir, tmp_path, tmp_path / "f")
        assert msg == f"diffmodel train cannot start:\n  - --resume_from_checkpoint {tmp_path}/f: a file, not a checkpoint folder; {FIX}"


class TestModelFromScratch:
    def _scratch(self, workdir, tmp_path, overrides) -> list[str]:
        args = _args(workdir, tmp_path / "out", "--max_steps", "1")
        at = args.index("--model_name_or_path")
        del args[at:at + 2]
        return args + ["--model_type", "gpt2", "--tokenizer_name", str(workdir / "gpt2"), "--config_overrides", overrides]

    def test_sizes_the_architecture_cannot_be_built_with(self, workdir, tmp_path):
        with pytest.raises(DiffModelError) as err:
            train_main(self._scratch(workdir, tmp_path, "n_embd=30,n_head=4,n_layer=1"))
        assert str(err.value) == (
            "cannot build a new gpt2 model from --config_overrides 'n_embd=30,n_head=4,n_layer=1': `embed_dim` must be "
            "divisible by num_heads (got `embed_dim`: 30 and `num_heads`: 4); change --config_overrides (or the --config_name config)")

    def test_an_override_that_is_not_key_value(self, workdir, tmp_path):
        with pytest.raises(DiffModelError) as err:
            train_main(self._scratch(workdir, tmp_path, "n_embd=32,n_layer"))
        assert str(err.value) == ("--config_overrides 'n_embd=32,n_layer': 'n_layer' is not KEY=VALUE; "
                                  "give comma-separated KEY=VALUE pairs, e.g. 'n_embd=256,n_layer=4'")


class TestSkipConcatWithPacking:
    def test_raw_samples_are_refused_before_training(self, workdir, tmp_path):
        with pytest.raises(DiffModelError) as err:
            train_main(_args(workdir, tmp_path / "out", "--max_steps", "1", "--skip_concat"))
        assert str(err.value) == (
            "--skip_concat --packing trains rows an earlier --packing run laid out (input_ids, labels, position_ids), "
            "but the train split holds samples that are not laid out (columns: name, before, message, diff, text); "
            "drop --skip_concat to pack them")
        assert not (tmp_path / "out" / "config.json").exists()


class TestEmptySplitNamesTheFixThatApplies:
    def test_packing_is_not_told_to_drop_ignore_long_samples(self, workdir, tmp_path):
        args = _args(workdir, tmp_path / "out", "--max_steps", "1")
        args[args.index("--block_size") + 1] = "8"
        with pytest.raises(DiffModelError) as err:
            train_main(args)
        assert str(err.value) == (
            "the train split is empty after preprocessing (38 loaded, 38 dropped as >= --block_size 8 tokens, 0 dropped "
            "without <DFF>, 0 dropped with an empty diff); raise --block_size (--packing drops every sample of --block_size "
            "tokens or more: it never splits one), or check the data (and that --edit_format is the format its text is written in)")


class TestTrainerFlagsRefusedUpFront:
    def test_steps_that_train_nothing_or_divide_by_zero(self, workdir, tmp_path):
        args = _args(workdir, tmp_path / "out", "--gradient_accumulation_steps", "0", "--num_train_epochs", "0")
        with pytest.raises(DiffModelError) as err:
            train_main(args)
        assert str(err.value) == (
            "diffmodel train cannot start:\n"
            "  - --gradient_accumulation_steps 0 must be at least 1 (1: no accumulation)\n"
            "  - --num_train_epochs 0 trains no step; give a positive --num_train_epochs or --max_steps")

    def test_save_steps_0_saves_no_checkpoint(self, workdir, tmp_path):
        with pytest.raises(DiffModelError) as err:
            train_main(_args(workdir, tmp_path / "out", "--save_steps", "0"))
        assert str(err.value) == (
            "diffmodel train cannot start:\n"
            "  - --save_steps 0 saves no checkpoint (nothing to resume from); give a positive --save_steps, "
            "or --save_strategy no to save none")

    def test_a_bad_value_prints_a_short_usage_and_the_flag(self, workdir, tmp_path, capsys):
        with pytest.raises(SystemExit) as done:
            train_main(_args(workdir, tmp_path / "out", "--learning_rate", "abc"))
        assert done.value.code == 2
        assert capsys.readouterr().err == (
            "usage: diffmodel train [FLAGS] | diffmodel train ARGS.yaml|ARGS.json (flags: diffmodel train --help, or --help-all)\n"
            "diffmodel train: error: argument --learning_rate/--learning-rate: invalid float value: 'abc'\n")
