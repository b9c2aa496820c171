"""AdamW over bf16 weights and their fp32 copies in one compiled pass (part of ``--bf16_weights``).

:class:`diffmodel.train.master_weights` steps in three passes over memory: each bf16 gradient made an fp32
tensor, torch's AdamW on the fp32 copies, and the copies written back rounded into the bf16 weights. Per weight
that reads and writes 6 + 28 + 6 bytes (and allocates an fp32 gradient for the step). :func:`update` does the
three at once, compiled by torch.compile (one fused kernel per weight on a GPU): it reads the bf16 gradient, the
fp32 copy and the two moments, and writes the copy, the moments and the bf16 weight, 28 bytes. Gradient clipping
folds in too (:func:`diffmodel.train.master_weights.fold_clipping`): its norm is computed as torch computes it, and
its factor, instead of a pass of its own that rewrites every gradient, is applied as the pass reads them. In a profile of
the ~110M packed step on an H100 (benchmarks/RESULTS.md) the optimizer's kernels took 2.4 ms of the step, gradient
clipping included: torch's fused AdamW 1.16 ms, the fp32 gradients 0.66 ms; ~1B has ten times the weights. In
``diffmodel train`` on an H100 the one pass made the ~1B step 410 to 405 ms and the ~110M one ~0.3 ms shorter; alone
(``benchmarks/adamw_one_pass.py``) the ~110M optimizer step took longer on the clock (3.3-5.6 ms against 2.8-3.5),
the host launching one kernel a weight, which the training step hides behind the GPU's work.

The math is AdamW's as torch computes it (decoupled weight decay, bias-corrected moments; equal to torch's
within fp32 rounding: test), and the state is torch AdamW's (``step``, ``exp_avg``, ``exp_avg_sq`` for each
copy, in the optimizer's ``state``), so a checkpoint of either path loads into the other. The learning rate
and the bias corrections change every step; they reach the compiled code as 0-d tensors (on the CPU unless
:data:`SCALARS_ON_DEVICE`), so a learning-rate schedule does not compile it again. :func:`takes` says when a param group is one this update computes
(AdamW's options without amsgrad, maximize or differentiable); other groups keep torch's own step. It is used in
compiled runs only: uncompiled, its few operations a weight would each be a kernel launch of their own, and
torch's fused AdamW is faster.
"""

from __future__ import annotations

import math

import torch


def takes(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    """Whether :func:`update` computes what ``optimizer`` (a torch AdamW) would for ``group``."""
    if not isinstance(optimizer, torch.optim.AdamW):
        return False
    if group.get("amsgrad") or group.get("maximize") or group.get("differentiable"):
        return False
    if not group.get("decoupled_weight_decay", True):
        return False
    lr = group["lr"]
    return not (isinstance(lr, torch.Tensor) and lr.device.type != "cpu")


def new_state(copy: torch.Tensor, on_device: bool) -> dict:
    """torch AdamW's state for one weight: ``step`` (a float32 count, on the weight's device where AdamW is fused or
    capturable, as torch keeps it) and the two moments."""
    return {"step": torch.zeros((), dtype=torch.float32, device=copy.device if on_device else "cpu"),
            "exp_avg": torch.zeros_like(copy, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(copy, memory_format=torch.preserve_format)}


@torch.no_grad()
def _update(weights, grads, copies, exp_avgs, exp_avg_sqs, decays, step_sizes, bias2_sqrts, grad_factor,
            beta1: float, beta2: float, eps: float) -> None:
    for w, g16, p, m, v, decay, step_size, bias2_sqrt in zip(weights, grads, copies, exp_avgs, exp_avg_sqs, decays,
                                                             step_sizes, bias2_sqrts):
        g = (g16 * grad_factor).float()  # the clipped gradient in its own dtype, as torch's clipping leaves it
        p.mul_(decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.sub_(step_size * (m / (v.sqrt() / bias2_sqrt + eps)))
        w.copy_(p)


#: inductor settings added to :func:`_options` for the pass (``benchmarks/train_default.py``'s arm
#: ``pack_one_pass_combo`` sets ``{"combo_kernels": True}``: the weights' kernels launched as a few, not one a weight);
#: read when the pass first compiles in a process.
EXTRA_OPTIONS: dict = {}


def _options() -> dict:
    """inductor's settings for the pass: the clipped gradient rounded to its dtype as eager torch rounds it (inductor
    otherwise keeps the product in fp32), where this torch has the setting; then :data:`EXTRA_OPTIONS`."""
    import torch._inductor.config

    kept = {"emulate_precision_casts": True} if hasattr(torch._inductor.config, "emulate_precision_casts") else {}
    return {**kept, **EXTRA_OPTIONS}


_COMPILED: list = []


def _compiled(*args, **kwargs) -> None:
    """:func:`_update` compiled (once a process, with the settings of its first call)."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(_update, fullgraph=True, dynamic=False, options=_options()))
    _COMPILED[0](*args, **kwargs)


#: Whether :class:`Scalars` live on the weights' device rather than the CPU (``benchmarks/train_default.py``'s arm
#: ``pack_one_pass_device_scalars``). On the CPU, the compiled code reads each one as a number at every kernel launch
#: (``.item()``: three a weight, 333 a step at ~110M, in the host's time of a step that the host bounds there); on the
#: device each kernel reads them from memory and a step refills them with a few small kernels. Off: on an H100 the
#: ~110M step was 53 ms either way (126,727 against 126,766 loss-bearing tok/s over 160 steps; benchmarks/RESULTS.md).
SCALARS_ON_DEVICE = False


class Scalars:
    """Per param group, the step's learning-rate terms as 0-d tensors the compiled update reads (filled in place
    each step, so the compiled code sees the same inputs): on the CPU, or on ``device`` where given."""

    def __init__(self, device: torch.device | str | None = None):
        self.decay, self.step_size, self.bias2_sqrt = (torch.zeros((), dtype=torch.float32, device=device or "cpu")
                                                       for _ in range(3))

    def fill(self, group: dict, step: int) -> None:
        lr = float(group["lr"])
        beta1, beta2 = group["betas"]
        self.decay.fill_(1 - lr * group["weight_decay"])
        self.step_size.fill_(lr / (1 - beta1 ** step))
        self.bias2_sqrt.fill_(math.sqrt(1 - beta2 ** step))


def update(weights: list, copies: list, states: list, groups: list, scalars: list, steps: list[int],
           grad_factor: torch.Tensor) -> None:
    """One AdamW step of the bf16 ``weights`` (their ``.grad`` bf16) and their fp32 ``copies``: the copies and
    ``states`` (torch AdamW's, each ``step`` advanced) updated, the weights set to the copies rounded. Weight ``i``
    is in param group ``groups[i]`` and takes its step number ``steps[i]`` (1 for its first); ``scalars[i]`` is the
    :class:`Scalars` of that group and number, refilled here. Groups of the same betas and eps go through one call.
    ``grad_factor``: a 0-d tensor of the gradients' dtype and device each gradient is multiplied by first (gradient
    clipping's factor, 1 when there is none), so clipping adds no pass of its own over the gradients."""
    for s, g, step in {id(s): (s, g, step) for s, g, step in zip(scalars, groups, steps)}.values():
        s.fill(g, step)
    by_hyper: dict[tuple, list[int]] = {}
    for i, g in enumerate(groups):
        by_hyper.setdefault((*g["betas"], g["eps"]), []).append(i)
    for (beta1, beta2, eps), index in by_hyper.items():
        _compiled([weights[i] for i in index], [weights[i].grad for i in index], [copies[i] for i in index],
            [states[i]["exp_avg"] for i in index], [states[i]["exp_avg_sq"] for i in index],
            [scalars[i].decay for i in index], [scalars[i].step_size for i in index],
            [scalars[i].bias2_sqrt for i in index], grad_factor, beta1, beta2, eps)
    counts = [s["step"] for s in states]
    for device_counts in ([t for t in counts if t.device.type != "cpu"], [t for t in counts if t.device.type == "cpu"]):
        if device_counts:
            torch._foreach_add_(device_counts, 1)
