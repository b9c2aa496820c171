"""Streaming preprocessing: files in, laid-out rows out, one bounded buffer at a time.

The same stages as :mod:`diffmodel.preprocess.pipeline`, run on the fly for
data larger than memory or disk (``diffmodel train --streaming``)::

    files --read_records--> rows --render--> text --encode_batch--> ids, labels
          --long / no-diff / empty-diff filters--> buffer of B samples --pack | pad | concat--> shuffled rows

- Reading: :func:`diffmodel.data.stream_sources.read_records`. Reader
  ``rank * workers + worker`` of ``ranks * workers`` takes every record whose
  number in the epoch is its own modulo the number of readers, so ranks and
  dataloader workers read disjoint parts, and together all of it.
- Weighted sources (``--train_file a.jsonl:0.7 'b/*.jsonl:0.3'``): each
  reader draws the source of its next record by weight with a seeded,
  counter-based choice (:class:`diffmodel.data.mix.WeightedChoice`) and reads
  its own share of that source's files, a source starting its next pass
  (files reshuffled) when it ends; its position is a :class:`MixPosition`
  (draws made, each source's pass, position and records taken), so a resumed
  stream draws and reads exactly what follows.
- Text: the rules of the load stage, per row: ``input_ids`` pass through
  (pre-tokenized), else ``--text_column``, else ``text``, else
  ``prompt/completion`` (loss on the completion:
  :func:`diffmodel.data.records.prompt_completion_text`), else
  ``name/before/message/diff`` rendered in ``--edit_format`` by :func:`diffmodel.formats.render_row`.
- Tokens and labels: :func:`diffmodel.preprocess.pipeline.encode_batch`, then
  the long-sample policy (:func:`~diffmodel.preprocess.tokenize.is_short_enough`
  when the layout drops long samples), then the samples without a diff and
  with an empty diff (``NO_DIFF`` / ``EMPTY_DIFF`` boundaries), counted in
  that order, as in ``encode_split``.
- Layout, per buffer of ``buffer_size`` records of the reader: ``pack``
  (:func:`~diffmodel.preprocess.packing.best_fit_decreasing` over the buffer
  in reading order, then :func:`~diffmodel.preprocess.packing.pack_row`),
  ``pad`` (:func:`~diffmodel.preprocess.layout.pad_left`) or ``concat``
  (:func:`~diffmodel.preprocess.layout.concatenate` within the buffer, whose
  last row is right-padded). With one reader, no shuffle and a buffer that
  holds the whole data set, the rows are exactly those of ``preprocess``.
- Order: with ``shuffle``, the rows of a buffer are permuted by a generator
  seeded with (seed, epoch, reader, first record of the buffer), and the file
  order of each epoch by (seed, epoch); the same seed gives the same stream.

Resuming: every row carries (under ``"stream"``, unless ``with_positions`` is
off) the reader state that comes *after* it: the epoch, the position where
its buffer started and how many rows of that buffer are done (or, for the
last row of a buffer, the position of the next buffer). A reader restarted
from that state reads the buffer again, lays it out the same way and skips
the rows already done, so no row is given twice and none is lost; at most
one buffer is tokenized again. The counts (samples read, dropped too long,
dropped without ``<DFF>``, dropped with an empty diff, bad records) travel in
the state too.

Without ``epochs`` the stream never ends: each reader starts the next epoch
when it reaches the end of the files (``max_steps`` ends training). A reader
that finds no row in a whole epoch raises :class:`DiffModelError`.
"""

from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from diffmodel import formats, sample
from diffmodel.data import records
from diffmodel.data.mix import Source, WeightedChoice, shares, source_report
from diffmodel.data.load import no_text_error
from diffmodel.data.stream_sources import BadRecords, Position, read_records
from diffmodel.errors import DiffModelError
from diffmodel.preprocess.labels import EMPTY_DIFF
from diffmodel.preprocess.layout import concatenate, pad_left
from diffmodel.preprocess.packing import best_fit_decreasing, pack_row
from diffmodel.preprocess.options import PreprocessOptions
from diffmodel.preprocess.pipeline import encode_batch
from diffmodel.preprocess.tokenize import is_short_enough
from diffmodel.preprocess.tokens import eos_id_of, pad_id_of

#: Key of the per-row stream metadata (removed by the collator before the model sees the batch).
STREAM_KEY = "stream"
#: Texts per tokenizer call.
ENCODE_CHUNK = 256

COUNT_FIELDS = ("samples_read", "bad_records", "dropped_too_long", "dropped_no_diff", "dropped_empty_diff", "samples_kept", "rows")


@dataclass(frozen=True)
class MixPosition:
    """Where a reader of weighted sources stands: draws made and, per source, its pass (epoch), position and records taken."""

    draws: int
    sources: tuple[tuple[int, Position], ...]
    taken: tuple[int, ...]

    @classmethod
    def start(cls, n: int) -> "MixPosition":
        return cls(0, tuple((0, Position()) for _ in range(n)), (0,) * n)

    @property
    def record(self) -> int:
        return self.draws

    def to_json(self) -> dict:
        return {"draws": self.draws, "sources": [[epoch, *pos.to_list()] for epoch, pos in self.sources], "taken": list(self.taken)}

    @classmethod
    def from_json(cls, d: dict) -> "MixPosition":
        return cls(int(d["draws"]), tuple((int(e), Position.from_list(p)) for e, *p in d["sources"]), tuple(int(t) for t in d["taken"]))


@dataclass
class ReaderState:
    """Where one reader resumes: epoch, start of the buffer (a :class:`MixPosition` for weighted sources), rows of it done, counts before it."""

    epoch: int = 0
    position: Position | MixPosition = field(default_factory=Position)
    skip: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_FIELDS, 0))

    def to_dict(self) -> dict:
        pos = self.position.to_json() if isinstance(self.position, MixPosition) else self.position.to_list()
        return {"epoch": self.epoch, "position": pos, "skip": self.skip, "counts": dict(self.counts)}

    @classmethod
    def from_dict(cls, d: dict) -> "ReaderState":
        counts = dict.fromkeys(COUNT_FIELDS, 0)
        counts.update({k: int(v) for k, v in d.get("counts", {}).items() if k in counts})
        pos = MixPosition.from_json(d["position"]) if isinstance(d["position"], dict) else Position.from_list(d["position"])
        return cls(int(d["epoch"]), pos, int(d.get("skip", 0)), counts)


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in COUNT_FIELDS}


# --------------------------------------------------------------------------- pure stages


def row_text(row: dict, text_column: str | None, origin: str, edit_format: str | None = None) -> tuple[str, int | None] | None:
    """The text of one raw row by the load stage's rules (structured fields rendered in ``edit_format``) and, for a
    prompt/completion row, where its completion starts; None for a pre-tokenized row."""
    if "input_ids" in row:
        if text_column is not None:
            raise DiffModelError(
                f"{origin}: the row is already tokenized (input_ids), so --text_column {text_column} would be ignored; drop --text_column"
            )
        return None
    if text_column is not None:
        if text_column not in row:
            raise DiffModelError(
                f"{origin}: --text_column {text_column} is not a key of the row (keys: {', '.join(row) or 'none'}); "
                "name one of them, or drop --text_column to use 'text' or render name/before/message/diff"
            )
        text = row[text_column]
        column = text_column
    elif "text" in row:
        text, column = row["text"], "text"
    elif all(f in row for f in records.PROMPT_COMPLETION):
        for column in records.PROMPT_COMPLETION:
            if not isinstance(row[column], str):
                raise DiffModelError(f"{origin}: {column} holds {type(row[column]).__name__}, not text; give every row a prompt and a completion string")
        return records.prompt_completion_text(row["prompt"], row["completion"])
    elif all(f in row for f in sample.FIELDS):
        try:
            return formats.render_row(row, edit_format), None
        except DiffModelError as err:  # a diff that does not apply, in a format that writes the new file
            raise DiffModelError(f"{origin}: {err} (with --streaming, --skip_bad_records does not skip such a row: it is "
                                 "read fine, and fails only when rendered in --edit_format)") from None
    else:
        raise no_text_error(origin, list(row), kind="key")
    if not isinstance(text, str):
        raise DiffModelError(f"{origin}: {column} holds {type(text).__name__}, not text; pass --text_column with a text key")
    return text, None


def encode_rows(rows: list[dict], origins: list[str], tokenizer, opts: PreprocessOptions, text_column: str | None) -> list[tuple[list[int], list[int], int]]:
    """``(input_ids, labels, diff_start)`` per raw row, through ``encode_batch`` (no row dropped here)."""
    text_opts = dataclasses.replace(opts, text_column="text")
    out: list = [None] * len(rows)
    texts, completion_starts, text_at, tokens_at = [], [], [], []
    for i, (row, origin) in enumerate(zip(rows, origins)):
        got = row_text(row, text_column, origin, opts.edit_format)
        if got is None:
            tokens_at.append(i)
        else:
            texts.append(got[0])
            completion_starts.append(got[1])
            text_at.append(i)
    for lo in range(0, len(texts), ENCODE_CHUNK):
        batch = {"text": texts[lo:lo + ENCODE_CHUNK], records.COMPLETION_START: completion_starts[lo:lo + ENCODE_CHUNK]}
        enc = encode_batch(batch, tokenizer, text_opts)
        for i, ids, labels, start in zip(text_at[lo:lo + ENCODE_CHUNK], enc["input_ids"], enc["labels"], enc["diff_start"]):
            out[i] = (ids, labels, start)
    if tokens_at:
        pre = [rows[i] for i in tokens_at]
        batch: dict[str, list | None] = {"input_ids": [list(r["input_ids"]) for r in pre]}
        for key in ("labels", "diff_start"):
            batch[key] = [r[key] for r in pre] if all(r.get(key) is not None for r in pre) else None
        if batch["diff_start"] is None:
            del batch["diff_start"]
        enc = encode_batch(batch, tokenizer, opts)
        for i, ids, labels, start in zip(tokens_at, enc["input_ids"], enc["labels"], enc["diff_start"]):
            out[i] = (list(ids), list(labels), start)
    return out


def lay_out(samples: list[tuple[list[int], list[int]]], layout: str, block_size: int, eos_id: int, pad_id: int) -> tuple[list[dict], list[list[int]]]:
    """Rows of one buffer and, per row, the indices of the samples in it."""
    if layout == "pack":
        bins = best_fit_decreasing([len(ids) + 1 for ids, _ in samples], block_size)
        return [pack_row([samples[i] for i in b], eos_id) for b in bins], bins
    if layout == "pad":
        return [pad_left(ids, labels, block_size, pad_id, eos_id) for ids, labels in samples], [[i] for i in range(len(samples))]
    if layout == "concat":
        rows = list(concatenate(samples, block_size, eos_id, pad_id))
        members: list[list[int]] = [[] for _ in rows]
        start = 0
        for i, (ids, _) in enumerate(samples):
            end = start + len(ids) + 1
            for r in range(start // block_size, (end - 1) // block_size + 1):
                members[r].append(i)
            start = end
        return rows, members
    raise ValueError(f"unknown layout {layout!r}")


# --------------------------------------------------------------------------- the dataset


class StreamingDataset(IterableDataset):
    """Laid-out training rows streamed from files; see the module docstring.

    ``rank`` / ``world_size`` name this process's share; dataloader workers
    split it further. :meth:`load_state_dict` restarts every reader from a
    saved state (``{"stride": N, "readers": {reader: state}}``).
    """

    def __init__(
        self,
        files: list[str],
        tokenizer,
        opts: PreprocessOptions,
        *,
        buffer_size: int = 1000,
        seed: int = 42,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        text_column: str | None = None,
        skip_bad_records: bool = False,
        epochs: int | None = None,
        with_positions: bool = True,
        sources: list[tuple[str, list[str], Fraction]] | None = None,
    ):
        if buffer_size < 1:
            raise DiffModelError(f"--stream_buffer {buffer_size} must be at least 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of {world_size}")
        self.files = list(files)
        self.sources = sources  # weighted: (pattern, files, weight) per source; self.files is all of them
        self.tokenizer = tokenizer
        self.opts = opts
        self.buffer_size = buffer_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.text_column = text_column
        self.skip_bad_records = skip_bad_records
        self.epochs = epochs
        self.with_positions = with_positions
        self.eos_id = eos_id_of(tokenizer)
        self.pad_id = pad_id_of(tokenizer)
        self.start_states: dict[int, ReaderState] = {}
        self.start_stride: int | None = None

    def config(self) -> dict:
        """What the stream's rows depend on (a saved state is only valid for the same config)."""
        return {
            "files": [os.path.abspath(f) for f in self.files],
            "buffer_size": self.buffer_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "layout": self.opts.layout,
            "block_size": self.opts.block_size,
            "world_size": self.world_size,
            **({"sources": [[pattern, str(weight)] for pattern, _, weight in self.sources]} if self.sources else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restart from ``{"stride": N, "readers": {"R": ReaderState dict}}`` (one rank's saved state)."""
        self.start_stride = int(state["stride"]) if state.get("stride") else None
        self.start_states = {int(r): ReaderState.from_dict(s) for r, s in state.get("readers", {}).items()}

    def _epoch_files(self, epoch: int) -> list[int]:
        order = list(range(len(self.files)))
        if self.shuffle and len(order) > 1:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(order)).tolist()
        return order

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        stride = self.world_size * workers
        reader = self.rank * workers + worker
        if self.start_states and self.start_stride is not None and self.start_stride != stride:
            raise DiffModelError(
                f"the saved stream state was written by {self.start_stride} readers (ranks x dataloader workers), this run has "
                f"{stride} ({self.world_size} rank(s) x {workers} worker(s)); resume with the same number of processes and "
                "--dataloader_num_workers, or start over with --overwrite_output_dir"
            )
        state = self.start_states.get(reader, ReaderState())
        return self._read(reader, stride, state)

    def _start(self) -> Position | MixPosition:
        return MixPosition.start(len(self.sources)) if self.sources else Position()

    def _records(self, epoch: int, pos: Position | MixPosition, stride: int, reader: int, bad: BadRecords):
        """``(row, origin, after)`` of this reader from ``pos``: one epoch of the files, or the endless weighted mix."""
        if isinstance(pos, MixPosition):
            return self._mixed_records(pos, stride, reader, bad)
        files = [self.files[i] for i in self._epoch_files(epoch)]
        return read_records(files, pos, stride, reader, bad, self.text_column)

    def _mixed_records(self, pos: MixPosition, stride: int, reader: int, bad: BadRecords):
        choose = WeightedChoice(mix_shares(self.sources), self.seed, reader)
        draws, state, taken = pos.draws, list(pos.sources), list(pos.taken)
        readers: dict[int, Iterator] = {}
        while True:
            i = choose(draws)
            draws += 1
            item = None
            while item is None:
                if i not in readers:
                    epoch, at = state[i]
                    readers[i] = read_records(self._source_files(i, epoch), at, stride, reader, bad, self.text_column)
                item = next(readers[i], None)
                if item is None:  # the source's pass ended: start its next one
                    if state[i][1] == Position():
                        raise DiffModelError(
                            f"--train_file {self.sources[i][0]}: no record for reader {reader} of {stride} in a whole pass over its "
                            f"{len(self.sources[i][1])} file(s); give the source more records, or use fewer processes or dataloader workers"
                        )
                    state[i] = (state[i][0] + 1, Position())
                    del readers[i]
            row, origin, after = item
            state[i] = (state[i][0], after)
            taken[i] += 1
            yield row, origin, MixPosition(draws, tuple(state), tuple(taken))

    def _source_files(self, i: int, epoch: int) -> list[str]:
        files = self.sources[i][1]
        if self.shuffle and len(files) > 1:
            return [files[j] for j in np.random.default_rng([self.seed, epoch, i]).permutation(len(files))]
        return list(files)

    def _read(self, reader: int, stride: int, state: ReaderState) -> Iterator[dict]:
        epoch, pos, skip, counts = state.epoch, state.position, state.skip, dict(state.counts)
        if self.sources and not isinstance(pos, MixPosition):
            pos = self._start()
        first_passes = [e for e, _ in pos.sources] if isinstance(pos, MixPosition) else None
        while self.epochs is None or epoch < self.epochs:
            whole_epoch = pos == Position() and skip == 0
            rows_in_epoch = 0
            bad = BadRecords(self.skip_bad_records)
            source = self._records(epoch, pos, stride, reader, bad)
            while True:
                start, before = pos, counts
                bad_before = bad.count
                raw, origins = [], []
                for row, origin, after in source:
                    raw.append(row)
                    origins.append(origin)
                    pos = after
                    if len(raw) == self.buffer_size:
                        break
                ended = len(raw) < self.buffer_size
                rows, members, here = self._buffer(raw, origins)
                here["bad_records"] = bad.count - bad_before
                counts = _add(before, here)
                rows_in_epoch += len(rows)
                if ended:
                    after_buffer = ReaderState(epoch + 1, Position(), 0, counts)
                else:
                    after_buffer = ReaderState(epoch, pos, 0, counts)
                perm = self._permutation(len(rows), epoch, reader, start.record)
                for j in range(skip, len(rows)):
                    row = rows[perm[j]]
                    if self.with_positions:
                        nxt = after_buffer if j == len(rows) - 1 else ReaderState(epoch, start, j + 1, before)
                        row[STREAM_KEY] = {
                            "reader": reader,
                            "stride": stride,
                            "epoch": epoch,
                            "resume": nxt.to_dict(),
                            "counts": counts,
                            "samples": list(members[perm[j]]),
                        }
                    yield row
                skip = 0
                if first_passes is not None and rows_in_epoch == 0 and all(e > f for (e, _), f in zip(pos.sources, first_passes)):
                    whole_epoch = True  # every weighted source has been read through without a trainable sample
                    break
                if ended:
                    break
            if whole_epoch and rows_in_epoch == 0:
                raise DiffModelError(
                    f"rank {self.rank} (reader {reader} of {stride}) found no trainable sample in a whole pass over "
                    f"{len(self.files)} file(s) ({counts['samples_read']} read, {counts['dropped_too_long']} dropped as >= --block_size "
                    f"{self.opts.block_size} tokens, {counts['dropped_no_diff']} without {formats.loss_marker(self.opts.edit_format)}, {counts['dropped_empty_diff']} with an empty diff, {counts['bad_records']} bad); "
                    "give it more data, fewer processes or dataloader workers, or a larger --block_size"
                )
            epoch, pos = epoch + 1, Position()

    def _permutation(self, n: int, epoch: int, reader: int, first_record: int) -> list[int]:
        if not self.shuffle:
            return list(range(n))
        return np.random.default_rng([self.seed, epoch, reader, first_record]).permutation(n).tolist()

    def _buffer(self, raw: list[dict], origins: list[str]) -> tuple[list[dict], list[list[str]], dict[str, int]]:
        """Encode, filter and lay out one buffer; returns rows, the origins of each row's samples, and counts."""
        here = dict.fromkeys(COUNT_FIELDS, 0)
        here["samples_read"] = len(raw)
        if not raw:
            return [], [], here
        encoded = encode_rows(raw, origins, self.tokenizer, self.opts, self.text_column)
        kept, kept_origins = [], []
        for (ids, labels, start), origin in zip(encoded, origins):
            if self.opts.drops_long_samples and not is_short_enough(len(ids), self.opts.block_size):
                here["dropped_too_long"] += 1
            elif start == EMPTY_DIFF:
                here["dropped_empty_diff"] += 1
            elif start < 0:
                here["dropped_no_diff"] += 1
            else:
                kept.append((list(ids), list(labels)))
                kept_origins.append(origin)
        here["samples_kept"] = len(kept)
        if not kept:
            return [], [], here
        rows, members = lay_out(kept, self.opts.layout, self.opts.block_size, self.eos_id, self.pad_id)
        here["rows"] = len(rows)
        return rows, [[kept_origins[i] for i in m] for m in members], here


def first_buffer(dataset: StreamingDataset) -> tuple[list[dict], dict[str, int], dict]:
    """The rows of the first buffer of one reader reading everything (for the sanity report), its counts, and what it read.

    What it read: ``row_format`` (the kind of the first row, :func:`diffmodel.data.records.row_format`) and, for
    weighted sources, ``sources`` (:func:`diffmodel.data.mix.source_report` of the records taken from each).
    """
    preview = StreamingDataset(
        dataset.files, dataset.tokenizer, dataset.opts, buffer_size=dataset.buffer_size, seed=dataset.seed,
        shuffle=False, text_column=dataset.text_column, skip_bad_records=dataset.skip_bad_records, epochs=1,
        sources=dataset.sources,
    )
    bad = BadRecords(preview.skip_bad_records)
    raw, origins, pos = [], [], preview._start()
    for row, origin, pos in preview._records(0, pos, 1, 0, bad):
        raw.append(row)
        origins.append(origin)
        if len(raw) == preview.buffer_size:
            break
    rows, _, counts = preview._buffer(raw, origins)
    counts["bad_records"] = bad.count
    read = {"row_format": records.row_format(records.text_fields(raw[0], preview.text_column)) if raw else ""}
    if isinstance(pos, MixPosition):
        sources = [Source(pattern, weight) for pattern, _, weight in preview.sources]
        read["sources"] = source_report(sources, [len(files) for _, files, _ in preview.sources], None, pos.taken)
    return rows, counts, read


def mix_shares(sources: list[tuple[str, list[str], Fraction]]) -> list[Fraction]:
    """The shares of weighted stream sources (:func:`diffmodel.data.mix.shares`)."""
    return shares([Source(pattern, weight) for pattern, _, weight in sources])

