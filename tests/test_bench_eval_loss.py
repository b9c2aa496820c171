"""benchmarks/eval_loss_speed.py: its samples and a tiny CPU run of both arms."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_loss_speed import main, samples  # noqa: E402

from diffmodel.preprocess.labels import IGNORE_INDEX  # noqa: E402


def test_samples_bear_loss_on_their_last_share():
    made = samples(5, vocab=50, low=10, high=20, share=0.2)
    for s in made:
        n = len(s.input_ids)
        assert 10 <= n <= 20 and s.labels[:n - max(1, int(n * 0.2))] == [IGNORE_INDEX] * (n - max(1, int(n * 0.2)))
        assert s.labels[n - max(1, int(n * 0.2)):] == s.input_ids[n - max(1, int(n * 0.2)):]


def test_both_arms_give_the_same_sample_losses(capsys):
    assert main(["--device", "cpu", "--hidden", "64", "--vocab", "500", "--samples", "6", "--batch_size", "3",
                 "--min_length", "16", "--max_length", "40", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\| picked \| [\d.]+, [\d.]+ \|", out, re.M) and re.search(r"^\| full \|", out, re.M)
    gap = float(re.search(r"largest relative difference of a sample's loss sum (\S+)", out).group(1))
    assert gap < 1e-5
