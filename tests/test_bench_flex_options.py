"""benchmarks/flex_options.py: the packed rows it times and the mask it gives flex_attention."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import varlen_math  # noqa: E402
from flex_options import block_mask, packed_documents  # noqa: E402


def test_rows_are_packed_samples_then_one_tail_sequence():
    doc = packed_documents(rows=6, width=256, min_length=16, seed=3)
    assert doc.shape == (6, 256)
    for row in doc.tolist():
        # sequence ids start at 0 and rise by one at each boundary: contiguous segments, never interleaved
        steps = [b - a for a, b in zip(row, row[1:])]
        assert row[0] == 0 and set(steps) <= {0, 1}
        lengths = [row.count(i) for i in range(row[-1] + 1)]
        assert all(n >= 16 for n in lengths[:-1])  # samples; the last segment may be the unfilled tail
    assert (doc == packed_documents(rows=6, width=256, min_length=16, seed=3)).all()
    assert not (doc == packed_documents(rows=6, width=256, min_length=16, seed=4)).all()


def test_the_mask_is_causal_attention_within_each_sequence():
    from torch.nn.attention.flex_attention import flex_attention

    doc = packed_documents(rows=2, width=256, min_length=16, seed=0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 256, 16, generator=g), torch.randn(2, 2, 256, 16, generator=g)
    out = torch.compile(flex_attention)(q, k, k, block_mask=block_mask(doc, "cpu"), enable_gqa=True)
    want = torch.empty_like(out)
    for b in range(2):
        allowed = (doc[b][:, None] == doc[b][None, :]) & torch.ones(256, 256, dtype=torch.bool).tril()
        for h in range(4):
            w = (q[b, h] @ k[b, h // 2].T / 4).masked_fill(~allowed, float("-inf")).softmax(-1)
            want[b, h] = w @ k[b, h // 2]
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)


def test_rows_from_a_pool_of_real_lengths_hold_only_those_lengths():
    pool = [100, 300, 700]
    doc = packed_documents(rows=4, width=1024, min_length=16, seed=1, pool=pool)
    for row in doc.tolist():
        lengths = [row.count(i) for i in range(row[-1] + 1)]
        assert all(n in pool for n in lengths[:-1])  # samples; the last segment may be the unfilled tail
        assert sum(lengths) == 1024 and len(lengths) >= 2


def test_lengths_from_samples_are_their_token_counts_with_the_eos(tmp_path):
    import json
    from types import SimpleNamespace

    from flex_options import sample_lengths

    from diffmodel.sample import render_row
    from diffmodel.samples import load_quickstart
    from diffmodel.tiny import train_tokenizer

    rows = load_quickstart()[:20]
    tok = train_tokenizer([render_row(r) for r in rows], vocab_size=300, model_max_length=1 << 20)
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = SimpleNamespace(lengths_from=str(tmp_path / "s.jsonl"), tokenizer=str(tmp_path / "tok"), block_size=4096, max_samples=5)
    want = [len(tok(render_row(r))["input_ids"]) + 1 for r in rows[:5]]
    assert sample_lengths(args) == want
    assert sample_lengths(SimpleNamespace(lengths_from=None)) is None


def test_packed_rows_break_what_rows_guaranteed_safe_needs():
    """ROWS_GUARANTEED_SAFE drops the kernels' guard for a query row whose running maximum is still -inf after a key
    tile: it needs every query to see a key in the first key block its query block reaches (its partial blocks come
    first). In a packed row a query block that holds the start of a later sample can reach first the block where an
    earlier sample starts, where the later sample's queries see nothing (each query does see itself, which is not enough): NaN on a GPU."""
    doc = packed_documents(rows=4, width=1024, min_length=16, seed=2)
    mask = block_mask(doc, "cpu")
    dense = mask.to_dense()  # (rows, 1, query blocks, key blocks): 1 where a block has any allowed pair
    assert torch.diagonal(dense[:, 0], dim1=-2, dim2=-1).all()  # each query block holds its own diagonal
    block = mask.BLOCK_SIZE[0]
    blind = 0
    for r in range(doc.shape[0]):
        for q in range(doc.shape[1] // block):
            # the kernels go through a query block's partial key blocks first, then its full ones
            partial = int(mask.kv_num_blocks[r, 0, q]) > 0
            first = int((mask.kv_indices if partial else mask.full_kv_indices)[r, 0, q, 0])
            keys = doc[r, first * block:(first + 1) * block]
            for i in range(q * block, (q + 1) * block):
                seen = (keys == doc[r, i]) & (torch.arange(first * block, (first + 1) * block) <= i)
                blind += not bool(seen.any())
    assert blind > 0


def test_packed_rows_break_what_blocks_are_contiguous_promises():
    """BLOCKS_ARE_CONTIGUOUS lets the kernels step to the next block without reading the block list: it needs each
    query block's list of partial key blocks (and of full ones) to be one run. A packed row's partial blocks are a
    sample's first block and the query block's own diagonal one, with the full blocks between them: not one run,
    which is why the arm that promised it gave NaN on a GPU (with ROWS_GUARANTEED_SAFE, which gave NaN alone too)."""
    mask = block_mask(packed_documents(rows=4, width=2048, min_length=64, seed=0), "cpu")

    def runs_broken(num, idx):
        broken = 0
        for r in range(num.shape[0]):
            for q in range(num.shape[2]):
                ids = idx[r, 0, q, : int(num[r, 0, q])].tolist()
                broken += ids != list(range(ids[0], ids[0] + len(ids))) if ids else 0
        return broken

    assert runs_broken(mask.full_kv_num_blocks, mask.full_kv_indices) == 0
    assert runs_broken(mask.kv_num_blocks, mask.kv_indices) > 0


def test_the_varlen_arms_get_the_rows_sequences_laid_end_to_end():
    from flex_options import boundaries_of

    doc = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 1, 1]], dtype=torch.int32)
    cu = boundaries_of(doc)
    assert cu.tolist() == [0, 2, 5, 6, 10, 12] and cu.dtype == torch.int32
    doc = packed_documents(rows=3, width=64, min_length=4, seed=1)
    cu = boundaries_of(doc).tolist()
    assert cu[0] == 0 and cu[-1] == 3 * 64 and all(b > a for a, b in zip(cu, cu[1:]))
    assert len(cu) - 1 == int((doc.max(dim=1).values + 1).sum())  # every sequence of every row, the tails included


class MathAten:
    """aten's ``_cudnn_attention_forward`` / ``_backward`` as the cudnn arms call them, in math; the log-sum-exp laid
    out (tokens, heads, 1) as declared, or as ``lse_layout`` says."""

    def __init__(self, lse_layout=lambda lse: lse.t().unsqueeze(-1)):
        self.calls = []
        self.lse_layout = lse_layout

    def _cudnn_attention_forward(self, q, k, v, attn_bias, cu_q, cu_k, max_q, max_k, compute_log_sumexp, dropout_p,
                                 is_causal, return_debug_mask, *, scale):
        self.calls.append(("fwd", attn_bias, compute_log_sumexp, dropout_p, is_causal, max_q, cu_k is cu_q))
        out, lse = varlen_math.forward(q, k, v, cu_q, scale)
        seed = offset = torch.zeros(1, dtype=torch.int64)
        return out, self.lse_layout(lse), cu_q, cu_k, max_q, max_k, seed, offset, None

    def _cudnn_attention_backward(self, *, grad_out, query, key, value, out, logsumexp, philox_seed, philox_offset,
                                  attn_bias, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal, scale):
        self.calls.append(("bwd", attn_bias, dropout_p, is_causal, grad_out.is_contiguous(), max_k))
        assert logsumexp.shape == (query.shape[0], query.shape[1], 1)  # the forward's own, as it gave it
        return varlen_math.backward(query, key, value, out, grad_out, logsumexp[..., 0].t(), cum_seq_q, scale)


@pytest.mark.parametrize("compiled", [False, True])
def test_the_cudnn_arms_hand_aten_what_it_needs(monkeypatch, compiled):
    import flex_options

    aten = MathAten()
    monkeypatch.setattr(flex_options, "_aten", lambda: aten)
    varlen_math.assert_like_math(flex_options.cudnn_varlen, compiled=compiled)
    assert aten.calls == [("fwd", None, True, 0.0, True, 4, True), ("bwd", None, 0.0, True, True, 4)]


def test_a_cudnn_log_sum_exp_of_another_shape_is_refused(monkeypatch):
    import flex_options

    monkeypatch.setattr(flex_options, "_aten", lambda: MathAten(lse_layout=lambda lse: lse))  # (heads, tokens)
    q, k, v, cu = varlen_math.inputs()
    with pytest.raises(RuntimeError, match=r"log-sum-exp of shape \(4, 9\), not the declared \(9, 4, 1\)"):
        flex_options.cudnn_varlen(q, k, v, cu, cu, 4, 4, 0.35)
