"""Packing: exact rows, best-fit decreasing, and proof that packed == one by one."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from diffmodel.errors import DiffModelError
from diffmodel.preprocess.labels import IGNORE_INDEX
from diffmodel.preprocess.layout import concatenate
from diffmodel.preprocess.packing import best_fit_decreasing, pack_row
from diffmodel.train.attention import check_isolation, prepare_for_packing
from diffmodel.train.collate import PackedCollator, sample_lengths

X = IGNORE_INDEX
EOS, PAD = 1, 0


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

VOCAB = 50


def _model(arch, attn):
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = attn
    model.config.use_cache = False
    return model.float().train()


def _samples():
    g = torch.Generator().manual_seed(1)
    out = []
    for n, masked in [(6, 3), (9, 4), (4, 1), (7, 5), (5, 2)]:
        ids = torch.randint(2, VOCAB, (n,), generator=g).tolist()
        out.append((ids, [X] * masked + ids[masked:]))
    return out


def _sum_loss_and_grads(model, batches):
    """Summed token loss over batches and its gradients (HF mean * number of loss tokens)."""
    model.zero_grad()
    total, count = 0.0, 0
    for batch in batches:
        n = int((batch["labels"][:, 1:] != X).sum())
        loss = model(**batch).loss * n
        loss.backward()
        total += loss.item()
        count += n
    grads = {k: p.grad.detach().clone() / count for k, p in model.named_parameters() if p.grad is not None}
    return total / count, grads


def _one_by_one(samples):
    for ids, labels in samples:
        yield {"input_ids": torch.tensor([ids + [EOS]]), "labels": torch.tensor([labels + [EOS]])}


def _packed(samples, cap=20):
    lengths = [len(i) + 1 for i, _ in samples]
    rows = [pack_row([samples[i] for i in b], EOS) for b in best_fit_decreasing(lengths, cap)]
    return [PackedCollator(PAD)(rows)]


BACKENDS = [("gpt2", "sdpa"), ("gpt2", "eager"), ("llama", "sdpa"), ("llama", "eager")]


class TestPackedEqualsOneByOne:
    @pytest.mark.parametrize("arch,attn", BACKENDS)
    def test_loss_and_gradients_match(self, arch, attn):
        samples = _samples()
        model = _model(arch, attn)
        ref_loss, ref_grads = _sum_loss_and_grads(model, _one_by_one(samples))
        packed = _packed(samples)
        assert packed[0]["input_ids"].shape[0] >= 2  # several rows, padded: the pad segment is exercised
        loss, grads = _sum_loss_and_grads(model, packed)
        assert loss == pytest.approx(ref_loss, abs=1e-5)
        for k in ref_grads:
            torch.testing.assert_close(grads[k], ref_grads[k], atol=1e-5, rtol=1e-4)
        assert check_isolation(model) < 1e-4

    def test_flex_attention_loss_matches(self):
        # torch has no FlexAttention backward on CPU: the loss is compared here, gradients on the GPU
        # (benchmarks/train_throughput.py --check). The one-by-one reference runs with sdpa on the same
        # weights (no packing involved, so it is the truth), which leaves flex one compiled shape to build.
        samples = _samples()
        model = _model("llama", "sdpa").eval()
        with torch.no_grad():
            ref = [(model(**b).loss * int((b["labels"][:, 1:] != X).sum())).item() for b in _one_by_one(samples)]
            packed = _packed(samples)[0]
            n = int((packed["labels"][:, 1:] != X).sum())
            model.set_attn_implementation("flex_attention")
            loss = model(**packed).loss.item()
        assert loss == pytest.approx(sum(ref) / n, abs=1e-5)

    @pytest.mark.parametrize("arch", ["gpt2", "llama"])
    def test_concatenate_layout_does_not_match(self, arch):
        samples = _samples()
        model = _model(arch, "sdpa")
        ref_loss, _ = _sum_loss_and_grads(model, _one_by_one(samples))
        rows = list(concatenate(samples, block_size=20, eos_id=EOS, pad_id=PAD))
        batch = {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "labels", "attention_mask")}
        loss, _ = _sum_loss_and_grads(model, [batch])
        assert abs(loss - ref_loss) > 1e-3

    def test_an_attention_mask_breaks_isolation_and_the_probe_catches_it(self):
        model = _model("llama", "sdpa")
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


class TestIsolationProbe:
    """The start-up probe refuses a backend that is wrong on this machine, whatever the reason."""

    def test_passes_on_sdpa_through_the_training_collator(self):
        model = _model("llama", "sdpa")
        assert check_isolation(model, PackedCollator(PAD)) < 1e-4
        assert model.training  # left as it was found

    def test_a_backend_that_leaks_between_samples_is_refused(self, monkeypatch):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        model = _model("llama", "sdpa")
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", _leaky_sdpa(ALL_ATTENTION_FUNCTIONS["sdpa"]))
        with pytest.raises(DiffModelError, match=r"not isolated with the 'sdpa' attention backend of this llama model on cpu \(logits of a sample differ"):
            check_isolation(model, PackedCollator(PAD))

    def test_a_backend_that_gives_nan_is_refused(self, monkeypatch):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        original = ALL_ATTENTION_FUNCTIONS["sdpa"]

        def nan_attention(*args, **kw):
            out, weights = original(*args, **kw)
            return out * float("nan"), weights

        model = _model("llama", "sdpa")
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", nan_attention)
        with pytest.raises(DiffModelError, match="non-finite logits in the sample at row 0, tokens 0-9"):
            check_isolation(model, PackedCollator(PAD))

    def test_probe_rows_have_several_samples_a_one_token_sample_and_a_pad_segment(self):
        from diffmodel.train.attention import _probe_rows

        batch = PackedCollator(PAD)(_probe_rows(VOCAB, EOS))
        # samples of 9, 5, 1, 7, 3, 6 tokens (+ EOS) in rows of 16 by best fit; the collator pads to 16 with a segment of its own
        assert [sample_lengths(p) for p in batch["position_ids"].tolist()] == [[10, 6], [8, 7, 1], [4, 2, 10]]
