"""``diffmodel train``: the reference pipeline, stage by stage, then ``Trainer``.

Order (the reference's): load -> dropout -> tokenize (+ long-sample policy) ->
labels -> layout -> sanity report (+ ``--save_final_dataset``) -> Trainer.
Every stage is a function of another module; this one wires them, logs each
decision the flags imply, and writes what people look at afterwards:
``data_report.json``, ``train_results.json`` / ``eval_results.json`` and
``loss.png`` in ``--output_dir``.

Under torchrun / accelerate / deepspeed the main process preprocesses first and
the other ranks reuse its cached stages.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import datasets
import transformers
from transformers import Trainer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from diffmodel.data.load import LoadOptions, load_raw_datasets
from diffmodel.errors import DiffModelError
from diffmodel.preprocess.pipeline import PreprocessOptions, fingerprint, pad_id_of, preprocess, save_atomically
from diffmodel.preprocess.sanity import format_report, write_report_json
from diffmodel.train.args import parse_args, validate
from diffmodel.train.attention import backend_of, check_isolation, choose_attention, prepare_for_packing
from diffmodel.train.collate import PackedCollator, RowCollator
from diffmodel.train.model import load_config, load_model, load_tokenizer, resolve_block_size

logger = logging.getLogger("diffmodel.train")


def setup_logging(training_args) -> None:
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    logging.getLogger("diffmodel").setLevel(logging.INFO if training_args.should_log else level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def source_fingerprint(raw: datasets.DatasetDict, files: list[str], load_opts: LoadOptions) -> str:
    """Identify the loaded data: its files (path, size, mtime) and the load options."""
    stats = []
    for f in files:
        p = Path(f)
        if p.is_file():
            st = p.stat()
            stats.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
        elif p.is_dir():
            for q in sorted(p.rglob("*")):
                if q.is_file():
                    st = q.stat()
                    stats.append((str(q.resolve()), st.st_size, st.st_mtime_ns))
    splits = {k: (len(v), v.column_names, None if stats else v._fingerprint) for k, v in raw.items()}
    return fingerprint(stats, splits, vars(load_opts))


def preprocess_options(data_args, block_size: int) -> PreprocessOptions:
    if data_args.packing:
        if data_args.concatenate_texts:
            raise DiffModelError("--packing and --concatenate_texts are two different layouts; pass one of them")
        if not data_args.ignore_long_samples:
            logger.warning("--packing: samples of --block_size tokens or more are dropped (packing never splits a sample), as with --ignore_long_samples")
    elif not data_args.ignore_long_samples and not data_args.concatenate_texts and not data_args.skip_concat:
        logger.warning("--ignore_long_samples not given: forcing --concatenate_texts, since left-padding cannot hold samples longer than --block_size")
    return PreprocessOptions(
        block_size=block_size,
        train_diff_model=data_args.train_diff_model,
        ignore_long_samples=data_args.ignore_long_samples,
        concatenate_texts=data_args.concatenate_texts,
        packing=data_args.packing,
        skip_concat=data_args.skip_concat,
        force_label=data_args.force_label,
        num_proc=data_args.preprocessing_num_workers,
        text_column=data_args.text_column or "text",
        overwrite_cache=data_args.overwrite_cache,
    )


def build_datasets(model_args, data_args, training_args, tokenizer, block_size: int):
    """Load and preprocess; returns (processed DatasetDict, reports)."""
    load_opts = LoadOptions(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_files=data_args.train_file,
        validation_files=data_args.validation_file,
        validation_split_percentage=data_args.validation_split_percentage,
        load_from_disk=data_args.load_from_disk,
        text_column=data_args.text_column,
        keep_linebreaks=data_args.keep_linebreaks,
        skip_bad_records=data_args.skip_bad_records,
        cache_dir=model_args.cache_dir,
        seed=training_args.seed,
    )
    with training_args.main_process_first(desc="loading data"):
        raw, load_report = load_raw_datasets(load_opts)
    if load_report.bad_records:
        logger.warning("skipped %d malformed records, e.g. %s", load_report.bad_records, "; ".join(load_report.bad_record_examples[:3]))
    if "train" not in raw:
        raise DiffModelError(f"the data has no 'train' split (splits: {list(raw)}); name the training files with --train_file")
    opts = preprocess_options(data_args, block_size)
    opts.cache_dir = model_args.cache_dir
    opts.text_column = load_report.text_column or opts.text_column
    with training_args.main_process_first(desc="preprocessing"):
        processed, reports = preprocess(raw, tokenizer, opts, source_fingerprint(raw, load_report.files, load_opts))
    return processed, reports


def make_collator(model, tokenizer, packing: bool):
    """The collator that matches the layout; for packing, also prove the attention isolates samples."""
    if not packing:
        return RowCollator(pad_id_of(tokenizer))
    flatten = prepare_for_packing(model)
    if not flatten:
        diff = check_isolation(model)
        logger.info("packing: samples isolated with %s attention (largest logit difference %.2g)", backend_of(model), diff)
    return PackedCollator(pad_id_of(tokenizer), flatten=flatten)


def main(argv: list[str] | None = None) -> int:
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args)
    validate(model_args, data_args, training_args)
    set_seed(training_args.seed)

    tokenizer = load_tokenizer(model_args)
    config = load_config(model_args)
    block_size = resolve_block_size(data_args.block_size, tokenizer, config)
    processed, reports = build_datasets(model_args, data_args, training_args, tokenizer, block_size)

    out_dir = Path(training_args.output_dir)
    if training_args.should_save:
        logger.info("\n%s", format_report(reports))
        write_report_json(reports, out_dir / "data_report.json")
        if data_args.save_final_dataset:
            save_atomically(processed, Path(data_args.final_dataset_dir))
            logger.info("final dataset saved to %s", data_args.final_dataset_dir)

    if not (training_args.do_train or training_args.do_eval):
        return 0

    train_ds = processed["train"]
    if data_args.max_train_samples is not None:
        train_ds = train_ds.select(range(min(len(train_ds), data_args.max_train_samples)))
    eval_ds = processed.get("validation")
    if training_args.do_eval and eval_ds is None:
        raise DiffModelError("--do_eval needs a validation split: give --validation_file or a --validation_split_percentage above 0")
    if eval_ds is not None and data_args.max_eval_samples is not None:
        eval_ds = eval_ds.select(range(min(len(eval_ds), data_args.max_eval_samples)))

    model_args.attn_implementation = choose_attention(model_args.attn_implementation, data_args.packing)
    model = load_model(model_args, config, tokenizer)
    collator = make_collator(model, tokenizer, data_args.packing)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds if training_args.do_train else None,
        eval_dataset=eval_ds if training_args.do_eval else None,
        data_collator=collator,
        processing_class=tokenizer,
    )

    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint
        if checkpoint is None and out_dir.is_dir() and not training_args.overwrite_output_dir:
            checkpoint = get_last_checkpoint(str(out_dir))
            if checkpoint:
                logger.info("resuming from the last checkpoint %s (pass --overwrite_output_dir to start over)", checkpoint)
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        metrics = dict(result.metrics, train_samples=len(train_ds))
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        if training_args.should_save:
            from diffmodel.plot import plot_loss

            png = plot_loss(trainer.state.log_history, out_dir / "loss.png", title=f"diffmodel train: {out_dir.name}")
            logger.info("loss plot written to %s", png)

    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_ds)
        metrics["perplexity"] = math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 50 else float("inf")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
