"""bf16 weights with fp32 copies in the optimizer (diffmodel.train.master_weights): the updates of fp32 weights, kept
across a save and a load, and the cast that leaves buffers alone."""

from __future__ import annotations

import pytest
import torch
import transformers

from diffmodel.train import master_adamw, master_weights

AdamW = master_weights.optimizer_class(torch.optim.AdamW)
OnePass = master_weights.optimizer_class(torch.optim.AdamW, one_pass=True)  # --adamw_one_pass on


def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, head_dim=8, use_cache=False)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def test_cast_makes_the_parameters_bf16_and_keeps_the_rotary_frequencies_fp32():
    model = tiny_llama()
    n = sum(1 for _ in model.parameters())
    assert master_weights.cast(model) == n
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert master_weights.cast(model) == 0  # nothing left to cast


def grads(step: int, shapes) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return [torch.randn(s, generator=g) for s in shapes]


def test_the_updates_are_fp32_adamws_on_the_copies_and_the_weights_their_rounding():
    torch.manual_seed(0)
    start = [torch.randn(4, 3), torch.randn(5)]
    reference = [torch.nn.Parameter(t.bfloat16().float()) for t in start]  # fp32 weights from the same bf16 start
    weights = [torch.nn.Parameter(t.bfloat16()) for t in start]
    ref_opt = torch.optim.AdamW(reference, lr=1e-2, weight_decay=0.1)
    opt = AdamW(weights, lr=1e-2, weight_decay=0.1)
    for step in range(5):
        for p, q, g in zip(weights, reference, grads(step, [t.shape for t in start])):
            p.grad = g.bfloat16()
            q.grad = g.bfloat16().float()  # the same gradient, as the bf16 model gives it
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        ref_opt.zero_grad()
    for p, c, q in zip(weights, opt.copies(), reference):
        assert c.dtype == torch.float32 and torch.equal(c, q)
        assert p.dtype == torch.bfloat16 and torch.equal(p, q.bfloat16())
        assert p.grad is None and c.grad is None


def test_updates_too_small_for_bf16_add_up_in_the_copy():
    plain = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    kept = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    plain_opt = torch.optim.AdamW([plain], lr=1e-3, weight_decay=0.0)  # bf16 weights trained as they are
    kept_opt = AdamW([kept], lr=1e-3, weight_decay=0.0)
    for _ in range(20):
        for p in (plain, kept):
            p.grad = torch.ones(8, dtype=torch.bfloat16)
        plain_opt.step()
        kept_opt.step()
    # each step moves a weight by ~1e-3, under half of bf16's spacing at 1.0 (2**-7): rounded away every time
    assert torch.equal(plain.detach(), torch.ones(8, dtype=torch.bfloat16))
    copy = kept_opt.copies()[0]
    assert torch.allclose(copy, torch.full((8,), 1 - 20e-3), atol=1e-4)
    assert torch.equal(kept.detach(), copy.bfloat16())
    assert (kept.detach() < 1).all()


def test_the_learning_rate_schedule_sets_the_copies_groups():
    weights = [torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))]
    opt = AdamW(weights, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["params"][0].dtype == torch.float32
    weights[0].grad = torch.ones(3, dtype=torch.bfloat16)
    opt.step()
    sched.step()
    assert torch.allclose(weights[0].float(), torch.full((3,), -0.5), atol=1e-2)  # AdamW's first step: lr * sign


def test_param_groups_keep_their_own_settings_and_fp32_parameters_are_their_own_copies():
    bf, fp = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16)), torch.nn.Parameter(torch.ones(2))
    opt = AdamW([{"params": [bf], "weight_decay": 0.5}, {"params": [fp], "weight_decay": 0.0}], lr=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    assert opt.param_groups[1]["params"][0] is fp and opt.param_groups[0]["params"][0] is not bf
    bf.grad, fp.grad = torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2)
    opt.step()
    assert torch.allclose(bf.float(), torch.full((2,), 1 - 0.1 * 0.5), atol=1e-2)  # decay alone moves it
    assert torch.equal(fp.detach(), torch.ones(2))


def train_steps(model, opt, steps, start=0):
    for step in range(start, start + steps):
        ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(step))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


def test_a_saved_and_loaded_optimizer_continues_from_the_copies_not_the_rounded_weights(tmp_path):
    model = tiny_llama()
    master_weights.cast(model)
    opt = AdamW(model.parameters(), lr=3e-3)
    train_steps(model, opt, 3)
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    train_steps(model, opt, 3, start=3)  # the run without a break

    resumed = tiny_llama()
    master_weights.cast(resumed)
    resumed.load_state_dict(torch.load(tmp_path / "model.pt"))
    resumed_opt = AdamW(resumed.parameters(), lr=3e-3)
    state = torch.load(tmp_path / "optimizer.pt", weights_only=True)
    assert master_weights.STATE_KEY in state
    # the copies differ from the saved bf16 weights: what was kept beyond bf16's precision
    assert any(not torch.equal(c, p.float()) for c, p in zip(state[master_weights.STATE_KEY], resumed.parameters()))
    resumed_opt.load_state_dict(state)
    assert master_weights.STATE_KEY in state  # the caller's dict is left as it was
    train_steps(resumed, resumed_opt, 3, start=3)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(opt.copies(), resumed_opt.copies()):
        assert torch.equal(a, b)


def test_a_checkpoint_of_another_model_is_refused_by_name():
    small = AdamW([torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))], lr=0.1)
    big = AdamW([torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16)),
                 torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))], lr=0.1)
    state = big.state_dict()
    state["param_groups"][0]["params"] = [0]  # torch's own check passes, the copies' count does not
    state["state"] = {}
    with pytest.raises(ValueError, match="2 fp32 weight copies, this model has 1 parameters"):
        small.load_state_dict(state)


def test_a_checkpoint_without_copies_starts_them_from_the_weights():
    p = torch.nn.Parameter(torch.full((2,), 2.0, dtype=torch.bfloat16))
    opt = AdamW([p], lr=0.1)
    state = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=0.1).state_dict()
    with torch.no_grad():
        p.fill_(3.0)
    opt.load_state_dict(state)
    assert torch.equal(opt.copies()[0], torch.full((2,), 3.0))


def test_the_trainer_optimizer_is_the_flags_optimizer_over_copies(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), optim="adamw_torch", report_to=[])
    cls, kwargs = master_weights.trainer_optimizer(args, tiny_llama())
    assert issubclass(cls, torch.optim.AdamW) and cls.__name__ == "MasterWeightsAdamW"
    assert kwargs["lr"] == args.learning_rate


def test_any_torch_optimizer_of_optim_works_over_the_copies(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), optim="adafactor", report_to=[])
    model = tiny_llama()
    master_weights.cast(model)
    cls, kwargs = master_weights.trainer_optimizer(args, model)
    opt = cls(model.parameters(), **kwargs)
    train_steps(model, opt, 2)
    assert all(torch.equal(p, c.bfloat16()) for p, c in zip(model.parameters(), opt.copies()))


def test_an_optimizer_that_takes_the_model_itself_is_refused_with_the_fix(tmp_path, monkeypatch):
    from diffmodel.errors import DiffModelError

    args = transformers.TrainingArguments(output_dir=str(tmp_path), optim="lomo", report_to=[])
    model = tiny_llama()
    # what Trainer gives for --optim lomo (the lomo-optim package is not needed to see the refusal)
    monkeypatch.setattr(transformers.Trainer, "get_optimizer_cls_and_kwargs",
                        staticmethod(lambda a, m: (torch.optim.SGD, {"model": m, "lr": 0.1})))
    with pytest.raises(DiffModelError, match="--optim lomo is not one; use --optim adamw_torch_fused"):
        master_weights.trainer_optimizer(args, model)


def test_half_weights_names_a_16_bit_dtype_of_the_trainable_weights():
    model = tiny_llama()
    assert master_weights.half_weights(model) is None
    model.half()
    assert master_weights.half_weights(model) == "float16"
    for p in model.parameters():
        p.requires_grad_(False)
    assert master_weights.half_weights(model) is None  # frozen weights are not trained


def two_group_start():
    torch.manual_seed(1)
    return [torch.randn(6, 5), torch.randn(7), torch.randn(3, 4)]


def run_two_groups(make, start, steps=4):
    """``steps`` AdamW steps of three weights in two groups (decayed and not) under a changing learning rate."""
    weights = [torch.nn.Parameter(t.bfloat16().float() if make is torch.optim.AdamW else t.bfloat16()) for t in start]
    opt = make([{"params": [weights[0], weights[2]], "weight_decay": 0.1}, {"params": [weights[1]], "weight_decay": 0.0}],
               lr=2e-2, betas=(0.9, 0.95), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    for step in range(steps):
        for p, g in zip(weights, grads(10 + step, [t.shape for t in start])):
            p.grad = g.bfloat16().to(p.dtype)
        opt.step()
        sched.step()
        opt.zero_grad()
    return weights, opt


def in_weights_order(opt):
    """The copies in the order of ``run_two_groups``' weights (its groups hold weights 0 and 2, then 1)."""
    copies = opt.copies()
    return [copies[0], copies[2], copies[1]]


def test_adamw_steps_in_one_pass_with_torchs_math_and_state():
    start = two_group_start()
    reference, ref_opt = run_two_groups(torch.optim.AdamW, start)
    weights, opt = run_two_groups(OnePass, start)
    assert opt._one_pass_counts == [4, 4, 4]  # every step was the one pass
    for p, c, q in zip(weights, in_weights_order(opt), reference):
        assert torch.allclose(c, q, rtol=1e-6, atol=1e-7), (c - q).abs().max()
        assert torch.equal(p, c.bfloat16())
    ours, theirs = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert set(ours[key]) == set(theirs[key]) == {"step", "exp_avg", "exp_avg_sq"}
        assert ours[key]["step"].device.type == "cpu" and float(ours[key]["step"]) == float(theirs[key]["step"]) == 4
        torch.testing.assert_close(ours[key]["exp_avg"], theirs[key]["exp_avg"], rtol=1e-5, atol=1e-8)  # lerp, rounded its own way
        torch.testing.assert_close(ours[key]["exp_avg_sq"], theirs[key]["exp_avg_sq"], rtol=1e-5, atol=1e-10)


def test_the_compiled_pass_is_torchs_adamw_and_compiles_once_for_a_changing_learning_rate():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    start = two_group_start()
    reference, _ = run_two_groups(torch.optim.AdamW, start, steps=5)
    weights, opt = run_two_groups(OnePass, start, steps=5)
    assert counters["stats"]["unique_graphs"] == 1  # both groups in one call; five learning rates, one compile
    for p, c, q in zip(weights, in_weights_order(opt), reference):
        assert torch.allclose(c, q, rtol=1e-6, atol=1e-7), (c - q).abs().max()
        assert torch.equal(p, c.bfloat16())
    assert all(c.grad is None for c in opt.copies())  # no fp32 gradient is made


def test_the_pass_is_given_the_same_learning_rate_tensors_every_step(monkeypatch):
    """The step's learning-rate terms are made once per group and refilled in place (new tensors each step would be
    host time a weight, and other inputs to the compiled pass)."""
    made, given = [], []
    init = master_adamw.Scalars.__init__
    monkeypatch.setattr(master_adamw.Scalars, "__init__", lambda self, device=None: made.append(self) or init(self, device))
    update = master_adamw.update
    monkeypatch.setattr(master_adamw, "update", lambda *a: given.append([id(s) for s in a[4]]) or update(*a))
    run_two_groups(OnePass, two_group_start(), steps=3)
    assert len(made) == 2  # one for each group, in the first step
    assert len(given) == 3 and given[0] == given[1] == given[2]
    assert given[0][0] == given[0][1] != given[0][2]  # weights 0 and 2 share group 0's, weight 1 has group 1's


def test_the_learning_rate_tensors_go_to_the_copies_device_when_asked_and_train_the_same(monkeypatch):
    made = []
    init = master_adamw.Scalars.__init__
    monkeypatch.setattr(master_adamw.Scalars, "__init__", lambda self, device=None: made.append(device) or init(self, device))
    on_cpu, _ = run_two_groups(OnePass, two_group_start(), steps=3)
    assert made == [None, None]
    monkeypatch.setattr(master_adamw, "SCALARS_ON_DEVICE", True)
    on_device, _ = run_two_groups(OnePass, two_group_start(), steps=3)
    assert [str(d) for d in made[2:]] == ["cpu", "cpu"]  # the copies' device, here the CPU
    for a, b in zip(on_cpu, on_device):
        assert torch.equal(a, b)


def test_one_pass_is_for_adamw_asked_for_with_every_weight_copied_and_given_a_gradient():
    bf, fp = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16)), torch.nn.Parameter(torch.ones(2))
    bf.grad, fp.grad = torch.ones(2, dtype=torch.bfloat16), torch.ones(2)
    assert OnePass([bf], lr=0.1).one_pass()
    assert not AdamW([bf], lr=0.1).one_pass()  # not asked for: torch's fused AdamW
    assert not OnePass([bf, fp], lr=0.1).one_pass()  # an fp32 weight is its own copy: torch's step
    assert not OnePass([bf], lr=0.1, amsgrad=True).one_pass()
    assert not master_weights.optimizer_class(torch.optim.Adam, one_pass=True)([bf], lr=0.1).one_pass()
    bf.grad = None
    assert not OnePass([bf], lr=0.1).one_pass()


def test_a_step_that_leaves_a_weight_without_gradient_keeps_each_weights_own_count():
    """torch's AdamW steps a parameter only when it has a gradient, its count too; the one pass then counts each
    weight's steps as torch does (here weight 1 has none at the second step, which is torch's own step)."""
    start = two_group_start()
    runs = []
    for make in (torch.optim.AdamW, OnePass):
        weights = [torch.nn.Parameter(t.bfloat16() if make is OnePass else t.bfloat16().float()) for t in start]
        opt = make([{"params": weights, "weight_decay": 0.1}], lr=2e-2)
        for step in range(5):
            for i, (p, g) in enumerate(zip(weights, grads(20 + step, [t.shape for t in start]))):
                p.grad = None if (step == 1 and i == 1) else g.bfloat16().to(p.dtype)
            if make is OnePass:
                assert opt.one_pass() is (step != 1)
            opt.step()
            opt.zero_grad()
        runs.append((weights, opt))
    (reference, ref_opt), (weights, opt) = runs
    assert [float(opt.state[q]["step"]) for q in opt.copies()] == [5.0, 4.0, 5.0]
    for c, q in zip(opt.copies(), reference):
        assert torch.allclose(c, q, rtol=1e-6, atol=1e-7), (c - q).abs().max()


def run_clipped(make, start, max_norm, steps=4):
    """``steps`` AdamW steps of bf16 weights with their gradients clipped to ``max_norm``: torch's
    ``clip_grad_norm_`` for :data:`AdamW` (three passes), ``clip_in_step`` for :data:`OnePass`."""
    weights = [torch.nn.Parameter(t.bfloat16()) for t in start]
    opt = make([{"params": weights, "weight_decay": 0.1}], lr=2e-2, betas=(0.9, 0.95), eps=1e-8)
    norms = []
    for step in range(steps):
        for p, g in zip(weights, grads(30 + step, [t.shape for t in start])):
            p.grad = (g * (1 + 3 * step)).bfloat16()  # norms from ~5 to ~50
        if make is OnePass:
            norms.append(opt.clip_in_step(weights, max_norm))
            assert all(torch.equal(p.grad, (g * (1 + 3 * step)).bfloat16())  # the gradients are left as they were
                       for p, g in zip(weights, grads(30 + step, [t.shape for t in start])))
        else:
            norms.append(torch.nn.utils.clip_grad_norm_(weights, max_norm))
        opt.step()
        opt.zero_grad()
    return weights, opt, norms


@pytest.mark.parametrize("max_norm", [1.0, 1e4], ids=["clipping", "not_clipping"])
def test_clipping_folded_into_the_one_pass_is_torchs_clipping(max_norm):
    """The one pass multiplies each bf16 gradient by clipping's factor as it reads it: the copies are those of
    torch's clip_grad_norm_ (which rewrites the gradients in bf16) followed by AdamW, and the norms are its."""
    start = two_group_start()
    reference, ref_opt, ref_norms = run_clipped(AdamW, start, max_norm)
    weights, opt, norms = run_clipped(OnePass, start, max_norm)
    assert opt._one_pass_counts == [4, 4, 4]
    assert [float(n) for n in norms] == [float(n) for n in ref_norms]
    assert (float(ref_norms[0]) > max_norm) is (max_norm == 1.0)
    for c, q in zip(opt.copies(), ref_opt.copies()):
        assert torch.allclose(c, q, rtol=1e-6, atol=1e-7), (c - q).abs().max()
    unclipped, _, _ = run_clipped(OnePass, start, 1e4)
    assert (max_norm == 1.0) is not all(torch.equal(a, b) for a, b in zip(weights, unclipped))


def test_clipping_is_left_to_torch_when_the_step_is_not_the_one_pass():
    """A gradient the optimizer does not step, or a step that is not the one pass: clip_in_step keeps nothing and
    says so; a factor kept for a step that then is not the one pass is applied by torch's step instead."""
    bf = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    other = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    bf.grad, other.grad = torch.full((2,), 4.0, dtype=torch.bfloat16), torch.ones(2, dtype=torch.bfloat16)
    opt = OnePass([bf], lr=0.1)
    assert opt.clip_in_step([bf, other], 1.0) is None and opt._grad_factor is None  # `other` is not the optimizer's
    assert not AdamW([bf], lr=0.1).clip_in_step([bf], 1.0)  # not asked for
    assert float(opt.clip_in_step([bf], 1.0)) == pytest.approx(32 ** 0.5, rel=1e-2)  # a bf16 norm, as torch gives
    # clipping kept, then a gradient dropped before the step: torch's step, the gradient clipped first
    other_opt = OnePass([bf, other], lr=0.1)
    bf.grad = torch.full((2,), 4.0, dtype=torch.bfloat16)
    other.grad = torch.full((2,), 4.0, dtype=torch.bfloat16)
    other_opt.clip_in_step([bf, other], 1.0)
    bf.grad = None
    other_opt.step()
    assert torch.allclose(other.grad.float(), torch.full((2,), 0.5), rtol=1e-2)  # clipped: norm 8 -> 1
    assert other_opt._grad_factor is None


def test_fold_clipping_routes_the_trainers_clipping_through_the_optimizer():
    from types import SimpleNamespace

    calls = []
    accelerator = SimpleNamespace(clip_grad_norm_=lambda params, max_norm, norm_type=2: calls.append(max_norm) or "torch's")
    bf = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    bf.grad = torch.full((2,), 3.0, dtype=torch.bfloat16)
    opt = OnePass([bf], lr=0.1)
    trainer = SimpleNamespace(accelerator=accelerator, optimizer=SimpleNamespace(optimizer=opt))  # accelerate's wrapper
    master_weights.fold_clipping(trainer)
    assert float(accelerator.clip_grad_norm_(iter([bf]), 1.0)) == pytest.approx(18 ** 0.5, rel=1e-2) and calls == []
    assert opt._grad_factor is not None
    assert accelerator.clip_grad_norm_([bf], float("inf")) == "torch's" and calls == [float("inf")]  # the norm alone
    trainer.optimizer = SimpleNamespace(optimizer=AdamW([bf], lr=0.1))
    assert accelerator.clip_grad_norm_([bf], 1.0) == "torch's" and calls[-1] == 1.0
