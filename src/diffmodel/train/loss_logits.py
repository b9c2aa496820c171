"""The output layer and the loss only where the loss is (``--loss_logits``).

A diff model's loss is on the diff alone (``--loss_on diff``, the default): in the samples mined for the
benchmarks about 80% of the tokens are the file, its name and the commit message, whose predictions the
loss ignores. A transformers causal LM still applies its output layer (hidden size x vocabulary) at every
position and builds the (rows x width x vocabulary) logits before the loss drops most of them; with a
128k vocabulary that layer is a fifth of a 1B model's compute.

With ``--loss_logits on``:

- the packed collator lists the positions whose next token bears loss (``loss_index``: flat over the
  batch's rows x width, padded with the last position to a multiple of :data:`MULTIPLE`, so the compiled graph
  sees few shapes, and to at least :data:`MINIMUM`) and the tokens they predict (``loss_targets``, IGNORE_INDEX on the padding);
- the model's forward (this instance's, :func:`install`) runs the decoder, picks those positions' hidden
  states and applies the output layer and cross-entropy to them only: the loss of transformers'
  ``ForCausalLMLoss`` (summed over loss-bearing tokens, divided by ``num_items_in_batch``; the mean
  without it) and its gradients, from a (positions x vocabulary) logits tensor;
- in the Llama-shaped decoders (:data:`LAST_LAYER`) the positions are picked earlier, inside the last
  decoder layer, right after its attention: that layer's keys and values are needed at every position,
  but its MLP (two thirds of a layer's multiplies at ~110M, four fifths at ~1B), the final norm and the
  output layer only at the loss positions. The picking moves, it is not repeated: one gather either way;
  with flex_attention (models whose key heads are not grouped) and sdpa on one-row batches that layer's
  attention runs for the loss positions' queries alone too (:mod:`diffmodel.train.loss_queries`; :data:`LAST_QUERIES`);
- the training metrics score ``mean_token_accuracy`` on those logits;
- the trainer marks the number of loss positions as changing from batch to batch before each forward
  (:func:`dynamic_positions`), so a compiled step is compiled once for any number, not once for the first
  batch's and again for the rest; a compiled run also lets inductor fuse those positions' reductions without
  guarding their number (:func:`unguarded_positions`), which would otherwise compile the step again when a later
  batch has fewer positions than the first one's bound.

A forward without ``loss_index`` (generation, the start-up isolation probe) is the model's own. At
start-up, after the isolation probe, :func:`check` compares the two forwards' loss on the probe's packed
batch, on the device and in the precision training uses; when they differ, ``--loss_logits on`` refuses to
train and ``auto`` trains with the model's own forward (:func:`uninstall`), saying so.
Only model types whose head is the output embedding applied to the decoder's last hidden state, with no
scaling or soft-capping, are taken (:data:`SUPPORTED`; tests prove loss and gradients equal to the full
forward for each).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from transformers.utils import ModelOutput

from diffmodel.errors import DiffModelError
from diffmodel.preprocess.labels import IGNORE_INDEX
from diffmodel.train import loss_queries

INDEX, TARGETS, LOGITS = "loss_index", "loss_targets", "loss_logits"
#: ``loss_index`` is padded to a multiple of this many positions.
MULTIPLE = 64
#: and, in training batches, to at least this many: more than one block of the last layer's flex_attention queries
#: (:data:`diffmodel.train.loss_queries.BLOCK`). Its block mask is a view of the positions as (blocks, 128), which
#: torch.compile guards to two blocks or more when the first batch had them (a size of one is specialized): a later
#: batch with 128 loss positions or fewer (small batches, short diffs) would compile the step again. Batches of fewer
#: tokens always have one block: they are left as they are.
MINIMUM = loss_queries.BLOCK + 1
#: Model types whose causal-LM head is a plain output embedding over the decoder's last hidden state.
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
#: Those whose decoder layer is pre-norm attention then pre-norm MLP, each added to the residual stream, and whose
#: decoder applies only its final norm after the last layer: the positions are picked before the last layer's MLP.
LAST_LAYER = ("llama", "mistral", "qwen2", "qwen3")
#: Those whose last layer's attention also runs for the loss positions' queries alone, where the backend allows
#: (:mod:`diffmodel.train.loss_queries`): their attention is the Llama one (projections, rotary, optional per-head norms).
LAST_QUERIES = LAST_LAYER


def positions(labels: np.ndarray, multiple: int = MULTIPLE, minimum: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(index, targets)`` of a (rows, width) label array: the flat positions ``r * width + c`` whose next
    label ``labels[r, c + 1]`` bears loss, and those labels; padded to at least ``minimum`` positions (where the
    array has that many) and to a multiple of ``multiple`` with the last position (0 when there is none: the
    positions stay in order) and IGNORE_INDEX."""
    following = labels[:, 1:]
    rows, cols = np.nonzero(following != IGNORE_INDEX)
    index = rows * labels.shape[1] + cols
    targets = following[rows, cols]
    wanted = max(len(index), minimum if labels.size >= minimum else 0)  # no more than the batch's tokens
    pad = wanted - len(index) + (-wanted % multiple if multiple else 0)
    if not wanted:  # one block of ignored targets: the graph never sees zero positions
        pad = multiple or 1
    if pad:
        index = np.concatenate([index, np.full(pad, index[-1] if len(index) else 0, dtype=index.dtype)])
        targets = np.concatenate([targets, np.full(pad, IGNORE_INDEX, dtype=targets.dtype)])
    return index.astype(np.int64), targets.astype(np.int64)


def dynamic_positions(batch: dict) -> dict:
    """Mark the number of loss positions of ``batch`` (on the device, before the forward) as changing from batch to
    batch, so that torch.compile compiles the step once for any number. Without it, it compiles for the first batch's
    number, then again for any when the second batch's differs: twice the compiling of a run's first steps."""
    for key in (INDEX, TARGETS):
        if torch.is_tensor(batch.get(key)):
            torch._dynamo.maybe_mark_dynamic(batch[key], 0)
    return batch


#: inductor's setting that skips its size checks before fusing two reductions of one tensor in different orders (its
#: "mix-order" reductions: an RMSNorm's backward sums the same gradient along rows for the input and along columns for
#: the weight). In strict mode it fuses only above 5 x 2^20 elements and 4,096 rows, and on a number of rows that
#: changes, such as the loss positions' in the last decoder layer, each check is a guard set from the first batch: on
#: an H100 the ~350M model's first batch had 5,312 positions (x hidden 1,024 is over 5 x 2^20: guarded
#: ``1024*s >= 5242880``) and its sixth 4,544, which compiled the step again (41.4 s; benchmarks/RESULTS.md).
NON_STRICT_FUSION = "mix_order_reduction_non_strict_mode"


def unguarded_positions() -> bool:
    """Let inductor fuse the loss positions' reductions without guarding their number (:data:`NON_STRICT_FUSION` on),
    so that its size checks set no bound on it that a later batch could break. Process-wide, read when a graph
    compiles; False where this torch has no such setting (nothing to do)."""
    import torch._inductor.config

    triton = torch._inductor.config.triton
    if not hasattr(triton, NON_STRICT_FUSION):
        return False
    setattr(triton, NON_STRICT_FUSION, True)
    return True


def loss_of(logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy of (positions, vocabulary) logits, as transformers' ``ForCausalLMLoss`` reduces it."""
    logits = logits.float()
    targets = targets.to(logits.device)
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    total = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class Mismatch(DiffModelError):
    """The start-up check found the loss at the loss positions differing from the full forward's (``finding``)."""

    def __init__(self, finding: str):
        super().__init__(f"--loss_logits: {finding}; pass --loss_logits off")
        self.finding = finding


@dataclass
class LossLogitsOutput(ModelOutput):
    loss: torch.Tensor | None = None
    loss_logits: torch.Tensor | None = None
    """(positions of ``loss_index``, vocabulary)"""


@torch.no_grad()
def check(model, batch: dict, autocast_dtype: torch.dtype | None = None, tolerance: float = 1e-4) -> float:
    """The start-up check: on a collated ``batch`` (with its loss positions), the loss of the installed forward
    against the model's own full forward, on the model's device and in training's precision. Returns the
    difference; raises :class:`Mismatch` when it is above ``tolerance`` relative to the loss (50x under
    bf16/fp16) or not finite."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    full_batch = {k: v for k, v in batch.items() if k not in (INDEX, TARGETS)}
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            full = model(**full_batch, use_cache=False).loss.float()
            picked = model(**batch, use_cache=False).loss.float()
    finally:
        model.train(was_training)
    gap = (picked - full).abs().item()
    low = autocast_dtype is not None or next(model.parameters()).dtype in (torch.bfloat16, torch.float16)
    allowed = tolerance * (50 if low else 1) * max(1.0, abs(full.item()))
    if not (gap <= allowed):  # also a NaN gap
        raise Mismatch(f"the loss at the loss positions ({picked.item():.6g}) is not the full forward's "
                       f"({full.item():.6g}) for this {model.config.model_type} model on {device.type}")
    return gap


def supports(model_type: str | None) -> bool:
    return model_type in SUPPORTED


def install(model, last_layer: bool = True) -> None:
    """Give this model instance the forward of the module docstring; DiffModelError for a model type not in
    :data:`SUPPORTED`. The decoder and the output layer are looked up at each call, so adapters added later
    (LoRA on ``lm_head``) take part. ``last_layer=False`` (``--loss_logits output``): the positions are picked after
    the decoder, whose last layer runs whole, for every model type."""
    kind = model.config.model_type
    if not supports(kind):
        raise DiffModelError(f"--loss_logits on: {kind} models are not supported (only {', '.join(SUPPORTED)}); "
                             "pass --loss_logits auto or off")
    full = model.forward
    own = model.__dict__.get("forward")  # an instance's forward set before (liger-kernel's), or None
    decoder = getattr(model, model.base_model_prefix)
    early = last_layer and kind in LAST_LAYER
    if early:
        _pick_in_last_layer(_last_layer(decoder), queries=kind in LAST_QUERIES)

    @functools.wraps(full)  # Trainer reads the model's own signature (the dataset columns it keeps, loss kwargs)
    def forward(*args, loss_index=None, loss_targets=None, labels=None, num_items_in_batch=None, **kwargs):
        if loss_index is None:
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return full(*args, labels=labels, **kwargs)
        if early:  # the decoder hands back the final norm of the loss positions alone
            picked = decoder(*args, **kwargs, **{INDEX: loss_index})[0].reshape(len(loss_index), -1)
            logits = model.get_output_embeddings()(picked)
        else:
            logits = logits_at(model, loss_index, *args, **kwargs)
        return LossLogitsOutput(loss=loss_of(logits, loss_targets, num_items_in_batch), loss_logits=logits)

    forward.replaced = own
    model.forward = forward


def logits_at(model, index: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The logits at the flat (rows x width) positions ``index`` alone, as (positions, vocabulary): the model's decoder
    over the inputs (``args`` / ``kwargs``, as the model's forward takes them), then its output layer at those
    positions. For a model type in :data:`SUPPORTED` they are the model's own logits there."""
    hidden = getattr(model, model.base_model_prefix)(*args, **kwargs)[0]
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index.to(hidden.device))
    return model.get_output_embeddings()(picked)


def _pick_in_last_layer(layer, queries: bool = True) -> None:
    """Give the decoder's last layer a forward that, handed ``loss_index`` (which the decoder passes to every layer
    with its other keyword arguments; attention ignores it), returns the layer's output at those flat positions
    alone, as (1, positions, hidden), running its MLP there only, and with ``queries`` its attention for those
    positions' queries alone where :func:`diffmodel.train.loss_queries.applies`. Without ``loss_index`` it is the layer's own.
    Under gradient checkpointing the layer is recomputed in the backward pass as the others are."""
    own = layer.forward

    def picked(hidden_states, index, **kwargs):
        if queries and loss_queries.applies(layer, hidden_states, kwargs):  # the attention too, for the loss positions' queries
            hidden = loss_queries.attend(layer, hidden_states, index, **kwargs)
        else:
            attended, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **kwargs)
            hidden = (hidden_states + attended).reshape(-1, hidden_states.shape[-1]).index_select(0, index)
        return (hidden + layer.mlp(layer.post_attention_layernorm(hidden))).unsqueeze(0)

    @functools.wraps(own)
    def forward(hidden_states, *args, **kwargs):
        index = kwargs.pop(INDEX, None)
        if index is None or args:
            return own(hidden_states, *args, **kwargs)
        index = index.to(hidden_states.device)
        if _checkpointed_here(layer):
            return layer._gradient_checkpointing_func(functools.partial(picked, **kwargs), hidden_states, index)
        return picked(hidden_states, index, **kwargs)

    forward.replaced = layer.__dict__.get("forward")
    layer.forward = forward


def _checkpointed_here(layer) -> bool:
    """Whether a forward that replaces this layer's must checkpoint itself: gradient checkpointing is on and the layer's
    class checkpoints inside its ``forward`` (as transformers 5.24 does; 5.17 checkpoints in ``__call__``, around
    whatever forward the instance has)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    active = getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled()
    return bool(active) and "__call__" not in vars(GradientCheckpointingLayer)


def uninstall(model) -> None:
    """Give the model (and its last decoder layer) back the forward it had before :func:`install`."""
    last = _last_layer(getattr(model, model.base_model_prefix))
    if hasattr(last.__dict__.get("forward"), "replaced"):
        _restore(last)
    _restore(model)


def plan(model, last_layer: bool = True) -> str:
    """What :func:`install` gave ``model`` to run at the loss positions alone, for the start-up log."""
    kind = model.config.model_type
    picked = "the output layer and the loss"
    if kind not in LAST_LAYER:
        return picked
    if not last_layer:
        return f"{picked} (the last decoder layer whole: --loss_logits output)"
    layer = _last_layer(getattr(model, model.base_model_prefix))
    if kind not in LAST_QUERIES:
        return f"{picked}, and the last decoder layer's MLP too"
    return f"{picked}, and {loss_queries.plan(layer)}"


def _last_layer(decoder):
    return decoder.layers[decoder.config.num_hidden_layers - 1] if hasattr(decoder, "layers") else decoder.h[-1]


def _restore(module) -> None:
    replaced = module.__dict__["forward"].replaced
    if replaced is None:
        del module.forward
    else:
        module.forward = replaced
