"""benchmarks/step_host_time.py on the CPU: every piece it times gets a row, for the ~110M model's 111 weights."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import step_host_time  # noqa: E402


def test_it_times_each_piece_of_the_110m_models_step(capsys):
    assert step_host_time.main(["--model", "110m", "--calls", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model 110m: 111 weights, 163 modules, torch ")
    rows = re.findall(r"^\| (.+?) \| ([0-9.]+)( µs)? \|$", out, re.M)
    assert [name for name, _, _ in rows] == [
        "one-pass AdamW step around the compiled pass", "Trainer.floating_point_ops (transformers)",
        "diffmodel's trainer's floating_point_ops", "model.train() (Trainer, each step)",
        "model.zero_grad() (Trainer, each step)"]
    assert all(float(value) > 0 for _, value, _ in rows)
