"""The model card: ``OUTPUT_DIR/README.md``, written at the end of ``diffmodel train``.

Two steps, so the text can be tested exactly:

- :func:`card_info`: the arguments, the data report, the metrics and the log
  history of a run -> one plain dict (no I/O, no clock: the caller passes
  the date and the version);
- :func:`render_card`: that dict -> Markdown. Pure; the same dict always
  gives the same text.

What a card holds: how to use the model (``diffmodel edit`` and Python; for a LoRA run, the merged model in
``OUTPUT_DIR/merged``, or how to merge an adapter saved without it),
the results (final and mean train loss, eval loss, perplexity and mean
token accuracy, when present), the training settings (base model, layout,
block size, learning rate, batch, steps or epochs, precision, and the fast
path's choices with their reasons), every diff-model / data / model / LoRA /
speed flag whose value is not its default, and the data report as a table.

Invariants:
- A value the run did not produce (no eval, no logged loss) is left out,
  never shown as 0 or ``nan``.
- Written by the main process only, atomically (:func:`diffmodel.atomic.write_text`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import MISSING, fields

from diffmodel import formats

#: data report columns: (key in the report, column title), in the default format's markers (:func:`report_columns`: another's)
REPORT_COLUMNS = (
    ("samples_loaded", "samples"), ("bad_records", "bad records"), ("dropped_too_long", "too long"),
    ("dropped_no_diff", f"no `{formats.loss_marker()}`"), ("dropped_empty_diff", "empty diff"), ("samples_kept", "kept"),
    ("rows", "rows"), ("tokens", "tokens"), ("loss_share", "loss share"), ("fill_ratio", "fill"),
)


def report_columns(edit_format: str | None = None) -> tuple[tuple[str, str], ...]:
    """:data:`REPORT_COLUMNS` with the target marker of ``edit_format`` (None: the default) in the drop column's title."""
    title = f"no `{formats.loss_marker(edit_format)}`"
    return tuple((key, title if key == "dropped_no_diff" else head) for key, head in REPORT_COLUMNS)


#: result rows: (key in the info's results, title)
RESULT_ROWS = (
    ("final_train_loss", "final train loss (last logged step)"), ("train_loss", "mean train loss (the steps the last command trained)"),
    ("eval_loss", "eval loss (diff tokens)"), ("perplexity", "eval perplexity"),
    ("eval_mean_token_accuracy", "eval mean token accuracy"),
    ("median_tokens_per_second", "tokens/s (median of the logs after the first)"),
    ("median_loss_tokens_per_second", "loss-bearing tokens/s (median of the logs after the first)"),
    ("median_mfu", "MFU (median of the logs after the first)"),
    ("eval_gen_applies", "held-out diffs that apply (last generation eval)"),
    ("eval_gen_exact", "held-out diffs exactly right (last generation eval)"),
    ("eval_gen_line_similarity", "line similarity to the true file (last generation eval, mean)"),
)


def speed_results(log_history: list[dict]) -> dict:
    """Medians of the logged speed, leaving out the first log (it holds start-up and compiling)."""
    logs = [h for h in log_history if "tokens_per_second" in h][1:]
    out = {}
    if logs:
        out["median_tokens_per_second"] = round(statistics.median(h["tokens_per_second"] for h in logs))
        out["median_loss_tokens_per_second"] = round(statistics.median(h["loss_tokens_per_second"] for h in logs))
    mfu = [h["mfu"] for h in logs if "mfu" in h]
    if mfu:
        out["median_mfu"] = statistics.median(mfu)
    return out


def _default(f):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


#: The Trainer's flags that decide what is learnt: the card lists those off their default (of the others, most are
#: about logging and saving, and some are set by diffmodel's fast path, whose choices the card lists with their reasons).
TRAINER_FLAGS = ("num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "weight_decay",
                 "max_grad_norm", "optim", "optim_args", "adam_beta1", "adam_beta2", "adam_epsilon", "label_smoothing_factor",
                 "gradient_checkpointing", "bf16", "fp16", "seed", "data_seed")


def changed_flags(*arg_objects, only: tuple[str, ...] | None = None) -> dict[str, object]:
    """``--name: value`` for every dataclass field (of ``only``, when given) whose value is not its default, in field
    order; enumerations by their value."""
    out = {}
    for obj in arg_objects:
        for f in fields(obj):
            if only is not None and f.name not in only:
                continue
            value = getattr(obj, f.name)
            value = getattr(value, "value", value)  # transformers' str enumerations (lr_scheduler_type, optim)
            default = _default(f)
            if value != default and not (default is None and value is False):  # False: a "not set" the Trainer resolved to off
                out[f"--{f.name}"] = value
    return out


def _precision(training_args) -> str:
    return "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"


def card_info(model_args, data_args, lora_args, training_args, reports: dict, block_size: int,
              train_metrics: dict | None, eval_metrics: dict | None, log_history: list[dict],
              date: str, version: str, fast_path: dict[str, str] | None = None) -> dict:
    """Everything the card shows, as plain values (``reports``: split -> :class:`~diffmodel.preprocess.sanity.SplitReport`).

    ``fast_path``: :meth:`diffmodel.train.fast_path.FastPath.settings`, shown among the training settings.
    """
    from diffmodel.preprocess.sanity import drop_warning
    from diffmodel.train.args import speed_args_from

    world = training_args.world_size
    accumulation = training_args.gradient_accumulation_steps
    per_device = training_args.per_device_train_batch_size
    if training_args.max_steps > 0:
        steps = f"{training_args.max_steps} (--max_steps)"
    else:
        steps = f"{training_args.num_train_epochs:g} epoch(s)"
    results = {}
    losses = [h["loss"] for h in log_history if "loss" in h]
    if losses:
        results["final_train_loss"] = losses[-1]
    for source in (train_metrics or {}, eval_metrics or {}):
        for key, _ in RESULT_ROWS:
            if key in source:
                results[key] = source[key]
    results.update(speed_results(log_history))
    generated = [h for h in log_history if "eval_gen_exact" in h]  # --generation_eval_samples
    if generated:
        results.update({k: v for k, v in generated[-1].items() if k.startswith("eval_gen_")})
    data = {}
    for split, report in reports.items():
        row = {key: getattr(report, key) for key, _ in REPORT_COLUMNS}
        data[split] = {**row, "warning": drop_warning(split, report)}
    first = next(iter(reports.values()), None)
    lora = {}
    if getattr(lora_args, "lora_r", 0) > 0:  # the folder holds an adapter, not a model diffmodel edit loads
        lora = {"lora": {"merged": bool(getattr(lora_args, "lora_merge", False))}}
    return {
        "output_dir": training_args.output_dir,
        **lora,
        "edit_format": getattr(data_args, "edit_format", formats.DEFAULT),
        "loss_on": getattr(data_args, "loss_on", "diff"),
        "date": date,
        "version": version,
        "training": {
            "base model": model_args.model_name_or_path or model_args.config_name or model_args.model_type or "(from scratch)",
            "layout": first.layout if first is not None else "",
            "block size": block_size,
            "learning rate": training_args.learning_rate,
            "batch": f"{per_device} per device x {accumulation} accumulation x {world} process(es) = {per_device * accumulation * world} rows per step",
            "steps": steps,
            "precision": _precision(training_args),
            "seed": training_args.seed,
            **(fast_path or {}),
        },
        "flags": {**changed_flags(model_args, data_args, lora_args, speed_args_from(training_args)),
                  **changed_flags(training_args, only=TRAINER_FLAGS)},
        "results": results,
        "data": data,
    }


def _fmt(value) -> str:
    """A measured value: floats to 4 decimals, counts with thousands separators."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e5 or value == 0 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _flag(value) -> str:
    """A setting as it would be typed on the command line (lists space-separated)."""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _use(model: str) -> list[str]:
    """The commands that load the model folder ``model`` and write a diff with it."""
    return [
        "```bash",
        f'diffmodel edit --model {model} path/to/file.py -m "Describe the change"            # print the diff',
        f'diffmodel edit --model {model} path/to/file.py -m "Describe the change" --apply    # and write the file',
        "```",
        "",
        "```python",
        "from diffmodel.infer import DiffModel",
        f'edit = DiffModel.from_pretrained("{model}").edit(code, "Describe the change", "path/to/file.py")',
        "```",
        "",
    ]


def _use_adapter(out: str) -> list[str]:
    """How to use a LoRA adapter saved without a merged model (``diffmodel edit`` loads whole models only)."""
    return [
        f"`{out}` holds a LoRA adapter, not a whole model: `diffmodel edit --model` and `diffmodel eval --model` "
        "load whole models, so fold the adapter into the base model first (or train with `--lora_merge`, "
        f"which writes the merged model to `{out}/merged`):",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        "from transformers import AutoTokenizer",
        "from diffmodel.infer import DiffModel",
        f'model = AutoPeftModelForCausalLM.from_pretrained("{out}").merge_and_unload()',
        f'model.save_pretrained("{out}/merged"); AutoTokenizer.from_pretrained("{out}").save_pretrained("{out}/merged")',
        f'edit = DiffModel.from_pretrained("{out}/merged").edit(code, "Describe the change", "path/to/file.py")',
        "```",
        "",
    ]


def render_card(info: dict) -> str:
    """The Markdown of a model card from :func:`card_info`'s dict."""
    out = info["output_dir"]
    edit_format, loss_on = info.get("edit_format"), info.get("loss_on", "diff")  # a dict without them: carper, diff
    trained = "the commit message and the tokens it writes" if loss_on == "message+diff" else "the tokens it writes"
    marker = formats.loss_marker(edit_format, loss_on)
    lines = [
        f"# Diff model: {out}",
        "",
        f"Trained with diffmodel {info['version']} on {info['date']}. It reads a file, its name and a commit message "
        f"and writes {formats.get(edit_format).WRITES}; only {trained} (from `{marker}` on) carried loss.",
        "",
        "## Use",
        "",
    ]
    lora = info.get("lora")
    if lora is None:
        lines += _use(out)
    elif lora.get("merged"):
        lines += [f"The merged model (the LoRA adapters folded into the weights) is in `{out}/merged`; `{out}` holds the "
                  f'adapter alone (`PeftModel.from_pretrained(base_model, "{out}")`).', ""]
        lines += _use(f"{out}/merged")
    else:
        lines += _use_adapter(out)
    results = info.get("results", {})
    if results:
        lines += ["## Results", ""]
        lines += _table(["metric", "value"], [[title, _fmt(results[key])] for key, title in RESULT_ROWS if key in results])
        lines.append("")
    lines += ["## Training", ""]
    lines += _table(["setting", "value"], [[k, _flag(v)] for k, v in info["training"].items()])
    lines.append("")
    if info.get("flags"):
        lines += ["## Flags that differ from the defaults", ""]
        lines += _table(["flag", "value"], [[f"`{k}`", _flag(v)] for k, v in info["flags"].items()])
        lines.append("")
    if info.get("data"):
        lines += ["## Data", ""]
        columns = report_columns(edit_format)
        lines += _table(["split", *(title for _, title in columns)],
                        [[split, *(_fmt(row[key]) for key, _ in columns)] for split, row in info["data"].items()])
        warnings = [row["warning"] for row in info["data"].values() if row.get("warning")]
        lines += [""] + [f"Warning: {w}" for w in warnings] + ([""] if warnings else [])
    return "\n".join(lines).rstrip("\n") + "\n"
