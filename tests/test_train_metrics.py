"""Token metrics in the Trainer log: exact counts on hand-made logits and batches."""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainingArguments
from transformers.modeling_outputs import CausalLMOutput

from diffmodel.preprocess.labels import IGNORE_INDEX
from diffmodel.train.metrics import DiffTrainer, input_token_count, token_accuracy_counts

X = IGNORE_INDEX
VOCAB = 8


def one_hot_logits(predicted: list[list[int]]) -> torch.Tensor:
    """Logits whose argmax at each position is the given id."""
    return torch.nn.functional.one_hot(torch.tensor(predicted), VOCAB).float()


class TestAccuracyCounts:
    def test_logits_at_i_are_scored_against_the_label_at_i_plus_1(self):
        # predictions at positions 0..3; labels at 1..4 are what they are scored against
        logits = one_hot_logits([[2, 3, 9 % VOCAB, 5, 0]])
        labels = torch.tensor([[X, 2, 3, 4, 5]])
        correct, counted = token_accuracy_counts(logits, labels)
        assert (int(correct), int(counted)) == (3, 4)  # 2, 3 and 5 right; 1 (for 4) wrong

    def test_ignored_labels_are_not_counted(self):
        logits = one_hot_logits([[1, 1, 1, 1], [4, 4, 4, 4]])
        labels = torch.tensor([[X, X, 1, 2], [X, 4, X, X]])
        correct, counted = token_accuracy_counts(logits, labels)
        # row 0: label 1 (right), label 2 (wrong); row 1: label 4 (right)
        assert (int(correct), int(counted)) == (2, 3)

    def test_input_tokens_are_the_mask_ones_else_every_token(self):
        ids = torch.tensor([[5, 6, 7], [1, 2, 3]])
        assert int(input_token_count({"input_ids": ids, "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])})) == 5
        assert int(input_token_count({"input_ids": ids})) == 6


class NextIdModel(nn.Module):
    """A model whose prediction after token t is always t + 1 (mod VOCAB); its loss is a constant."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, labels=None, attention_mask=None, **kwargs):
        logits = one_hot_logits(((input_ids + 1) % VOCAB).tolist()) + 0 * self.weight
        return CausalLMOutput(loss=(self.weight * 0).sum() + 1.0, logits=logits)


def _trainer(tmp_path) -> DiffTrainer:
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    return DiffTrainer(model=NextIdModel(), args=args)


class TestTrainerLog:
    # tokens 1 2 3 5: the model predicts 2 3 4 (6); labels 2 3 5 -> 2 of 3 right
    A = {"input_ids": torch.tensor([[1, 2, 3, 5]]), "labels": torch.tensor([[X, 2, 3, 5]])}
    # tokens (pad) 4 5 6: mask 0 1 1 1; labels 6 only -> 1 of 1 right
    B = {"input_ids": torch.tensor([[0, 4, 5, 6]]), "labels": torch.tensor([[X, X, X, 6]]), "attention_mask": torch.tensor([[0, 1, 1, 1]])}

    def test_a_logging_step_reports_accuracy_since_the_last_log_and_cumulative_counts(self, tmp_path):
        trainer = _trainer(tmp_path)
        trainer.model.train()
        trainer.compute_loss(trainer.model, dict(self.A))
        trainer.compute_loss(trainer.model, dict(self.B))  # a second micro-batch of the same step (accumulation)
        logs = {"loss": 1.0}
        trainer.log(logs, 0.0)
        assert logs["mean_token_accuracy"] == 3 / 4
        assert (logs["num_tokens"], logs["num_loss_tokens"]) == (4 + 3, 3 + 1)

        trainer.compute_loss(trainer.model, dict(self.B))
        logs = {"loss": 1.0}
        trainer.log(logs, 0.0)
        assert logs["mean_token_accuracy"] == 1.0  # only what came since the last log
        assert (logs["num_tokens"], logs["num_loss_tokens"]) == (7 + 3, 4 + 1)  # cumulative
        assert trainer.state.log_history[-1]["num_tokens"] == 10

    def test_speed_since_the_last_log_and_mfu_where_a_peak_is_known(self, tmp_path, monkeypatch):
        import diffmodel.train.metrics as metrics
        from diffmodel.train.throughput import ModelShape

        clock = iter([10.0, 12.0, 14.0])  # the first step starts, the first log, the second log
        monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
        monkeypatch.setenv("DIFFMODEL_PEAK_TFLOPS", "1e-6")  # 1e6 FLOP/s
        trainer = _trainer(tmp_path)
        trainer.__dict__["_flops_shape"] = ModelShape(params=100, layers=2, hidden=4)  # NextIdModel has no config
        trainer.__dict__["_data_wait_since"] = None
        trainer.model.train()
        trainer.compute_loss(trainer.model, dict(self.A))  # 4 tokens in one row (no mask): squares 16
        logs = {"loss": 1.0}
        trainer.log(logs, 0.0)
        assert logs["tokens_per_second"] == 4 / 2.0 and logs["loss_tokens_per_second"] == 3 / 2.0
        assert logs["mfu"] == round((6 * 100 * 4 + 12 * 2 * 4 * 16) / 2.0 / 1e6, 4)
        trainer.compute_loss(trainer.model, dict(self.B))  # 3 real tokens of a left-padded row: squares 9
        logs = {"loss": 1.0}
        trainer.log(logs, 0.0)
        assert logs["tokens_per_second"] == 3 / 2.0  # since the last log only
        assert logs["mfu"] == round((6 * 100 * 3 + 12 * 2 * 4 * 9) / 2.0 / 1e6, 4)

    def test_a_resumed_run_continues_the_counts_of_its_log_history(self, tmp_path):
        trainer = _trainer(tmp_path)
        trainer.state.log_history = [{"loss": 2.0, "num_tokens": 100, "num_loss_tokens": 40, "step": 5}]
        trainer.model.train()
        trainer.compute_loss(trainer.model, dict(self.A))
        logs = {"loss": 1.0}
        trainer.log(logs, 0.0)
        assert (logs["num_tokens"], logs["num_loss_tokens"]) == (104, 43)

    def test_other_logs_and_eval_batches_leave_the_training_counts_alone(self, tmp_path):
        trainer = _trainer(tmp_path)
        trainer.model.eval()
        trainer.compute_loss(trainer.model, dict(self.A))  # counted for eval, not train
        trainer.model.train()
        logs = {"train_runtime": 1.0}
        trainer.log(logs)
        assert "num_tokens" not in logs
        trainer.compute_loss(trainer.model, dict(self.B))
        logs = {"loss": 1.0}
        trainer.log(logs, 0.0)
        assert (logs["num_tokens"], logs["num_loss_tokens"], logs["mean_token_accuracy"]) == (3, 1, 1.0)

    def test_evaluate_returns_eval_mean_token_accuracy(self, tmp_path):
        class Rows(torch.utils.data.Dataset):
            def __len__(self):
                return 2

            def __getitem__(self, i):
                row = TestTrainerLog.A if i == 0 else TestTrainerLog.B
                return {k: v[0] for k, v in row.items() if k != "attention_mask"}

        trainer = _trainer(tmp_path)
        trainer.args.per_device_eval_batch_size = 1
        metrics = trainer.evaluate(Rows())
        # without the mask B counts 4 input tokens; A: 2 of 3 right, B: 1 of 1
        assert metrics["eval_mean_token_accuracy"] == 3 / 4
        assert (metrics["eval_num_tokens"], metrics["eval_num_loss_tokens"]) == (8, 4)
        assert trainer.state.log_history[-1]["eval_mean_token_accuracy"] == 3 / 4


class LossOnly(nn.Module):
    """A tiny GPT-2 whose forward returns its loss and no logits, as liger-kernel's fused cross-entropy does."""

    def __init__(self):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        self.inner = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=8, n_layer=1, n_head=2))

    def forward(self, input_ids, labels=None, **kwargs):
        return CausalLMOutput(loss=self.inner(input_ids=input_ids, labels=labels, **kwargs).loss)


class TestWithoutLogits:
    # a packed row of two samples and a pad segment: 8 input tokens, labels 6 7 1 | 3 1 carry loss
    ROW = {"input_ids": torch.tensor([[5, 6, 7, 1, 2, 3, 1, 0]]), "labels": torch.tensor([[X, 6, 7, 1, X, 3, 1, X]]),
           "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0]])}

    def test_counts_are_taken_from_the_batch_and_no_accuracy_is_logged(self, tmp_path):
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
        trainer = DiffTrainer(model=LossOnly(), args=args)
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, dict(self.ROW))
        assert torch.isfinite(loss) and loss.requires_grad
        trainer.compute_loss(trainer.model, dict(TestTrainerLog.B))  # 3 masked-in tokens, 1 loss token
        logs = {"loss": float(loss)}
        trainer.log(logs, 0.0)
        assert (logs["num_tokens"], logs["num_loss_tokens"]) == (8 + 3, 5 + 1)
        assert "mean_token_accuracy" not in logs


def test_a_resume_does_not_warn_of_the_tied_output_layer_as_missing():
    from torch.nn.modules.module import _IncompatibleKeys
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from diffmodel.train.metrics import TokenMetricsMixin, tied_names

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    llama = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                         vocab_size=50, tie_word_embeddings=False))
    assert tied_names(gpt2) == {"lm_head.weight"} and tied_names(llama) == set()

    class Base:
        def _issue_warnings_after_load(self, load_result):
            self.seen = load_result

    class Loader(TokenMetricsMixin, Base):
        def __init__(self, model):
            self.model = model

    loader = Loader(gpt2)
    loader._issue_warnings_after_load(_IncompatibleKeys(["lm_head.weight", "transformer.h.0.attn.c_attn.bias"], ["extra"]))
    assert loader.seen == _IncompatibleKeys(["transformer.h.0.attn.c_attn.bias"], ["extra"])
    loader = Loader(llama)
    loader._issue_warnings_after_load(_IncompatibleKeys(["lm_head.weight"], []))
    assert loader.seen == _IncompatibleKeys(["lm_head.weight"], [])  # not tied: really missing


def test_the_flops_count_is_trainers_with_the_parameters_counted_once(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = DiffTrainer(model=model, args=args)
    calls = []
    count = model.num_parameters
    model.num_parameters = lambda **kw: calls.append(kw) or count(**kw)
    batches = [{"input_ids": torch.zeros(2, 5, dtype=torch.long)}, {"input_ids": torch.zeros(3, 7, dtype=torch.long)}]
    ours = [trainer.floating_point_ops(b) for b in batches]
    assert calls == [{"exclude_embeddings": True}]  # counted once, for both batches
    assert ours == [Trainer.floating_point_ops(trainer, b) for b in batches]
    assert ours[0] == 6 * 10 * count(exclude_embeddings=True) > 0
    assert trainer.floating_point_ops({"pixel_values": torch.zeros(1)}) == 0  # no input ids: Trainer's answer
