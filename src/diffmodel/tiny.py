"""Tiny, real HuggingFace models and tokenizers, built on the spot.

``diffmodel quickstart`` and the test suite need a causal LM and a tokenizer
that behave exactly like hub checkpoints (``save_pretrained`` /
``from_pretrained``, ``labels=`` loss, ``generate``) but are small enough to
train on a CPU in minutes and need no network. This module makes them from a
handful of texts.

Invariants:
- The tokenizer is byte-level BPE, so ``decode(encode(x)) == x`` for every
  string ``x`` (any unicode, ``\\r\\n``, tabs, trailing spaces), and character
  offsets (``return_offsets_mapping=True``) cover the text exactly, with no
  trimming of spaces.
- ``<|endoftext|>`` is the only special token; it is the EOS token. There is
  no pad token (the training pipeline falls back to EOS) and no BOS is added
  on encode. The sample markers ``<NME> <BEF> <MSG> <DFF>`` are ordinary text,
  so a marker may merge with its neighbours exactly as it would with a hub
  tokenizer: find the ``<DFF>`` boundary by character offset, not by ids.
- Models are fp32, 2 layers, hidden size 64, 4 heads, with
  ``vocab_size == len(tokenizer)``, and the config's eos/bos/pad ids are the
  tokenizer's EOS id. The same ``seed`` gives bit-identical weights, and the
  global torch RNG is left untouched.
- Nothing is downloaded: everything is built from the arguments.
- torch, tokenizers and transformers are imported inside the functions that
  build, so the constants (``ARCHS``, ``EOS_TOKEN``) are cheap to import
  (``diffmodel quickstart --help`` reads ``ARCHS``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from diffmodel.errors import DiffModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

#: The one special token: end of text (also used as pad by the pipeline).
EOS_TOKEN = "<|endoftext|>"

#: Architectures :func:`build_model` knows.
ARCHS = ("gpt2", "llama")

#: Shape shared by every tiny model (override any of them via ``**overrides``).
N_LAYERS = 2
HIDDEN = 64
N_HEADS = 4


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    ``vocab_size`` counts the 256 byte symbols, the merges and the EOS token,
    so it must be at least 257; a small corpus may give fewer merges than
    asked for (``len(tokenizer)`` is the true size). ``model_max_length`` is
    the longest sequence the tokenizer will report as valid; set it to the
    model's ``n_positions``.
    """
    if vocab_size < 257:
        raise DiffModelError(
            f"vocab_size={vocab_size} is too small for a byte-level tokenizer: "
            "it needs 256 byte symbols plus the EOS token; use vocab_size >= 257"
        )
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator((str(t) for t in texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def _eos_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DiffModelError("the tokenizer has no eos_token; build it with diffmodel.tiny.train_tokenizer")
    return int(eos)


def build_model(arch: str, tokenizer, n_positions: int = 512, seed: int = 0, **overrides) -> PreTrainedModel:
    """A freshly initialised fp32 causal LM of architecture ``arch`` ("gpt2" or "llama").

    ``overrides`` are config fields (e.g. ``n_layer=1`` for gpt2,
    ``num_key_value_heads=2`` for llama) applied on top of the tiny defaults.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    eos = _eos_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = dict(bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)
    if arch == "gpt2":
        fields = dict(
            vocab_size=len(tokenizer),
            n_positions=n_positions,
            n_embd=HIDDEN,
            n_layer=N_LAYERS,
            n_head=N_HEADS,
            **ids,
        )
        config_cls, model_cls = GPT2Config, GPT2LMHeadModel
    elif arch == "llama":
        fields = dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=n_positions,
            hidden_size=HIDDEN,
            intermediate_size=4 * HIDDEN,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            num_key_value_heads=N_HEADS,
            tie_word_embeddings=False,
            **ids,
        )
        config_cls, model_cls = LlamaConfig, LlamaForCausalLM
    else:
        raise DiffModelError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    fields.update(overrides)
    config = config_cls(**fields)
    config.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model = model.to(torch.float32)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = ids["bos_token_id"], ids["eos_token_id"], ids["pad_token_id"]
    return model.eval()


def save_tiny_checkpoint(
    out_dir: str | Path,
    arch: str,
    texts: Iterable[str],
    vocab_size: int = 512,
    n_positions: int = 512,
    seed: int = 0,
    **overrides,
) -> Path:
    """Train a tokenizer on ``texts``, build a ``arch`` model, and save both to ``out_dir``.

    ``overrides`` are config fields passed on to :func:`build_model`.

    Afterwards ``AutoModelForCausalLM.from_pretrained(out_dir)`` and
    ``AutoTokenizer.from_pretrained(out_dir)`` work offline. Returns ``out_dir``.
    """
    out = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, model_max_length=n_positions)
    model = build_model(arch, tokenizer, n_positions=n_positions, seed=seed, **overrides)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out
