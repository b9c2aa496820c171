"""``diffmodel train --streaming``: the Trainer side of a streamed data set.

Pieces, each small:

- The flags streaming needs or cannot honour are checked with every other
  flag, before anything loads: :func:`diffmodel.train.args.streaming_problems`.
- :func:`build_streaming`: the :class:`~diffmodel.preprocess.stream.StreamingDataset`
  of this rank, a sanity report over the first buffer, and the validation
  split (``--validation_file``, loaded and preprocessed whole, as without
  streaming). Weighted ``--train_file`` sources become the dataset's
  ``sources`` (drawn by weight per reader: :mod:`diffmodel.data.mix`).
- :class:`StreamingTrainer`: a ``Trainer`` (with the token metrics of
  :mod:`diffmodel.train.metrics`) whose training dataloader does not
  shard the stream again (each rank's dataset already reads only its own
  part; accelerate would otherwise have every rank read everything and keep
  a slice), and which records, per trained batch, where each reader's stream
  stands (:class:`StreamProgress`). Rows are recorded when they are trained,
  not when a worker prefetches them, so a checkpoint never counts a row the
  model has not seen.
- :class:`StreamStateCallback`: at each save, gathers every rank's progress
  and writes ``stream_state.json`` into the checkpoint folder (one entry per
  rank), and logs the counts (samples read, dropped too long, dropped without
  the ``--edit_format``'s target marker (``<DFF>``, ``<commit_after>``), dropped
  with an empty diff, bad records, rows trained); again at the end of training.
- :func:`restore_stream_state`: on resume, starts this rank's readers where
  the checkpoint's stream stopped.

Trainer's own data skipping replays the batches of the resumed epoch, which
for a stream means reading and tokenizing them again; it is turned off
(``ignore_data_skip=True``, logged) because the stream state already skips
exactly the rows trained.

Debugging: with ``DIFFMODEL_STREAM_LOG=FOLDER`` each rank appends one JSON
line per trained batch to ``FOLDER/stream-rank{R}.jsonl``: the global step,
the epoch and the origin (``file:line``) of every sample in the batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from diffmodel import formats
from diffmodel.atomic import write_json
from diffmodel.data.mix import is_weighted, parse_sources
from diffmodel.data.records import COMPLETION_START, PROMPT_COMPLETION, row_format
from diffmodel.data.stream_sources import stream_files
from diffmodel.errors import DiffModelError, raise_if_problems
from diffmodel.preprocess.pipeline import loss_on_of
from diffmodel.preprocess.sanity import SplitReport, check_rows, mark_spans
from diffmodel.preprocess.stream import COUNT_FIELDS, STREAM_KEY, StreamingDataset, first_buffer
from diffmodel.train.async_steps import DeviceLossFilter
from diffmodel.train.full_batches import FullBatchesMixin
from diffmodel.train.metrics import TokenMetricsMixin

logger = logging.getLogger("diffmodel.train")

STATE_FILE = "stream_state.json"
STATE_VERSION = 1
LOG_ENV = "DIFFMODEL_STREAM_LOG"


# --------------------------------------------------------------------------- data


def build_streaming(data_args, training_args, tokenizer, block_size: int, cache_dir: str | None, main_process_first=None):
    """This rank's training stream, reports over its first buffer, and the validation split (or None)."""
    from diffmodel.preprocess.options import options_from
    from diffmodel.train.data import build_datasets

    sources, problems = parse_sources(data_args.train_file)
    raise_if_problems(problems, "cannot read the --train_file weights")
    weighted = [(s.pattern, stream_files([s.pattern]), s.weight) for s in sources] if is_weighted(sources) else None
    files = [f for _, source_files, _ in weighted for f in source_files] if weighted else stream_files(data_args.train_file)
    load_opts, opts = options_from(data_args, block_size)
    dataset = StreamingDataset(
        files, tokenizer, opts, sources=weighted,
        buffer_size=data_args.stream_buffer, seed=training_args.seed, shuffle=data_args.stream_shuffle,
        rank=training_args.process_index, world_size=training_args.world_size,
        text_column=load_opts.text_column, skip_bad_records=load_opts.skip_bad_records,
    )
    logger.info(
        "streaming %d file(s) as rank %d of %d (record i goes to reader i mod ranks x dataloader workers); "
        "buffers of %d samples laid out as %s, %s",
        len(files), dataset.rank, dataset.world_size, dataset.buffer_size, opts.layout,
        f"shuffled with seed {dataset.seed}" if dataset.shuffle else "in file order",
    )
    if weighted:
        logger.info("streaming a weighted mix, sources drawn by weight with seed %d: %s", dataset.seed, ", ".join(f"{p} ({len(f)} file(s), weight {float(w):g})" for p, f, w in weighted))
    if data_args.validation_split_percentage and not data_args.validation_file:
        logger.info("--streaming: --validation_split_percentage is ignored (no validation split is cut from a stream; give --validation_file)")
    reports = {"train (first buffer)": first_buffer_report(dataset)} if training_args.should_save else {}

    eval_ds = None
    if data_args.validation_file:
        val_args = dataclasses.replace(
            data_args, train_file=data_args.validation_file, validation_file=None, validation_split_percentage=0, streaming=False
        )
        processed, val_reports = build_datasets(val_args, tokenizer, block_size, cache_dir, training_args.seed, main_process_first)
        eval_ds = processed["train"]
        if data_args.max_eval_samples is not None:
            eval_ds = eval_ds.select(range(min(len(eval_ds), data_args.max_eval_samples)))
        reports["validation"] = val_reports["train"]
    return dataset, eval_ds, reports


def first_buffer_report(dataset: StreamingDataset, examples: int = 2) -> SplitReport:
    """The sanity check and counts over the first buffer of the data (reading as one reader, unshuffled)."""
    rows, counts, read = first_buffer(dataset)
    report = SplitReport(
        row_format=read["row_format"], sources=read.get("sources", []),
        loss_on=loss_on_of([COMPLETION_START] if read["row_format"] == row_format(PROMPT_COMPLETION) else [], dataset.opts),
        samples_loaded=counts["samples_read"], bad_records=counts["bad_records"],
        dropped_too_long=counts["dropped_too_long"], dropped_no_diff=counts["dropped_no_diff"],
        dropped_empty_diff=counts["dropped_empty_diff"],
        samples_kept=counts["samples_kept"], layout=f"{dataset.opts.layout} (stream)", edit_format=dataset.opts.edit_format,
    )
    if rows:
        cols = [c for c in ("input_ids", "labels", "attention_mask", "position_ids") if c in rows[0]]
        batch = {c: [r[c] for r in rows] for c in cols}
        fixed = dataset.opts.block_size if "attention_mask" in cols else None
        report.rows, report.row_slots, report.tokens, report.loss_tokens = check_rows([batch], fixed, "train", dataset.opts.block_size)
        report.row_slots = report.rows * dataset.opts.block_size
        report.examples = [mark_spans(rows[i], dataset.tokenizer) for i in range(min(examples, len(rows)))]
    return report


# --------------------------------------------------------------------------- progress and the trainer


class StreamProgress:
    """Per reader, the state after the last trained row of that reader (plus the rows trained)."""

    def __init__(self):
        self.stride: int | None = None
        self.readers: dict[int, dict] = {}
        self.rows_trained = 0

    def record(self, metas: list[dict]) -> None:
        for meta in metas:
            self.stride = meta["stride"]
            self.readers[meta["reader"]] = {"resume": meta["resume"], "counts": meta["counts"], "epoch": meta["epoch"]}
            self.rows_trained += 1

    def state_dict(self) -> dict:
        return {
            "stride": self.stride,
            "rows_trained": self.rows_trained,
            "readers": {str(r): v["resume"] for r, v in sorted(self.readers.items())},
            "counts": self.counts(),
            "epoch": max((v["epoch"] for v in self.readers.values()), default=0),
        }

    def counts(self) -> dict[str, int]:
        """Counts through the buffers reached by the trained rows, summed over this rank's readers."""
        total = dict.fromkeys(COUNT_FIELDS, 0)
        for v in self.readers.values():
            for k in COUNT_FIELDS:
                total[k] += int(v["counts"].get(k, 0))
        return total

    @classmethod
    def from_state(cls, state: dict) -> "StreamProgress":
        p = cls()
        p.stride = state.get("stride")
        p.rows_trained = int(state.get("rows_trained", 0))
        for r, resume in state.get("readers", {}).items():
            counts = resume.get("counts", {})
            p.readers[int(r)] = {"resume": resume, "counts": counts, "epoch": int(resume.get("epoch", 0))}
        return p


class StreamCollator:
    """Wraps a collator: moves each row's stream metadata out of the columns into ``batch["stream"]``."""

    def __init__(self, base):
        self.base = base

    def __call__(self, rows: list[dict]) -> dict:
        metas = [r.get(STREAM_KEY) for r in rows]
        batch = self.base([{k: v for k, v in r.items() if k != STREAM_KEY} for r in rows])
        if all(m is not None for m in metas):
            batch[STREAM_KEY] = metas
        return batch


class StreamingTrainer(DeviceLossFilter, FullBatchesMixin, TokenMetricsMixin, Trainer):
    """``Trainer`` for a :class:`StreamingDataset`: no second sharding, progress recorded per trained batch.

    The token metrics of :mod:`diffmodel.train.metrics` come from the same mixin as without streaming.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stream_progress = StreamProgress()
        self._stream_log = None
        folder = os.environ.get(LOG_ENV)
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self._stream_log = Path(folder) / f"stream-rank{self.args.process_index}.jsonl"

    def get_train_dataloader(self) -> DataLoader:
        if not isinstance(self.train_dataset, StreamingDataset):
            return super().get_train_dataloader()
        workers = self.args.dataloader_num_workers
        loader = DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=StreamCollator(self.train_collator()),
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers if workers else False,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers else None,
        )
        # one process, no sharding: the dataset already holds only this rank's share
        return prepare_data_loader(loader, self.args.device, num_processes=1, process_index=0, put_on_device=True, dispatch_batches=False,
                                   non_blocking=bool(getattr(self.args.accelerator_config, "non_blocking", False)))

    def training_step(self, model, inputs, num_items_in_batch=None):
        metas = inputs.pop(STREAM_KEY, None)
        if metas:
            self.stream_progress.record(metas)
            if self._stream_log is not None:
                with open(self._stream_log, "a") as f:
                    f.write(json.dumps({"step": self.state.global_step, "rows": [{"epoch": m["epoch"], "samples": m["samples"]} for m in metas]}) + "\n")
        return super().training_step(model, inputs, num_items_in_batch)


# --------------------------------------------------------------------------- saving and resuming


def _gather(obj) -> list:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def _summary(states: list[dict], block_size: int, edit_format: str | None = None) -> str:
    """The stream's counts over every rank, for the log (``edit_format``, None: the default, names the target marker)."""
    total = dict.fromkeys(COUNT_FIELDS, 0)
    for s in states:
        for k in COUNT_FIELDS:
            total[k] += s["counts"].get(k, 0)
    rows = sum(s["rows_trained"] for s in states)
    epoch = max(s["epoch"] for s in states)
    return (
        f"{total['samples_read']:,} samples read, {total['dropped_too_long']:,} dropped as >= --block_size {block_size} tokens, "
        f"{total['dropped_no_diff']:,} dropped without {formats.loss_marker(edit_format)}, "
        f"{total['dropped_empty_diff']:,} dropped with an empty diff, "
        f"{total['bad_records']:,} bad records skipped, "
        f"{rows:,} rows trained over {len(states)} rank(s), epoch {epoch}"
    )


class StreamStateCallback(TrainerCallback):
    """Writes ``stream_state.json`` into every checkpoint and logs the stream's counts."""

    def __init__(self, trainer: StreamingTrainer, dataset: StreamingDataset):
        self.trainer = trainer
        self.dataset = dataset

    def _states(self) -> list[dict]:
        return _gather(self.trainer.stream_progress.state_dict())

    def on_save(self, args, state, control, **kwargs):
        states = self._states()  # every rank takes part
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if args.should_save:
            write_json(folder / STATE_FILE, {"version": STATE_VERSION, "global_step": state.global_step, "config": self.dataset.config(), "ranks": states})
        if args.process_index == 0:
            summary = _summary(states, self.dataset.opts.block_size, self.dataset.opts.edit_format)
            logger.info("stream at step %d: %s; state saved to %s", state.global_step, summary, folder / STATE_FILE)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        states = self._states()
        if args.process_index == 0:
            summary = _summary(states, self.dataset.opts.block_size, self.dataset.opts.edit_format)
            logger.info("stream at the end of training (step %d): %s", state.global_step, summary)
        return control


def restore_stream_state(trainer: StreamingTrainer, dataset: StreamingDataset, checkpoint: str) -> None:
    """Start this rank's readers where ``checkpoint``'s stream stopped."""
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise DiffModelError(
            f"{checkpoint} has no {STATE_FILE}: it was not saved by a --streaming run, so where its stream stopped is unknown; "
            "pass --overwrite_output_dir to start over, or --resume_from_checkpoint a checkpoint of a --streaming run"
        )
    saved = json.loads(path.read_text())
    config = dataset.config()
    changed = [k for k in config if saved.get("config", {}).get(k) != config[k]]
    if changed:
        detail = "; ".join(f"{k}: saved {saved['config'].get(k)!r}, now {config[k]!r}" for k in changed)
        raise DiffModelError(
            f"{path}: the stream was saved with other settings ({detail}); the saved positions only hold for the same files, "
            "--stream_buffer, --seed, shuffle, layout, --block_size and number of processes. Restore them, or start over with --overwrite_output_dir"
        )
    mine = saved["ranks"][dataset.rank]
    readers_now = dataset.world_size * max(1, trainer.args.dataloader_num_workers)
    if mine.get("stride") and int(mine["stride"]) != readers_now:
        raise DiffModelError(
            f"{path}: the stream was read by {mine['stride']} readers (ranks x dataloader workers), this run has {readers_now}; "
            f"resume with --dataloader_num_workers {int(mine['stride']) // dataset.world_size}, or start over with --overwrite_output_dir"
        )
    dataset.load_state_dict(mine)
    trainer.stream_progress = StreamProgress.from_state(mine)
    logger.info(
        "stream resumed from %s: rank %d continues after %d trained rows (%s)",
        path, dataset.rank, trainer.stream_progress.rows_trained,
        ", ".join(
            f"reader {r}: epoch {s['epoch']}, "
            + (f"draw {s['position']['draws']}" if isinstance(s["position"], dict) else f"record {s['position'][3]}")
            + f", {s['skip']} row(s) of its buffer done"
            for r, s in mine["readers"].items()
        ),
    )
