"""LoRA through PEFT on the tiny GPT-2 (Conv1D layers) and Llama (nn.Linear layers)."""

import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, Trainer, TrainingArguments, default_data_collator

from diffmodel.errors import DiffModelError
from diffmodel.train.args import DataArguments, LoraArguments, ModelArguments, lora_args_from, lora_problems
from diffmodel.train.lora import (
    LoraLayerInfo,
    apply_lora,
    default_target_modules,
    linear_layers,
    merged_state_dict,
    save_lora,
)

from peft import PeftModel  # noqa: E402  (peft is in the test extra)

ARCHS = ["tiny_gpt2_dir", "tiny_llama_dir"]


def _load(path):
    return AutoModelForCausalLM.from_pretrained(str(path))


def _rows(tokenizer, texts, n=8, length=48):
    rows = []
    for text in texts[:n]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:length]
        ids = ids + [tokenizer.eos_token_id] * (length - len(ids))
        rows.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(ids), "attention_mask": torch.ones(length, dtype=torch.long)})
    return rows


def _train(model, tokenizer, texts, out, steps=4, **extra):
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=5e-2, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=1, seed=0, **extra,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_rows(tokenizer, texts), data_collator=default_data_collator, processing_class=tokenizer)
    trainer.train()
    return trainer


def _logits(model, tokenizer, text):
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"][:40]])
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


class TestTargetsFoundByType:
    def test_gpt2_conv1d_layers_without_lm_head(self, tiny_gpt2_dir):
        model = _load(tiny_gpt2_dir)
        assert sorted(default_target_modules(model)) == ["c_attn", "c_fc", "c_proj"]
        assert not any(name.endswith("lm_head") for name in linear_layers(model))

    def test_llama_linear_layers_without_lm_head(self, tiny_llama_dir):
        model = _load(tiny_llama_dir)
        assert sorted(default_target_modules(model)) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        assert "lm_head" not in linear_layers(model)

    def test_leaf_name_shared_with_another_module_falls_back_to_full_names(self):
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = nn.Linear(4, 4)
                self.norm = nn.LayerNorm(4)

        class Toy(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = Block()
                self.b = nn.Module()
                self.b.proj = nn.LayerNorm(4)  # same leaf name, not linear
                self.b.out = nn.Linear(4, 4)
                self.head = nn.Linear(4, 10)

            def get_output_embeddings(self):
                return self.head

        assert sorted(default_target_modules(Toy())) == ["a.proj", "out"]


class TestOnlyAdaptersTrain:
    @pytest.mark.parametrize("arch", ARCHS)
    def test_trainable_parameters_are_the_adapters_and_base_stays_fixed(self, arch, request, tiny_texts, tmp_path, caplog):
        path = request.getfixturevalue(arch)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        base_before = {k: v.clone() for k, v in _load(path).state_dict().items()}
        caplog.set_level("INFO", logger="diffmodel")
        model = apply_lora(_load(path), LoraArguments(lora_r=4, lora_alpha=8, lora_dropout=0.0))
        assert any("LoRA r=4" in r.message and "trainable parameters" in r.message for r in caplog.records)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
        assert not any("lm_head" in n or "embed" in n or "wte" in n for n in trainable)
        lora_b_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_B." in n}

        _train(model, tokenizer, tiny_texts, tmp_path, gradient_checkpointing=True)

        after = model.get_base_model().state_dict()
        for key, value in base_before.items():
            # adapted layers keep their frozen weight under .base_layer.
            module, _, leaf = key.rpartition(".")
            stored = after.get(key, after.get(f"{module}.base_layer.{leaf}"))
            assert torch.equal(stored, value), key
        assert any(not torch.equal(p, lora_b_before[n]) for n, p in model.named_parameters() if n in lora_b_before), "adapters trained"

    def test_lora_r_zero_is_a_no_op(self, tiny_gpt2_dir):
        model = _load(tiny_gpt2_dir)
        assert apply_lora(model, LoraArguments()) is model


class TestSaveAndLoad:
    @pytest.mark.parametrize("arch", ARCHS)
    def test_adapters_reload_and_merged_model_gives_same_logits(self, arch, request, tiny_texts, tmp_path):
        path = request.getfixturevalue(arch)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        args = LoraArguments(lora_r=4, lora_alpha=16, lora_dropout=0.1, lora_merge=True)
        model = apply_lora(_load(path), args)
        trainer = _train(model, tokenizer, tiny_texts, tmp_path / "run")
        out = tmp_path / "out"
        written = save_lora(trainer, out, args)
        assert written == {"adapter": out, "merged": out / "merged"}
        assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
        assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "tokenizer.json").is_file()

        text = tiny_texts[3]
        expected = _logits(model, tokenizer, text)
        reloaded = PeftModel.from_pretrained(_load(path), str(out))
        torch.testing.assert_close(_logits(reloaded, tokenizer, text), expected, rtol=0, atol=0)
        merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"))
        assert not any("lora" in k for k in merged.state_dict())
        torch.testing.assert_close(_logits(merged, tokenizer, text), expected, rtol=1e-5, atol=1e-5)
        # the merge really changed the weights: the base model alone differs
        assert not torch.allclose(_logits(_load(path), tokenizer, text), expected, atol=1e-3)

    def test_plain_peft_model_without_merge(self, tiny_llama_dir, tmp_path):
        args = LoraArguments(lora_r=2, lora_target_modules=["q_proj", "v_proj"])
        model = apply_lora(_load(tiny_llama_dir), args)
        adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
        assert adapted == {"q_proj", "v_proj"}
        assert save_lora(model, tmp_path, args) == {"adapter": tmp_path, "merged": None}
        assert (tmp_path / "adapter_model.safetensors").is_file() and not (tmp_path / "merged").exists()

    def test_a_base_model_given_by_a_relative_folder_is_found_from_any_directory(self, tiny_gpt2_dir, tmp_path, monkeypatch):
        import json
        import os

        from peft import AutoPeftModelForCausalLM

        monkeypatch.chdir(tiny_gpt2_dir.parent)
        args = LoraArguments(lora_r=2)
        model = apply_lora(_load(tiny_gpt2_dir.name), args)  # --model_name_or_path gpt2, run from its parent folder
        save_lora(model, tmp_path / "adapter", args)
        config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(tiny_gpt2_dir.resolve())
        monkeypatch.chdir(tmp_path)  # where no folder of that name is: PEFT would look it up on the Hub
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert not os.path.exists(tiny_gpt2_dir.name)
        loaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"))
        assert {n for n, _ in loaded.named_parameters()} == {n for n, _ in model.named_parameters()}


class TestMergedStateDict:
    def test_linear_and_transposed_conv1d_weights(self):
        a = torch.tensor([[1.0, 0.0, 2.0]])  # r=1, in=3
        b = torch.tensor([[1.0], [3.0]])  # out=2
        sd = {
            "base_model.model.lin.base_layer.weight": torch.zeros(2, 3),
            "base_model.model.lin.base_layer.bias": torch.tensor([5.0, 6.0]),
            "base_model.model.lin.lora_A.default.weight": a,
            "base_model.model.lin.lora_B.default.weight": b,
            "base_model.model.conv.base_layer.weight": torch.ones(3, 2, dtype=torch.float64),
            "base_model.model.conv.lora_A.default.weight": a,
            "base_model.model.conv.lora_B.default.weight": b,
            "base_model.model.norm.weight": torch.ones(2),
        }
        layers = {"base_model.model.lin": LoraLayerInfo(0.5, False), "base_model.model.conv": LoraLayerInfo(2.0, True)}
        out = merged_state_dict(sd, layers)
        assert sorted(out) == ["conv.weight", "lin.bias", "lin.weight", "norm.weight"]
        torch.testing.assert_close(out["lin.weight"], torch.tensor([[0.5, 0.0, 1.0], [1.5, 0.0, 3.0]]))
        torch.testing.assert_close(out["lin.bias"], torch.tensor([5.0, 6.0]))
        assert out["conv.weight"].dtype == torch.float64
        torch.testing.assert_close(out["conv.weight"], 1 + 2.0 * (b @ a).T.double())

    def test_unknown_layer_is_an_error(self):
        with pytest.raises(DiffModelError, match="LoRA settings are unknown"):
            merged_state_dict({"base_model.model.x.base_layer.weight": torch.zeros(1)}, {})


class TestArguments:
    def test_parsed_by_hf_argument_parser_next_to_the_train_flags(self, tmp_path):
        parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, LoraArguments))
        *_, lora = parser.parse_args_into_dataclasses([
            "--output_dir", str(tmp_path), "--lora_r", "8", "--lora_alpha", "32", "--lora_target_modules", "q_proj", "v_proj", "--lora_merge",
        ])
        assert lora == LoraArguments(lora_r=8, lora_alpha=32, lora_dropout=0.05, lora_target_modules=["q_proj", "v_proj"], lora_merge=True)

    def test_from_any_object_with_the_attributes(self):
        ns = SimpleNamespace(lora_r=4, lora_alpha=8.0, lora_dropout=0.0, lora_target_modules=None, lora_merge=False, learning_rate=1.0)
        assert lora_args_from(ns) == LoraArguments(lora_r=4, lora_alpha=8.0, lora_dropout=0.0)

    def test_problems_name_the_flag_and_fix(self):
        assert lora_problems(LoraArguments(), None) == []
        assert lora_problems(LoraArguments(lora_r=8), "model") == []
        msgs = lora_problems(LoraArguments(lora_r=8, lora_alpha=0, lora_dropout=1.0), None)
        assert any("--lora_alpha 0" in m for m in msgs) and any("--lora_dropout 1.0" in m for m in msgs)
        assert any("--model_name_or_path" in m for m in msgs)
        assert any("--lora_merge needs --lora_r" in m for m in lora_problems(LoraArguments(lora_merge=True), "m"))
        assert any("--lora_r -1" in m for m in lora_problems(LoraArguments(lora_r=-1), "m"))

    def test_unknown_target_module_lists_the_linear_layers(self, tiny_llama_dir):
        with pytest.raises(DiffModelError, match=r"'query' names no module.*q_proj"):
            apply_lora(_load(tiny_llama_dir), LoraArguments(lora_r=2, lora_target_modules=["query"]))

    def test_non_linear_target_is_refused(self, tiny_llama_dir):
        with pytest.raises(DiffModelError, match=r"'input_layernorm'.*not a linear layer"):
            apply_lora(_load(tiny_llama_dir), LoraArguments(lora_r=2, lora_target_modules=["input_layernorm"]))

    def test_missing_peft_is_a_clear_error(self, tiny_gpt2_dir, monkeypatch):
        monkeypatch.setitem(sys.modules, "peft", None)
        with pytest.raises(DiffModelError, match=r"needs the peft package: pip install"):
            apply_lora(_load(tiny_gpt2_dir), LoraArguments(lora_r=2))

    def test_save_refuses_a_model_without_adapters(self, tiny_gpt2_dir, tmp_path):
        with pytest.raises(DiffModelError, match="needs a model wrapped by apply_lora"):
            save_lora(_load(tiny_gpt2_dir), tmp_path, LoraArguments(lora_r=4))
        assert list(tmp_path.iterdir()) == []
