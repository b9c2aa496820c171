"""Training from validated arguments: the reference pipeline, stage by stage, then ``Trainer``.

Order (the reference's): load -> dropout -> tokenize (+ long-sample policy) ->
labels -> layout -> sanity report (+ ``--save_final_dataset``) -> Trainer.
Every stage is a function of another module; this one wires them, logs each
decision the flags imply, and writes what people look at afterwards:
``data_report.json`` (with a warning for a split that drops more than half
of its samples), ``train_results.json`` / ``eval_results.json``,
``loss.png``, ``speed.png`` (and ``generation.png`` with ``--generation_eval_samples``:
:mod:`diffmodel.train.generation_eval`) and, after training, the model card
``README.md`` (:mod:`diffmodel.train.card`) in ``--output_dir``. The Trainer is
:class:`~diffmodel.train.metrics.DiffTrainer` (token metrics in the log).

Under torchrun / accelerate / deepspeed the main process preprocesses first and
the other ranks reuse its cached stages.

This is the library part of ``diffmodel train``: :func:`run` takes the parsed
and validated arguments (the command, :mod:`diffmodel.commands.train`,
parses and validates them) and reads no command line. Parsed arguments are
never changed in place: a value a stage decides (packed rows found in the
data, the attention backend) is a new copy made with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import logging
import math
import os
import sys
from pathlib import Path

import datasets
import torch
import transformers
from transformers import set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from diffmodel.atomic import save_atomically
from diffmodel.errors import DiffModelError
from diffmodel.preprocess.sanity import drop_warning, format_report, write_report_json
from diffmodel.preprocess.tokens import pad_id_of
from diffmodel.progress import bars_off
from diffmodel.train import async_steps, compile_cache, compiled_mask, fast_path, first_step, flex_kernels, loss_logits, master_weights, recompiles, rotary_layout, rotary_table
from diffmodel.train.args import NO_EVAL_SPLIT, lora_args_from, parse_duration, speed_args_from
from diffmodel.train.attention import FLASH, backend_of, check_isolation, needs_boundaries, prepare_for_packing, probe_rows
from diffmodel.train.collate import PackedCollator, RowCollator
from diffmodel.train.data import build_datasets
from diffmodel.train.early_stop import SIGTERM_EXIT, EarlyStopCallback
from diffmodel.train.lora import apply_lora, save_lora
from diffmodel.train.metrics import DiffTrainer
from diffmodel.train.model import head_dim_of, load_config, load_model, load_tokenizer, parameters_of, resolve_block_size
from diffmodel.train.streaming import STATE_FILE, StreamingTrainer, StreamStateCallback, build_streaming, restore_stream_state

logger = logging.getLogger("diffmodel.train")


def setup_logging(training_args) -> None:
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    logging.getLogger("diffmodel").setLevel(logging.INFO if training_args.should_log else level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def last_complete_checkpoint(out_dir: Path, last_file: str = "trainer_state.json") -> str | None:
    """The highest-numbered checkpoint that was written to the end (Trainer writes trainer_state.json last).

    A job killed while saving leaves a newer folder without it; that one is skipped (and the log says so).
    ``last_file``: the file written last (``stream_state.json`` for --streaming, written after Trainer's own).
    """
    found = []
    for d in out_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = d.name.rsplit("-", 1)[-1]
        if d.is_dir() and step.isdigit():
            found.append((int(step), d))
    for _, d in sorted(found, reverse=True):
        if (d / "trainer_state.json").is_file() and (d / last_file).is_file():
            return str(d)
        logger.warning("skipping %s: it has no %s (its save was cut short)", d, last_file)
    return None


def checkpoint_step(checkpoint: str) -> int | None:
    """The optimizer step a checkpoint folder was saved at (its trainer_state.json), or None when unreadable."""
    try:
        return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_launch(training_args) -> None:
    """Refuse a launcher's processes that the Trainer would run each on its own.

    torchrun (or accelerate) sets ``WORLD_SIZE``; on a machine without GPUs and without ``--use_cpu`` the Trainer
    does not join its processes (transformers warns and goes on), so each would preprocess, train its own copy of
    the model on all of the data and write the same ``--output_dir``, one over the other.
    """
    try:
        launched = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return
    if launched > 1 and training_args.world_size == 1:
        hint = (" This machine has no GPU: add --use_cpu, and the processes train together over gloo (one model, "
                "each its share of the rows)." if not torch.cuda.is_available() else "")
        raise DiffModelError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}), but the Trainer would run each alone: "
            f"every one would train its own model on all the data and write to the same --output_dir.{hint} "
            "Or start a single process (python -m diffmodel.cli train ... / diffmodel train ...)."
        )


def make_collator(model, tokenizer, packing: bool, training_args=None, padding_free: bool = False, row_width: int | None = None,
                  loss_positions: bool = False):
    """The collator that matches the layout; for packing, also prove the attention isolates samples.

    The probe runs on the device and in the precision training will use (the
    model is moved to ``training_args.device`` first, as Trainer would, unless
    DeepSpeed or FSDP place it), so the kernels probed are the ones trained with
    (liger's, when applied before). ``padding_free``: flatten each batch into one
    row (always for flash attention); ``row_width``: pad every packed batch to
    this width (one shape for torch.compile); ``loss_positions``: batches carry the positions that bear
    loss (``--loss_logits``).
    """
    if not packing:
        return RowCollator(pad_id_of(tokenizer))
    flatten = prepare_for_packing(model) or padding_free
    collator = PackedCollator(pad_id_of(tokenizer), flatten=flatten, pad_to_multiple_of=row_width or 8,
                              boundaries=needs_boundaries(model) and not flatten, loss_positions=loss_positions)
    autocast = None
    if training_args is not None:
        if not (training_args.deepspeed or training_args.fsdp):
            model.to(training_args.device)
        autocast = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else None
    device = next(model.parameters()).device
    if backend_of(model) in FLASH and device.type == "cpu":
        logger.info("packing: %s runs on a GPU only; the isolation probe is skipped while the model is on the CPU", backend_of(model))
        return collator
    diff = check_isolation(model, collator, autocast_dtype=autocast)
    logger.info("packing: samples isolated with %s attention on %s (largest logit difference %.2g)", backend_of(model), device.type, diff)
    if loss_positions:
        vocab_size = model.get_input_embeddings().weight.shape[0]
        gap = loss_logits.check(model, collator(probe_rows(vocab_size, eos_id=vocab_size - 1)), autocast)
        logger.info("loss logits: the loss at the loss positions is the full forward's on %s (difference %.2g)", device.type, gap)
    return collator


def apply_liger(model) -> None:
    """liger-kernel's kernels on this model instance (fused linear cross-entropy, RMSNorm, SwiGLU, RoPE)."""
    try:
        from transformers.integrations.liger import apply_liger_kernel
    except ImportError:  # transformers releases before the integration module
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)
    else:
        apply_liger_kernel(model, {})
    logger.info("liger-kernel applied to the %s model (training logs no mean_token_accuracy: the fused loss makes no logits)",
                model.config.model_type)


def pick_splits(processed, data_args):
    """The train split (first --max_train_samples rows) and the validation split, if any."""
    train_ds = processed["train"]
    if data_args.max_train_samples is not None:
        train_ds = train_ds.select(range(min(len(train_ds), data_args.max_train_samples)))
    return train_ds, processed.get("validation")


def train(trainer, training_args, data_args, train_ds, lora_args, out_dir: Path, use_cache: bool | None = None,
          stopper: EarlyStopCallback | None = None) -> dict | None:
    """Train (resuming from the last complete checkpoint), save model, metrics, state and the loss plot; returns the metrics.

    ``use_cache``: the model config's setting before packing turned the KV cache off for training; the saved
    model gets it back, so that it generates with a cache wherever it is loaded (the model in memory keeps it
    off, for the final evaluation). Returns None, having saved
    nothing but the checkpoint ``stopper`` asked for, when SIGTERM stopped training (the run is not over).
    """
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and out_dir.is_dir() and not training_args.overwrite_output_dir:
        checkpoint = last_complete_checkpoint(out_dir, STATE_FILE if data_args.streaming else "trainer_state.json")
        if checkpoint:
            logger.info("resuming from the last checkpoint %s (pass --overwrite_output_dir to start over)", checkpoint)
    done = checkpoint_step(checkpoint) if checkpoint else None
    finished = done is not None and 0 < training_args.max_steps <= done
    if finished:
        logger.info("%s already reached --max_steps %d (step %d): no step is trained; the final model, metrics and plots "
                    "are written from it (raise --max_steps to train on, or pass --overwrite_output_dir to start over)",
                    checkpoint, training_args.max_steps, done)
    if data_args.streaming and checkpoint:
        restore_stream_state(trainer, train_ds, checkpoint)
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except DiffModelError as err:
        saved = save_before_failing(trainer, data_args, done or 0)
        if saved is None:
            raise
        raise DiffModelError(f"{err}\nThe steps trained up to step {trainer.state.global_step} are saved in {saved}; the same "
                             "command (with the record fixed, or --skip_bad_records) resumes from there.") from None
    if stopper is not None and stopper.stopped_by == "SIGTERM":
        return None
    if finished:  # no step was trained in this call, so it has no mean train loss (Trainer would report 0)
        result.metrics.pop("train_loss", None)
    config = trainer.accelerator.unwrap_model(trainer.model).config
    training_cache = getattr(config, "use_cache", None)
    if use_cache is not None:
        config.use_cache = use_cache
    try:
        trainer.save_model()
        if lora_args.lora_r > 0:
            save_lora(trainer, out_dir, lora_args)  # every rank; the main one writes out_dir/merged with --lora_merge
    finally:  # the saved model only: the final evaluation runs as training did (a KV cache drops the per-sample mask)
        if use_cache is not None:
            config.use_cache = training_cache
    metrics = dict(result.metrics) if data_args.streaming else dict(result.metrics, train_samples=len(train_ds))
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if training_args.should_save:
        from diffmodel.plot import plot_loss, plot_speed

        png = plot_loss(trainer.state.log_history, out_dir / "loss.png", title=f"diffmodel train: {out_dir.name}")
        logger.info("loss plot written to %s", png)
        png = plot_speed(trainer.state.log_history, out_dir / "speed.png", title=f"diffmodel train: {out_dir.name}")
        logger.info("speed plot written to %s", png)
    return metrics


def save_before_failing(trainer, data_args, resumed_at: int) -> str | None:
    """A checkpoint of the last finished step when a ``--streaming`` run fails on its data (a bad record met
    mid-run), so the steps since the last checkpoint are not lost; the folder, or None where none is written.

    Only in a one-process run: the stream's state is gathered from every rank at a save, and the other ranks of a
    run are not where this one failed. Nothing is written before the first step, or when that step's checkpoint
    exists. The rows recorded as trained are those of finished steps: Trainer fetches every micro-batch of a step
    before training any (``get_batch_samples``), so a step whose data failed trained no row of it."""
    state = trainer.state
    if not data_args.streaming or trainer.args.world_size != 1 or state.global_step <= resumed_at:
        return None
    folder = Path(trainer.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
    if folder.exists():
        return None
    trainer._save_checkpoint(trainer.model, trial=None)
    trainer.control = trainer.callback_handler.on_save(trainer.args, state, trainer.control)  # writes stream_state.json
    return str(folder)


def add_generation_eval(trainer, data_args, training_args, block_size: int, cache_dir: str | None) -> None:
    """``--generation_eval_samples``: the callback that writes and scores diffs at each evaluation."""
    from diffmodel.preprocess.options import options_from
    from diffmodel.train.generation_eval import GenerationEvalCallback, held_out_cases

    load_opts, _ = options_from(data_args, block_size, cache_dir, training_args.seed)
    cases, skipped = held_out_cases(load_opts, data_args.generation_eval_samples)
    if not cases:
        raise DiffModelError(
            "--generation_eval_samples: no held-out sample has name/before/message/diff fields (or a rendered text) "
            f"with a reference diff that applies (skipped: {skipped or 'none'}); give --validation_file with such samples"
        )
    logger.info("generation eval: %d held-out samples at each evaluation%s", len(cases),
                f" (skipped {skipped})" if skipped else "")
    trainer.add_callback(GenerationEvalCallback(trainer, cases, data_args.generation_eval_max_new_tokens,
                                                training_args.per_device_eval_batch_size, load_opts.edit_format))


def evaluate(trainer, eval_ds) -> dict:
    """Eval loss on the trained (diff) tokens and its perplexity, logged and saved."""
    metrics = trainer.evaluate()
    metrics["eval_samples"] = len(eval_ds)
    metrics["perplexity"] = math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 50 else float("inf")
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics


def write_card(trainer, model_args, data_args, lora_args, training_args, reports, block_size, train_metrics, eval_metrics,
               fast: fast_path.FastPath) -> Path:
    """``OUTPUT_DIR/README.md``, the model card (:mod:`diffmodel.train.card`), written atomically."""
    from datetime import datetime, timezone

    from diffmodel import __version__
    from diffmodel.atomic import write_text
    from diffmodel.train.card import card_info, render_card

    info = card_info(model_args, data_args, lora_args, training_args, reports, block_size, train_metrics, eval_metrics,
                     trainer.state.log_history, datetime.now(timezone.utc).strftime("%Y-%m-%d"), __version__, fast.settings(local=False))
    path = write_text(Path(training_args.output_dir) / "README.md", render_card(info))
    logger.info("model card written to %s", path)
    return path


def save_final_dataset(processed, folder: Path) -> bool:
    """``--save_final_dataset``: write ``folder`` unless it exists (it may be this run's input); True if written."""
    if folder.exists():
        logger.warning("%s exists, not rewritten; delete it to rebuild", folder)
        return False
    save_atomically(processed, folder)
    logger.info("final dataset saved to %s", folder)
    return True


def run(model_args, data_args, training_args) -> int:
    """Load, preprocess, report, then train and/or evaluate, as the (validated) arguments say; returns 0
    (or :data:`~diffmodel.train.early_stop.SIGTERM_EXIT` when SIGTERM stopped training). With ``--no_progress``
    no progress bar is drawn (:func:`diffmodel.progress.bars_off`; the Trainer's own are off by ``--disable_tqdm``).
    The compile cache's environment variable (:mod:`diffmodel.train.compile_cache`) is put back as it was.

    Under torchrun the process group is destroyed before returning, its threads
    joined: a rank whose gloo backend is only torn down while the interpreter
    shuts down can abort there ("terminate called without an active exception"),
    which torchrun reports as a failed rank. ``destroy_process_group`` alone does
    not free the backend while the DDP wrapper's ``Reducer`` still holds it, and
    the finished Trainer (which holds that wrapper) sits in a reference cycle
    (e.g. with ``StreamStateCallback``) that only the cyclic collector frees, so
    it is collected first.
    """
    cache_before = os.environ.get(compile_cache.ENV)
    try:
        with bars_off(getattr(training_args, "no_progress", False)):
            return _run(model_args, data_args, training_args)
    finally:  # also when the run fails (an error message, not an abort of the rank at exit)
        if cache_before is None:
            os.environ.pop(compile_cache.ENV, None)
        else:
            os.environ[compile_cache.ENV] = cache_before
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gc.collect()
            torch.distributed.destroy_process_group()


@dataclasses.dataclass
class Prepared:
    """Everything :func:`prepare` built: the Trainer and what the rest of the run needs."""

    trainer: object
    model_args: object
    data_args: object
    train_ds: object
    eval_ds: object
    reports: dict
    block_size: int
    fast_path: object
    use_cache: bool | None = None
    stopper: object = None


def prepare(model_args, data_args, training_args) -> Prepared | None:
    """Load, preprocess, report, choose the fast path, build the model and the Trainer; None when only data was asked for.

    ``diffmodel train`` trains with what this returns; benchmarks time the very same Trainer.
    """
    check_launch(training_args)
    setup_logging(training_args)
    set_seed(training_args.seed)

    tokenizer = load_tokenizer(model_args)
    config = load_config(model_args)
    block_size = resolve_block_size(data_args.block_size, tokenizer, config)
    # one process preprocesses, the others reuse its cache: per node when nodes keep their own files
    def first(desc):
        return training_args.main_process_first(local=training_args.save_on_each_node, desc=desc)

    if data_args.streaming:
        train_ds, eval_ds, reports = build_streaming(data_args, training_args, tokenizer, block_size, model_args.cache_dir, first)
        # ignore_data_skip is set while parsing (train.args.parse_args), since TrainingArguments is not replaced
        logger.info("--streaming: --ignore_data_skip set; a resumed run continues from the stream state saved with the checkpoint, without replaying data")
    else:
        processed, reports = build_datasets(data_args, tokenizer, block_size, model_args.cache_dir, training_args.seed, first)

    out_dir = Path(training_args.output_dir)
    if training_args.should_save:
        logger.info("\n%s", format_report(reports))
        for split, report in reports.items():
            if warning := drop_warning(split, report):
                logger.warning("%s", warning)
        write_report_json(reports, out_dir / "data_report.json")
        if data_args.save_final_dataset:
            save_final_dataset(processed, Path(data_args.final_dataset_dir))

    if not (training_args.do_train or training_args.do_eval):
        return None

    if not data_args.streaming:
        train_ds, eval_ds = pick_splits(processed, data_args)
        # rows reach the collator as numpy arrays, not Python lists (train/collate.py)
        train_ds, eval_ds = (d.with_format("numpy") if d is not None else None for d in (train_ds, eval_ds))
    if training_args.do_eval and eval_ds is None:
        raise DiffModelError(NO_EVAL_SPLIT)
    if eval_ds is not None and data_args.max_eval_samples is not None:
        eval_ds = eval_ds.select(range(min(len(eval_ds), data_args.max_eval_samples)))

    cols = set() if data_args.streaming else set(train_ds.column_names)
    if not data_args.packing and "position_ids" in cols and "attention_mask" not in cols:
        logger.warning("the rows are packed (position_ids without attention_mask): training them as packed rows, as with --packing")
        data_args = dataclasses.replace(data_args, packing=True)
    speed = speed_args_from(training_args)
    facts = fast_path.probe_facts(training_args.use_cpu)
    planned = None  # a run given by epochs: its steps, for whether compiling pays (--max_steps decides otherwise)
    if training_args.do_train and not data_args.streaming and (training_args.max_steps or -1) <= 0:
        planned = fast_path.epoch_steps(len(train_ds), training_args.per_device_train_batch_size,
                                        training_args.gradient_accumulation_steps, training_args.world_size,
                                        training_args.num_train_epochs)
    # the model's size, for whether the one-pass AdamW's compile pays (a GPU's packed runs only: where it can be on)
    parameters = (parameters_of(config, model_args.trust_remote_code)
                  if facts.cuda and data_args.packing and getattr(speed, "adamw_one_pass", "auto") == "auto" else None)
    path = fast_path.choose(speed, model_args.attn_implementation, data_args.packing, training_args,
                            facts, config.model_type, fast_path.backends_of(config), data_args.streaming,
                            head_dim_of(config), planned, parameters, model_args.cache_dir)
    if not path.compile.value and getattr(training_args, "compiled_by_auto", False):  # the run proved too short
        training_args.torch_compile = False
        training_args.torch_compile_backend = None  # which would compile again in TrainingArguments.__post_init__
    training_args.dataloader_num_workers = path.data_workers.value
    if not facts.cuda:  # pinned memory is for copies to a GPU (torch warns at every loader otherwise)
        training_args.dataloader_pin_memory = False
    if path.data_workers.value:
        training_args.dataloader_persistent_workers = True  # no new processes at each epoch
    nan_filter_on_device = async_steps.apply(training_args) if path.async_steps.value else False
    if path.compile.value and not training_args.torch_compile:  # compiling is decided while parsing: the rows were found packed later
        path = dataclasses.replace(path, compile=fast_path.Choice(False, "the rows were found packed after the flags were read; pass --packing to compile"))
    if not path.compile.value:
        path = dataclasses.replace(path, compile_cache=fast_path.Choice(None, "not compiled"))
    for line in path.lines():
        logger.info("fast path: %s", line)
    # before anything compiles; run() puts the environment back
    compile_cache.apply(path.compile_cache.value, asked_for=getattr(speed, "compile_cache", "auto") not in ("auto", "off"))
    model_args = dataclasses.replace(model_args, attn_implementation=path.attention.value)
    model = load_model(model_args, config, tokenizer)
    lora_args = lora_args_from(training_args)
    if path.bf16_weights.value:
        logger.info("fast path: bf16 weights: %d parameters cast to bf16, their fp32 copies kept by the optimizer",
                    master_weights.cast(model))
    elif training_args.do_train and lora_args.lora_r <= 0 and (half := master_weights.half_weights(model)):
        logger.warning("the model's weights are %s (--torch_dtype or the checkpoint's own) and train as they are: updates "
                       "under half of their spacing are rounded away; --bf16_weights on keeps fp32 copies of bf16 weights "
                       "in the optimizer", half)
    if flex_kernels.install(model, path.flex_kernels.value) == 0 and path.flex_kernels.value:
        logger.warning("fast path: no attention module of this %s model was found to give flex_attention's tiles to; "
                       "torch's own tiles are used", config.model_type)
    compiled_mask.TRACED = bool(path.trace_block_mask.value)  # this run's choice, whatever an earlier run in the process made
    if compiled_mask.TRACED and not compiled_mask.install():
        logger.warning("fast path: this transformers has no create_block_mask in its masking module; the block mask is "
                       "built as transformers builds it")
    use_cache = getattr(model.config, "use_cache", None)  # packing turns it off for training; the saved model gets it back
    if path.liger.value:
        apply_liger(model)
    if path.rotary_layout.value and not rotary_layout.install(model):
        logger.warning("fast path: rotary embedding tokens-first: this %s model has no standard apply_rotary_pos_emb; "
                       "left as it is", config.model_type)
        path = dataclasses.replace(path, rotary_layout=fast_path.Choice(False, "the model has no standard apply_rotary_pos_emb"))
    if path.rotary_table.value and not rotary_table.install(model):
        # a warning where --rotary_table on asked for it; under auto (every compiled run) a note
        log = logger.warning if getattr(speed, "rotary_table", "auto") == "on" else logger.info
        log("fast path: rotary tables kept: this %s model has no rotary embedding module; left as it is", config.model_type)
        path = dataclasses.replace(path, rotary_table=fast_path.Choice(False, "the model has no rotary embedding module"))
    if path.loss_logits.value:
        last_layer = path.loss_logits.value != fast_path.OUTPUT_ONLY
        loss_logits.install(model, last_layer=last_layer)
        logger.info("fast path: at the loss positions only: %s", loss_logits.plan(model, last_layer=last_layer))
        if path.compile.value and loss_logits.unguarded_positions():
            logger.info("fast path: inductor fuses the loss positions' reductions without guarding their number "
                        "(triton.%s): its size checks set no bound on that number from the first batch's",
                        loss_logits.NON_STRICT_FUSION)
    collator_of = functools.partial(make_collator, model, tokenizer, data_args.packing, training_args, padding_free=path.padding_free.value,
                                    row_width=block_size if path.compile.value or path.attention.value == "flex_attention" else None)
    try:
        collator = collator_of(loss_positions=bool(path.loss_logits.value))
    except loss_logits.Mismatch as e:
        if speed.loss_logits != "auto":
            raise
        logger.warning("fast path: logits at the loss positions only: %s; --loss_logits auto trains with the output layer "
                       "at every position instead", e.finding)
        loss_logits.uninstall(model)
        path = dataclasses.replace(path, loss_logits=fast_path.Choice(False, "the start-up check found its loss differing from the full forward's"))
        collator = collator_of(loss_positions=False)
    model = apply_lora(model, lora_args)
    trainer = (StreamingTrainer if data_args.streaming else DiffTrainer)(
        model=model,
        args=training_args,
        train_dataset=train_ds if training_args.do_train else None,
        eval_dataset=eval_ds if training_args.do_eval else None,
        data_collator=collator,
        processing_class=tokenizer,
        optimizer_cls_and_kwargs=(master_weights.trainer_optimizer(training_args, model, one_pass=bool(path.adamw_one_pass.value))
                                  if path.bf16_weights.value else None),
    )
    trainer.nan_filter_on_device = nan_filter_on_device
    if path.adamw_one_pass.value:
        master_weights.fold_clipping(trainer)
    if data_args.streaming:
        trainer.add_callback(StreamStateCallback(trainer, train_ds))
    budget = parse_duration(speed.max_train_time)
    if budget is not None:
        logger.info("--max_train_time: training stops with a checkpoint after %.0f s", budget)
    stopper = EarlyStopCallback(budget)  # also saves a checkpoint and stops on SIGTERM
    trainer.add_callback(stopper)
    if training_args.torch_compile and training_args.do_train:
        logger.info(first_step.BEFORE)
        trainer.add_callback(first_step.FirstStepCallback())
        trainer.add_callback(recompiles.RecompileCallback())
    if data_args.generation_eval_samples:
        add_generation_eval(trainer, data_args, training_args, block_size, model_args.cache_dir)
    return Prepared(trainer, model_args, data_args, train_ds, eval_ds, reports, block_size, path, use_cache, stopper)


def _run(model_args, data_args, training_args) -> int:
    prepared = prepare(model_args, data_args, training_args)
    if prepared is None:
        return 0
    trainer, model_args, data_args = prepared.trainer, prepared.model_args, prepared.data_args
    train_ds, eval_ds, reports, block_size = prepared.train_ds, prepared.eval_ds, prepared.reports, prepared.block_size
    out_dir = Path(training_args.output_dir)
    lora_args = lora_args_from(training_args)
    train_metrics = eval_metrics = None
    if training_args.do_train:
        train_metrics = train(trainer, training_args, data_args, train_ds, lora_args, out_dir, prepared.use_cache, prepared.stopper)
        if train_metrics is None:
            again = ("the same command without --overwrite_output_dir resumes from it (with it, training starts over)"
                     if training_args.overwrite_output_dir else "the same command resumes from it")
            logger.warning("stopped by SIGTERM: checkpoint-%d saved in %s (exit status %d); %s",
                           prepared.stopper.stopped_at, out_dir, SIGTERM_EXIT, again)
            return SIGTERM_EXIT
    if training_args.do_eval:
        eval_metrics = evaluate(trainer, eval_ds)
    if data_args.generation_eval_samples and training_args.should_save:
        from diffmodel.plot import plot_generation

        png = plot_generation(trainer.state.log_history, out_dir / "generation.png", title=f"diffmodel train: {out_dir.name}")
        logger.info("generation eval plot written to %s", png)
    if training_args.do_train and training_args.should_save:
        write_card(trainer, model_args, data_args, lora_args, training_args, reports, block_size, train_metrics, eval_metrics,
                   prepared.fast_path)
    if training_args.should_save and (written := outputs_written(out_dir)):
        logger.info("written to %s: %s", out_dir, "; ".join(written))
    return 0


#: What a run leaves in its --output_dir for people to read, with what each is.
OUTPUTS = (("README.md", "model card"), ("config.json", "the model: diffmodel edit --model loads it"),
           ("adapter_config.json", "LoRA adapters"), ("merged", "the merged model"), ("loss.png", "loss plot"),
           ("speed.png", "speed plot"), ("generation.png", "generation eval plot"), ("data_report.json", "data report"),
           ("train_results.json", "train metrics"), ("eval_results.json", "eval metrics"))


def outputs_written(out_dir: Path) -> list[str]:
    """``name (what)`` for each of :data:`OUTPUTS` present in ``out_dir``."""
    return [f"{name} ({what})" for name, what in OUTPUTS if (out_dir / name).exists()]
