"""diffmodel quickstart: an output folder it cannot use is a usage error, its own command line, the summary's speed row."""

from __future__ import annotations

import errno
import json
import sys

import pytest

from diffmodel.cli import main as cli_main
from diffmodel.commands import quickstart as command
from diffmodel.errors import DiffModelError
from diffmodel.quickstart import summary


def test_an_output_dir_name_too_long_to_look_up_is_reported_with_the_other_problems(tmp_path, capsys):
    out = tmp_path / ("x" * 300)
    assert cli_main(["quickstart", "-o", str(out), "--epochs", "0"]) == 2
    assert capsys.readouterr().err == (
        "diffmodel quickstart: error: diffmodel quickstart cannot start:\n"
        f"  - --output_dir {out}: cannot be used (File name too long); choose another folder\n"
        "  - --epochs 0: use a positive number of epochs (default: 5)\n"
    )


def test_an_output_dir_it_cannot_write_in_is_a_usage_error_before_anything_is_built(tmp_path, capsys, monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("tempfile.TemporaryFile", refused)
    out = tmp_path / "qs"
    assert cli_main(["quickstart", "-o", str(out), "--block_size", "16", "--no_progress"]) == 2
    assert capsys.readouterr().err == (
        f"diffmodel quickstart: error: --output_dir {out}: cannot write in it (Permission denied); choose another folder\n"
    )
    assert list(out.iterdir()) == []  # no sample copied, no tokenizer trained


def test_run_as_a_module_it_reads_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart_out").write_text("in the way of the default --output_dir")
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "-o", str(tmp_path / "qs"), "--layers", "0"])
    with pytest.raises(DiffModelError) as err:
        command.main()
    assert str(err.value) == "diffmodel quickstart cannot start:\n  - --layers 0: use at least 1 layer (default: 3)"


def test_max_steps_help_says_it_overrides_the_epochs(capsys):
    with pytest.raises(SystemExit):
        command.parse(["--help"])
    words = " ".join(capsys.readouterr().out.split())
    assert ("--max_steps MAX_STEPS train this many optimizer steps, however many epochs they take (--epochs is then ignored; "
            "default: all --epochs)") in words


def _model_dir(tmp_path, log_history):
    model = tmp_path / "model"
    model.mkdir()
    (model / "trainer_state.json").write_text(json.dumps({"global_step": 5, "log_history": log_history}))
    (model / "eval_results.json").write_text(json.dumps({"eval_loss": 6.5, "perplexity": 665.14}))
    (model / "data_report.json").write_text(json.dumps({
        "train": {"samples_loaded": 304, "rows": 135, "layout": "pack", "fill_ratio": 0.973, "loss_share": 0.428},
        "validation": {"samples_loaded": 16},
    }))
    return model


@pytest.mark.parametrize(("logs", "speed"), [
    ([{"loss": 6.84, "tokens_per_second": 1173.5, "loss_tokens_per_second": 496.0, "step": 5}],
     "not measured (it needs two logged steps: --logging_steps 5, so at least 10 steps)"),
    ([{"loss": 6.84, "tokens_per_second": 1173.5, "loss_tokens_per_second": 496.0, "step": 5},
      {"loss": 6.39, "tokens_per_second": 4184.8, "loss_tokens_per_second": 1690.7, "step": 10}],
     "4185 tokens/s, median"),
])
def test_summary_speed_row(tmp_path, logs, speed):
    model = _model_dir(tmp_path, logs)
    rows = dict(summary(model, 512, 0.0))
    assert rows["speed"] == f"{speed} (plot: {model / 'speed.png'})"
    assert rows["last train loss"] == f"{logs[-1]['loss']:.3f} (step 5)"
    assert rows["rows x block_size"] == "135 x 512 (pack layout, 97.3% filled)"

