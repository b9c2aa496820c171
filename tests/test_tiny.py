"""diffmodel.tiny: tokenizers and models made on the spot behave like hub checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from diffmodel.errors import DiffModelError
from diffmodel.sample import MARKERS, render
from diffmodel.tiny import ARCHS, EOS_TOKEN, build_model, train_tokenizer

ROUND_TRIP_TEXTS = [
    "",
    " ",
    "<NME> a.py\n<BEF> ADDFILE\n<MSG> m\n<DFF> @@ -0,0 +1 @@\n+x\n",
    "<DFF><DFF> <MSG>\n<NME>",
    "line one\r\nline two\r\n\r\n",
    "lone\rcarriage return",
    "tabs\tand   spaces   \n\n\n",
    "Grüße, 世界! 🎉 naïve café — ½",
    "\x00\x01 control \x7f chars",
    "  leading and trailing spaces  ",
    f"text with the eos token {EOS_TOKEN} inside",
    "\\ No newline at end of file\n",
]


class TestTokenizerRoundTrip:
    @pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
    def test_decode_of_encode_is_identity(self, tiny_tokenizer, text):
        ids = tiny_tokenizer(text)["input_ids"]
        assert tiny_tokenizer.decode(ids) == text

    def test_every_tiny_text_round_trips(self, tiny_tokenizer, tiny_texts):
        for text in tiny_texts:
            assert tiny_tokenizer.decode(tiny_tokenizer(text)["input_ids"]) == text

    @settings(max_examples=150, deadline=None)
    @given(st.text(max_size=200))
    def test_arbitrary_unicode_round_trips(self, tiny_tokenizer, text):
        assert tiny_tokenizer.decode(tiny_tokenizer(text)["input_ids"]) == text

    @pytest.mark.parametrize("text", ["<NME> x\n<DFF> @@ -1 +1 @@\n-a\n+b\n", "a\r\nb ü 世"])
    def test_offsets_tile_the_text_exactly(self, tiny_tokenizer, text):
        enc = tiny_tokenizer(text, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        assert offsets[0][0] == 0 and offsets[-1][1] == len(text)
        for (_, end), (start, _) in zip(offsets, offsets[1:]):
            assert start <= end  # contiguous, possibly shared by tokens of one multi-byte character


class TestTokenizerSpecialTokens:
    def test_eos_is_the_only_special_token(self, tiny_tokenizer):
        assert tiny_tokenizer.eos_token == EOS_TOKEN
        assert tiny_tokenizer.eos_token_id is not None
        assert tiny_tokenizer.convert_ids_to_tokens(tiny_tokenizer.eos_token_id) == EOS_TOKEN
        assert tiny_tokenizer.all_special_tokens == [EOS_TOKEN]

    def test_eos_text_encodes_to_eos_id(self, tiny_tokenizer):
        assert tiny_tokenizer(EOS_TOKEN)["input_ids"] == [tiny_tokenizer.eos_token_id]

    def test_no_pad_token_and_no_bos_added(self, tiny_tokenizer):
        assert tiny_tokenizer.pad_token is None
        ids = tiny_tokenizer("abc")["input_ids"]
        assert tiny_tokenizer.eos_token_id not in ids
        assert tiny_tokenizer.decode(ids) == "abc"

    @pytest.mark.parametrize("marker", MARKERS)
    def test_markers_are_ordinary_text(self, tiny_tokenizer, marker):
        assert marker not in tiny_tokenizer.all_special_tokens
        assert marker not in tiny_tokenizer.get_added_vocab()

    def test_model_max_length_is_the_given_one(self, tiny_texts):
        tok = train_tokenizer(tiny_texts[:5], vocab_size=300, model_max_length=128)
        assert tok.model_max_length == 128

    def test_vocab_size_bounds(self, tiny_tokenizer):
        assert 257 <= len(tiny_tokenizer) <= 384

    def test_too_small_vocab_is_a_user_error(self):
        with pytest.raises(DiffModelError, match="vocab_size"):
            train_tokenizer(["abc"], vocab_size=100)

    def test_training_is_deterministic(self, tiny_texts, tiny_tokenizer):
        again = train_tokenizer(tiny_texts, vocab_size=384, model_max_length=256)
        assert again.get_vocab() == tiny_tokenizer.get_vocab()


class TestBuildModel:
    @pytest.mark.parametrize("arch", ARCHS)
    def test_shape_ids_and_dtype(self, tiny_tokenizer, arch):
        model = build_model(arch, tiny_tokenizer, n_positions=128)
        cfg = model.config
        eos = tiny_tokenizer.eos_token_id
        assert cfg.vocab_size == len(tiny_tokenizer)
        assert (cfg.eos_token_id, cfg.bos_token_id, cfg.pad_token_id) == (eos, eos, eos)
        assert cfg.num_hidden_layers == 2 and cfg.hidden_size == 64 and cfg.num_attention_heads == 4
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert model.get_input_embeddings().weight.shape[0] == len(tiny_tokenizer)

    @pytest.mark.parametrize("arch", ARCHS)
    def test_same_seed_same_weights_and_global_rng_untouched(self, tiny_tokenizer, arch):
        torch.manual_seed(123)
        expected_next = torch.rand(3)
        torch.manual_seed(123)
        a = build_model(arch, tiny_tokenizer, seed=7)
        assert torch.equal(torch.rand(3), expected_next)
        b = build_model(arch, tiny_tokenizer, seed=7)
        c = build_model(arch, tiny_tokenizer, seed=8)
        pairs = list(zip(a.state_dict().values(), b.state_dict().values()))
        assert all(torch.equal(x, y) for x, y in pairs)
        assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))

    def test_overrides_reach_the_config(self, tiny_tokenizer):
        assert build_model("gpt2", tiny_tokenizer, n_layer=1).config.n_layer == 1
        assert build_model("llama", tiny_tokenizer, num_key_value_heads=2).config.num_key_value_heads == 2

    def test_unknown_arch_is_a_user_error(self, tiny_tokenizer):
        with pytest.raises(DiffModelError, match="gpt2, llama"):
            build_model("bert", tiny_tokenizer)


@pytest.fixture(params=ARCHS)
def tiny_dir(request):
    return request.getfixturevalue(f"tiny_{request.param}_dir")


class TestSavedCheckpoint:
    def test_loads_offline_and_gives_finite_loss(self, tiny_dir, tiny_texts):
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
        batch = tok(tiny_texts[:2], return_tensors=None)
        ids = torch.tensor([batch["input_ids"][0][:64]])
        loss = model(input_ids=ids, labels=ids).loss
        assert math.isfinite(loss.item())
        assert loss.item() == pytest.approx(math.log(len(tok)), rel=0.25)  # untrained: near uniform

    def test_saved_tokenizer_matches_the_fixture(self, tiny_dir, tiny_tokenizer, tiny_texts):
        tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
        assert tok.eos_token_id == tiny_tokenizer.eos_token_id and tok.pad_token is None
        assert tok.model_max_length == 256
        for text in tiny_texts[:5]:
            assert tok(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
            assert tok.decode(tok(text)["input_ids"]) == text

    def test_generate_runs_and_stays_in_vocab(self, tiny_dir):
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
        prompt = tok(render("a.py", "x = 1\n", "change x", "")[:40], return_tensors="pt")
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
        assert out.shape[1] <= prompt["input_ids"].shape[1] + 4
        assert int(out.max()) < len(tok)
