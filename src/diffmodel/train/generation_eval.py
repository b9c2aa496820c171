"""Generation eval during training (``--generation_eval_samples N``): edit quality at each evaluation.

Loss says little about whether the diffs a model writes apply. With
``--generation_eval_samples N`` every evaluation also has the model write a
diff (diff-aware decoding, greedy; in the ``--edit_format`` trained, which
is decoded unconstrained unless it is ``carper``) for each of the first ``N`` held-out
samples, scores them as ``diffmodel eval edits`` does
(:func:`diffmodel.evaluate.edits.evaluate_edits`), and logs::

    eval_gen_parses  eval_gen_applies_strict  eval_gen_applies  eval_gen_exact
    eval_gen_line_similarity  eval_gen_forced_share  eval_gen_seconds

through ``Trainer.log``: the Trainer's log, ``trainer_state.json``,
tensorboard and the other reporting callbacks; ``generation.png`` beside
``loss.png`` plots them (:func:`diffmodel.plot.plot_generation`).

Invariants:
- The held-out samples are the raw records of the validation split the loss
  is measured on (the same files and the same seeded cut), before any layout.
- Only the main process generates (the others wait at their next
  collective); the model's training mode and the tokenizer's padding side are
  restored afterwards.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

from diffmodel.evaluate.edits import EditCase, evaluate_edits, make_cases

logger = logging.getLogger("diffmodel.train")

#: the metrics logged, as ``eval_gen_<name>``
LOGGED = ("parses", "applies_strict", "applies", "exact", "line_similarity", "forced_share")


def held_out_cases(load_opts, n: int) -> tuple[list[EditCase], dict[str, int]]:
    """The first ``n`` usable samples of the validation split that ``load_opts`` loads."""
    from diffmodel.data.load import load_raw_datasets

    raw, report = load_raw_datasets(load_opts)
    if "validation" not in raw:
        return [], {}
    ds = raw["validation"]
    cases, skipped = make_cases((ds[i] for i in range(min(len(ds), 4 * n))), report.text_column or "text",
                                load_opts.edit_format)
    return cases[:n], skipped


class GenerationEvalCallback(TrainerCallback):
    """At each evaluation, write diffs for ``cases`` and log their scores (see the module docstring)."""

    def __init__(self, trainer, cases: list[EditCase], max_new_tokens: int = 256, batch_size: int = 8,
                 edit_format: str | None = None):
        self.trainer = trainer
        self.edit_format = edit_format
        self.cases = cases
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self._editor = None
        self._scored_step: int | None = None

    def scores(self, model, tokenizer) -> dict[str, float]:
        from diffmodel.infer import DiffModel

        side, training = tokenizer.padding_side, model.training
        try:
            if self._editor is None or self._editor.model is not model:
                self._editor = DiffModel(model, tokenizer)
            start = time.perf_counter()
            summary, _ = evaluate_edits(self._editor, self.cases, max_new_tokens=self.max_new_tokens,
                                        batch_size=self.batch_size, temperature=0.0, edit_format=self.edit_format)
            seconds = time.perf_counter() - start
        finally:
            tokenizer.padding_side = side
            model.train(training)
        out = {f"eval_gen_{m}": round(float(summary["metrics"][m]), 4) for m in LOGGED}
        out["eval_gen_seconds"] = round(seconds, 3)
        return out

    def on_evaluate(self, args, state, control, **kwargs):
        if not self.cases or not state.is_world_process_zero:
            return
        if state.global_step == self._scored_step:  # the final evaluation right after the last step's: same weights
            return
        self._scored_step = state.global_step
        model = kwargs.get("model") or self.trainer.model
        tokenizer = kwargs.get("processing_class") or self.trainer.processing_class
        logs = self.scores(model, tokenizer)
        logger.info("generation eval on %d held-out samples: %s", len(self.cases),
                    ", ".join(f"{k[len('eval_gen_'):]} {v}" for k, v in logs.items()))
        self.trainer.log(logs)


__all__ = ["LOGGED", "GenerationEvalCallback", "held_out_cases"]
