"""The last decoder layer's attention for the loss positions' queries only (part of ``--loss_logits``).

:mod:`diffmodel.train.loss_logits` picks the loss positions inside the last decoder layer, after its attention.
The attention itself need not run at every position either: the layer's keys and values are needed at every
position (a loss position attends to the whole of its sample before it), but its queries, their rotary
embedding, the attention's output and the output projection only at the loss positions. :func:`attend` gives
the layer's residual stream after attention at the loss positions alone:

- queries: the input norm at the loss positions, projected (and normed per head where the model does,
  Qwen3), with the rotary embedding of their own positions;
- keys and values: at every position, the batch's rows laid end to end (one sequence of rows x width);
- the mask: the query at flat position ``p`` sees the keys from the start of its sample (``p`` minus its
  position id: a packed sample's positions count up from 0) to ``p`` itself, within the layer's sliding
  window where it has one. That is what the layer's own per-sample causal mask gives that position.

Where it runs (:func:`applies`): with flex_attention (the GPU default) for models whose query and key heads
are as many (see :func:`flex_takes`), as a block mask built from those key ranges (the loss positions are in
order, so each block of queries sees one run of key blocks); with sdpa only on one-row (padding-free)
batches, as a boolean (positions x tokens) mask, smaller there than the layer's own (tokens x tokens) one: on
several rows the end-to-end keys would cost more than they save.
Other backends run the layer's own attention, then pick.

Only the layer's own modules are called (norms, projections, the rotary function of the model's module, the
attention entry transformers registered for the backend), so adapters on them (LoRA) take part. Tests:
loss and gradients equal to the full forward (sdpa, one row), the loss with flex_attention (torch has no
flex_attention backward on a CPU: the GPU ``--check`` covers its gradients), and the query projection
seeing exactly the loss positions.
"""

from __future__ import annotations

import sys

import torch

#: Tokens per block of flex_attention's block mask (torch's default; the kernels' tiles divide it).
BLOCK = 128

#: With flex_attention, give models of grouped key heads the loss positions' queries too, over their keys and values
#: repeated to one per query head (one key head for one query head, as the models of equal heads that trained). Off:
#: ``benchmarks/train_throughput.py --check`` (its case "grouped keys repeated", compiled, 4 query / 2 key heads)
#: passes on an H200 and an H100, and the ~1B model (32 query / 4 key heads) trains with it on an H100, but no faster
#: (410 ms a step either way; benchmarks/RESULTS.md, arm ``pack_one_pass_repeat``).
REPEAT_GROUPED = False


def applies(layer, hidden_states: torch.Tensor, kwargs: dict) -> bool:
    """Whether :func:`attend` replaces the layer's attention for this call (see the module docstring)."""
    backend = getattr(layer.self_attn.config, "_attn_implementation", None)
    if kwargs.get("position_ids") is None or kwargs.get("position_embeddings") is None:
        return False
    if backend == "flex_attention":
        return flex_takes(layer.self_attn)
    return backend == "sdpa" and hidden_states.shape[0] == 1


def flex_takes(attn) -> bool:
    """Whether, with flex_attention, :func:`attend` replaces this attention module's: not for grouped key heads (fewer
    key than query heads: Llama 3, Qwen) unless :data:`REPEAT_GROUPED`. Compiled for the GPU (as ``diffmodel train``
    runs it), such a model's training step failed inside flex_attention with the loss positions' queries (an H200,
    torch 2.11, a ~1B Llama of 32 query and 4 key heads), while a model of equal heads trained (~110M, 12 and 12) and
    the GPU check of a small grouped model (4 query, 2 key heads), compiled or not, gave the full forward's loss and
    gradients; those models keep the layer's own attention and pick the positions after it (the MLP pick only)."""
    return REPEAT_GROUPED or getattr(attn, "num_key_value_groups", 1) == 1


def plan(layer) -> str:
    """What the last layer ``layer`` runs at the loss positions alone, for the start-up log."""
    backend = getattr(layer.self_attn.config, "_attn_implementation", None)
    if backend == "flex_attention":
        if flex_takes(layer.self_attn):
            return "the last decoder layer's MLP and its attention's queries too"
        return "the last decoder layer's MLP too (its attention at every position: the model's key heads are grouped)"
    if backend == "sdpa":
        return "the last decoder layer's MLP too, and its attention's queries on one-row batches"
    return f"the last decoder layer's MLP too (its attention at every position with {backend})"


def attend(layer, hidden_states: torch.Tensor, index: torch.Tensor, position_ids: torch.Tensor,
           position_embeddings: tuple[torch.Tensor, torch.Tensor], **_) -> torch.Tensor:
    """The residual stream after the layer's attention at the flat positions ``index`` (in order; padding repeats
    the last one), as (positions, hidden)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attn = layer.self_attn
    rows, width, hidden = hidden_states.shape
    tokens = rows * width
    head_dim = attn.head_dim
    normed = layer.input_layernorm(hidden_states).reshape(tokens, hidden)
    query = attn.q_proj(normed.index_select(0, index)).view(1, len(index), -1, head_dim)
    key = attn.k_proj(normed).view(1, tokens, -1, head_dim)
    value = attn.v_proj(normed).view(1, tokens, -1, head_dim).transpose(1, 2)
    if hasattr(attn, "q_norm"):
        query, key = attn.q_norm(query), attn.k_norm(key)
    rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    cos, sin = (t.reshape(tokens, -1) for t in position_embeddings)
    query, _ = rotary(query.transpose(1, 2), query.transpose(1, 2), cos.index_select(0, index)[None], sin.index_select(0, index)[None])
    key, _ = rotary(key.transpose(1, 2), key.transpose(1, 2), cos[None], sin[None])

    start = index - position_ids.reshape(tokens).index_select(0, index)  # each query's sample starts here
    window = attn.sliding_window if hasattr(attn, "sliding_window") else getattr(attn.config, "sliding_window", None)
    if window is not None:  # transformers' sliding window: keys less than `window` positions back
        start = torch.maximum(start, index - window + 1)
    backend = attn.config._attn_implementation
    extra = {}
    if backend == "flex_attention":
        from diffmodel.train.flex_kernels import ATTR

        groups = query.shape[1] // key.shape[1]  # (1, heads, positions, head size) each
        if groups > 1:  # REPEAT_GROUPED
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        mask = block_mask(index, start, tokens)
        if getattr(attn, ATTR, None):
            extra["kernel_options"] = getattr(attn, ATTR)
    else:
        keys = torch.arange(tokens, device=index.device)
        mask = ((keys >= start[:, None]) & (keys <= index[:, None]))[None, None]
    dropout = attn.attention_dropout if attn.training else 0.0
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    out, _ = ALL_ATTENTION_FUNCTIONS[backend](attn, query, key, value, mask, dropout=dropout, scaling=attn.scaling, **extra)
    attended = attn.o_proj(out.reshape(len(index), -1))
    return hidden_states.reshape(tokens, hidden).index_select(0, index) + attended


def block_mask(index: torch.Tensor, start: torch.Tensor, tokens: int):
    """flex_attention's block mask for queries at the flat positions ``index`` (non-decreasing) over ``tokens`` keys, the query
    ``i`` seeing keys ``start[i]..index[i]``: each block of :data:`BLOCK` queries gets the run of key blocks from its
    smallest start to its largest position, the mask function deciding within them."""
    from torch.nn.attention.flex_attention import BlockMask

    n = len(index)
    query_blocks, key_blocks = -(-n // BLOCK), -(-tokens // BLOCK)
    pad = query_blocks * BLOCK - n
    first = torch.nn.functional.pad(start, (0, pad), value=tokens).view(query_blocks, BLOCK).amin(1) // BLOCK
    last = torch.nn.functional.pad(index, (0, pad), value=-1).view(query_blocks, BLOCK).amax(1) // BLOCK
    counts = (last - first + 1).to(torch.int32)
    runs = (first[:, None] + torch.arange(key_blocks, device=index.device)[None]).clamp(max=key_blocks - 1).to(torch.int32)

    def sees(batch, head, q, kv):
        return (kv >= start[q]) & (kv <= index[q])

    return BlockMask.from_kv_blocks(counts[None, None], runs[None, None], BLOCK_SIZE=BLOCK, mask_mod=sees,
                                    seq_lengths=(n, tokens))
