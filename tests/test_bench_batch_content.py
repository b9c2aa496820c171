"""benchmarks/batch_content.py: the averages on hand-made counts, and a tiny run over the pack arm's batches."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from batch_content import summary  # noqa: E402
from train_default import batch_tokens  # noqa: E402

from diffmodel.preprocess.labels import IGNORE_INDEX as X  # noqa: E402


def test_the_epoch_leaves_out_its_partial_last_batch_and_the_window_is_the_timed_steps():
    counts = [(10, 100), (20, 100), (30, 100), (40, 90), (1, 5)]
    s = summary(counts, warmup=1, steps=2)
    assert s == {"batches": 5, "epoch_loss": 25, "epoch_real": 97.5, "window_loss": 25, "window_real": 100}
    assert summary(counts, warmup=3, steps=1)["window_loss"] == 40
    with pytest.raises(ValueError, match="past the epoch's 5 batches"):
        summary(counts, warmup=5, steps=2)


def test_a_batch_counts_labels_after_the_shift_and_real_pieces():
    # one packed row: samples of 3 and 2 tokens (positions restart), then the collator's pad segment of 3
    batch = {"input_ids": torch.tensor([[5, 6, 9, 7, 9, 0, 0, 0]]),
             "labels": torch.tensor([[5, 6, 9, X, 9, X, X, X]]),
             "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2]])}
    assert batch_tokens(batch, pad_id=0, eos_id=9) == (3, 5, [3, 2])  # the first label (5) is shifted away


def test_each_number_is_marked_when_it_is_the_lowest_or_highest_so_far():
    from batch_content import extremes

    assert extremes([5312, 6080, 7296, 5760, 5952, 4544, 7296, 4544]) == [
        "first", "highest so far", "highest so far", "", "", "lowest so far", "", ""]
    assert extremes([]) == []


def test_a_tiny_run_prints_the_pack_arms_epoch_and_window_and_lists_its_first_batches_loss_positions(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "batch_content.py"), "--tiny", "--arms", "pack", "--block_size", "512",
         "--batch_size", "2", "--warmup", "1", "--steps", "2", "--workers", "1", "--workdir", str(tmp_path),
         "--positions", "3"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| pack |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    batches, epoch_loss, window_loss = int(cells[1]), float(cells[2].replace(",", "")), float(cells[3].replace(",", ""))
    assert batches >= 3 and epoch_loss > 0 and window_loss > 0
    assert "window: batches 2-3" in proc.stdout

    assert "pack: loss positions of its first 3 batches" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[0] for c in cells] == ["1", "2", "3"] and cells[0][2] == "first"
    numbers = [int(c[1].replace(",", "")) for c in cells]
    assert all(n > 0 and n % 64 == 0 for n in numbers)  # padded to loss_logits.MULTIPLE
