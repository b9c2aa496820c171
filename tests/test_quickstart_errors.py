"""diffmodel quickstart: bad flags refused at once before anything is written, a stop on SIGTERM, plain --help."""

import signal
import subprocess
import sys

import pytest

from diffmodel.cli import main as cli_main


def test_every_bad_flag_is_reported_at_once_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "qs"
    code = cli_main(["quickstart", "--output_dir", str(out), "--epochs", "0", "--max_steps", "0", "--block_size", "0", "--layers", "0",
                     "--hidden", "100", "--arch", "llama", "--vocab_size", "10", "--seed", "-1"])
    assert code == 2
    assert capsys.readouterr().err == (
        "diffmodel quickstart: error: diffmodel quickstart cannot start:\n"
        "  - --epochs 0: use a positive number of epochs (default: 5)\n"
        "  - --max_steps 0: use a positive number of steps, or -1 to run all --epochs\n"
        "  - --block_size 0 is too small; use at least 2 (default: 512)\n"
        "  - --layers 0: use at least 1 layer (default: 3)\n"
        "  - --hidden 100: with --arch llama the hidden size must be a positive multiple of 8 (4 attention heads, each of an even size for RoPE), e.g. 96\n"
        "  - --vocab_size 10 is too small for a byte-level tokenizer (256 byte symbols plus the EOS token); use at least 257 (default: 1024)\n"
        "  - --seed -1: use a seed from 0 to 2**32 - 1\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(("argv", "problem"), [
    (["--hidden", "130"], "--hidden 130: with --arch gpt2 the hidden size must be a positive multiple of 4 (4 attention heads), e.g. 128"),
    (["--hidden", "0"], "--hidden 0: with --arch gpt2 the hidden size must be a positive multiple of 4 (4 attention heads), e.g. 4"),
    (["--epochs", "nan"], "--epochs nan: use a positive number of epochs (default: 5)"),
])
def test_one_bad_flag(tmp_path, capsys, argv, problem):
    out = tmp_path / "qs"
    assert cli_main(["quickstart", "--output_dir", str(out), *argv]) == 2
    assert capsys.readouterr().err == f"diffmodel quickstart: error: diffmodel quickstart cannot start:\n  - {problem}\n"
    assert not out.exists()


@pytest.mark.parametrize("inside", [False, True])
def test_output_dir_that_is_a_file_or_inside_one(tmp_path, capsys, inside):
    (tmp_path / "qs").write_text("keep")
    out = tmp_path / "qs" / "sub" if inside else tmp_path / "qs"
    assert cli_main(["quickstart", "--output_dir", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"diffmodel quickstart: error: diffmodel quickstart cannot start:\n  - --output_dir {out}: {tmp_path / 'qs'} is a file, not a folder; "
        "choose another folder\n"
    )
    assert (tmp_path / "qs").read_text() == "keep"


def test_a_block_size_no_sample_fits_is_refused_before_training_with_the_least_that_fits(tmp_path, capsys):
    out = tmp_path / "qs"
    assert cli_main(["quickstart", "-o", str(out), "--block_size", "16", "--no_progress"]) == 2
    err = capsys.readouterr().err
    shortest = int(err.split("the shortest is ")[1].split()[0])
    assert shortest > 16 and err.endswith(f"use more than {shortest} (default: 512)\n")
    assert "--block_size 16: no bundled sample fits" in err and not (out / "model").exists()  # training never started


def test_sigterm_during_training_returns_train_status_without_a_summary(tmp_path):
    out = tmp_path / "qs"
    err = tmp_path / "stderr.txt"
    with err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "diffmodel.cli", "quickstart", "--output_dir", str(out), "--max_steps", "5000",
                                 "--layers", "1", "--hidden", "32", "--vocab_size", "300"], stdout=subprocess.PIPE, stderr=stderr, text=True)
        for line in proc.stdout:
            if "'loss'" in line:  # the first logged step: training runs, with train's SIGTERM handler installed
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.stdout.read()
        assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    lines = err.read_text().splitlines()
    assert lines[-1] == "[quickstart] training stopped (exit status 143); running this command again starts training over"
    assert "Traceback" not in err.read_text() and "[quickstart] done" not in rest
    # quickstart trains with --overwrite_output_dir: train's own line must not promise a resume
    said = rest + err.read_text()
    assert "the same command without --overwrite_output_dir resumes from it (with it, training starts over)" in said
    assert "; the same command resumes from it" not in said
    assert len(list((out / "model").glob("checkpoint-*"))) == 1
    assert not (out / "model" / "trainer_state.json").exists()


def test_help_is_plain_text_and_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(["quickstart", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text
    words = " ".join(text.split())  # argparse wraps lines to the terminal's width
    assert "] Train a tiny diff model on the bundled samples (CPU, a few minutes) and print a summary. Everything is written under" in words
    assert words.endswith("--seed SEED seed of the initial weights, the validation split and the training order (default: 0) "
                          "--no_progress, --no-progress no progress bars (passed on to the diffmodel train it runs)")
