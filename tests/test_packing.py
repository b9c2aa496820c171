"""Packing: exact rows, best-fit decreasing, and proof that packed == one by one."""

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmodel.errors import DiffModelError
from diffmodel.preprocess.layout import concatenate
from diffmodel.preprocess.packing import best_fit_decreasing, pack_row
from diffmodel.train.attention import check_isolation, prepare_for_packing
from diffmodel.train.collate import PackedCollator, sample_lengths

sys.path.insert(0, str(Path(__file__).parent))
from packed_models import BACKENDS, EOS, PAD, VOCAB, X, one_by_one, sum_loss_and_grads  # noqa: E402
from packed_models import packed as packed_batches  # noqa: E402
from packed_models import samples as make_samples  # noqa: E402
from packed_models import model as tiny_model  # noqa: E402


class TestBestFitDecreasing:
    def test_exact_bins(self):
        assert best_fit_decreasing([5, 3, 4, 2, 6, 1], 8) == [[4, 3], [0, 1], [2, 5]]

    def test_too_long_item_is_refused(self):
        with pytest.raises(ValueError, match="longer than the row capacity"):
            best_fit_decreasing([9], 8)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(1, 32), max_size=60), st.integers(32, 64))
    def test_every_item_once_and_capacity_respected(self, lengths, cap):
        bins = best_fit_decreasing(lengths, cap)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= cap for b in bins)
        # two bins at most half full cannot both exist: the later one's first item (<= cap/2, items come
        # longest first) would have fitted the earlier one, and best fit never opens a bin an item fits elsewhere
        assert sum(1 for b in bins if sum(lengths[i] for i in b) <= cap // 2) <= 1


class TestPackingPositionsRestartPerSample:
    def test_exact_row(self):
        row = pack_row([([5, 6, 7], [X, 6, 7]), ([8, 9], [8, 9])], eos_id=EOS)
        assert row == {
            "input_ids": [5, 6, 7, EOS, 8, 9, EOS],
            "labels": [X, 6, 7, EOS, X, 9, EOS],
            "position_ids": [0, 1, 2, 3, 0, 1, 2],
        }

    def test_collator_pads_with_a_segment_of_its_own_and_no_mask(self):
        rows = [pack_row([([5, 6], [5, 6])], EOS), pack_row([([7], [7]), ([8, 9, 4], [8, 9, 4])], EOS)]
        batch = PackedCollator(PAD, pad_to_multiple_of=0)(rows)
        assert set(batch) == {"input_ids", "labels", "position_ids"}
        assert batch["input_ids"].tolist() == [[5, 6, EOS, PAD, PAD, PAD], [7, EOS, 8, 9, 4, EOS]]
        assert batch["labels"].tolist() == [[X, 6, EOS, X, X, X], [X, EOS, X, 9, 4, EOS]]
        assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 2, 3]]

    def test_flattened_batch_for_flash_attention(self):
        rows = [pack_row([([5, 6], [5, 6])], EOS), pack_row([([7], [7]), ([8, 9, 4], [8, 9, 4])], EOS)]
        batch = PackedCollator(PAD, flatten=True)(rows)
        assert batch["input_ids"].tolist() == [[5, 6, EOS, 7, EOS, 8, 9, 4, EOS]]
        assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 9]
        assert batch["max_length_q"] == 4
        assert sample_lengths([0, 1, 0, 0, 1, 2]) == [2, 1, 3]

    def test_attention_mask_with_packed_rows_is_refused(self):
        row = dict(pack_row([([5, 6], [5, 6])], EOS), attention_mask=[1, 1, 1])
        with pytest.raises(DiffModelError, match="would let samples attend to each other"):
            PackedCollator(PAD)([row])


# --- proof of equivalence -----------------------------------------------------------------------

class TestPackedEqualsOneByOne:
    @pytest.mark.parametrize("arch,attn", BACKENDS)
    def test_loss_and_gradients_match(self, arch, attn):
        samples = make_samples()
        model = tiny_model(arch, attn)
        ref_loss, ref_grads = sum_loss_and_grads(model, one_by_one(samples))
        packed = packed_batches(samples)
        assert packed[0]["input_ids"].shape[0] >= 2  # several rows, padded: the pad segment is exercised
        loss, grads = sum_loss_and_grads(model, packed)
        assert loss == pytest.approx(ref_loss, abs=1e-5)
        for k in ref_grads:
            torch.testing.assert_close(grads[k], ref_grads[k], atol=1e-5, rtol=1e-4)
        assert check_isolation(model) < 1e-4

    def test_flex_attention_loss_matches(self):
        # torch has no FlexAttention backward on CPU: the loss is compared here, gradients on the GPU
        # (benchmarks/train_throughput.py --check). The one-by-one reference runs with sdpa on the same
        # weights (no packing involved, so it is the truth), which leaves flex one compiled shape to build.
        samples = make_samples()
        model = tiny_model("llama", "sdpa").eval()
        with torch.no_grad():
            ref = [(model(**b).loss * int((b["labels"][:, 1:] != X).sum())).item() for b in one_by_one(samples)]
            # rows 32 wide: torch 2.13's compiled CPU flex kernel is wrong for widths of 8 mod 16 on an AVX2 CPU
            packed = packed_batches(samples, collator=PackedCollator(PAD, pad_to_multiple_of=16))[0]
            n = int((packed["labels"][:, 1:] != X).sum())
            model.set_attn_implementation("flex_attention")
            loss = model(**packed).loss.item()
        assert loss == pytest.approx(sum(ref) / n, abs=1e-5)

    @pytest.mark.parametrize("arch", ["gpt2", "llama"])
    def test_concatenate_layout_does_not_match(self, arch):
        samples = make_samples()
        model = tiny_model(arch, "sdpa")
        ref_loss, _ = sum_loss_and_grads(model, one_by_one(samples))
        rows = list(concatenate(samples, block_size=20, eos_id=EOS, pad_id=PAD))
        batch = {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "labels", "attention_mask")}
        loss, _ = sum_loss_and_grads(model, [batch])
        assert abs(loss - ref_loss) > 1e-3

    def test_an_attention_mask_breaks_isolation_and_the_probe_catches_it(self):
        model = tiny_model("llama", "sdpa")
        forward = model.forward

        def with_mask(input_ids=None, **kw):  # what a generic collator would do: an all-ones 2-D mask
            return forward(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kw)

        model.forward = with_mask
        with pytest.raises(DiffModelError, match="packed samples are not isolated"):
            check_isolation(model)


def _leaky_sdpa(original):
    """An attention function that drops the mask it is given: plain causal attention across the whole row."""

    def attend(module, query, key, value, attention_mask, **kw):
        return original(module, query, key, value, None, **dict(kw, is_causal=True))

    return attend


def test_a_packed_gpt2_batch_without_a_mask_is_not_taken_for_padding(monkeypatch):
    """transformers warns (and on a GPU waits each step to decide) when GPT-2 gets pad tokens without a mask;
    packed batches have no mask on purpose."""
    from transformers import modeling_utils

    said = []
    monkeypatch.setattr(modeling_utils.logger, "warning_once", lambda msg, *a, **k: said.append(str(msg)))
    model = tiny_model("gpt2", "sdpa")
    model.config.pad_token_id = PAD
    batch = packed_batches(make_samples())[0]
    assert (batch["input_ids"][:, -1] == PAD).any()  # a row ends in padding
    model(**batch)
    assert any("attention_mask" in s for s in said)  # what transformers says without the change
    said.clear()
    prepare_for_packing(model)
    model(**batch)
    assert not [s for s in said if "attention_mask" in s]


class TestIsolationProbe:
    """The start-up probe refuses a backend that is wrong on this machine, whatever the reason."""

    def test_passes_on_sdpa_through_the_training_collator(self):
        model = tiny_model("llama", "sdpa")
        assert check_isolation(model, PackedCollator(PAD)) < 1e-4
        assert model.training  # left as it was found

    def test_a_backend_that_leaks_between_samples_is_refused(self, monkeypatch):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        model = tiny_model("llama", "sdpa")
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", _leaky_sdpa(ALL_ATTENTION_FUNCTIONS["sdpa"]))
        with pytest.raises(DiffModelError, match=r"not isolated with the 'sdpa' attention backend of this llama model on cpu \(logits of a sample differ"):
            check_isolation(model, PackedCollator(PAD))

    def test_a_backend_that_gives_nan_is_refused(self, monkeypatch):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        original = ALL_ATTENTION_FUNCTIONS["sdpa"]

        def nan_attention(*args, **kw):
            out, weights = original(*args, **kw)
            return out * float("nan"), weights

        model = tiny_model("llama", "sdpa")
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", nan_attention)
        with pytest.raises(DiffModelError, match="non-finite logits in the sample at row 0, tokens 0-9"):
            check_isolation(model, PackedCollator(PAD))

    def test_probe_rows_have_several_samples_a_one_token_sample_and_a_pad_segment(self):
        from diffmodel.train.attention import probe_rows

        batch = PackedCollator(PAD)(probe_rows(VOCAB, EOS))
        # samples of 9, 5, 1, 7, 3, 6 tokens (+ EOS) in rows of 16 by best fit; the collator pads to 16 with a segment of its own
        assert [sample_lengths(p) for p in batch["position_ids"].tolist()] == [[10, 6], [8, 7, 1], [4, 2, 10]]
