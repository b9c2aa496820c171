"""flex_attention's tiles (``--flex_kernel_options``): the choice, the flag, and the options reaching the kernel."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers.integrations.flex_attention as hf_flex

from diffmodel.train import fast_path, flex_kernels
from diffmodel.train.args import SpeedArguments
from diffmodel.train.collate import PackedCollator
from diffmodel.train.fast_path import Facts, choose, problems
from diffmodel.train.flex_kernels import HOPPER_HEAD64
from diffmodel.train.model import head_dim_of

sys.path.insert(0, str(Path(__file__).parent))
from packed_models import PAD, X, one_by_one, packed, samples  # noqa: E402
from packed_models import model as tiny_model  # noqa: E402

H200 = Facts(cuda=True, flash_attn=False, flex_attention=True, liger=False, capability=(9, 0))
A100 = Facts(cuda=True, flash_attn=False, flex_attention=True, liger=False, capability=(8, 0))
CPU = Facts(cuda=False, flash_attn=False, flex_attention=True, liger=False)
MINE = {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 32}


def _training(bf16=True):
    return SimpleNamespace(max_steps=1000, torch_compile=True, use_liger_kernel=False, deepspeed=None, fsdp=None,
                           dataloader_num_workers=0, bf16=bf16, fp16=False)


@pytest.mark.parametrize("text,expected", [
    ("auto", "auto"), ("torch", "torch"), ("", "auto"), (" torch ", "torch"),
    ('{"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 32}', MINE), ("{}", {}),
])
def test_parse(text, expected):
    assert flex_kernels.parse(text) == expected


@pytest.mark.parametrize("text,phrase", [
    ("fast", "give auto, torch or a JSON object such as"),
    ('{"fwd_BLOCK_M": 64', "give auto, torch or a JSON object such as"),
    ("[64, 32]", "a JSON object of option names and values"),
])
def test_unreadable_setting_names_the_flag_and_the_fix(text, phrase):
    with pytest.raises(ValueError, match="--flex_kernel_options") as e:
        flex_kernels.parse(text)
    assert phrase in str(e.value)
    found = problems(SpeedArguments(flex_kernel_options=text), None, True, CPU)
    assert found == [str(e.value)]


@pytest.mark.parametrize("setting,facts,head_dim,bf16,attn,expected,phrase", [
    ("auto", H200, 64, True, None, HOPPER_HEAD64, "1.16x torch's on an H200"),
    ("auto", H200, 128, True, None, None, "heads of 128"),
    ("auto", H200, 64, False, None, None, "fp32 here"),
    ("auto", A100, 64, True, None, None, "compute capability 8.0"),
    ("auto", CPU, 64, True, "flex_attention", None, "no GPU"),  # flex_attention asked for on the CPU
    ("torch", H200, 64, True, None, None, "set by --flex_kernel_options torch"),
    ('{"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 32}', A100, 128, False, None, MINE, "set by --flex_kernel_options"),
    ('{"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 32}', CPU, 64, False, "flex_attention", MINE, "set by --flex_kernel_options"),
    ("auto", H200, 64, True, "sdpa", None, "attention is sdpa, not flex_attention"),
    ("auto", CPU, 64, True, None, None, "attention is sdpa, not flex_attention"),  # the CPU default
])
def test_choice(setting, facts, head_dim, bf16, attn, expected, phrase):
    path = choose(SpeedArguments(flex_kernel_options=setting), attn, True, _training(bf16), facts, "llama",
                  head_dim=head_dim)
    assert path.attention.value == (attn or ("flex_attention" if facts.cuda else "sdpa"))
    assert path.flex_kernels.value == expected
    assert phrase in path.flex_kernels.reason


def test_the_start_up_lines_show_the_tiles_only_with_flex_attention():
    path = choose(SpeedArguments(), None, True, _training(), H200, "llama", head_dim=64)
    tiles = [line for line in path.lines() if line.startswith("flex_attention tiles: ")]
    assert tiles == [f"flex_attention tiles: {__import__('json').dumps(HOPPER_HEAD64)} ({path.flex_kernels.reason})"]
    torch_tiles = choose(SpeedArguments(flex_kernel_options="torch"), None, True, _training(), H200, "llama", head_dim=64)
    assert "flex_attention tiles: torch's (set by --flex_kernel_options torch)" in torch_tiles.lines()
    sdpa = choose(SpeedArguments(), "sdpa", True, _training(), H200, "llama", head_dim=64)
    assert not any(line.startswith("flex_attention tiles") for line in sdpa.lines())


def test_head_dim_of_a_config():
    assert head_dim_of(SimpleNamespace(hidden_size=2048, num_attention_heads=32)) == 64
    assert head_dim_of(SimpleNamespace(head_dim=128, hidden_size=2048, num_attention_heads=32)) == 128
    assert head_dim_of(SimpleNamespace()) is None


@pytest.fixture
def seen(monkeypatch):
    """The kernel_options each call of transformers' compiled flex_attention got; the call goes on with torch's own
    tiles (GPU tile sizes mean nothing to the CPU kernel, and torch 2.13 fails to compile some of them there)."""
    # transformers compiles flex_attention once a process; after other shapes earlier tests ran it is compiled for
    # dynamic shapes, whose CPU code torch 2.13's inductor fails to build: start from static ones
    torch._dynamo.reset()
    calls = []
    real = hf_flex.compile_friendly_flex_attention

    def record(query, key, value, training=False, **kwargs):
        calls.append(kwargs.pop("kernel_options", None))
        return real(query, key, value, training=training, **kwargs)

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", record)
    return calls


def test_installed_options_reach_flex_attention_and_packed_samples_stay_apart(seen):
    """A packed batch through flex_attention with the options installed: every layer's call carries them, and the
    loss equals the samples run one by one (sdpa on the same weights: no packing involved, so it is the truth)."""
    rows = samples()
    model = tiny_model("llama", "sdpa").eval()
    with torch.no_grad():
        ref = [(model(**b).loss * int((b["labels"][:, 1:] != X).sum())).item() for b in one_by_one(rows)]
        # rows 32 wide: torch 2.13's compiled CPU flex kernel is wrong for widths of 8 mod 16 on an AVX2 CPU
        batch = packed(rows, collator=PackedCollator(PAD, pad_to_multiple_of=16))[0]
        n = int((batch["labels"][:, 1:] != X).sum())
        model.set_attn_implementation("flex_attention")
        assert flex_kernels.install(model, MINE) == 2  # one attention module a layer
        loss = model(**batch).loss.item()
    assert seen == [MINE, MINE]
    assert loss == pytest.approx(sum(ref) / n, abs=1e-5)
    # taken away again: torch's own tiles
    seen.clear()
    assert flex_kernels.install(model, None) == 0
    with torch.no_grad():
        model(**batch)
    assert seen == [None, None]


def test_a_model_without_options_keeps_torchs_tiles_beside_one_with_them(seen):
    batch = packed(samples(), collator=PackedCollator(PAD, pad_to_multiple_of=16))[0]
    marked, plain = tiny_model("llama", "flex_attention").eval(), tiny_model("llama", "flex_attention").eval()
    flex_kernels.install(marked, MINE)
    flex_kernels.install(marked, MINE)  # twice: still one wrapper around transformers' function
    with torch.no_grad():
        plain(**batch)
        marked(**batch)
    assert seen == [None, None, MINE, MINE]
    from transformers import AttentionInterface

    wrapper = AttentionInterface._global_mapping["flex_attention"]
    assert wrapper._diffmodel_wrapped is hf_flex.flex_attention_forward


def test_decoding_with_a_cache_keeps_torchs_tiles():
    """Queries shorter than the keys (a KV cache while generating) get no options: torch's decoding kernel has its own."""
    got = []

    def attend(module, query, key, value, attention_mask, **kwargs):
        got.append(kwargs.get("kernel_options"))
        return "out"

    module = SimpleNamespace(**{flex_kernels.ATTR: MINE})
    wrapped = flex_kernels._wrapped(attend)
    q, kv = torch.zeros(1, 4, 1, 8), torch.zeros(1, 2, 5, 8)
    assert wrapped(module, q, kv, kv, None) == "out"
    wrapped(module, torch.zeros(1, 4, 5, 8), kv, kv, None)
    wrapped(module, torch.zeros(1, 4, 5, 8), kv, kv, None, kernel_options={"fwd_BLOCK_M": 16})  # the caller's win
    assert got == [None, MINE, {"fwd_BLOCK_M": 16}]
    assert fast_path.Facts(cuda=False, flash_attn=False, flex_attention=True, liger=False).capability is None
