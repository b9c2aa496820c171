"""Held-out loss and perplexity on the diff tokens only, overall and per language.

Each sample is tokenized as in training (the tokenizer's own special tokens,
EOS appended) and labelled by :mod:`diffmodel.preprocess.labels`: tokens
before the ``<DFF>`` where the diff starts (:func:`diffmodel.sample.diff_start`,
found by character offset) carry no loss; the tokens from that ``<DFF>`` on
and the final EOS do (the model is trained to stop there too). With an
``edit_format`` and ``loss_on`` the start is the training one for them
(:func:`diffmodel.formats.loss_start`, through
:func:`diffmodel.preprocess.tokenize.tokenize_batch` and
:func:`diffmodel.preprocess.labels.diff_start_from_ids`; nothing is decided here).

The loss is token-weighted::

    loss = sum of the loss of every loss token / number of loss tokens

over all samples (and, per language, over that language's samples), never a
mean of per-batch or per-sample means; perplexity is ``exp(loss)``. A loss
token is a position whose label is not :data:`IGNORE_INDEX`, predicted from
the tokens before it (the label is shifted by one, as in HF models; the first
token of a sample is never predicted).

Language: a ``language`` column when the rows have one, else
:func:`diffmodel.mine.languages.language_of` of the file name (the ``name``
column, or the ``<NME>`` line of the text); ``other`` when unknown.

Invariants:
- Samples are batched by length with right padding; padding never carries
  loss and the result does not depend on ``batch_size`` (up to float
  rounding).
- A sample longer than ``max_length`` tokens (EOS included; default: the
  model's positions) is not truncated: it is skipped and counted
  (``skipped_too_long``), as is one without ``<DFF>`` (``skipped_no_diff``)
  or with an empty diff (``skipped_empty_diff``).
- When no sample is left to score (every one skipped, or no loss token),
  :func:`evaluate_loss` raises :class:`DiffModelError` naming the skips and
  the fix, instead of reporting a ``nan`` loss.
- When more samples are skipped than scored, the result has a ``warning``
  that counts them and names the fix (:func:`mostly_skipped`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffmodel import formats
from diffmodel.errors import DiffModelError
from diffmodel.evaluate.edits import language_for
from diffmodel.preprocess.labels import EMPTY_DIFF, IGNORE_INDEX, diff_start_from_ids, mask_before
from diffmodel.preprocess.tokenize import tokenize_batch
from diffmodel.sample import split

#: Why a sample was skipped, by count key (for the error when nothing is left to score).
SKIP_REASONS = {
    "skipped_too_long": "longer than {limit}",
    "skipped_no_diff": "without <DFF>",
    "skipped_empty_diff": "with an empty diff",
}


@dataclass
class LossSample:
    """One tokenized sample: ids (EOS included), labels, its language."""

    input_ids: list[int]
    labels: list[int]
    language: str

    @property
    def loss_tokens(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


def _name_from_text(text: str) -> str:
    try:
        return split(text).name
    except ValueError:
        return ""


def encode_rows(rows: Iterable[dict], tokenizer, text_column: str = "text", loss_on: str = "diff",
                edit_format: str | None = None) -> tuple[list[LossSample], dict[str, int]]:
    """Tokenize and label rows (text rows or tokenized rows) as training does for ``loss_on`` and
    ``edit_format`` (``--loss_on``, ``--edit_format``); returns samples and skip counts."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DiffModelError("the tokenizer has no EOS token; every sample ends with EOS as in training")
    samples: list[LossSample] = []
    skipped: dict[str, int] = defaultdict(int)
    batch: list[dict] = []

    def kept(start: int) -> bool:
        if start >= 0:
            return True
        skipped["skipped_empty_diff" if start == EMPTY_DIFF else "skipped_no_diff"] += 1
        return False

    def flush() -> None:
        texts = [r[text_column] for r in batch]
        enc = tokenize_batch({text_column: texts}, tokenizer, text_column, loss_on, edit_format)
        for row, ids, start in zip(batch, enc["input_ids"], enc["diff_start"]):
            if not kept(start):
                continue
            name = str(row["name"]) if row.get("name") is not None else _name_from_text(row[text_column])
            samples.append(LossSample(list(ids) + [eos], mask_before(ids, start) + [eos], language_for(row, name)))
        batch.clear()

    for row in rows:
        if row.get("attention_mask") is not None or row.get("position_ids") is not None:
            raise DiffModelError(
                "the rows are already laid out (padded, concatenated or packed: they have attention_mask or "
                "position_ids), so samples cannot be told apart; give the data before layout (the files given "
                "to diffmodel train, or tokenized rows with input_ids and labels only)"
            )
        if "input_ids" in row and row["input_ids"] is not None:
            ids = list(row["input_ids"])
            labels = row.get("labels")
            if labels is None:
                start = diff_start_from_ids(ids, tokenizer, loss_on, edit_format)
                if not kept(start):
                    continue
                labels = mask_before(ids, start)
            labels = list(labels)
            if not ids or ids[-1] != eos:
                ids, labels = ids + [eos], labels + [eos]
            samples.append(LossSample(ids, labels, language_for(row, str(row.get("name") or ""))))
            continue
        batch.append(row)
        if len(batch) >= 256:
            flush()
    if batch:
        flush()
    return samples, dict(skipped)


class _Sums:
    def __init__(self) -> None:
        self.loss = 0.0
        self.tokens = 0
        self.samples = 0

    def result(self) -> dict:
        if not self.tokens:
            loss = perplexity = float("nan")
        else:
            loss = self.loss / self.tokens
            perplexity = math.exp(loss) if loss < 700 else float("inf")
        return {"samples": self.samples, "loss_tokens": self.tokens, "loss": loss, "perplexity": perplexity}


@torch.inference_mode()
def sample_losses(model, samples: Sequence[LossSample], batch_size: int = 8,
                  progress: Callable[[int], None] | None = None) -> list[tuple[float, int]]:
    """(sum of token losses, loss tokens) per sample, in input order; losses in fp32."""
    device = next(model.parameters()).device
    pad = model.config.pad_token_id if getattr(model.config, "pad_token_id", None) is not None else 0
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i].input_ids))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(samples)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(samples[i].input_ids) for i in chunk)
        ids = torch.full((len(chunk), width), int(pad), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            s = samples[i]
            n = len(s.input_ids)
            ids[row, :n] = torch.tensor(s.input_ids)
            labels[row, :n] = torch.tensor(s.labels)
            mask[row, :n] = 1
        sums, counts = _batch_losses(model, ids.to(device), labels, mask.to(device))
        for row, i in enumerate(chunk):
            out[i] = (sums[row], int(counts[row]))
        if progress is not None:
            progress(len(chunk))
    return out


def _batch_losses(model, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[list[float], list[int]]:
    """Per row: the sum of its loss tokens' losses (fp32, summed in fp64) and how many there are. For the model types
    :mod:`diffmodel.train.loss_logits` takes, the output layer runs at the loss positions alone (no rows x width x
    vocabulary logits: with a 128k vocabulary those would be 1 GiB per 2,048 fp32 positions); otherwise over every position."""
    from diffmodel.train import loss_logits

    rows, width = labels.shape
    if loss_logits.supports(getattr(model.config, "model_type", None)):
        index, targets = (torch.from_numpy(a).to(ids.device) for a in loss_logits.positions(labels.numpy(), multiple=1))
        logits = loss_logits.logits_at(model, index, input_ids=ids, attention_mask=mask, use_cache=False)
        row = index // width
    else:
        every = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        logits = every.reshape(-1, every.shape[-1])
        targets = labels[:, 1:].reshape(-1).to(ids.device)
        row = torch.arange(rows, device=ids.device).repeat_interleave(width - 1)
    token_loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="none")
    counted = targets != IGNORE_INDEX
    sums = torch.zeros(rows, dtype=torch.float64, device=ids.device).index_add_(0, row, (token_loss * counted).double())
    counts = torch.zeros(rows, dtype=torch.long, device=ids.device).index_add_(0, row, counted.long())
    return sums.cpu().tolist(), counts.cpu().tolist()


def nothing_scored(counts: dict[str, int], max_length: int | None, default_length: bool,
                   edit_format: str | None = None) -> DiffModelError:
    """The error for a run with no loss token left: what was skipped and why, and the fix."""
    fmt = formats.get(edit_format)
    skips, reasons = _skip_reasons(counts, max_length, default_length, edit_format)
    left = counts.get("samples", 0)
    if left:
        head = f"nothing to score: the {left} sample(s) left have no loss token (every label ignored)" + (f", and {reasons}" if reasons else "")
    elif skips:
        head = f"nothing to score: all {sum(skips.values())} samples were skipped ({reasons})"
    else:
        head = "nothing to score: the data has no samples"
    fixes = []
    if "skipped_too_long" in skips:
        if default_length:
            fixes.append(f"give shorter samples (at most {max_length} tokens, EOS included) or a model with more positions")
        else:
            fixes.append(f"pass a larger --max_length (up to the model's positions) or give shorter samples (at most {max_length} tokens, EOS included)")
    if left or "skipped_no_diff" in skips or "skipped_empty_diff" in skips:
        fixes.append("give samples that have a <DFF> line after the <MSG> line, followed by a non-empty diff" if fmt.NAME == "carper"
                     else f"give samples written in --edit_format {fmt.NAME}: a {fmt.MARKER.strip()} after the message, "
                          "followed by a change (or pass the --edit_format the data is written in)")
    if not fixes:
        fixes.append("give held-out data with --data or --dataset_name")
    return DiffModelError(f"{head}; {'; '.join(fixes)}")


def evaluate_loss(model, samples: Sequence[LossSample], batch_size: int = 8, max_length: int | None = None,
                  progress: Callable[[int], None] | None = None, skipped: dict[str, int] | None = None,
                  edit_format: str | None = None) -> dict:
    """Token-weighted loss and perplexity overall and per language (see the module docstring).

    ``skipped`` holds the counts of :func:`encode_rows`; they go into the
    metrics and into the error raised when no loss token is left (which names
    ``edit_format``'s marker).
    """
    default_length = max_length is None
    if max_length is None:
        from diffmodel.checkpoint import max_positions

        max_length = max_positions(model.config)
    kept = [s for s in samples if max_length is None or len(s.input_ids) <= max_length]
    too_long = len(samples) - len(kept)
    if progress is not None and too_long:
        progress(too_long)  # the samples too long to score are done too
    losses = sample_losses(model, kept, batch_size, progress)
    overall = _Sums()
    by_language: dict[str, _Sums] = defaultdict(_Sums)
    for s, (total, count) in zip(kept, losses):
        for sums in (overall, by_language[s.language]):
            sums.loss += total
            sums.tokens += count
            sums.samples += 1
    metrics = overall.result()
    metrics["skipped_too_long"] = too_long
    metrics.update(skipped or {})
    if not overall.tokens:
        raise nothing_scored(metrics, max_length, default_length, edit_format)
    result = {"metrics": metrics, "by_language": {k: v.result() for k, v in sorted(by_language.items())}}
    warning = mostly_skipped(metrics, max_length, default_length, edit_format)
    if warning:
        result["warning"] = warning
    return result


def _skip_reasons(counts: dict[str, int], max_length: int | None, default_length: bool,
                  edit_format: str | None) -> tuple[dict[str, int], str]:
    """The skip counts that are not zero, and them in words (``2 longer than the model's 8 positions, ...``)."""
    limit = f"the model's {max_length} positions" if default_length else f"--max_length {max_length} tokens"
    skips = {k: counts[k] for k in SKIP_REASONS if counts.get(k)}
    reasons = ", ".join(f"{n} {SKIP_REASONS[k].format(limit=limit)}" for k, n in skips.items())
    return skips, reasons.replace("<DFF>", formats.loss_marker(edit_format))


def mostly_skipped(counts: dict[str, int], max_length: int | None, default_length: bool,
                   edit_format: str | None = None) -> str | None:
    """A warning when more samples were skipped than scored: the loss then speaks for a few samples only
    (the short ones, when most are too long), which the headline number alone does not show. None otherwise."""
    skips, reasons = _skip_reasons(counts, max_length, default_length, edit_format)
    scored = counts.get("samples", 0)
    skipped = sum(skips.values())
    if skipped <= scored:
        return None
    fix = ""
    if "skipped_too_long" in skips:
        fix = ("; for more, give shorter samples (diffmodel mine --tokenizer_name TOKENIZER --max_tokens N) or "
               + ("a model with more positions" if default_length else "a larger --max_length (up to the model's positions)"))
    return f"{skipped} of the {skipped + scored} samples were skipped ({reasons}): the loss is over the other {scored} only{fix}"


__all__ = ["LossSample", "encode_rows", "evaluate_loss", "mostly_skipped", "sample_losses"]
