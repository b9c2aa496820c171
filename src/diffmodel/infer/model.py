"""DiffModel: a causal LM that writes diffs, batched generation with the ``<NME>`` stop.

``edit_format`` (``edit`` / ``edit_many``; default ``carper``, see
:mod:`diffmodel.formats`) picks how the model was trained to write a change:
the prompt is the format's ``prompt``, generation stops where the format's
next sample starts (``<NME>``, ``<commit_before>``, ``<file_name>``), and the
output is read by the format's ``parse`` and ``apply``
(:func:`~diffmodel.infer.prompt.finish_edit`). Diff-aware decoding exists for
``carper`` only: another format is decoded unconstrained
(:func:`~diffmodel.infer.prompt.decoding`).

``DiffModel.from_pretrained(path).edit(code, message, name)`` returns an
:class:`Edit` with the generated ``diff``, the edited file (``new_code``) and
a ``status``; :meth:`DiffModel.edit_many` does the same for many requests,
batched, with ``num_samples`` samples each.

Decoding is diff-aware by default (``constrained=True``): the grammar of a
diff over the file decides which tokens may come next and feeds forced text
(context and removed lines) in chunks; see :mod:`diffmodel.infer.constrained`.
Greedy, it also speculates (``speculate=True``, the default): tokens copied
from the prompt or the diff so far are proposed and kept where greedy decoding
picks them, so the edits are the same in fewer forward passes.
``constrained=False`` is plain HF ``generate``, as below.

How one batch is generated (unconstrained)::

    format.prompt(name, code, message)        carper: "<NME> a.py\\n<BEF> ...\\n<MSG> ...\\n<DFF>"
        -> token ids (the tokenizer's own special-token convention, as in training)
        -> requests sorted by length, longest first, cut into batches
        -> left padding (pad token, else EOS) + attention mask; generate() derives
           position ids from the mask, so every prompt starts at position 0
        -> stop a row at EOS, or when its text starts a line with <NME>
           (the model moving on to a next sample; the format's NEXT marker), or at max_new_tokens
        -> text cut at EOS / <NME>, parsed once, applied strictly, then leniently
           (other formats: the format's parse and apply)

Invariants:
- Nothing the model writes makes this module raise: every outcome is an
  :class:`~diffmodel.infer.prompt.Edit` whose ``status`` says what happened
  (``strict``, ``lenient``, ``failed``, or ``too_long`` for a prompt the model
  cannot hold); the text steps are :mod:`diffmodel.infer.prompt`'s.
- Models load through :func:`diffmodel.checkpoint.load_checkpoint`.
- Results come back in request order whatever the batching; greedy decoding
  of a request gives the same diff alone or in a batch (up to float rounding
  of padded batches in low precision).
- ``Edit.diff`` is the generated text after ``<DFF>`` with the one separating
  space removed, cut before EOS and before a line starting with ``<NME>``
  (constrained: the grammar's final diff, headers rewritten from the hunks).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from diffmodel import formats
from diffmodel.checkpoint import load_checkpoint, max_positions
from diffmodel.errors import DiffModelError
from diffmodel.infer.prompt import (
    STOP_EOS, STOP_LENGTH, STOP_MARKER, Edit, EditRequest, EditStatus, as_request, decoding, finish_edit,
)

logger = logging.getLogger(__name__)

#: Tokens decoded from the end of each row to look for a ``<NME>`` line.
STOP_WINDOW = 16


# -- generation ------------------------------------------------------------------------------


class NameMarkerStop(StoppingCriteria):
    """Stop each row once its generated text starts a line with ``<NME>`` (in ``edit_format``:
    where its next sample starts, :func:`diffmodel.formats.next_sample`).

    Only generated tokens are looked at (the prompt itself starts with
    ``<NME>``): the last :data:`STOP_WINDOW` of them, decoded, which is enough
    for the marker and its newline whatever the tokenization. A row is decoded
    only in a step whose new token could end the marker (its vocabulary
    entry holds ``>``; ``may_end``, from :func:`tokens_with_gt`), so most steps
    decode nothing. ``stopped_at`` maps a row to the number of tokens it had
    generated when the marker was seen; a stopped row stays stopped.
    """

    def __init__(self, tokenizer, prompt_length: int, window: int = STOP_WINDOW, may_end: torch.Tensor | None = None,
                 edit_format: str | None = None):
        self.tokenizer = tokenizer
        self.edit_format = formats.get(edit_format).NAME
        self.prompt_length = prompt_length
        self.window = window
        self.may_end = may_end
        self.stopped_at: dict[int, int] = {}
        self._checked = prompt_length  # tokens before this index have been looked at

    def _candidates(self, input_ids: torch.Tensor) -> list[int]:
        rows = input_ids.shape[0]
        new = input_ids[:, self._checked:]
        if self.may_end is None or new.numel() == 0:
            hit = list(range(rows))
        else:
            table = self.may_end.to(new.device)
            inside = new < table.numel()
            flags = (table[new.clamp(max=table.numel() - 1)] | ~inside).any(dim=1)
            hit = flags.nonzero().flatten().tolist()
        return [r for r in hit if r not in self.stopped_at]

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        rows, length = input_ids.shape
        generated = length - self.prompt_length
        if generated > 0:
            open_rows = self._candidates(input_ids)
            self._checked = length
            if open_rows:
                start = max(self.prompt_length, length - self.window)
                tails = self.tokenizer.batch_decode(input_ids[open_rows, start:].tolist(), skip_special_tokens=False)
                whole = start == self.prompt_length  # the window still holds every generated token
                for row, tail in zip(open_rows, tails):
                    if formats.next_sample(tail, self.edit_format, whole) >= 0:
                        self.stopped_at[row] = generated
        done = torch.zeros(rows, dtype=torch.bool)
        for row in self.stopped_at:
            done[row] = True
        return done.to(input_ids.device)


def decoding_attention():
    """A context in which ``scaled_dot_product_attention`` does not use cuDNN's kernel.

    Decoding calls attention with a new key length at every step (the KV
    cache grows) and a padding mask; on an H200 (torch 2.11) the cuDNN backend
    then spent about 8 ms of host time per call (about 100 ms a step for a
    12-layer model, far more than the GPU work), against microseconds for the
    memory-efficient kernel, which takes the same masks
    (benchmarks/RESULTS.md). Flash, memory-efficient and math kernels stay
    allowed, so every input still has a kernel.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


@contextlib.contextmanager
def paused_gc():
    """A context in which Python's cyclic garbage collector does not run (as it was after).

    The decoding loops make many small objects a step (grammar states, token
    lists) that reference counting frees; the cyclic collector's full passes
    also walk every long-lived object (the model's modules, the tokenizer's
    tables) and stalled diff-aware decoding for about 0.25 s each: about a
    quarter of its host time on a small model (benchmarks/RESULTS.md). What
    becomes cyclic garbage meanwhile is collected once it is back on.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def tokens_with_gt(tokenizer) -> torch.Tensor | None:
    """A bool per token id: can this token's text contain ``>`` (so end a marker)?

    ``None`` when the vocabulary cannot be read (then every row is decoded
    every step). Pieces are the tokenizer's own strings: ``>`` is itself in
    byte-level BPE and SentencePiece alike, and byte-fallback pieces
    (``<0x3E>``) contain it too.
    """
    try:
        size = len(tokenizer)
        pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    except Exception:
        return None
    return torch.tensor([piece is None or ">" in str(piece) for piece in pieces], dtype=torch.bool)


class DiffModel:
    """A causal LM and its tokenizer, ready to write diffs.

    Build one with :meth:`from_pretrained`, or wrap a model and tokenizer you
    already have: ``DiffModel(model, tokenizer)`` (the model stays on its device).
    """

    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer
        tokenizer.padding_side = "left"
        eos = tokenizer.eos_token_id
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        ids: list[int] = []
        special = set(tokenizer.all_special_ids) | {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
        for value in (eos, gen_eos):
            for one in value if isinstance(value, (list, tuple)) else [value]:
                if one is None or int(one) in ids:
                    continue
                if value is gen_eos and int(one) not in special:
                    # an ordinary token of the vocabulary (a config class's default, e.g. Llama's 2, left in a
                    # generation config): stopping at it would cut diffs at a common character
                    logger.warning("generation config names token %d (%r) as EOS, but it is an ordinary token of the tokenizer: not used to stop",
                                   int(one), tokenizer.convert_ids_to_tokens(int(one)))
                    continue
                ids.append(int(one))
        if not ids:
            raise DiffModelError("the tokenizer has no EOS token and the model's generation config names none; a diff model needs one to stop")
        self.eos_ids = ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[0]
        self.max_positions = max_positions(model.config)
        self._may_end: torch.Tensor | None | bool = False  # False: not computed yet
        self._decoder = None  # the ConstrainedDecoder, built on first use (it reads the vocabulary once)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        quiet: bool = False,
        **model_kwargs,
    ) -> "DiffModel":
        """Load a saved model and tokenizer from ``path`` (a folder, e.g. a training ``--output_dir``).

        ``device``: default CUDA when available, else CPU. ``dtype``: default
        bf16 on a GPU, fp32 on the CPU. ``quiet``: no progress bar while
        loading. ``model_kwargs`` go to ``AutoModelForCausalLM.from_pretrained``
        (e.g. ``attn_implementation``); see :func:`diffmodel.checkpoint.load_checkpoint`.
        """
        model, tokenizer = load_checkpoint(path, device, dtype, quiet, **model_kwargs)
        return cls(model, tokenizer)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prompt(self, request: EditRequest, edit_format: str | None = None) -> str:
        """The prompt of ``request`` in ``edit_format`` (default ``carper``: ``<NME> ... <DFF>``)."""
        return formats.get(edit_format).prompt(request.name, request.code, request.message)

    def encode(self, requests: Sequence[EditRequest], edit_format: str | None = None) -> list[list[int]]:
        """Prompt token ids, with the tokenizer's own special tokens (as in training)."""
        if not requests:
            return []
        # verbose=False: a prompt longer than the model is reported as too_long, not as a tokenizer warning
        return self.tokenizer([self.prompt(r, edit_format) for r in requests], return_attention_mask=False, verbose=False)["input_ids"]

    def edit(self, code: str, message: str, name: str, **options) -> Edit:
        """Edit one file; ``options`` are those of :meth:`edit_many` (one sample)."""
        if "num_samples" in options:
            raise DiffModelError("edit() makes one edit; for several samples use edit_many(requests, num_samples=N)")
        return self.edit_many([EditRequest(code, message, name)], **options)[0][0]

    def edit_many(
        self,
        requests: Iterable[Any],
        num_samples: int = 1,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 8,
        min_new_tokens: int = 0,
        seed: int | None = None,
        progress: bool | Callable[[int], None] = False,
        constrained: bool = True,
        top_k: int = 0,
        edit_format: str | None = None,
        speculate: bool = True,
        cuda_graphs: bool = True,
    ) -> list[list[Edit]]:
        """Edit many files; ``result[i][k]`` is sample ``k`` of request ``i``.

        ``requests``: :class:`EditRequest`, ``(code, message, name)`` tuples or
        dicts (see :func:`as_request`). ``temperature`` 0 is greedy decoding;
        above 0 samples with ``top_p`` (``num_samples`` > 1 needs sampling).
        ``batch_size`` prompts are generated together (``batch_size *
        num_samples`` rows); diff-aware decoding keeps that many going, a
        finished prompt's place taken by the next waiting one (continuous
        batching), plain ``generate`` decodes batch after batch. ``min_new_tokens`` holds EOS back (benchmarks).
        ``progress``: True shows a progress bar on stderr; a callable is
        called with the number of requests finished (by each batch; diff-aware:
        as each request finishes).
        ``constrained`` (default): diff-aware decoding
        (:mod:`diffmodel.infer.constrained`), every diff applies strictly;
        False: plain ``generate``. ``top_k`` > 0 keeps the k likeliest tokens when sampling.
        ``edit_format``: the format the model was trained on (default ``carper``;
        :mod:`diffmodel.formats`); formats other than ``carper`` are decoded
        unconstrained whatever ``constrained`` says (:func:`~diffmodel.infer.prompt.decoding`).
        ``speculate`` (default): greedy diff-aware decoding proposes tokens copied from
        the prompt and keeps those greedy picks (:mod:`diffmodel.infer.constrained`):
        the same edits in fewer forward passes; off when sampling or unconstrained.
        ``cuda_graphs`` (default): on a CUDA device diff-aware decoding keeps each row in a fixed
        place of its KV cache and replays each pass from a CUDA graph (:mod:`diffmodel.infer.places`;
        also unless :attr:`decoder`'s ``cuda_graphs`` is False); False runs every pass eagerly.

        Bad arguments (a request that is not three strings of valid Unicode, an option of the wrong type or
        out of range) raise one :class:`~diffmodel.errors.DiffModelError` listing each, before anything is generated.
        """
        name = formats.get(edit_format).NAME
        constrained, _ = decoding(name, constrained)
        problems = _option_problems(num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_p=top_p, batch_size=batch_size, min_new_tokens=min_new_tokens, top_k=top_k, seed=seed)
        reqs = _read_requests(requests, problems)
        if problems:
            raise DiffModelError("cannot generate:\n" + "\n".join(f"  - {p}" for p in problems))
        results: list[list[Edit] | None] = [None] * len(reqs)
        ids = self.encode(reqs, name)
        todo = []
        for i, row in enumerate(ids):
            if self.max_positions is not None and len(row) >= self.max_positions:
                note = f"the prompt is {len(row)} tokens; the model takes at most {self.max_positions} positions"
                results[i] = [Edit("", None, EditStatus.TOO_LONG, [note], edit_format=name) for _ in range(num_samples)]
            else:
                todo.append(i)
        todo.sort(key=lambda i: -len(ids[i]))  # longest first: memory trouble shows at once
        report = _progress(progress, len(reqs))
        report(len(reqs) - len(todo))
        if seed is not None:
            torch.manual_seed(seed)
        try:
            with decoding_attention(), paused_gc():  # see there: both slow every step down
                if constrained:  # continuous batching: a finished request's place goes to the next one
                    edits = self._generate_constrained([ids[i] for i in todo], [reqs[i].code for i in todo], num_samples,
                                                       max_new_tokens, temperature, top_p, min_new_tokens, top_k,
                                                       speculate=speculate, capacity=batch_size * num_samples, progress=report,
                                                       cuda_graphs=cuda_graphs)
                    for i, group in zip(todo, edits):
                        results[i] = group
                else:  # plain generate: batch after batch
                    for start in range(0, len(todo), batch_size):
                        batch = todo[start:start + batch_size]
                        edits = self._generate([ids[i] for i in batch], [reqs[i].code for i in batch], num_samples,
                                               max_new_tokens, temperature, top_p, min_new_tokens, top_k, edit_format=name)
                        for i, group in zip(batch, edits):
                            results[i] = group
                        report(len(batch))
        finally:
            report(None)
        return results  # type: ignore[return-value]

    @property
    def decoder(self):
        """The :class:`~diffmodel.infer.constrained.ConstrainedDecoder` diff-aware decoding runs (built on first use).

        Its ``fixed_places`` (None, the default: on a CUDA device) and ``cuda_graphs`` choose how the rows' KV cache is held
        (:mod:`diffmodel.infer.places`).
        """
        if self._decoder is None:
            from diffmodel.infer.constrained import ConstrainedDecoder

            self._decoder = ConstrainedDecoder(self.model, self.tokenizer, self.eos_ids, self.pad_id)
        return self._decoder

    def _generate_constrained(self, prompts: list[list[int]], codes: list[str], num_samples: int, max_new_tokens: int,
                              temperature: float, top_p: float, min_new_tokens: int, top_k: int,
                              speculate: bool = True, capacity: int | None = None,
                              progress: Callable[[int], None] | None = None, cuda_graphs: bool = True) -> list[list[Edit]]:
        from diffmodel.infer.constrained import SPECULATE_TOKENS, DecodeOptions

        budgets = [max_new_tokens if self.max_positions is None else min(max_new_tokens, self.max_positions - len(p))
                   for p in prompts]
        opts = DecodeOptions(temperature, top_p if temperature > 0 else 1.0, top_k if temperature > 0 else 0, min_new_tokens,
                             SPECULATE_TOKENS if speculate and temperature <= 0 else 0)
        return self.decoder.generate(prompts, codes, num_samples, budgets, opts, capacity, progress, cuda_graphs)

    @torch.inference_mode()
    def _generate(self, prompts: list[list[int]], codes: list[str], num_samples: int, max_new_tokens: int,
                  temperature: float, top_p: float, min_new_tokens: int, top_k: int = 0,
                  edit_format: str | None = None) -> list[list[Edit]]:
        width = max(len(p) for p in prompts)
        budget = max_new_tokens
        if self.max_positions is not None:
            budget = min(budget, self.max_positions - width)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            input_ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        config = copy.deepcopy(self.model.generation_config)
        sampling = temperature > 0
        config.update(
            max_new_tokens=budget, min_new_tokens=min(min_new_tokens, budget) or None,
            do_sample=sampling, temperature=temperature if sampling else None,
            top_p=top_p if sampling else None, top_k=(top_k or None) if sampling else None,
            num_beams=1, num_return_sequences=num_samples,
            pad_token_id=self.pad_id, eos_token_id=self.eos_ids,
            max_length=None,
        )
        if self._may_end is False:
            table = tokens_with_gt(self.tokenizer)
            self._may_end = None if table is None else table.to(self.device)
        stop = NameMarkerStop(self.tokenizer, width, may_end=self._may_end, edit_format=edit_format)
        out = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
            generation_config=config, stopping_criteria=StoppingCriteriaList([stop]),
        )
        new = out[:, width:].tolist()
        edits: list[list[Edit]] = []
        for p in range(len(prompts)):
            group = []
            for k in range(num_samples):
                row = p * num_samples + k
                tokens = new[row]
                reason = STOP_LENGTH
                end = len(tokens)
                eos_at = next((j for j, t in enumerate(tokens) if t in self.eos_ids), None)
                if eos_at is not None:
                    end, reason = eos_at + 1, STOP_EOS
                if row in stop.stopped_at and stop.stopped_at[row] <= end:
                    end, reason = stop.stopped_at[row], STOP_MARKER
                text = self.tokenizer.decode([t for t in tokens[:end] if t not in self.eos_ids], skip_special_tokens=False)
                group.append(finish_edit(codes[p], text, reason, end, edit_format))
            edits.append(group)
        return edits


#: How many bad requests one error lists.
MAX_BAD_REQUESTS = 10


def _read_requests(requests: Any, problems: list[str]) -> list[EditRequest]:
    """``requests`` as :class:`EditRequest` objects; what is wrong with them is added to ``problems``."""
    single = (isinstance(requests, (EditRequest, dict, str, bytes))
              or (isinstance(requests, tuple) and len(requests) == 3 and all(isinstance(v, str) for v in requests)))
    if single or not isinstance(requests, Iterable):
        what = "one request" if single else type(requests).__name__
        problems.append(f"requests must be a list of requests, got {what}; "
                        "for one file use edit(code, message, name) or edit_many([request])")
        return []
    reqs, bad = [], []
    for i, item in enumerate(requests):
        try:
            reqs.append(as_request(item))
        except DiffModelError as err:
            bad.append(f"request {i}: {err}")
    if len(bad) > MAX_BAD_REQUESTS:
        bad = bad[:MAX_BAD_REQUESTS] + [f"... and {len(bad) - MAX_BAD_REQUESTS} more bad requests"]
    problems.extend(bad)
    return reqs


def _option_problems(num_samples, max_new_tokens, temperature, top_p, batch_size, min_new_tokens, top_k, seed) -> list[str]:
    """What is wrong with :meth:`DiffModel.edit_many`'s generation options, each naming the argument."""
    problems = []
    ints = dict(num_samples=num_samples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                min_new_tokens=min_new_tokens, top_k=top_k)
    reals = dict(temperature=temperature, top_p=top_p)
    for key, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            problems.append(f"{key} must be an integer, got {type(value).__name__} {value!r}")
    for key, value in reals.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            problems.append(f"{key} must be a finite number, got {type(value).__name__} {value!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        problems.append(f"seed must be an integer or None, got {type(seed).__name__} {seed!r}")
    if problems:  # the range checks below need numbers
        return problems
    if num_samples < 1:
        problems.append(f"num_samples must be at least 1, got {num_samples}")
    if num_samples > 1 and temperature <= 0:
        problems.append(f"num_samples={num_samples} with greedy decoding gives {num_samples} identical samples; set temperature > 0 to sample")
    if temperature < 0:
        problems.append(f"temperature must be 0 (greedy) or more, got {temperature}")
    if not 0 < top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        problems.append(f"top_k must be 0 (off) or more, got {top_k}")
    if batch_size < 1:
        problems.append(f"batch_size must be at least 1, got {batch_size}")
    if max_new_tokens < 1:
        problems.append(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if min_new_tokens < 0:
        problems.append(f"min_new_tokens must be 0 (off) or more, got {min_new_tokens}")
    return problems


def _progress(progress: bool | Callable[[int], None], total: int) -> Callable[[int | None], None]:
    """A ``report(n)`` function: n more requests done; ``report(None)`` closes."""
    if callable(progress):
        def call(n: int | None) -> None:
            if n:
                progress(n)
        return call
    if not progress:
        return lambda n: None
    from diffmodel.infer.partial import edit_bar

    bar = edit_bar(total)

    def update(n: int | None) -> None:
        if n is None:
            bar.close()
        elif n:
            bar.update(n)
    return update


__all__ = ["STOP_WINDOW", "DiffModel", "NameMarkerStop", "decoding_attention", "paused_gc", "tokens_with_gt"]
