"""Dropout through the config for every common architecture; block size limits; collator."""

import pytest
import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM

from diffmodel.checkpoint import max_positions
from diffmodel.errors import DiffModelError
from diffmodel.preprocess.labels import IGNORE_INDEX
from diffmodel.train.collate import RowCollator
from diffmodel.train.args import ModelArguments
from diffmodel.train.model import apply_dropout, load_model, resolve_block_size

EXPECTED = {
    "gpt2": {"resid_pdrop", "embd_pdrop", "attn_pdrop"},
    "codegen": {"resid_pdrop", "embd_pdrop", "attn_pdrop"},
    "gptj": {"resid_pdrop", "embd_pdrop", "attn_pdrop"},
    "gpt_neox": {"attention_dropout", "hidden_dropout"},
    "llama": {"attention_dropout"},
    "qwen2": {"attention_dropout"},
    "starcoder2": {"attention_dropout", "residual_dropout", "embedding_dropout"},
}


class TestDropoutThroughConfig:
    @pytest.mark.parametrize("model_type", sorted(EXPECTED))
    def test_every_dropout_setting_is_set(self, model_type):
        config = CONFIG_MAPPING[model_type]()
        for name in EXPECTED[model_type]:
            setattr(config, name, 0.0)
        changed = apply_dropout(config, 0.1)
        assert set(changed) == EXPECTED[model_type]
        assert all(getattr(config, n) == 0.1 for n in EXPECTED[model_type])
        assert apply_dropout(config, 0.1) == {}  # nothing left to change

    def test_head_dropout_is_left_alone(self):
        config = CONFIG_MAPPING["gpt2"]()
        apply_dropout(config, 0.3)
        assert config.summary_first_dropout == 0.1

    def test_dropout_reaches_the_model(self):
        config = CONFIG_MAPPING["gpt2"](n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)
        apply_dropout(config, 0.5)
        model = AutoModelForCausalLM.from_config(config)
        x = torch.arange(10).unsqueeze(0)
        model.train()
        torch.manual_seed(0)
        a = model(x).logits
        b = model(x).logits
        assert not torch.allclose(a, b)
        model.eval()
        assert torch.allclose(model(x).logits, model(x).logits)


class TestFlexAttentionHasNoAttentionDropout:
    """transformers refuses to train flex_attention with attention dropout: it is turned off, the rest kept, and logged."""

    def test_starcoder2_keeps_its_other_dropouts(self, caplog, tiny_tokenizer):
        config = CONFIG_MAPPING["starcoder2"](num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                              num_key_value_heads=1, vocab_size=50, max_position_embeddings=16)
        apply_dropout(config, 0.1)
        args = ModelArguments(model_type="starcoder2", attn_implementation="flex_attention")
        with caplog.at_level("WARNING", logger="diffmodel"):
            model = load_model(args, config, tiny_tokenizer)
        assert (model.config.attention_dropout, model.config.residual_dropout, model.config.embedding_dropout) == (0.0, 0.1, 0.1)
        assert "flex_attention has no attention dropout: attention_dropout 0.1 -> 0.0" in caplog.text

    def test_other_backends_keep_attention_dropout(self, tiny_tokenizer):
        config = CONFIG_MAPPING["llama"](num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                         num_key_value_heads=1, vocab_size=50, max_position_embeddings=16)
        apply_dropout(config, 0.1)
        model = load_model(ModelArguments(model_type="llama", attn_implementation="sdpa"), config, tiny_tokenizer)
        assert model.config.attention_dropout == 0.1


class TestNewModelTakesTheTokenizersSpecialIds:
    def test_llama_from_scratch_stops_at_the_tokenizers_eos_only(self, tiny_tokenizer):
        # LlamaConfig's defaults (bos 1, eos 2) are ordinary tokens of this tokenizer
        config = CONFIG_MAPPING["llama"](num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                         num_key_value_heads=1, vocab_size=len(tiny_tokenizer), max_position_embeddings=16)
        model = load_model(ModelArguments(model_type="llama"), config, tiny_tokenizer)
        eos = tiny_tokenizer.eos_token_id
        assert (model.config.eos_token_id, model.config.bos_token_id, model.config.pad_token_id) == (eos, eos, None)
        assert model.generation_config.eos_token_id == eos


class TestBlockSize:
    def test_limit_from_config(self):
        assert max_positions(CONFIG_MAPPING["gpt2"](n_positions=64)) == 64
        assert max_positions(CONFIG_MAPPING["llama"](max_position_embeddings=128)) == 128

    def test_too_large_is_an_error_naming_the_flag(self):
        class Tok:
            model_max_length = 10**30

        with pytest.raises(DiffModelError, match="--block_size 100 is larger than the model's 64 positions; use --block_size 64"):
            resolve_block_size(100, Tok(), CONFIG_MAPPING["gpt2"](n_positions=64))
        assert resolve_block_size(None, Tok(), CONFIG_MAPPING["gpt2"](n_positions=64)) == 64


class TestRowCollator:
    def test_fixed_rows_are_stacked(self):
        rows = [{"input_ids": [1, 2], "labels": [IGNORE_INDEX, 2], "attention_mask": [1, 1], "position_ids": [0, 1]}] * 2
        batch = RowCollator(pad_id=0)(rows)
        assert batch["input_ids"].tolist() == [[1, 2], [1, 2]]
        assert set(batch) == {"input_ids", "labels", "attention_mask", "position_ids"}

    def test_ragged_rows_are_right_padded(self):
        rows = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}]
        batch = RowCollator(pad_id=0)(rows)
        assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
        assert batch["labels"].tolist() == [[5, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


class TestConfigOverrides:
    """--config_overrides on a fresh config keeps head_dim = hidden_size / num_attention_heads, and one key/value head
    per query head, where the config derived them."""

    def _load(self, model_type, overrides):
        from diffmodel.train.model import load_config

        return load_config(ModelArguments(model_type=model_type, config_overrides=overrides))

    def test_a_smaller_llama_gets_heads_of_hidden_over_heads(self, caplog):
        caplog.set_level("INFO", logger="diffmodel")
        config = self._load("llama", "hidden_size=768,num_attention_heads=12,num_key_value_heads=12,num_hidden_layers=2,intermediate_size=64")
        assert (config.hidden_size, config.num_attention_heads, config.head_dim) == (768, 12, 64)
        assert "head_dim 128 -> 64 (hidden_size 768 / num_attention_heads 12" in caplog.text
        model = AutoModelForCausalLM.from_config(config)
        layer = model.model.layers[0].self_attn
        assert (layer.q_proj.out_features, layer.k_proj.out_features, layer.o_proj.in_features) == (768, 768, 768)

    def test_a_named_head_dim_is_kept(self):
        config = self._load("llama", "hidden_size=768,num_attention_heads=12,head_dim=32")
        assert config.head_dim == 32

    def test_overrides_that_leave_the_shape_alone_keep_head_dim(self):
        assert self._load("llama", "num_hidden_layers=2").head_dim == 128

    def test_a_config_whose_head_dim_is_its_own_keeps_it(self):
        config = self._load("gemma", "hidden_size=1024")  # gemma: head_dim 256 with hidden 3072 / 16 heads
        assert config.head_dim == 256

    def test_a_hidden_size_the_heads_do_not_divide_is_refused_with_the_fix(self):
        with pytest.raises(DiffModelError, match="hidden_size 770 is not a multiple of num_attention_heads 12; change one, or name head_dim=N"):
            self._load("llama", "hidden_size=770,num_attention_heads=12")

    def test_gpt2_has_no_head_dim_to_keep(self):
        config = self._load("gpt2", "n_embd=64,n_head=4")
        assert (config.n_embd, config.n_head) == (64, 4) and not hasattr(config, "head_dim")

    def test_fewer_query_heads_get_as_many_key_value_heads_and_the_model_runs(self, caplog):
        caplog.set_level("INFO", logger="diffmodel")
        config = self._load("llama", "hidden_size=64,num_attention_heads=4,num_hidden_layers=1,intermediate_size=64,vocab_size=50")
        assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 4, 16)
        assert "num_key_value_heads 32 -> 4 (one per query head, as before" in caplog.text
        model = AutoModelForCausalLM.from_config(config)
        assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 50)

    def test_named_key_value_heads_are_kept(self):
        config = self._load("llama", "hidden_size=64,num_attention_heads=4,num_key_value_heads=2")
        assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)

    def test_grouped_key_value_heads_are_kept_or_the_mismatch_refused(self):
        from transformers import CONFIG_MAPPING as configs

        assert (configs["mistral"]().num_attention_heads, configs["mistral"]().num_key_value_heads) == (32, 8)
        config = self._load("mistral", "hidden_size=1024,num_attention_heads=16")
        assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (16, 8, 64)
        with pytest.raises(DiffModelError, match="num_attention_heads 6 is not a multiple of num_key_value_heads 8; name num_key_value_heads=N too"):
            self._load("mistral", "hidden_size=768,num_attention_heads=6")


def test_a_gpt2_model_computes_its_loss_without_transformers_warning_about_its_loss_type(tiny_tokenizer, monkeypatch):
    from transformers import modeling_utils

    said = []
    monkeypatch.setattr(modeling_utils.logger, "warning_once", lambda msg, *a, **k: said.append(str(msg)))
    config = CONFIG_MAPPING["gpt2"](n_layer=1, n_embd=16, n_head=2, vocab_size=len(tiny_tokenizer), n_positions=16)
    model = load_model(ModelArguments(model_type="gpt2"), config, tiny_tokenizer)
    ids = torch.tensor([[3, 4, 5, 6]])
    model(input_ids=ids, labels=ids)
    assert model.loss_type == "ForCausalLM" and not [s for s in said if "loss_type" in s]


@pytest.mark.parametrize("model_type,sizes", [
    ("llama", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   vocab_size=100, tie_word_embeddings=False)),
    ("gpt2", dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100)),  # tied embeddings: counted once
])
def test_parameters_of_counts_what_the_built_model_has(model_type, sizes):
    from diffmodel.train.model import parameters_of

    config = CONFIG_MAPPING[model_type](**sizes)
    built = AutoModelForCausalLM.from_config(config)
    assert parameters_of(config) == sum(p.numel() for p in built.parameters())
    assert config.to_dict() == CONFIG_MAPPING[model_type](**sizes).to_dict()  # the config is left as it was


def test_parameters_of_an_unbuildable_config_is_none():
    from diffmodel.train.model import parameters_of

    config = CONFIG_MAPPING["llama"](hidden_size=32, num_attention_heads=4, num_hidden_layers=1, vocab_size=10)
    config.hidden_act = "no_such_activation"  # the config holds it; building the MLP fails
    assert parameters_of(config) is None
