"""torch_varlen: packed rows through torch's varlen attention keep samples apart (the CPU runs each sample via sdpa)."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffmodel.errors import DiffModelError
from diffmodel.preprocess.packing import pack_row
from diffmodel.train import fast_path, varlen
from diffmodel.train.args import SpeedArguments
from diffmodel.train.attention import PACKING_BACKENDS, check_isolation, needs_boundaries, prepare_for_packing
from diffmodel.train.collate import PackedCollator, boundaries

sys.path.insert(0, str(Path(__file__).parent))
from packed_models import EOS, PAD, X, one_by_one, packed, sum_loss_and_grads  # noqa: E402
from packed_models import model as tiny_model  # noqa: E402
from packed_models import samples as make_samples  # noqa: E402


def varlen_model(arch="llama", name=varlen.NAME):
    varlen.register()
    m = tiny_model(arch, "sdpa")
    m.set_attn_implementation(name)
    return m


def test_boundaries_of_rows_laid_end_to_end():
    assert boundaries([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]).tolist() == [0, 3, 5, 6, 10, 12]
    assert boundaries([[0, 1, 2]]).dtype == torch.int32
    assert boundaries([3, 4, 0, 1]).tolist() == [0, 2, 4]  # a row that does not start a sample still starts a segment


def test_collator_keeps_rows_and_adds_their_boundaries():
    rows = [pack_row([([5, 6], [5, 6])], EOS), pack_row([([7], [7]), ([8, 9, 4], [8, 9, 4])], EOS)]
    batch = PackedCollator(PAD, pad_to_multiple_of=8, boundaries=True)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, EOS] + [PAD] * 5, [7, EOS, 8, 9, 4, EOS, PAD, PAD]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 0, 1, 2, 3, 0, 1]]
    # row 0: the sample (3) and the pad segment (5); row 1: two samples (2, 4) and the pad segment (2)
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 8, 10, 14, 16]
    assert batch["cu_seq_lens_k"] is batch["cu_seq_lens_q"]
    assert batch["max_length_q"] == batch["max_length_k"] == 8  # the row width: one value per shape
    assert "cu_seq_lens_q" not in PackedCollator(PAD)(rows)


def _reference(q, k, v, cu):
    """Each sample alone through the causal math attention, (batch, heads, length, dim) in, (batch, length, heads, dim) out."""
    out = torch.zeros(q.shape[0], q.shape[2], q.shape[1], q.shape[3])
    qf, kf, vf = (t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3]) for t in (q, k, v))
    flat = out.reshape(-1, q.shape[1], q.shape[3])
    g = q.shape[1] // k.shape[1]
    for s, e in zip(cu[:-1], cu[1:]):
        qs, ks, vs = qf[s:e].transpose(0, 1), kf[s:e].transpose(0, 1).repeat_interleave(g, 0), vf[s:e].transpose(0, 1).repeat_interleave(g, 0)
        w = (qs @ ks.transpose(1, 2)) / q.shape[3] ** 0.5
        w = w.masked_fill(torch.ones(e - s, e - s, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        flat[s:e] = (w @ vs).transpose(0, 1)
    return out


def test_attention_attends_within_each_sample_only():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, generator=g)
    k, v = torch.randn(2, 2, 6, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)  # 2 KV heads for 4 query heads
    cu = torch.tensor([0, 2, 6, 9, 12], dtype=torch.int32)  # the second row holds two samples of 3
    out, weights = varlen.attention(None, q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=6, max_length_k=6)
    assert weights is None and out.shape == (2, 6, 4, 8)
    torch.testing.assert_close(out, _reference(q, k, v, [0, 2, 6, 9, 12]))
    # what follows a sample cannot change it: new keys and values for the second sample of row 1
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 3:], v2[1, :, 3:] = 5.0, -5.0
    out2, _ = varlen.attention(None, q, k2, v2, None, cu_seq_lens_q=cu, max_length_q=6)
    torch.testing.assert_close(out2[1, :3], out[1, :3])
    assert not torch.allclose(out2[1, 3:], out[1, 3:])


def test_without_boundaries_a_row_is_one_sample_and_a_mask_goes_to_sdpa():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=g) for _ in range(3))
    out, _ = varlen.attention(None, q, k, v, None)
    torch.testing.assert_close(out, _reference(q, k, v, [0, 5, 10]))
    mask = torch.zeros(2, 1, 5, 5, dtype=torch.bool)
    mask[..., 0] = True  # every query sees only the first key: not causal attention
    masked, _ = varlen.attention(SimpleNamespace(is_causal=True, num_key_value_groups=1), q, k, v, mask)
    torch.testing.assert_close(masked, v[:, :, :1].expand(-1, -1, 5, -1).transpose(1, 2))


# fa4_varlen takes this path on the CPU too (tests/test_flash4.py: its GPU kernels)
@pytest.mark.parametrize("arch, name", [("llama", varlen.NAME), ("gpt2", varlen.NAME), ("llama", varlen.FLASH4)])
def test_packed_loss_and_gradients_equal_one_by_one(arch, name):
    samples = make_samples()
    model = varlen_model(arch, name)
    ref_loss, ref_grads = sum_loss_and_grads(model, one_by_one(samples))
    batch = packed(samples, collator=PackedCollator(PAD, boundaries=True))
    assert batch[0]["input_ids"].shape[0] >= 2 and "cu_seq_lens_q" in batch[0]
    loss, grads = sum_loss_and_grads(model, batch)
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4)


def test_the_boundaries_are_what_keeps_samples_apart():
    # the same packed rows with boundaries saying "one sample per row": the later samples now see the earlier
    # ones (if the mask transformers builds from position_ids were used instead, nothing would change)
    samples = make_samples()
    model = varlen_model().eval()
    batch = packed(samples, collator=PackedCollator(PAD, boundaries=True))[0]
    rows, width = batch["input_ids"].shape
    with torch.no_grad():
        right = model(**batch).logits
        wrong = dict(batch, cu_seq_lens_q=torch.arange(0, (rows + 1) * width, width, dtype=torch.int32))
        wrong["cu_seq_lens_k"] = wrong["cu_seq_lens_q"]
        leaked = model(**wrong).logits
    first = int(batch["cu_seq_lens_q"][1])  # the first sample of row 0 sees nothing before it either way
    torch.testing.assert_close(leaked[0, :first], right[0, :first])
    assert (leaked[0, first:] - right[0, first:]).abs().max() > 1e-3


@pytest.mark.parametrize("name", varlen.NAMES)
def test_training_setup_passes_boundaries_and_the_probe_checks_them(name):
    model = varlen_model(name=name)
    assert name in PACKING_BACKENDS
    assert prepare_for_packing(model) is False and needs_boundaries(model)
    assert check_isolation(model, PackedCollator(PAD, boundaries=True)) < 1e-4


def test_fast_path_problems_and_padding_free_choice():
    speed = SpeedArguments()
    gpu = fast_path.Facts(cuda=True, flash_attn=False, flex_attention=True, liger=False)
    assert any("bf16 or fp16" in p for p in fast_path.problems(speed, varlen.NAME, True, gpu, half=False))
    assert fast_path.problems(speed, varlen.NAME, True, gpu, half=True) == []
    cpu = fast_path.Facts(cuda=False, flash_attn=False, flex_attention=True, liger=False)
    assert fast_path.problems(speed, varlen.NAME, True, cpu, half=False) == []  # the CPU runs it in fp32
    choice = fast_path.choose_padding_free("auto", varlen.NAME, True)
    assert choice.value is False and "nearly full" in choice.reason
    # not chosen by default yet
    assert fast_path.choose_attention(None, True, gpu).value == "flex_attention"


def test_fp32_on_a_gpu_kernel_is_refused_with_the_fix():
    q = torch.zeros(4, 2, 8)
    with pytest.raises(DiffModelError, match="--bf16"):
        varlen._kernel(q, q, q, torch.tensor([0, 4], dtype=torch.int32), torch.tensor([0, 4], dtype=torch.int32), 4, 4, 0.35)


def test_generates_with_a_cache_and_left_padding_like_sdpa():
    model = varlen_model().eval()
    model.config.use_cache = True
    ids = torch.tensor([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    kw = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=PAD)
    with torch.no_grad():
        got = model.generate(ids, **kw)
        model.set_attn_implementation("sdpa")
        want = model.generate(ids, **kw)
    assert got.tolist() == want.tolist() and got.shape == (2, 9)


def test_the_kernel_call_traces_as_one_graph_for_torch_compile():
    # fullgraph=True raises at the first graph break; tracing runs the op's fake kernel, so reaching the real
    # flash op (which this CPU build lacks) means the whole call was captured, GQA and causal keywords included
    varlen.register()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 4, 8, generator=g).to(torch.bfloat16)
    kv = torch.randn(6, 2, 8, generator=g).to(torch.bfloat16)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    compiled = torch.compile(lambda q, kv, cu: varlen._kernel(q, kv, kv, cu, cu, 6, 6, 8 ** -0.5), backend="eager", fullgraph=True)
    torch._dynamo.reset()
    with pytest.raises(NotImplementedError, match="_flash_attention_forward"):
        compiled(q, kv, cu)


def test_under_autocast_the_kernel_gets_the_autocast_dtype():
    q = torch.zeros(1, 2, 3, 4)
    assert varlen.half_dtype(q) is None and varlen.half_dtype(q.half()) == torch.float16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert varlen.half_dtype(q) == torch.bfloat16
    # what --bf16 hands the attention function: Llama's rotary embedding returns fp32 queries under autocast
    seen = []

    def spy(module, query, key, value, attention_mask, **kw):
        seen.append((query.dtype, varlen.half_dtype(query)))
        return varlen.attention(module, query, key, value, attention_mask, **kw)

    from transformers import AttentionInterface

    AttentionInterface.register("varlen_spy", spy)
    model = varlen_model()
    model.set_attn_implementation("varlen_spy")
    batch = packed(make_samples(), collator=PackedCollator(PAD, boundaries=True))[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    assert loss.isfinite() and seen and all(s == (torch.float32, torch.bfloat16) for s in seen)


def test_fp32_inputs_under_autocast_run_in_bf16():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 6, 8, generator=g) for _ in range(3))
    cu = torch.tensor([0, 2, 6, 9, 12], dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = varlen.attention(None, q, k, v, None, cu_seq_lens_q=cu, max_length_q=6)
    assert out.dtype == torch.bfloat16
    half = [t.bfloat16().float() for t in (q, k, v)]
    torch.testing.assert_close(out.float(), _reference(*half, [0, 2, 6, 9, 12]), atol=2e-2, rtol=2e-2)
    assert varlen.attention(None, q, k, v, None, cu_seq_lens_q=cu, max_length_q=6)[0].dtype == torch.float32


@pytest.mark.parametrize("name", varlen.NAMES)
def test_a_sliding_window_narrower_than_the_rows_is_refused_with_the_fix(name):
    # the varlen kernels attend causally over each whole sample: a window shorter than a sample would be ignored
    from transformers import MistralConfig, MistralForCausalLM

    varlen.register()
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=64, sliding_window=4, use_cache=False)
    model = MistralForCausalLM(cfg)
    model.set_attn_implementation(name)
    batch = packed(make_samples(), collator=PackedCollator(PAD, boundaries=True))[0]
    with pytest.raises(DiffModelError, match=f"--attn_implementation {name}: this model attends within a sliding window of 4 "
                                             "tokens.*use --attn_implementation flex_attention"):
        model(**batch)
    model.config.sliding_window = 64  # wider than any row: nothing to apply
    assert model(**batch).loss.isfinite()
