"""benchmarks/train_default.py: its token accounting on hand-made batches, and a tiny run of the script."""

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_default import _attention_kernels, diffmodel_argv, pieces  # noqa: E402

from diffmodel.preprocess.labels import IGNORE_INDEX as X  # noqa: E402

PAD, EOS = 0, 9


def test_pieces_of_pad_and_concat_rows_end_after_each_eos():
    batch = {
        "input_ids": torch.tensor([[PAD, PAD, 4, 5, EOS], [3, EOS, 4, 5, 6]]),
        "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]),
        "labels": torch.tensor([[X, X, X, 5, EOS], [3, EOS, X, 5, 6]]),
    }
    assert pieces(batch, PAD, EOS) == [3, 2, 3]


def test_pieces_of_packed_rows_skip_the_collators_pad_segment_only():
    batch = {
        "input_ids": torch.tensor([[3, 4, EOS, 5, EOS, PAD, PAD, PAD], [PAD, 6, EOS, 7, 8, 8, 8, EOS]]),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 0, 1, 2, 3, 4]]),
        "labels": torch.tensor([[X, 4, EOS, X, EOS, X, X, X], [X, 6, EOS, X, 8, 8, 8, EOS]]),
    }
    # row 0: samples of 3 and 2, then the pad segment (all pad ids, all ignored); row 1: a sample that
    # starts with the pad id but carries labels is real
    assert pieces(batch, PAD, EOS) == [3, 2, 3, 5]


def test_nocudnn_arms_are_their_base_arm_with_cudnn_attention_left_out(tmp_path):
    from types import SimpleNamespace

    a = SimpleNamespace(model="tiny", vocab_size=100, block_size=64, tokenizer="tok", batch_size=2, workers=1, device="cpu")
    assert diffmodel_argv("concat_nocudnn", a, tmp_path / "d", tmp_path / "o", tmp_path / "c") == \
        diffmodel_argv("concat", a, tmp_path / "d", tmp_path / "o", tmp_path / "c")
    with _attention_kernels("concat_nocudnn"):
        q = torch.randn(1, 2, 4, 8)
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)  # a kernel is still allowed
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()  # put back
    with _attention_kernels("concat"):
        assert torch.backends.cuda.cudnn_sdp_enabled()


def test_a_tiny_cpu_run_prints_a_row_per_arm(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_default.py"), "--tiny", "--arms", "concat,pack",
         "--workers", "1", "--workdir", str(tmp_path), "--json", str(tmp_path / "r.jsonl")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| concat |") or line.startswith("| pack |")]
    assert len(rows) == 2 and "failed" not in "".join(rows)
    assert "fast path" not in rows[1] and "sdpa (no GPU" in proc.stdout  # the choices printed for the pack arm
