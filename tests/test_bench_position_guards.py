"""benchmarks/position_guards.py on the CPU: each setting's graphs per call, and inductor's setting put back."""

import sys
from pathlib import Path

import torch._inductor.config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from position_guards import main  # noqa: E402

from diffmodel.train import loss_logits  # noqa: E402


def test_both_settings_compile_once_on_the_cpu_and_the_setting_is_put_back(capsys):
    triton = torch._inductor.config.triton
    before = getattr(triton, loss_logits.NON_STRICT_FUSION)
    results = main(["--hidden", "32", "--rows", "40,24", "--device", "cpu", "--dtype", "fp32"])
    # the CPU makes no mix-order fusion: the rows marked dynamic compile one graph for both numbers
    assert [(r["graphs"], r["again"]) for r in results] == [([1, 0], 0), ([1, 0], 0)]
    assert getattr(triton, loss_logits.NON_STRICT_FUSION) is before
    out = capsys.readouterr().out
    assert "| unguarded_positions() | 1, 0 | 0 |" in out and "hidden 32, rows 40,24" in out
