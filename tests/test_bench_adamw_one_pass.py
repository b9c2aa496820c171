"""benchmarks/adamw_one_pass.py on a tiny Llama on the CPU: both arms step the same weights to the same copies."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from adamw_one_pass import main  # noqa: E402


def test_both_arms_step_alike_and_the_table_has_a_row_each(capsys):
    assert main(["--model", "tiny", "--vocab_size", "64", "--device", "cpu", "--rounds", "2", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "model tiny: 21 weights" in out  # 2 layers of 9, the embedding, the final norm, the output layer
    assert re.search(r"^\| three passes \| [\d.]+ \| [\d.]+ \| 1\.00x \|$", out, re.M)
    assert re.search(r"^\| one pass \| [\d.]+ \| [\d.]+ \| [\d.]+x \|$", out, re.M)
    diff = float(re.search(r"copies after the same steps: (\S+)", out).group(1))
    assert diff < 1e-6  # the same AdamW within fp32 rounding
