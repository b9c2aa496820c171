"""diffmodel quickstart end to end (a short run: the README's command runs all epochs), with --no_progress."""

import json
import re
import subprocess
import sys


def test_quickstart_writes_checkpoint_plot_and_report(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, "-m", "diffmodel.cli", "quickstart", "--output_dir", str(out), "--max_steps", "4", "--layers", "1", "--hidden", "32", "--vocab_size", "300",
         "--no_progress"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Data sanity report" in proc.stdout and "[quickstart] done" in proc.stdout
    assert "pin_memory" not in proc.stderr  # no GPU: no pinned memory, no warning at each data loader
    assert not re.search(r"%\||/s\]", proc.stdout + proc.stderr), proc.stderr[-3000:]  # --no_progress: no tqdm bar, its own or train's
    model = out / "model"
    assert (model / "model.safetensors").stat().st_size > 0
    assert (model / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (model / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((model / "data_report.json").read_text())
    assert report["train"]["layout"] == "pack" and report["train"]["samples_loaded"] == 304
    assert report["train"]["fill_ratio"] > 0.7  # left padding fills about 45% of the same rows
    ev = json.loads((model / "eval_results.json").read_text())
    assert ev["eval_loss"] > 0 and ev["perplexity"] > 1
    summary = proc.stdout.split("[quickstart] done\n")[1].splitlines()
    assert f"eval loss (diff tokens)  {ev['eval_loss']:.3f}" in [line.strip() for line in summary]
    assert ["model", "card", str(model / "README.md")] in [line.split() for line in summary]
    assert (model / "README.md").read_text().startswith(f"# Diff model: {model}")
