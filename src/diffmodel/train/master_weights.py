"""bf16 weights with an fp32 copy in the optimizer: ``--bf16_weights``.

By default a model trains in fp32 under bf16 autocast: every weight is cast to bf16 at each forward, and the
residual stream between the layers stays fp32 (the embedding's output and every residual add), so each norm and
each add reads and writes fp32 hidden states, forward and backward, and every gradient is fp32. With
``--bf16_weights on`` the model's parameters are bf16 (:func:`cast`; its buffers, such as the rotary embedding's
frequencies, keep their dtype), so those tensors are half the bytes and nothing is cast, while the optimizer
(:func:`optimizer_class`) keeps an fp32 copy of every bf16 parameter and updates that: each step it takes the
bf16 gradients into fp32, runs the model's own optimizer (AdamW, fused or not) on the fp32 copies, and writes
them back rounded to bf16. An update smaller than bf16 can hold accumulates in the copy instead of vanishing,
which is what training bf16 weights directly gets wrong. The copies are saved with the optimizer's state, so a
resumed run continues from them, not from the rounded weights. With torch's AdamW (the default ``--optim``) those
three passes over memory can be one in a compiled run (``--adamw_one_pass``, :mod:`diffmodel.train.master_adamw`,
with no fp32 gradient made).

``--bf16_weights auto`` (:func:`diffmodel.train.fast_path.choose_bf16_weights`) turns it on for a compiled
``--packing --bf16`` run on one GPU with torch's AdamW and no gradient accumulation: on an H100 the ~110M packed
step went from 57 to 53 ms (benchmarks/RESULTS.md).

Memory: bf16 weights and gradients (2 + 2 bytes a parameter) and the fp32 copy (4) against fp32 weights and
gradients (4 + 4): the same, with the gradients' fp32 form alive only during the optimizer's step.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

#: Key of the fp32 copies in the optimizer's state dict.
STATE_KEY = "diffmodel_master_weights"


def cast(model) -> int:
    """Cast ``model``'s floating-point parameters to bf16 in place (buffers keep their dtype); returns how many
    parameters were cast."""
    count = 0
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != torch.bfloat16:
            p.data = p.data.to(torch.bfloat16)
            count += 1
    return count


def half_weights(model) -> str | None:
    """The name of the 16-bit dtype of ``model``'s trainable weights (``bfloat16``, ``float16``), or None."""
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad and p.is_floating_point()}
    half = dtypes & {torch.bfloat16, torch.float16}
    return str(sorted(half, key=str)[0]).removeprefix("torch.") if half else None


def _groups(params) -> list[dict]:
    params = list(params)
    if params and isinstance(params[0], dict):
        return [dict(g, params=list(g["params"])) for g in params]
    return [{"params": params}]


def optim_name(training_args) -> str:
    """``--optim`` as typed (transformers keeps it as an enum)."""
    optim = getattr(training_args, "optim", None)
    return str(getattr(optim, "value", optim))


def optimizer_class(base: type[torch.optim.Optimizer], one_pass: bool = False) -> type[torch.optim.Optimizer]:
    """``base`` (an optimizer class) over fp32 copies of its low-precision parameters.

    The returned class takes what ``base`` takes. Its ``param_groups`` hold the fp32 copies (an fp32 parameter is
    its own copy), so a learning-rate schedule sets them as usual; ``step`` moves the model's gradients onto the
    copies, steps, and writes the copies back into the model's parameters; ``zero_grad`` clears the model's
    gradients; ``state_dict`` / ``load_state_dict`` carry the copies.

    With ``one_pass`` (``--adamw_one_pass``, for compiled runs), where ``base`` is torch's AdamW and every parameter
    is a low-precision one with its copy, ``step`` is :func:`diffmodel.train.master_adamw.update` instead: the three
    passes in one, compiled by torch.compile (one fused kernel per weight on a GPU)."""
    one_pass_asked = one_pass

    class MasterWeights(base):
        one_pass_asked_for = one_pass_asked

        def __init__(self, params, *args, **kwargs):
            groups = _groups(params)
            self.model_params = [p for g in groups for p in g["params"]]
            copies = [dict(g, params=[self._copy(p) for p in g["params"]]) for g in groups]
            super().__init__(copies, *args, **kwargs)
            self._one_pass_counts: list[int] | None = None  # each copy's AdamW step count, read from the state once
            self._scalars: dict = {}  # master_adamw.Scalars, reused across steps
            self._model_ids = {id(p) for p in self.model_params}
            self._grad_factor: torch.Tensor | None = None  # gradient clipping's factor for this step (clip_in_step)
            self._ones: dict = {}  # a 1 of each gradient dtype and device: the factor of an unclipped step

        @staticmethod
        def _copy(p):
            if p.dtype == torch.float32:
                return p
            return torch.nn.Parameter(p.detach().float(), requires_grad=p.requires_grad)

        def copies(self) -> list[torch.Tensor]:
            return [q for g in self.param_groups for q in g["params"]]

        def _pairs(self):
            return [(p, q) for p, q in zip(self.model_params, self.copies()) if p is not q]

        def one_pass(self) -> bool:
            """Whether ``step`` is :func:`master_adamw.update` (see the class's docstring): asked for, torch's AdamW,
            every parameter a low-precision one with its copy, and every one with a gradient this step (torch's
            AdamW leaves a parameter without one as it is, its count included: torch's own step does that)."""
            from diffmodel.train import master_adamw

            return (self.one_pass_asked_for
                    and all(p is not q and p.grad is not None for p, q in zip(self.model_params, self.copies()))
                    and all(master_adamw.takes(self, g) for g in self.param_groups))

        @torch.no_grad()
        def clip_in_step(self, parameters, max_norm: float) -> torch.Tensor | None:
            """Gradient clipping to ``max_norm`` (2-norm) folded into this step's one pass: returns the gradients'
            total norm, computed as ``torch.nn.utils.clip_grad_norm_`` computes it, and keeps its factor,
            ``min(1, max_norm / (norm + 1e-6))`` in the gradients' dtype, for the pass to multiply each gradient by
            as it reads it (the gradients are left unclipped). None, with nothing kept, when this step is not the one
            pass or a gradient of ``parameters`` is one the optimizer does not step: the caller clips then."""
            params = [p for p in parameters if p.grad is not None]
            if not params or not self.one_pass() or any(id(p) not in self._model_ids for p in params):
                return None
            if not hasattr(torch.nn.utils, "get_total_norm"):  # torch before 2.6: its clipping as it is
                return None
            total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0, foreach=True)
            self._grad_factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            return total

        def _factor(self) -> torch.Tensor:
            """This step's gradient factor, of the gradients' dtype and device: clipping's, else 1."""
            grad = self.model_params[0].grad
            if self._grad_factor is not None:
                return self._grad_factor.to(grad.device, grad.dtype)
            key = (grad.device, grad.dtype)
            if key not in self._ones:
                self._ones[key] = torch.ones((), device=grad.device, dtype=grad.dtype)
            return self._ones[key]

        @torch.no_grad()
        def _step_one_pass(self) -> None:
            from diffmodel.train import master_adamw

            copies = self.copies()
            groups = [g for g in self.param_groups for _ in g["params"]]
            for q, group in zip(copies, groups):
                if not self.state.get(q):
                    self.state[q] = master_adamw.new_state(q, on_device=bool(group.get("fused") or group.get("capturable")))
            states = [self.state[q] for q in copies]
            if self._one_pass_counts is None:  # once a run, after a load and after torch's own step: the states' counts
                self._one_pass_counts = [int(s["step"]) for s in states]
                logger.info("bf16 weights: AdamW steps the %d fp32 copies in one compiled pass, from step %d", len(copies),
                            max(self._one_pass_counts) + 1)
            self._one_pass_counts = counts = [c + 1 for c in self._one_pass_counts]
            index = {id(g): i for i, g in enumerate(self.param_groups)}
            keys = [(index[id(g)], c) for g, c in zip(groups, counts)]
            # one Scalars for each group and count, kept from step to step (each group's counts are one, but after a
            # step of torch's own that left a parameter without a gradient as it was)
            slot = {key: n for n, key in enumerate(sorted(set(keys)))}
            for n in slot.values():  # made once: three tensors a weight each step were ~60% of this step's host time
                if n not in self._scalars:
                    self._scalars[n] = master_adamw.Scalars(copies[0].device if master_adamw.SCALARS_ON_DEVICE else None)
            scalars = [self._scalars[slot[key]] for key in keys]
            master_adamw.update(self.model_params, copies, states, groups, scalars, counts, self._factor())

        @torch.no_grad()
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if self.one_pass():
                self._step_one_pass()
                self._grad_factor = None
                return loss
            self._one_pass_counts = None  # torch's step counts on its own
            if self._grad_factor is not None:  # clipping kept for a one pass that this step is not: apply it here
                grads = [p.grad for p in self.model_params if p.grad is not None]
                torch._foreach_mul_(grads, self._grad_factor.to(grads[0].device, grads[0].dtype))
                self._grad_factor = None
            pairs = self._pairs()
            for p, q in pairs:
                q.grad = None if p.grad is None else p.grad.float()
            super().step()
            stepped = [(p, q) for p, q in pairs if q.grad is not None]
            if stepped:
                torch._foreach_copy_([p for p, _ in stepped], [q for _, q in stepped])
            for _, q in pairs:
                q.grad = None
            return loss

        def zero_grad(self, set_to_none: bool = True):
            self._grad_factor = None  # it was for these gradients
            for p in self.model_params:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.zero_()
            super().zero_grad(set_to_none)

        def state_dict(self):
            state = super().state_dict()
            state[STATE_KEY] = [q.detach() for q in self.copies()]
            return state

        @torch.no_grad()
        def load_state_dict(self, state_dict):
            state_dict = dict(state_dict)
            saved = state_dict.pop(STATE_KEY, None)
            super().load_state_dict(state_dict)
            self._one_pass_counts = None
            if saved is None:
                # a checkpoint written without the copies: start them from the model's (rounded) weights
                for p, q in self._pairs():
                    q.copy_(p)
                return
            copies = self.copies()
            if len(saved) != len(copies):
                raise ValueError(f"the checkpoint's optimizer holds {len(saved)} fp32 weight copies, this model has "
                                 f"{len(copies)} parameters: it was saved from another model")
            for p, q, s in zip(self.model_params, copies, saved):
                q.copy_(s)
                if p is not q:
                    p.copy_(s)

    MasterWeights.__name__ = MasterWeights.__qualname__ = f"MasterWeights{base.__name__}"
    return MasterWeights


def trainer_optimizer(training_args, model, one_pass: bool = False) -> tuple[type[torch.optim.Optimizer], dict]:
    """Trainer's ``optimizer_cls_and_kwargs``: the optimizer ``--optim`` names (AdamW, fused by default) over fp32
    copies (:func:`optimizer_class`)."""
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or {"params", "model", "optimizer_dict"} & set(kwargs):
        from diffmodel.errors import DiffModelError

        raise DiffModelError(f"--bf16_weights on keeps fp32 copies inside a torch optimizer, and --optim {optim_name(training_args)} "
                             "is not one; use --optim adamw_torch_fused (the default) or adamw_torch, or drop --bf16_weights")
    return optimizer_class(cls, one_pass=one_pass), kwargs


def fold_clipping(trainer) -> None:
    """Have ``trainer``'s gradient clipping (``--max_grad_norm``) folded into the one-pass AdamW step: its
    accelerator's ``clip_grad_norm_`` asks the optimizer (:meth:`clip_in_step`) first, which computes the norm and
    keeps the factor for the pass, so no pass of its own rewrites every gradient; any other call (no finite
    ``max_norm``, another norm, a step that is not the one pass) clips as before."""
    import math

    accelerator = trainer.accelerator
    clip = accelerator.clip_grad_norm_

    def clip_grad_norm_(parameters, max_norm, norm_type=2, **kwargs):
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps the optimizer
        if norm_type == 2 and math.isfinite(max_norm) and hasattr(optimizer, "clip_in_step") and not kwargs:
            parameters = list(parameters)
            total = optimizer.clip_in_step(parameters, max_norm)
            if total is not None:
                return total
        return clip(parameters, max_norm, norm_type, **kwargs)

    accelerator.clip_grad_norm_ = clip_grad_norm_
