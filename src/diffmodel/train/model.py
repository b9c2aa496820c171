"""Load the tokenizer, config and model; set dropout through the config.

Dropout is set on the *config*, before the model is built, for every setting
whose name says it is a dropout probability (``resid_pdrop``, ``embd_pdrop``,
``attn_pdrop``, ``hidden_dropout``, ``attention_dropout``,
``residual_dropout``, ``embedding_dropout``, ...). No model-specific module
path is touched, so any architecture whose config exposes its dropout works;
the log names each setting changed, or says that the config has none.

``flex_attention`` has no attention dropout (transformers refuses to train
with it): with that backend the attention-dropout settings are set to 0 before
the model is built, and the log says so; the other dropout settings stay.
"""

from __future__ import annotations

import logging

import torch
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, AutoTokenizer

from diffmodel.checkpoint import max_positions
from diffmodel.errors import DiffModelError
from diffmodel.train import varlen

logger = logging.getLogger(__name__)

#: Config settings that are dropout probabilities of a head, not of the language model.
NOT_LM_DROPOUT = ("summary_first_dropout", "classifier_dropout", "summary_last_dropout")


def dropout_settings(config) -> list[str]:
    """Names of the config's dropout-probability settings."""
    names = []
    for key, value in config.to_dict().items():
        if key in NOT_LM_DROPOUT or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key.endswith(("dropout", "pdrop", "dropout_prob", "dropout_rate")) or key in ("dropout",):
            names.append(key)
    return names


def is_attention_dropout(name: str) -> bool:
    return "attn" in name or "attention" in name


def attention_dropout_off(config) -> dict[str, tuple[float, float]]:
    """Set the config's attention-dropout settings to 0; returns {name: (old, 0.0)} for those changed."""
    changed = {}
    for name in dropout_settings(config):
        old = getattr(config, name)
        if is_attention_dropout(name) and old:
            setattr(config, name, 0.0)
            changed[name] = (old, 0.0)
    return changed


def apply_dropout(config, p: float) -> dict[str, tuple[float, float]]:
    """Set every dropout setting of ``config`` to ``p``; returns {name: (old, new)} for those changed."""
    changed = {}
    for name in dropout_settings(config):
        old = getattr(config, name)
        if old != p:
            setattr(config, name, p)
            changed[name] = (old, p)
    return changed


def load_tokenizer(model_args):
    from diffmodel.checkpoint import check_tokenizer_source

    name = check_tokenizer_source(model_args.tokenizer_name or model_args.model_name_or_path,
                                  "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path")
    try:
        tok = AutoTokenizer.from_pretrained(
            name, cache_dir=model_args.cache_dir, use_fast=model_args.use_fast_tokenizer,
            revision=model_args.model_revision, trust_remote_code=model_args.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise DiffModelError(f"cannot load a tokenizer from {name!r}: {err}. Check --tokenizer_name / --model_name_or_path") from None
    if tok.eos_token_id is None and tok.pad_token_id is None:
        raise DiffModelError(f"the tokenizer from {name!r} has neither a pad nor an EOS token; add an eos_token to it (and save it) before training")
    if tok.eos_token_id is None:
        raise DiffModelError(f"the tokenizer from {name!r} has no EOS token; every sample ends with EOS, so add an eos_token to it and save it")
    if not getattr(tok, "is_fast", False):
        logger.warning("slow tokenizer: no character offsets, so each token is decoded on its own to find where the diff starts")
    return tok


def load_config(model_args):
    kw = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "trust_remote_code": model_args.trust_remote_code}
    if model_args.config_name or model_args.model_name_or_path:
        name = model_args.config_name or model_args.model_name_or_path
        try:
            config = AutoConfig.from_pretrained(name, **kw)
        except (OSError, ValueError) as err:
            raise DiffModelError(f"cannot load a model config from {name!r}: {err}") from None
    else:
        if model_args.model_type not in CONFIG_MAPPING:
            raise DiffModelError(f"--model_type {model_args.model_type!r} is unknown; use one of: {', '.join(sorted(CONFIG_MAPPING.keys())[:20])}, ...")
        config = CONFIG_MAPPING[model_args.model_type]()
        logger.warning("training a new %s model from scratch", model_args.model_type)
    if model_args.config_overrides:
        apply_overrides(config, model_args.config_overrides)
    if model_args.dropout is not None and model_args.dropout >= 0:
        changed = apply_dropout(config, model_args.dropout)
        if changed:
            logger.info("dropout set to %s: %s", model_args.dropout, ", ".join(f"{k} {o} -> {n}" for k, (o, n) in changed.items()))
        elif not dropout_settings(config):
            logger.warning("the %s config exposes no dropout setting: --dropout has no effect", config.model_type)
    return config


def head_dim_of(config) -> int | None:
    """The width of one attention head: the config's ``head_dim``, else hidden size / heads (None when unknown)."""
    head_dim = getattr(config, "head_dim", None)
    if head_dim:
        return int(head_dim)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    return hidden // heads if hidden and heads else None


def apply_overrides(config, text: str) -> None:
    """``--config_overrides`` on ``config``, keeping derived attention sizes derived.

    A Llama-style config computes ``head_dim`` as ``hidden_size // num_attention_heads`` and
    ``num_key_value_heads`` as ``num_attention_heads`` when it is made, and ``update_from_string`` leaves both as
    they were: ``hidden_size=768,num_attention_heads=12`` on a fresh Llama config would build heads of 128 (the
    default 4096 / 32), attention twice as wide as the hidden size, and 32 key/value heads for 12 query heads
    (a model that fails at its first forward pass). Where the config had derived them, overrides that change the
    numbers they come from without naming them recompute them (and log it); a ``head_dim`` of the config's own
    (Gemma's), grouped-query key/value heads, or values the overrides name are kept.
    """
    hidden, heads, head_dim, kv = (getattr(config, k, None) for k in
                                   ("hidden_size", "num_attention_heads", "head_dim", "num_key_value_heads"))
    derived = isinstance(head_dim, int) and isinstance(hidden, int) and bool(heads) and head_dim == hidden // heads
    multi_head = isinstance(kv, int) and kv == heads
    malformed = [part for part in text.split(",") if "=" not in part]
    if malformed:
        raise DiffModelError(f"--config_overrides {text!r}: {malformed[0]!r} is not KEY=VALUE; "
                             "give comma-separated KEY=VALUE pairs, e.g. 'n_embd=256,n_layer=4'")
    try:
        config.update_from_string(text)
    except ValueError as err:
        raise DiffModelError(f"--config_overrides {text!r}: {err}") from None
    named = {part.split("=", 1)[0].strip() for part in text.split(",")}
    new_hidden, new_heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if derived and "head_dim" not in named and (new_hidden, new_heads) != (hidden, heads):
        if new_hidden % new_heads:
            raise DiffModelError(f"--config_overrides {text!r}: hidden_size {new_hidden} is not a multiple of "
                                 f"num_attention_heads {new_heads}; change one, or name head_dim=N")
        config.head_dim = new_hidden // new_heads
        logger.info("--config_overrides: head_dim %d -> %d (hidden_size %d / num_attention_heads %d; name head_dim=N to set another)",
                    head_dim, config.head_dim, new_hidden, new_heads)
    if isinstance(kv, int) and "num_key_value_heads" not in named and new_heads != heads:
        if multi_head:
            config.num_key_value_heads = new_heads
            logger.info("--config_overrides: num_key_value_heads %d -> %d (one per query head, as before; name "
                        "num_key_value_heads=N for grouped-query attention)", kv, new_heads)
        elif new_heads % kv:
            raise DiffModelError(f"--config_overrides {text!r}: num_attention_heads {new_heads} is not a multiple of "
                                 f"num_key_value_heads {kv}; name num_key_value_heads=N too")


def resolve_block_size(block_size: int | None, tokenizer, config) -> int:
    """Default the block size like run_clm, and refuse one the model cannot hold."""
    limit = max_positions(config)
    if block_size is None:
        block_size = min(1024, tokenizer.model_max_length if tokenizer.model_max_length < 10**9 else 1024)
        if limit:
            block_size = min(block_size, limit)
        logger.info("--block_size not given: using %d", block_size)
    elif limit and block_size > limit:
        raise DiffModelError(f"--block_size {block_size} is larger than the model's {limit} positions; use --block_size {limit} or less")
    return block_size


def _dtype(name: str | None):
    if name in (None, "auto"):
        return name
    return getattr(torch, name)


def parameters_of(config, trust_remote_code: bool = False) -> int | None:
    """The parameters a causal language model of ``config`` has, counted on the meta device (no memory, no weights
    read); None when its architecture cannot be built from the config here (:func:`load_model` then says why)."""
    import copy

    import torch

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(copy.deepcopy(config), trust_remote_code=trust_remote_code)
    except (ValueError, TypeError, KeyError, ImportError, OSError):
        return None
    return sum(p.numel() for p in model.parameters())


def load_model(model_args, config, tokenizer):
    extra = {}
    if model_args.attn_implementation:
        extra["attn_implementation"] = model_args.attn_implementation
    if model_args.attn_implementation in varlen.NAMES:
        varlen.register()
    if model_args.attn_implementation in ("flex_attention", *varlen.NAMES):
        changed = attention_dropout_off(config)
        if changed:
            logger.warning(
                "%s has no attention dropout: %s (other dropout settings kept); use --attn_implementation sdpa to keep it",
                model_args.attn_implementation, ", ".join(f"{k} {o} -> {n}" for k, (o, n) in changed.items()),
            )
    if model_args.model_name_or_path:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                model_args.model_name_or_path, config=config, cache_dir=model_args.cache_dir,
                revision=model_args.model_revision, trust_remote_code=model_args.trust_remote_code,
                dtype=_dtype(model_args.torch_dtype), **extra,
            )
        except OSError as err:
            raise DiffModelError(f"cannot load a model from {model_args.model_name_or_path!r}: {err}") from None
    else:
        # a new model takes its special ids from the tokenizer (the config class's defaults, e.g. Llama's eos 2,
        # would be ordinary tokens here, and generation would stop at them)
        eos = tokenizer.eos_token_id
        config.eos_token_id = eos
        config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
        config.pad_token_id = tokenizer.pad_token_id
        try:
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_args.trust_remote_code, **extra)
        except ValueError as err:  # sizes the architecture cannot be built with (e.g. a width not divisible by the heads)
            source = f"--config_overrides {model_args.config_overrides!r}" if model_args.config_overrides else "its config"
            raise DiffModelError(f"cannot build a new {config.model_type} model from {source}: {str(err).rstrip('.')}; "
                                 "change --config_overrides (or the --config_name config)") from None
        model.generation_config.eos_token_id = eos
        model.generation_config.bos_token_id = config.bos_token_id
        model.generation_config.pad_token_id = config.pad_token_id
        n = sum(p.numel() for p in model.parameters())
        logger.info("new model: %.1fM parameters", n / 1e6)
    if getattr(model, "loss_type", "") is None:  # a class named otherwise (GPT2LMHeadModel): transformers warns, then uses it
        model.loss_type = "ForCausalLM"
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        logger.info("resizing token embeddings from %d to %d to fit the tokenizer", vocab, len(tokenizer))
        model.resize_token_embeddings(len(tokenizer))
    return model
