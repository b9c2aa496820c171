"""The tile sizes of flex_attention's training kernels: ``--flex_kernel_options``.

flex_attention compiles Triton kernels whose tiles (query and key block
sizes, warps, pipeline stages) torch picks from a table per GPU generation,
unless ``kernel_options`` name them. On packed rows the table's choice is not
the fastest: on an H200, at the ~1B shapes of the benchmarks (32 query heads
over 4 KV heads of 64, rows of 2,048), inductor's own autotuning picked a
128 x 64 forward tile and 64 x 64 backward tiles with 4 warps and 3 stages,
and those ran forward + backward 1.16x as fast as torch's defaults
(benchmarks/flex_options.py), which made the whole ~1B training step
1.01x-1.03x as fast (benchmarks/train_default.py; benchmarks/RESULTS.md).

Settings:

- ``auto`` (default): :data:`HOPPER_HEAD64` on a GPU of compute capability
  9.0 (H100, H200) for heads of 64 under bf16/fp16, where they were
  measured; torch's own choice elsewhere.
- ``torch``: torch's own choice.
- a JSON object: these ``kernel_options``, as flex_attention takes them
  (``'{"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64}'``).

The options reach the model they were set on (:func:`install` marks its
attention modules) whenever queries and keys are equally long: training
steps, the start-up isolation probe and evaluation, not decoding with a KV
cache (torch's decoding kernel has options of its own). They go through
transformers' ``flex_attention`` entry, which :func:`install` wraps once per
process; unmarked models keep transformers' behaviour. Tiles change the order
of the sums, not what is computed: the isolation probe runs with them, and
``benchmarks/flex_options.py`` compares outputs and gradients with torch's
tiles.
"""

from __future__ import annotations

import json

#: Where the options live on an attention module (not a parameter or buffer: never saved with the model).
ATTR = "_diffmodel_flex_kernel_options"

#: Inductor's autotuned tiles for heads of 64 in bf16 on an H200 (benchmarks/RESULTS.md).
HOPPER_HEAD64 = {
    "fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64, "fwd_num_warps": 4, "fwd_num_stages": 3,
    "bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64,
    "bwd_num_warps": 4, "bwd_num_stages": 3,
}

SETTINGS = ("auto", "torch")


def parse(text: str) -> str | dict:
    """``auto``, ``torch`` or the options of a JSON object; ValueError (with the fix) otherwise."""
    text = (text or "auto").strip()
    if text in SETTINGS:
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--flex_kernel_options {text!r}: give auto, torch or a JSON object such as "
                         f"'{{\"fwd_BLOCK_M\": 128}}' ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"--flex_kernel_options {text!r}: give auto, torch or a JSON object of option names and values")
    return value


def choose(setting: str, attention: str | None, cuda: bool, capability: tuple[int, int] | None,
           head_dim: int | None, half: bool):
    """``(options or None, reason)`` for one run; ``half``: --bf16 or --fp16."""
    if attention != "flex_attention":
        return None, f"attention is {attention or 'the model default'}, not flex_attention"
    value = parse(setting)
    if isinstance(value, dict):
        return value, "set by --flex_kernel_options"
    if value == "torch":
        return None, "set by --flex_kernel_options torch"
    if not cuda:
        return None, "no GPU: torch's CPU kernel"
    if capability != (9, 0) or head_dim != 64 or not half:
        where = f"compute capability {capability[0]}.{capability[1]}" if capability else "this GPU"
        return None, (f"the faster tiles were measured on compute capability 9.0 for heads of 64 under "
                      f"bf16/fp16 ({where}, heads of {head_dim}, {'bf16/fp16' if half else 'fp32'} here)")
    return dict(HOPPER_HEAD64), ("inductor's autotuned tiles for heads of 64 on compute capability 9.0: forward + backward "
                                 "1.16x torch's on an H200 (benchmarks/RESULTS.md)")


def install(model, options: dict | None) -> int:
    """Give ``options`` to ``model``'s attention modules (None takes them away); returns how many were marked."""
    marked = 0
    for module in model.modules():
        if type(module).__name__.endswith("Attention") and hasattr(module, "config"):
            if options:
                setattr(module, ATTR, dict(options))
                marked += 1
            elif hasattr(module, ATTR):
                delattr(module, ATTR)
    if options:
        _wrap()
    return marked


def _wrap() -> None:
    from transformers import AttentionInterface

    current = AttentionInterface._global_mapping["flex_attention"]
    if getattr(current, "_diffmodel_wrapped", None) is None:
        AttentionInterface.register("flex_attention", _wrapped(current))


def _wrapped(flex_attention_forward):
    def attention(module, query, key, value, attention_mask, **kwargs):
        options = getattr(module, ATTR, None)
        if options and query.shape[-2] == key.shape[-2] and kwargs.get("kernel_options") is None:
            kwargs["kernel_options"] = options
        return flex_attention_forward(module, query, key, value, attention_mask, **kwargs)

    attention._diffmodel_wrapped = flex_attention_forward
    return attention
