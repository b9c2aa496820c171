"""Logits at the loss positions only (--loss_logits): the same loss, gradients and accuracy as the full forward."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from diffmodel.train import loss_logits, loss_queries
from diffmodel.train.args import SpeedArguments
from diffmodel.train.collate import PackedCollator
from diffmodel.train.fast_path import Facts, choose, problems
from diffmodel.train.metrics import picked_accuracy_counts, token_accuracy_counts

sys.path.insert(0, str(Path(__file__).parent))
from packed_models import PAD, VOCAB, X, packed_rows, samples  # noqa: E402
from test_fast_path import _training  # noqa: E402

GPU = Facts(cuda=True, flash_attn=False, flex_attention=True, liger=False)
CPU = Facts(cuda=False, flash_attn=False, flex_attention=True, liger=False)


class TestPositions:
    def test_positions_whose_next_label_bears_loss_flat_over_rows(self):
        labels = np.array([[X, 5, 6, X], [X, X, 7, 8]])
        index, targets = loss_logits.positions(labels, multiple=4)
        # row 0: positions 0, 1 predict 5, 6; row 1 (offset 4): positions 1, 2 predict 7, 8
        assert index.tolist() == [0, 1, 5, 6]
        assert targets.tolist() == [5, 6, 7, 8]

    def test_padded_to_the_multiple_with_the_last_position_and_ignored_targets(self):
        index, targets = loss_logits.positions(np.array([[X, X, X, X], [X, 5, 6, X]]), multiple=4)
        assert index.tolist() == [4, 5, 5, 5]  # in order, as the last layer's block mask needs them
        assert targets.tolist() == [5, 6, X, X]

    def test_a_batch_without_loss_still_gets_one_block_of_ignored_targets(self):
        index, targets = loss_logits.positions(np.array([[X, X, X]]), multiple=4)
        assert (index.tolist(), targets.tolist()) == ([0, 0, 0, 0], [X] * 4)


TINY = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0),
}


def tiny(model_type: str, **overrides):
    assert set(TINY) == set(loss_logits.SUPPORTED)
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, **{**TINY[model_type], **overrides})
    config._attn_implementation = "sdpa"
    config.use_cache = False
    return AutoModelForCausalLM.from_config(config).float().train()


def _loss_and_grads(model, batch, num_items):
    model.zero_grad()
    out = model(**batch, num_items_in_batch=num_items)
    out.loss.backward()
    return out, {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("flatten", [False, True], ids=["rows", "flattened"])
@pytest.mark.parametrize("model_type", loss_logits.SUPPORTED)
def test_loss_gradients_and_accuracy_equal_the_full_forward(model_type, flatten):
    rows = packed_rows(samples())
    full_batch = PackedCollator(PAD, flatten=flatten)(rows)
    picked_batch = PackedCollator(PAD, flatten=flatten, loss_positions=True)(rows)
    assert {k: v for k, v in picked_batch.items() if k not in ("loss_index", "loss_targets")}.keys() == full_batch.keys()
    num_items = torch.tensor(int((full_batch["labels"][:, 1:] != X).sum()))

    model = tiny(model_type)
    full, full_grads = _loss_and_grads(model, full_batch, num_items)
    loss_logits.install(model)
    queries = _query_rows(model) if model_type in loss_logits.LAST_LAYER else []
    picked, picked_grads = _loss_and_grads(model, picked_batch, num_items)

    if model_type in loss_logits.LAST_LAYER:  # sdpa: the loss positions' queries alone on one-row batches
        assert queries == [len(picked_batch["loss_index"]) if flatten else full_batch["input_ids"].numel()]
    assert "logits" not in picked  # no logits over every position were made
    assert picked.loss_logits.shape == (len(picked_batch["loss_index"]), VOCAB)
    torch.testing.assert_close(picked.loss, full.loss, rtol=1e-6, atol=1e-6)
    assert picked_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(picked_grads[name], full_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    expected = token_accuracy_counts(full.logits.detach(), full_batch["labels"])
    got = picked_accuracy_counts(picked.loss_logits.detach(), picked_batch["loss_targets"])
    assert [int(v) for v in got] == [int(v) for v in expected]
    assert int(got[1]) == int(num_items)


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_output_only_runs_the_last_layer_whole_with_the_full_forwards_loss_and_gradients(model_type):
    # --loss_logits output: the output layer and the loss at the loss positions, the last decoder layer at every one
    rows = packed_rows(samples())
    full_batch = PackedCollator(PAD)(rows)
    picked_batch = PackedCollator(PAD, loss_positions=True)(rows)
    num_items = torch.tensor(int((full_batch["labels"][:, 1:] != X).sum()))
    model = tiny(model_type)
    full, full_grads = _loss_and_grads(model, full_batch, num_items)
    loss_logits.install(model, last_layer=False)
    assert "forward" not in model.model.layers[-1].__dict__  # the last layer keeps its own forward
    calls = _mlp_inputs(model)
    picked, picked_grads = _loss_and_grads(model, picked_batch, num_items)
    rows_, width = full_batch["input_ids"].shape
    assert calls == [(0, (rows_, width, 32)), (1, (rows_, width, 32))]
    assert picked.loss_logits.shape == (len(picked_batch["loss_index"]), VOCAB)
    torch.testing.assert_close(picked.loss, full.loss, rtol=1e-6, atol=1e-6)
    for name in full_grads:
        torch.testing.assert_close(picked_grads[name], full_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert loss_logits.plan(model, last_layer=False) == \
        "the output layer and the loss (the last decoder layer whole: --loss_logits output)"
    loss_logits.uninstall(model)
    assert "forward" not in model.__dict__


@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
def test_a_sliding_window_shorter_than_the_samples_keeps_loss_and_gradients_equal(model_type):
    """One-row batches (sdpa: the last layer's queries at the loss positions) of a model whose window of 4 positions
    is shorter than its samples."""
    rows = packed_rows(samples())
    full_batch = PackedCollator(PAD, flatten=True)(rows)
    picked_batch = PackedCollator(PAD, flatten=True, loss_positions=True)(rows)
    num_items = torch.tensor(int((full_batch["labels"][:, 1:] != X).sum()))
    torch.manual_seed(0)
    extra = {"use_sliding_window": True, "max_window_layers": 0} if model_type == "qwen2" else {}
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, sliding_window=4, **TINY[model_type], **extra)
    config._attn_implementation, config.use_cache = "sdpa", False
    model = AutoModelForCausalLM.from_config(config).float().train()
    assert _last_attention(model).sliding_window == 4 if model_type == "qwen2" else config.sliding_window == 4
    full, full_grads = _loss_and_grads(model, full_batch, num_items)
    own = model(**full_batch).loss
    model.config.sliding_window = None if model_type == "mistral" else 4
    if model_type == "mistral":  # the window matters to this model: without it the loss differs
        assert abs(model(**full_batch).loss.item() - own.item()) > 1e-4
        model.config.sliding_window = 4
    loss_logits.install(model)
    queries = _query_rows(model)
    picked, picked_grads = _loss_and_grads(model, picked_batch, num_items)
    assert queries == [len(picked_batch["loss_index"])]
    torch.testing.assert_close(picked.loss, full.loss, rtol=1e-6, atol=1e-6)
    for name in full_grads:
        torch.testing.assert_close(picked_grads[name], full_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def _mlp_inputs(model) -> list[tuple[int, tuple[int, ...]]]:
    """(layer, input shape) of each MLP forward from now on, the recomputations of gradient checkpointing included."""
    calls = []
    for i, layer in enumerate(getattr(model, model.base_model_prefix).layers if model.config.model_type != "gpt2" else model.transformer.h):
        own = layer.mlp.forward
        layer.mlp.forward = lambda x, own=own, i=i: (calls.append((i, tuple(x.shape))), own(x))[1]
    return calls


@pytest.mark.parametrize("model_type", loss_logits.SUPPORTED)
def test_the_last_layers_mlp_runs_at_the_loss_positions_only_in_llama_shaped_models(model_type):
    batch = PackedCollator(PAD, loss_positions=True)(packed_rows(samples()))
    rows, width = batch["input_ids"].shape
    model = tiny(model_type)
    loss_logits.install(model)
    calls = _mlp_inputs(model)
    model(**batch).loss.backward()
    last = (len(batch["loss_index"]), 32) if model_type in loss_logits.LAST_LAYER else (rows, width, 32)
    assert calls == [(0, (rows, width, 32)), (1, last)]
    assert model_type == "gpt2" or model_type in loss_logits.LAST_LAYER


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_under_gradient_checkpointing_the_picked_last_layer_is_recomputed_and_gradients_are_equal(model_type):
    rows = packed_rows(samples())
    full_batch, picked_batch = PackedCollator(PAD)(rows), PackedCollator(PAD, loss_positions=True)(rows)
    num_items = torch.tensor(int((full_batch["labels"][:, 1:] != X).sum()))
    model = tiny(model_type)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    full, full_grads = _loss_and_grads(model, full_batch, num_items)
    loss_logits.install(model)
    calls = _mlp_inputs(model)
    picked, picked_grads = _loss_and_grads(model, picked_batch, num_items)
    n = len(picked_batch["loss_index"])
    shape = tuple(full_batch["input_ids"].shape) + (32,)
    assert calls == [(0, shape), (1, (n, 32)), (1, (n, 32)), (0, shape)]  # each layer again in the backward pass
    torch.testing.assert_close(picked.loss, full.loss, rtol=1e-6, atol=1e-6)
    for name in full_grads:
        torch.testing.assert_close(picked_grads[name], full_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def _query_rows(model) -> list[int]:
    """The number of rows each call of the last layer's query projection sees from now on."""
    attn = _last_attention(model)
    calls, own = [], attn.q_proj.forward
    attn.q_proj.forward = lambda x: (calls.append(x.reshape(-1, x.shape[-1]).shape[0]), own(x))[1]
    return calls


def _last_attention(model):
    return getattr(model, model.base_model_prefix).layers[-1].self_attn


@pytest.mark.parametrize("model_type, window, key_heads, repeat", [
    ("llama", None, 4, False), ("qwen3", None, 4, False), ("mistral", 4, 4, False), ("qwen2", None, 4, False),
    ("llama", None, 2, False), ("qwen2", 4, 2, False), ("llama", None, 2, True), ("qwen3", None, 2, True), ("mistral", 4, 2, True)])
def test_with_flex_attention_the_last_layers_queries_are_the_loss_positions_and_the_loss_the_full_forwards(model_type, window, key_heads,
                                                                                                          repeat, monkeypatch):
    """flex_attention (the GPU default): the last layer's attention runs for the loss positions' queries over a block mask of
    their samples (within the sliding window where the model has one); a model of grouped key heads (2 for 4 query heads)
    keeps the layer's own attention (loss_queries.flex_takes), or with loss_queries.REPEAT_GROUPED takes the queries too over
    repeated keys. torch has no flex_attention backward on the CPU, so the loss is compared here, the gradients on the GPU
    (benchmarks/train_throughput.py --check)."""
    from diffmodel.train import loss_queries

    monkeypatch.setattr(loss_queries, "REPEAT_GROUPED", repeat)
    rows = packed_rows(samples())
    # rows of 64 (see test_packing: CPU flex kernels and widths): more tokens than loss_logits.MULTIPLE loss positions
    full_batch = PackedCollator(PAD, pad_to_multiple_of=64)(rows)
    picked_batch = PackedCollator(PAD, pad_to_multiple_of=64, loss_positions=True)(rows)
    model = tiny(model_type, num_key_value_heads=key_heads).eval()
    if window is not None:  # shorter than the samples: the window decides what a position sees
        model.config.sliding_window = window
    # inductor's CPU flex_attention code fails to compile for dynamic shapes (this call's queries follow the rows' shape)
    with torch.no_grad(), torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        full = model(**full_batch).loss
        model.set_attn_implementation("flex_attention")
        full_flex = model(**full_batch).loss
        loss_logits.install(model)
        mlp, queries = _mlp_inputs(model), _query_rows(model)
        picked = model(**picked_batch).loss
    n, tokens = len(picked_batch["loss_index"]), full_batch["input_ids"].numel()
    assert n < tokens and mlp[-1] == (1, (n, 32)) and queries == [n if key_heads == 4 or repeat else tokens]
    torch.testing.assert_close(full_flex, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(picked, full, rtol=1e-5, atol=1e-5)


def test_without_num_items_it_is_the_mean_as_transformers_gives_it():
    rows = packed_rows(samples())
    model = tiny("llama")
    full = model(**PackedCollator(PAD)(rows)).loss
    loss_logits.install(model)
    picked = model(**PackedCollator(PAD, loss_positions=True)(rows)).loss
    torch.testing.assert_close(picked, full, rtol=1e-6, atol=1e-6)


def test_a_forward_without_loss_positions_is_the_models_own():
    rows = packed_rows(samples())
    batch = PackedCollator(PAD)(rows)
    model = tiny("llama").eval()
    with torch.no_grad():
        before = model(**batch).logits
        loss_logits.install(model)
        after = model(**batch).logits
    assert torch.equal(before, after)


def test_uninstall_gives_back_the_forward_the_model_had():
    model = tiny("llama")
    loss_logits.install(model)
    assert "forward" in model.model.layers[-1].__dict__ and "forward" not in model.model.layers[0].__dict__
    loss_logits.uninstall(model)
    assert "forward" not in model.__dict__  # the class's forward again
    assert "forward" not in model.model.layers[-1].__dict__
    own = type(model).forward.__get__(model)  # an instance forward, as liger-kernel sets one
    model.forward = own
    loss_logits.install(model)
    assert model.forward is not own
    loss_logits.uninstall(model)
    assert model.forward is own


@pytest.mark.parametrize("speed,packing,training,facts,model_type,expected,reason", [
    ({}, True, {}, GPU, "llama", True, "the output layer and the loss run only where the next token bears loss"),
    ({}, True, {}, GPU, "qwen3", True, "the output layer and the loss run only where the next token bears loss"),
    ({}, True, {}, CPU, "llama", False, "no GPU: measured on GPUs only"),
    ({}, False, {}, GPU, "llama", False, "no --packing"),
    ({}, True, {}, GPU, "gemma2", False, "'gemma2' models are not among those it takes (llama, mistral, qwen2, qwen3, gpt2)"),
    ({}, True, {"fsdp": "full_shard"}, GPU, "llama", False, "not measured with DeepSpeed / FSDP"),
    ({}, True, {"deepspeed": "ds.json"}, GPU, "llama", False, "not measured with DeepSpeed / FSDP"),
    ({}, True, {"use_liger_kernel": True}, GPU, "llama", False, "liger-kernel's fused loss builds no logits already"),
    ({"loss_logits": "off"}, True, {}, GPU, "llama", False, "set by --loss_logits off"),
    ({"loss_logits": "on"}, True, {}, CPU, "gemma2", True, "set by --loss_logits on"),
    ({"loss_logits": "output"}, True, {}, CPU, "llama", "output", "set by --loss_logits output: the output layer and the loss only"),
])
def test_the_choice(speed, packing, training, facts, model_type, expected, reason):
    path = choose(SpeedArguments(**speed), None, packing, _training(**training), facts, model_type)
    assert path.loss_logits.value == expected and type(path.loss_logits.value) is type(expected)
    assert path.loss_logits.reason.startswith(reason)


def test_without_packing_it_is_refused_with_the_fix():
    [problem] = problems(SpeedArguments(loss_logits="on"), None, False, GPU)
    assert problem == "--loss_logits on picks the loss positions of packed batches: add --packing"
    [problem] = problems(SpeedArguments(loss_logits="output"), None, False, GPU)
    assert problem == "--loss_logits output picks the loss positions of packed batches: add --packing"


class TestStartupCheck:
    def _batch(self):
        return PackedCollator(PAD, loss_positions=True)(packed_rows(samples()))

    def test_the_installed_forward_passes_and_the_gap_is_returned(self):
        model = tiny("llama")
        loss_logits.install(model)
        assert loss_logits.check(model, self._batch()) < 1e-5
        assert model.training  # left as it was

    def test_a_head_that_differs_from_the_models_is_refused(self, monkeypatch):
        from diffmodel.errors import DiffModelError

        model = tiny("llama")
        loss_logits.install(model)
        real = loss_logits.loss_of  # a head whose logits are scaled, as some model types' are
        monkeypatch.setattr(loss_logits, "loss_of", lambda logits, targets, n=None: real(logits * 1.5, targets, n))
        with pytest.raises(DiffModelError, match=r"--loss_logits: the loss at the loss positions .* is not the full forward's .* pass --loss_logits off"):
            loss_logits.check(model, self._batch())


@pytest.mark.parametrize("marked", [True, False], ids=["marked", "unmarked"])
@pytest.mark.parametrize("flatten", [False, True], ids=["rows", "flattened"])
def test_compiled_it_equals_eager_and_compiles_once_with_the_positions_marked_dynamic(flatten, marked, monkeypatch):
    """Under torch.compile (as --compile gives GPU runs) the number of loss positions changes every batch. Marked as
    changing before the forward (``dynamic_positions``, as the trainer's compute_loss does), the step compiles once;
    unmarked, dynamo compiles for the first number, then once more with that size dynamic, then never again
    (flattened: with the last layer's queries at the loss positions)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()  # what an earlier compile learnt (a size seen changing) would spare the recompile
    monkeypatch.setattr(loss_logits, "MINIMUM", 0)  # the numbers of positions as they are: three of them
    rows = packed_rows(samples() * 12, cap=128)
    model = tiny("llama")
    loss_logits.install(model)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter)
    collator = PackedCollator(PAD, pad_to_multiple_of=128, loss_positions=True, flatten=flatten)
    sizes = []
    for keep in (1.0, 0.5, 0.25, 1.0, 0.5):
        variant = []
        for r in rows:  # the same tokens and shape, fewer of them bearing loss
            labels = list(r["labels"])
            bearing = [i for i, v in enumerate(labels) if v != X]
            for i in bearing[int(len(bearing) * keep):]:
                labels[i] = X
            variant.append({**r, "labels": labels})
        batch = collator(variant)
        if marked:
            loss_logits.dynamic_positions(batch)
        n = torch.tensor(int((batch["labels"][:, 1:] != X).sum()))
        eager = model(**batch, num_items_in_batch=n).loss
        torch.testing.assert_close(compiled(**batch, num_items_in_batch=n).loss, eager, rtol=1e-6, atol=1e-6)
        sizes.append(len(batch["loss_index"]))
    assert len(set(sizes)) == 3
    assert counter.frame_count == (1 if marked else 2), (counter.frame_count, counter.op_count, sizes)


def test_lora_adapters_on_the_last_layers_projections_keep_loss_and_gradients_equal():
    """LoRA added after install (as training does): the last layer's queries at the loss positions go through the
    adapted projections; every adapter's gradient equals the full forward's (adapters set non-zero first)."""
    from diffmodel.train.args import LoraArguments
    from diffmodel.train.lora import apply_lora

    rows = packed_rows(samples())
    full_batch = PackedCollator(PAD, flatten=True)(rows)
    picked_batch = PackedCollator(PAD, flatten=True, loss_positions=True)(rows)
    num_items = torch.tensor(int((full_batch["labels"][:, 1:] != X).sum()))
    model = tiny("llama")
    full_model = apply_lora(model, LoraArguments(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "o_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, p in full_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    full, full_grads = _loss_and_grads(full_model, full_batch, num_items)
    loss_logits.install(model)
    queries = _query_rows(model)
    picked, picked_grads = _loss_and_grads(full_model, picked_batch, num_items)
    assert queries == [len(picked_batch["loss_index"])]
    torch.testing.assert_close(picked.loss, full.loss, rtol=1e-6, atol=1e-6)
    assert picked_grads.keys() == full_grads.keys() and any("lora" in k for k in full_grads)
    for name in full_grads:
        torch.testing.assert_close(picked_grads[name], full_grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("model_type, attention, key_heads, repeat, picked", [
    ("llama", "flex_attention", 4, False, "the last decoder layer's MLP and its attention's queries too"),
    ("qwen2", "flex_attention", 2, False, "the last decoder layer's MLP too (its attention at every position: the model's key heads are grouped)"),
    ("qwen3", "flex_attention", 2, True, "the last decoder layer's MLP and its attention's queries too"),
    ("mistral", "sdpa", 2, False, "the last decoder layer's MLP too, and its attention's queries on one-row batches"),
    ("llama", "eager", 2, False, "the last decoder layer's MLP too (its attention at every position with eager)"),
])
def test_the_start_up_log_says_what_runs_at_the_loss_positions(model_type, attention, key_heads, repeat, picked, monkeypatch):
    from diffmodel.train import loss_queries

    monkeypatch.setattr(loss_queries, "REPEAT_GROUPED", repeat)
    model = tiny(model_type, num_key_value_heads=key_heads)
    model.set_attn_implementation(attention)
    loss_logits.install(model)
    assert loss_logits.plan(model) == f"the output layer and the loss, and {picked}"
    assert loss_logits.plan(tiny("gpt2")) == "the output layer and the loss"


def test_the_trainers_loss_marks_the_loss_positions_dynamic_before_the_forward():
    """TokenMetricsMixin.compute_loss (DiffTrainer's) hands the model a batch whose loss positions are marked: a function
    compiled on them compiles once for two different numbers of positions."""
    from torch._dynamo.testing import CompileCounter

    from diffmodel.train.metrics import TokenMetricsMixin

    seen = []

    class Base:
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            seen.append(inputs)
            return torch.tensor(0.0), {}

    class Probe(TokenMetricsMixin, Base):
        pass

    model = torch.nn.Linear(1, 1).eval()
    for n in (64, 128):
        batch = {"input_ids": torch.ones(1, 8, dtype=torch.long), "labels": torch.ones(1, 8, dtype=torch.long),
                 loss_logits.INDEX: torch.arange(n), loss_logits.TARGETS: torch.arange(n)}
        Probe().compute_loss(model, batch)
    torch._dynamo.reset()
    counter = CompileCounter()
    summed = torch.compile(lambda index, targets: (index * 2 + targets).sum(), backend=counter)
    for inputs in seen:
        summed(inputs[loss_logits.INDEX], inputs[loss_logits.TARGETS])
    assert counter.frame_count == 1


class TestUnguardedPositions:
    def test_it_turns_inductors_non_strict_fusion_on(self, non_strict_fusion):
        assert non_strict_fusion() is False
        assert loss_logits.unguarded_positions() is True
        assert non_strict_fusion() is True

    def test_a_torch_without_the_setting_is_left_alone(self, monkeypatch):
        import torch._inductor.config

        monkeypatch.setattr(loss_logits, "NON_STRICT_FUSION", "a_setting_this_torch_lacks")
        assert loss_logits.unguarded_positions() is False
        assert not hasattr(torch._inductor.config.triton, "a_setting_this_torch_lacks")


class TestMinimum:
    def test_padded_to_the_minimum_then_to_the_multiple(self):
        labels = np.full((2, 4), X)
        labels[0, 2] = 5
        index, targets = loss_logits.positions(labels, multiple=4, minimum=6)
        assert index.tolist() == [1] * 8 and targets.tolist() == [5] + [X] * 7

    def test_a_batch_of_fewer_tokens_than_the_minimum_keeps_its_positions(self):
        labels = np.array([[X, 5, 6, X]])
        index, targets = loss_logits.positions(labels, multiple=2, minimum=6)
        assert (index.tolist(), targets.tolist()) == ([0, 1], [5, 6])

    def test_training_batches_have_more_than_one_block_of_flex_queries(self):
        rows = [{"input_ids": list(range(1, 101)), "labels": [X] * 98 + [99, 100], "position_ids": list(range(100))}] * 2
        batch = PackedCollator(PAD, pad_to_multiple_of=128, loss_positions=True)(rows)
        assert loss_logits.MINIMUM == loss_queries.BLOCK + 1
        # 4 positions, padded to 129 rounded up to a multiple of 64
        assert batch[loss_logits.INDEX].tolist() == [97, 98, 225, 226] + [226] * 188
        assert batch[loss_logits.TARGETS].tolist() == [99, 100, 99, 100] + [X] * 188


@pytest.mark.parametrize("minimum", [loss_logits.MINIMUM, 0], ids=["minimum", "none"])
def test_a_batch_of_one_block_of_loss_positions_compiles_nothing_more_with_the_minimum(minimum, monkeypatch):
    """The last layer's flex block mask views the positions as (blocks, 128): traced with two blocks or more, a batch
    of 128 positions or fewer breaks that guard (without the minimum: one more compile). Forward only, on the CPU
    through aot_eager (inductor's CPU flex_attention code does not compile for dynamic shapes)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    monkeypatch.setattr(loss_logits, "MINIMUM", minimum)
    torch._dynamo.reset()
    model = tiny("llama", num_key_value_heads=4).eval()
    model.set_attn_implementation("flex_attention")
    loss_logits.install(model)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    collator = PackedCollator(PAD, pad_to_multiple_of=128, loss_positions=True)
    counts, sizes = [], []
    for bearing in (300, 60):  # loss positions over 8 rows of 128 tokens: the last ones of each row, row by row
        rows, left = [], bearing
        for r in range(8):
            ids = [(7 * r + i) % (VOCAB - 2) + 1 for i in range(128)]
            k = min(left, 127)
            left -= k
            rows.append({"input_ids": ids, "labels": [X] * (128 - k) + ids[128 - k:], "position_ids": list(range(128))})
        batch = loss_logits.dynamic_positions(collator(rows))
        with torch.no_grad():
            compiled(**batch)
        counts.append(counter.frame_count)
        sizes.append(len(batch[loss_logits.INDEX]))
    assert sizes == ([320, 192] if minimum else [320, 64])
    assert counts[1] == counts[0] + (0 if minimum else 1), counts
