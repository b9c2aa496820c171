"""Diff-aware decoding: a token-level decoder that can only write diffs that apply to the file.

The model writes after ``<DFF>`` one space and the diff. Here each row of a
batch carries a :class:`~diffmodel.diff.grammar.DiffState` over its file; at
each step the model may only pick a token whose text the grammar accepts, EOS
only where the diff may end, and text the grammar forces (the rest of a
context or removal line, ``@@ -``, the `` @@`` that closes a header) is not
decoded step by step but fed to the model as one chunk::

    prefill   prompt + tokens(" @@ -")[:-1]                  one forward, left-padded
    step      row a: [sampled token] + tokens(forced)[:-1]    one forward for the whole batch:
              row b: [sampled token]                          shorter rows padded on the LEFT of
              row c: (finished: dropped from the cache)       the chunk, pads masked out

A step feeds each row its sampled token followed by the tokens of the text
the grammar forces after it (tokenized alone, checked to decode to exactly the
forced bytes, else written greedily from the longest vocabulary entries), so a
context line costs one forward, not one per token. The last token of each
forced span is held back: the model picks it at the next step among the tokens
that fit, so a token that BPE merges across the span's end (``"\n    "``, a
newline and the next line's indent) stays possible and the model sees the
tokenization it was trained on at line boundaries. Pads inside the KV cache
keep attention mask 0 for the rest of generation; each row's position ids
count only its real tokens, so a row sees the same positions alone or in a
batch. Finished rows are removed from the cache (``batch_select_indices``).
Once the padding columns pass :data:`COMPACT_SHARE` of the longest row's real
tokens, the cache is compacted: each row's real entries move, in order, to
the right end (keys already hold their positions; attention ignores masked
columns), so the cache stays about as long as the longest row instead of
growing by the widest chunk at every step. Only plain per-layer key/value
caches are rewritten (``DynamicLayer``); others keep their padding. Those
layers become :class:`GrowingLayer`: a step's keys and values are written
into room kept at the end of the layer's buffers, not concatenated to a
copy of the whole cache.

Continuous batching (``generate(..., capacity=N)``; ``DiffModel.edit_many``
passes ``batch_size * num_samples``): at most N rows decode at once, prompts
admitted in order. Once :data:`ADMIT_SHARE` of the places are free (or room
for all the prompts still waiting, when they are fewer), the next
waiting prompts (all samples of each) are prefilled in one forward pass of
their own and their KV cache is appended to the batch's (the narrower of the
two padded on the left with masked columns, as the compaction above relies
on); their last logits join the step's. A cache that is not plain per-layer
key/value tensors is never merged: then a new group is admitted only when
every row has finished.

Fixed places (``fixed_places``; by default on a CUDA device): instead of the
growing cache above, each row keeps one place of a
:class:`~diffmodel.infer.places.PlaceCache` for its whole generation (its
token at position ``p`` in column ``p``): a finished row's place goes to an
admitted prompt (prefilled as above, then copied in), rejected proposals are
written over by the next tokens, nothing is compacted or merged, and every
pass has one of a few shapes, so it is replayed from a CUDA graph
(``cuda_graphs``): the host no longer launches each kernel of each step. On
the CPU the growing cache is the default: there the compute of every pass
counts, and it drops finished rows from it, where fixed places keep computing
idle ones (at batch 50 on a tiny model fixed places took 1.06x its time).
The tokens are those of the growing cache (up to float rounding in low precision).

A token that is the only one the grammar allows (a held-back last token that
nothing can merge with, say) is taken at once, with what is forced after it,
and counted as forced: the model could pick nothing else, so no forward pass
is spent on it (``forward_calls`` is the number of tokens picked from logits,
at least the prefill, less the proposals accepted by speculation).

Speculation (greedy only, ``DecodeOptions.speculate`` = K > 0; ``DiffModel``
uses :data:`SPECULATE_TOKENS`): a row inside ``+`` text proposes up to K
tokens by prompt lookup (:class:`PromptLookup`): the longest suffix (3, 2, 1
tokens) of what it generated is found earlier in its own tokens (a ``+`` line
after the ``-`` line it rewrites is tokenized alike), else in its prompt, and
what followed there is proposed; after a proposal the model replaced, the copy
resumes one token past it. Proposals stop where the grammar would not let the
row pick freely after them (forced text, an only token, no token, a token
that does not fit) and one short of the budget. They ride in the step's chunk
after the row's own tokens::

    step      row a: [picked token] + tokens(forced)[:-1]
              row b: [picked token, p1, p2, p3]               logits of b's last 4 positions kept

Verification picks, in one masked argmax over every row's positions, the
token greedy decoding would pick at each position (the grammar's choice after
the proposals before it: EOS, ``<`` line starts and ``min_new_tokens``
included); the longest prefix of proposals equal to those picks is taken (as
picked, not forced), and the pick after it is the row's next token, fed with
what is forced after it as any pick. Rejected proposals stay in the KV cache
as pads: their attention mask becomes 0 and the row's position count moves by
the accepted ones only, so the next tokens take their positions.

Host work per step: what each row may pick (:class:`_Choice`: ids, whether
every newline-free token is allowed, end tokens, the only token) is cached
for the call by (state signature, pending bytes, whether the row may end
yet); the batch's mask is built on the device from one index tensor, the
argmax or sampling runs there, and one transfer goes each way (the step's ids,
positions and mask in; the picked ids out by one ``.tolist()``). A chunk of
tokens is fed to the grammar in one pass. ``benchmarks/constrained_decoding.py
--profile`` times the forward passes and the host work per step of each arm.

The end: EOS where the grammar allows it, or a token that starts a line with
``<`` there (the next sample's ``<NME>``: a diff line never starts with
``<``), which ends the row with ``stop == "marker"`` as unconstrained
decoding's ``<NME>`` stop does.

Token texts: every vocabulary entry's bytes are read once (:class:`TokenTable`:
byte-level BPE through its byte alphabet, SentencePiece pieces with ``▁`` and
``<0xNN>``, else ``decode([id])``). A token whose bytes are not whole UTF-8
(a multi-byte character split by BPE) is allowed when its complete part is
accepted and its incomplete tail begins a character the grammar allows; the
tail waits in the row's ``pending`` bytes until the character is complete.
Candidate tokens are narrowed before the grammar is asked: tokens are found by
prefix in the sorted token texts, following forced text and the few characters
allowed at a line start or in a header; in ``+`` text every token without a
newline is allowed by one precomputed mask; in a header's number the tokens
of digits alone are checked together (every digit of every header is a new
state, so this is where most answers are computed), cached by
:attr:`~diffmodel.diff.grammar.DiffState.digits_key`. Answers are cached by the state's
:attr:`~diffmodel.diff.grammar.DiffState.signature` for one ``generate`` call
(every step inside a ``+`` line, and the samples of one request, ask alike).

Invariants:
- The text fed to a row's grammar state is exactly the bytes of the tokens fed
  to the model for that row (after the one space following ``<DFF>``); so a
  finished row's diff (:meth:`DiffState.finish`) parses as valid and applies
  strictly, and context and ``-`` lines are the file's bytes.
- A row cut at ``max_new_tokens`` (or at the model's positions) ends with
  ``finish(partial=True)``: its unfinished line or change-less hunk is dropped,
  and the edit says so (``stop == "length"`` and a note).
- Greedy decoding of a request gives the same edit alone or in a batch (up to
  float rounding of padded batches in low precision), and the same edit and
  token ids with speculation and without (up to the float rounding of
  computing a position in a longer chunk): a proposal is kept only where it
  is what greedy decoding would have picked there. Sampling never speculates. Compacting the cache
  changes no edit (sampled ones included); taking an only-allowed token
  without a forward pass changes no greedy edit (sampling then draws from
  the generator fewer times, so seeded samples differ from a loop without it).
- Nothing the model does makes this raise: a row no token can continue ends
  with ``finish(partial=True)`` and a note.
"""

from __future__ import annotations

import bisect
import inspect
import json
import math
import re
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicLayer

from diffmodel.diff.grammar import DIGITS, NUMBER_FIELDS, DiffGrammar, DiffState, Next
from diffmodel.infer.places import PlaceCache
from diffmodel.infer.prompt import STOP_EOS, STOP_LENGTH, STOP_MARKER, Edit, finish_edit

#: What the sample format puts between ``<DFF>`` and the diff.
LEAD = " "
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


# -- the vocabulary as text -------------------------------------------------------------------


def _utf8_split(data: bytes) -> tuple[str, bytes] | None:
    """``data`` as (whole characters, an incomplete last character); None when not UTF-8 at all."""
    for cut in range(0, min(3, len(data)) + 1):
        head, tail = data[:len(data) - cut], data[len(data) - cut:]
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not cut or _incomplete(tail):
            return text, tail
    return None


def _incomplete(tail: bytes) -> bool:
    """Whether ``tail`` is the start of one UTF-8 character, not yet complete."""
    lead = tail[0]
    size = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if 0xF0 <= lead <= 0xF4 else 0
    if not size or len(tail) >= size or any(not 0x80 <= b <= 0xBF for b in tail[1:]):
        return False
    try:
        (tail + b"\x80" * (size - len(tail))).decode("utf-8")
    except UnicodeDecodeError:  # overlong or surrogate starts are never completed
        return False
    return True


def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {ch: b for b, ch in bytes_to_unicode().items()}


def token_bytes(tokenizer) -> list[bytes | None]:
    """The bytes each token id stands for in generated text; None for special and added tokens."""
    size = len(tokenizer)
    skip = set(tokenizer.all_special_ids) | {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    try:
        decoder_spec = json.dumps(json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder"))
    except Exception:
        decoder_spec = ""
    out: list[bytes | None] = []
    if "ByteLevel" in decoder_spec:
        table = _byte_decoder()
        for i, piece in enumerate(pieces):
            ok = i not in skip and piece is not None and all(c in table for c in piece)
            out.append(bytes(table[c] for c in piece) if ok else None)
        return out
    sentencepiece = "ByteFallback" in decoder_spec or "Metaspace" in decoder_spec
    for i, piece in enumerate(pieces):
        if i in skip or piece is None:
            out.append(None)
        elif sentencepiece:
            byte = _BYTE_PIECE.match(piece)
            out.append(bytes([int(byte.group(1), 16)]) if byte else piece.replace("\u2581", " ").encode("utf-8"))
        else:
            text = tokenizer.decode([i], skip_special_tokens=False)
            out.append(None if not text or "\ufffd" in text else text.encode("utf-8"))
    return out


class TokenTable:
    """The vocabulary read once: token texts sorted for prefix search, masks, byte fallbacks."""

    def __init__(self, tokenizer, vocab_size: int | None = None):
        self.bytes = token_bytes(tokenizer)
        self.size = max(vocab_size or 0, len(self.bytes))
        self.ids_of: dict[str, list[int]] = {}
        self.by_bytes: dict[bytes, int] = {}
        #: tokens that are not whole UTF-8, by their first byte: (id, bytes)
        self.partial: dict[int, list[tuple[int, bytes]]] = {}
        newline_free = torch.zeros(self.size, dtype=torch.bool)
        #: tokens with a newline, grouped by the first character after it: {char: {suffix: [ids]}}
        self.after_newline: dict[str, dict[str, list[int]]] = {}
        self.line_ends: list[int] = []  # tokens whose only newline is their last character
        #: tokens that start a line with '<' (the next sample's <NME>): (id, the text before the '<')
        self.line_lt: list[tuple[int, str]] = []
        for i, data in enumerate(self.bytes):
            if not data:
                continue
            if data not in self.by_bytes or self._fallback_piece(tokenizer, self.by_bytes[data]):
                self.by_bytes[data] = i  # spelling forced text: a vocabulary piece over a <0xNN> byte piece
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                self.partial.setdefault(data[0], []).append((i, data))
                continue
            self.ids_of.setdefault(text, []).append(i)
            lt = 0 if text.startswith("<") else text.find("\n<") + 1
            if lt > 0 or text.startswith("<"):
                self.line_lt.append((i, text[:lt]))
            at = text.find("\n")
            if at < 0:
                newline_free[i] = True
            elif at == len(text) - 1:
                self.line_ends.append(i)
            else:
                rest = text[at + 1:]
                self.after_newline.setdefault(rest[0], {}).setdefault(rest, []).append(i)
        self.newline_free = newline_free
        #: the same per id, on the host: feeding such a token in '+' text (nothing pending) leaves the
        #: grammar in '+' text with the same signature
        self.plain = bytes(newline_free.to(torch.uint8).tolist())
        #: in '+' text (nothing pending) these tokens that are not whole UTF-8 are allowed as they are:
        #: whole characters without a newline, then the start of one more character
        self.partial_in_added = []
        for group in self.partial.values():
            for i, data in group:
                split = _utf8_split(data)
                if split is not None and "\n" not in split[0]:
                    self.partial_in_added.append(i)
        # tokens not whole UTF-8 that hold a newline are rare: checked one by one in '+' text
        self._partial_newline = [(i, d) for g in self.partial.values() for i, d in g
                                 if (sp := _utf8_split(d)) is not None and "\n" in sp[0]]
        self.sorted = sorted(self.ids_of)
        #: tokens of ASCII digits alone, and those that start with a digit and go on with ',' or ' ' (a header
        #: number's end): in a header number these are checked against the state at once, not digit by digit
        self.digit_runs = [(i, t) for t in self.sorted if t.isascii() and t.isdigit() for i in self.ids_of[t]]
        self.digits_then_end = [(i, t) for t in self.sorted if t[:1] in DIGITS and not t.isdigit()
                                and t.lstrip("0123456789")[:1] in (",", " ") for i in self.ids_of[t]]
        self.maxlen = max((len(t) for t in self.sorted), default=0)
        self.max_bytes = max((len(b) for b in self.by_bytes), default=0)
        #: cached answers of :meth:`allowed`, :meth:`ends` and :meth:`next_of`, by state signature
        self.memo: dict[tuple, tuple[list[int], bool]] = {}
        self.memo_ends: dict[tuple, list[tuple[int, str]]] = {}
        self.memo_next: dict[tuple, Next] = {}
        self.memo_digits: dict[tuple, list[int]] = {}

    @staticmethod
    def _fallback_piece(tokenizer, i: int) -> bool:
        """Whether token ``i`` is a SentencePiece byte-fallback piece (``<0xNN>``)."""
        return bool(_BYTE_PIECE.match(str(tokenizer.convert_ids_to_tokens(i))))

    # -- which tokens may come next ----------------------------------------------------------

    def allowed(self, state: DiffState, pending: bytes) -> tuple[list[int], bool]:
        """(token ids allowed after ``state`` and ``pending`` bytes, whether every newline-free token is too).

        Cached by the state's :attr:`~DiffState.signature` in :attr:`memo`
        (every step of a ``+`` line asks the same question); the caller
        clears the cache (:meth:`forget`) when its grammars go.
        """
        key = (state.signature, pending)
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = self._allowed(state, pending)
        return found

    def next_of(self, state: DiffState) -> Next:
        """``state.allowed_next()``, cached by signature like :meth:`allowed`."""
        key = state.signature
        found = self.memo_next.get(key)
        if found is None:
            found = self.memo_next[key] = state.allowed_next()
        return found

    def forget(self) -> None:
        """Drop the cached answers (they hold the grammars of finished requests)."""
        self.memo.clear()
        self.memo_ends.clear()
        self.memo_next.clear()
        self.memo_digits.clear()

    def _allowed(self, state: DiffState, pending: bytes) -> tuple[list[int], bool]:
        out: list[int] = []
        everything = False
        nxt = self.next_of(state)
        if pending:
            self._partial(state, nxt, pending, out)
        elif nxt.field == "added":
            everything = True
            self._added_from_start(state, out)
            out.extend(self.partial_in_added)
            out.extend(i for i, data in self._partial_newline if self.step(state, b"", data) is not None)
        elif nxt.field in NUMBER_FIELDS:
            self._number(state, nxt, out)
            self._partial(state, nxt, pending, out)
        else:
            self._extend(state, "", out, nxt)
            self._partial(state, nxt, pending, out)
        return out, everything

    def _number(self, state: DiffState, nxt: Next, out: list[int]) -> None:
        """In a hunk header's number: what :meth:`_extend` finds, without a grammar state per digit.

        Tokens of digits alone are checked together (cached by
        :attr:`~DiffState.digits_key`, shared by every number alike); the few
        that go on from digits to the number's end one by one; those that
        start with the end (',' or ' ') by the prefix search.
        """
        key = state.digits_key
        runs = self.memo_digits.get(key)
        if runs is None:
            runs = self.memo_digits[key] = state.accepted_digit_runs(self.digit_runs)
        out.extend(runs)
        out.extend(i for i, text in self.digits_then_end if state.accepts(text))
        self._extend(state, "", out, nxt, skip=DIGITS)

    def _has_longer(self, prefix: str) -> bool:
        i = bisect.bisect_right(self.sorted, prefix)
        return i < len(self.sorted) and self.sorted[i].startswith(prefix)

    def _extend(self, state: DiffState, prefix: str, out: list[int], nxt: Next | None = None,
                skip: frozenset[str] = frozenset()) -> None:
        """Tokens longer than ``prefix`` that start with it and whose rest ``state`` accepts (the next character not in ``skip``)."""
        if not self._has_longer(prefix):
            return
        nxt = nxt or self.next_of(state)
        room = self.maxlen - len(prefix)
        if nxt.field == "forced":
            forced = nxt.forced
            for k in range(1, min(len(forced), room) + 1):
                out.extend(self.ids_of.get(prefix + forced[:k], ()))
            if len(forced) < room and self._has_longer(prefix + forced):
                self._extend(state.feed(forced), prefix + forced, out)
        elif nxt.chars is not None:
            for c in nxt.chars - skip if skip else nxt.chars:
                longer = prefix + c
                out.extend(self.ids_of.get(longer, ()))
                if self._has_longer(longer):
                    self._extend(state.feed(c), longer, out)
        else:  # '+' text after a non-empty prefix: the few tokens starting with it
            i = bisect.bisect_right(self.sorted, prefix)
            while i < len(self.sorted) and self.sorted[i].startswith(prefix):
                text = self.sorted[i]
                rest = text[len(prefix):]
                if "\n" not in rest or state.accepts(rest):
                    out.extend(self.ids_of[text])
                i += 1

    def _added_from_start(self, state: DiffState, out: list[int]) -> None:
        """Inside ``+`` text: tokens with a newline (those without are the precomputed mask)."""
        out.extend(self.line_ends)
        line = state.feed("\n")
        chars = self.next_of(line).chars or frozenset()
        for c in chars:
            for rest, ids in self.after_newline.get(c, {}).items():
                if line.accepts(rest):
                    out.extend(ids)

    def _partial(self, state: DiffState, nxt: Next, pending: bytes, out: list[int]) -> None:
        """Tokens that are not whole UTF-8: allowed when their complete text is and their tail may follow."""
        if not self.partial:
            return
        if pending:
            firsts = range(0x80, 0xC0)
        else:
            if nxt.field == "forced":
                firsts = nxt.forced.encode("utf-8")[:1]
            elif nxt.chars is not None:
                firsts = bytes(sorted({ord(c) for c in nxt.chars}))
            else:
                firsts = self.partial.keys()
        for first in firsts:
            for i, data in self.partial.get(first, ()):
                if self.step(state, pending, data) is not None:
                    out.append(i)

    def ends(self, state: DiffState, pending: bytes) -> list[tuple[int, str]]:
        """Tokens that end the diff by starting a line with ``<`` (a next sample's ``<NME>``).

        Returns (id, the text before the ``<``, which the diff keeps); the diff
        must be able to end after that text. A diff line never starts with ``<``.
        Cached like :meth:`allowed`.
        """
        if pending:
            return []
        key = state.signature
        found = self.memo_ends.get(key)
        if found is None:
            found = self.memo_ends[key] = self._ends(state)
        return found

    def _ends(self, state: DiffState) -> list[tuple[int, str]]:
        out = []
        for i, before in self.line_lt:
            if not before:
                if state.can_end:
                    out.append((i, before))
            elif state.accepted_prefix(before) == len(before) and state.feed(before).can_end:
                out.append((i, before))
        return out

    @staticmethod
    def step(state: DiffState, pending: bytes, data: bytes) -> tuple[DiffState, bytes] | None:
        """The (state, pending bytes) after a token's bytes, or None when the grammar does not allow them."""
        split = _utf8_split(pending + data)
        if split is None:
            return None
        text, tail = split
        after = state.try_feed(text)
        if after is None:
            return None
        if tail:
            nxt = after.allowed_next()
            if nxt.field == "forced":
                if not nxt.forced.encode("utf-8").startswith(tail):
                    return None
            elif nxt.field != "added":
                return None
        return after, tail

    # -- forced text as tokens ----------------------------------------------------------------

    def encode_forced(self, tokenizer, text: str, skip: int = 0) -> list[int]:
        """Token ids whose bytes are exactly ``text``'s UTF-8 bytes after the first ``skip``.

        The tokenizer's own ids when they decode to exactly those bytes (and
        ``skip`` is 0), else the longest vocabulary entries, greedily.
        """
        data = text.encode("utf-8")[skip:]
        if not skip:
            backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer: no Python per call
            ids = (backend.encode(text, add_special_tokens=False).ids if backend is not None
                   else tokenizer(text, add_special_tokens=False)["input_ids"])
            if all(0 <= i < len(self.bytes) and self.bytes[i] for i in ids) and b"".join(self.bytes[i] for i in ids) == data:
                return ids
        return self.greedy(data)

    def greedy(self, data: bytes) -> list[int]:
        """The longest vocabulary entries that spell ``data``; [] when some byte has no token."""
        ids: list[int] = []
        at = 0
        while at < len(data):
            for size in range(min(self.max_bytes, len(data) - at), 0, -1):
                i = self.by_bytes.get(data[at:at + size])
                if i is not None:
                    ids.append(i)
                    at += size
                    break
            else:
                return []
        return ids


# -- the decoding loop ------------------------------------------------------------------------


@dataclass
class _Row:
    """One generation: its grammar state, its pending bytes, what it has fed so far."""

    code: str
    state: DiffState
    budget: int
    pending: bytes = b""
    tokens: int = 0  # generated tokens, forced ones included
    forced: int = 0
    stop: str = ""
    notes: list[str] = field(default_factory=list)
    chunk: list[int] = field(default_factory=list)  # the tokens the next forward feeds
    ids: list[int] = field(default_factory=list)  # every token generated (EOS included)
    #: speculation: the tokens proposed after the chunk, the choice after each, where they start in the prompt
    proposed: list[int] = field(default_factory=list)
    proposed_choices: list = field(default_factory=list)
    proposed_at: int = 0
    hint: int = 0  # the prompt position after the last accepted proposal
    source: list[int] = field(default_factory=list)  # what the proposals were copied from (a slice)
    resume: tuple[list[int], int] | None = None  # where the copy may go on next step

    def take(self, ids: list[int], table: TokenTable, forced: bool) -> None:
        """Feed token ids whose bytes the grammar allows (cut to the budget)."""
        ids = ids[:self.budget - self.tokens]
        if not ids:
            return
        data = [table.bytes[i] for i in ids]
        after = None if None in data else TokenTable.step(self.state, self.pending, b"".join(data))
        if after is not None:  # the whole chunk at once: one pass of the grammar
            self.state, self.pending = after
        else:  # never for tokens from TokenTable.allowed or encode_forced; kept safe, token by token
            for n, i in enumerate(ids):
                after = None if data[n] is None else TokenTable.step(self.state, self.pending, data[n])
                if after is None:
                    self.notes.append(f"token {i} does not fit the diff here; the diff was cut")
                    self.stop, ids = STOP_LENGTH, ids[:n]
                    break
                self.state, self.pending = after
        self.chunk.extend(ids)
        self.ids.extend(ids)
        self.tokens += len(ids)
        if forced:
            self.forced += len(ids)


@dataclass(frozen=True)
class _Choice:
    """What a row may pick next; one per (state signature, pending bytes, whether it may end yet)."""

    ids: tuple[int, ...]  # allowed ids (EOS and '<' line starts where the row may end), inside the logits
    everything: bool  # every newline-free token too
    ends: dict[int, str]  # tokens that end the diff with a '<' line: the text before the '<'
    only: int | None  # the one token allowed, when there is no other: taken without a forward pass

    @property
    def empty(self) -> bool:
        return not (self.ids or self.everything)


@dataclass
class DecodeOptions:
    """The sampling settings of one constrained run (temperature 0: greedy)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_new_tokens: int = 0
    #: greedy only: the most tokens a row proposes per step by prompt lookup (0: no speculation)
    speculate: int = 0


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on ``device`` without waiting for the device (pinned, asynchronous) where it is a GPU."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


#: Compact the KV cache when its padding columns outnumber this share of the longest row's real tokens.
COMPACT_SHARE = 0.25
#: Admit waiting prompts once at least this share of the rows' places is free (each admission is a prefill pass).
ADMIT_SHARE = 0.125
#: Speculation: the most tokens proposed per row and step, and the longest n-gram looked up in the prompt.
SPECULATE_TOKENS = 8
LOOKUP_NGRAM = 3


#: Room a growing KV cache layer keeps at its end: at least this many positions, or this share of its length.
GROW_MIN, GROW_SHARE = 64, 0.25


class GrowingLayer(DynamicLayer):
    """A plain key/value cache layer whose tensors are views of buffers with room at the end.

    ``DynamicLayer`` appends by concatenation, which copies the whole cache of
    the layer at every decoding step; here the new positions are written into
    the room left, and the buffers are made anew (larger by :data:`GROW_SHARE`)
    only when it runs out or when the tensors were replaced from outside
    (rows selected, the cache compacted or merged). Keys and values hold the
    same numbers as with ``DynamicLayer``.
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized or self.keys.numel() == 0:
            return super().update(key_states, value_states, *args, **kwargs)
        used, n = self.keys.shape[-2], key_states.shape[-2]
        room = getattr(self, "_room", None)
        if (room is None or self.keys.data_ptr() != room[0].data_ptr() or self.keys.stride() != room[0].stride()
                or self.values.data_ptr() != room[1].data_ptr() or used + n > room[0].shape[-2]):
            size = used + n + max(GROW_MIN, int(GROW_SHARE * (used + n)))
            room = tuple(t.new_empty(t.shape[:-2] + (size, t.shape[-1])) for t in (self.keys, self.values))
            room[0][..., :used, :] = self.keys
            room[1][..., :used, :] = self.values
            self._room = room
        room[0][..., used:used + n, :] = key_states
        room[1][..., used:used + n, :] = value_states
        self.keys, self.values = room[0][..., :used + n, :], room[1][..., :used + n, :]
        return self.keys, self.values


def _grow_in_place(cache) -> None:
    """Make the cache's plain ``DynamicLayer`` layers :class:`GrowingLayer` ones (other layers are left as they are)."""
    for layer in getattr(cache, "layers", None) or ():
        if type(layer) is DynamicLayer:
            layer.__class__ = GrowingLayer


class PromptLookup:
    """Where each n-gram (n = 1 .. :data:`LOOKUP_NGRAM`) of one prompt's token ids occurs: proposals for speculation."""

    def __init__(self, ids: list[int], longest: int = LOOKUP_NGRAM):
        self.ids = ids
        self.longest = longest
        #: a token, and two tokens -> the positions just after each occurrence that something follows, ascending
        #: (longer n-grams: the two-token list, filtered)
        self.ends1: dict[int, list[int]] = {}
        self.ends2: dict[tuple[int, int], list[int]] = {}
        for end, token in enumerate(ids[:-1], 1):
            found = self.ends1.get(token)
            if found is None:
                self.ends1[token] = [end]
            else:
                found.append(end)
        for end, pair in enumerate(zip(ids, ids[1:-1]), 2):
            found = self.ends2.get(pair)
            if found is None:
                self.ends2[pair] = [end]
            else:
                found.append(end)

    def _ends(self, tail: list[int]) -> list[int]:
        """Where ``tail`` (one token or more) occurs in the prompt with something after it: the positions after it."""
        if len(tail) == 1:
            return self.ends1.get(tail[0], [])
        found = self.ends2.get((tail[-2], tail[-1]), [])
        if len(tail) == 2:
            return found
        n, head, ids = len(tail), tail[:-2], self.ids
        return [end for end in found if end >= n and ids[end - n:end - 2] == head]

    def follow(self, generated: list[int], k: int, hint: int, resume: tuple[list[int], int] | None = None
               ) -> tuple[list[int], int]:
        """Up to ``k`` tokens that followed the longest suffix (n tokens, n = :attr:`longest` .. 1) of
        ``generated`` where it occurs before: in ``generated`` itself (the latest occurrence: a ``+`` line
        after the ``-`` line it rewrites, tokenized alike), else in the prompt; and where they start in the
        prompt (0 when they come from ``generated``). Before single tokens are looked up, ``resume``
        (a sequence and a position: the copy of the last step, one token past where the model's pick
        replaced a proposal) gives its tokens from there.

        Of several occurrences in the prompt, the first that ends at or after
        ``hint`` (where the last accepted proposal from the prompt ended: a copy
        goes on where it stopped), else the first. ([], 0) when nothing matches.
        """
        size = len(generated)
        packed = array("q", generated).tobytes()  # searched in C: 8 bytes a token
        for n in range(min(self.longest, size - 1), 0, -1):
            if n == 1 and resume is not None and resume[1] < len(resume[0]):
                seq, at = resume
                return seq[at:at + k], 0
            tail = generated[size - n:]
            pattern = packed[8 * (size - n):]
            at = packed.rfind(pattern, 0, 8 * (size - 1))  # an earlier occurrence, something after it
            while at > 0 and at % 8:  # not on a token boundary: look further back
                at = packed.rfind(pattern, 0, at + len(pattern) - 1)
            if at >= 0:
                start = at // 8
                return generated[start + n:start + n + k], 0
            ends = self._ends(tail)
            if ends:
                at = bisect.bisect_left(ends, hint)
                end = ends[at] if at < len(ends) else ends[0]
                return self.ids[end:end + k], end
        return [], 0


class ConstrainedDecoder:
    """Constrained generation for one model and tokenizer (the token table is built once)."""

    def __init__(self, model, tokenizer, eos_ids: Sequence[int], pad_id: int):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids)
        self.pad_id = pad_id
        vocab = getattr(model.config, "vocab_size", None) or getattr(model.get_output_embeddings(), "out_features", None)
        self.table = TokenTable(tokenizer, vocab)
        self._newline_free: torch.Tensor | None = None  # the table's mask on the logits' device
        self._params: set[str] | None = None  # the model's forward arguments
        self._width = self.table.size  # the logits' width (checked at the prefill)
        #: per generate call: _Choice by (signature, pending, may end); forced ids by (text, skip)
        self._choices: dict[tuple, _Choice] = {}
        self._spelt: dict[tuple[str, int], list[int]] = {}
        #: forward calls of the last :meth:`generate` (prefill included)
        self.forward_calls = 0
        #: speculation in the last :meth:`generate`: tokens proposed, and those accepted (picked without a pass of their own)
        self.proposed = self.accepted = 0
        #: KV cache compactions of the last :meth:`generate` (padding columns dropped)
        self.compactions = 0
        #: prompts admitted while other rows were decoding, in the last :meth:`generate` (prefill passes merged into the cache)
        self.admissions = 0
        #: the widest KV cache of the last :meth:`generate`, in positions
        self.widest_cache = 0
        #: token ids each row of the last :meth:`generate` generated (prompt-major, samples next)
        self.last_ids: list[list[int]] = []
        #: hold the rows in fixed places (:mod:`diffmodel.infer.places`) where they fit; None: on a CUDA device
        self.fixed_places: bool | None = None
        #: replay the fixed places' passes as CUDA graphs (on a CUDA device)
        self.cuda_graphs = True
        #: the :class:`~diffmodel.infer.places.PlaceCache` of the last :meth:`generate` (None: the growing cache)
        self.places: PlaceCache | None = None

    def _call(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache, keep: int = 1):
        """The model on one chunk with the KV cache; returns its output (logits of each row's last ``keep`` positions)."""
        if self._params is None:
            self._params = set(inspect.signature(self.model.forward).parameters)
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": True}
        if "logits_to_keep" in self._params:
            kwargs["logits_to_keep"] = keep
        if cache is not None:  # transformers 5 names it ``cache``; older models ``past_key_values``
            kwargs["cache" if "cache" in self._params else "past_key_values"] = cache
        return self.model(**kwargs)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache, keep: int = 1):
        """One forward pass with the KV cache; returns (cache, the logits of each row's last ``keep`` positions)."""
        out = self._call(ids, mask, positions, cache, keep)
        self.forward_calls += 1
        self.widest_cache = max(self.widest_cache, mask.shape[1])
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        return cache, out.logits[:, -keep:]

    def _pass(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache, keep: int) -> torch.Tensor:
        """A :class:`~diffmodel.infer.places.PlaceCache` pass: the logits of each row's last ``keep`` positions."""
        return self._call(ids, mask, positions, cache, keep).logits[:, -keep:]

    # -- one row ------------------------------------------------------------------------------

    def _choice(self, row: _Row, min_new_tokens: int) -> _Choice:
        """The row's :class:`_Choice`, cached for the generate call (rows and steps ask alike)."""
        return self._choice_at(row.state, row.pending, row.tokens, min_new_tokens)

    def _choice_at(self, state: DiffState, pending: bytes, tokens: int, min_new_tokens: int) -> _Choice:
        """What may be picked after ``state`` and ``pending`` bytes, ``tokens`` generated so far."""
        may_end = tokens >= min_new_tokens
        key = (state.signature, pending, may_end)
        found = self._choices.get(key)
        if found is None:
            ids, everything = self.table.allowed(state, pending)
            ends = dict(self.table.ends(state, pending))
            if may_end or not (ids or everything):
                if not pending and state.can_end:
                    ids = ids + self.eos_ids
                ids = ids + list(ends)
            ids = tuple(i for i in ids if i < self._width)
            only = ids[0] if len(set(ids)) == 1 and not everything else None
            found = self._choices[key] = _Choice(ids, everything, ends, only)
        return found

    def _forced_after(self, row: _Row) -> None:
        """Append to the row's chunk every token the grammar forces now."""
        if row.tokens >= row.budget:
            return
        nxt = self.table.next_of(row.state)
        if nxt.field != "forced":
            return
        spell = (nxt.forced, len(row.pending))
        ids = self._spelt.get(spell)
        if ids is None:
            ids = self._spelt[spell] = self.table.encode_forced(self.tokenizer, nxt.forced, len(row.pending))
        if not ids:
            row.notes.append("the vocabulary cannot spell the file's text here; the diff was cut")
            row.stop = STOP_LENGTH
            return
        row.take(ids[:-1], self.table, forced=True)  # the last token is held back: see the module docstring

    def _apply(self, row: _Row, token: int, choice: _Choice, forced: bool) -> None:
        """Feed a picked token (EOS and a '<' line start end the row), then what the grammar forces after it."""
        if token in self.eos_ids or token in choice.ends:
            row.tokens += 1
            row.forced += forced
            row.ids.append(token)
            row.stop = STOP_EOS
            if token in choice.ends:
                row.state, row.stop = row.state.feed(choice.ends[token]), STOP_MARKER
            return
        row.take([token], self.table, forced=forced)
        self._forced_after(row)
        if not row.stop and row.tokens >= row.budget:
            row.stop = STOP_LENGTH

    def _advance(self, row: _Row, token: int | None, choice: _Choice, min_new_tokens: int) -> None:
        """Feed the token picked from the logits, then every token that is the only one allowed after it."""
        if token is None:
            row.notes.append("no token of the vocabulary can continue the diff here; the diff was cut")
            row.stop = STOP_LENGTH
            return
        self._apply(row, token, choice, forced=False)
        self._take_only(row, min_new_tokens)

    def _take_only(self, row: _Row, min_new_tokens: int) -> None:
        """Feed every next token that is the only one allowed: the model could pick nothing else."""
        while not row.stop:
            choice = self._choice(row, min_new_tokens)
            if choice.only is None:
                break
            self._apply(row, choice.only, choice, forced=True)

    # -- speculation (greedy) -------------------------------------------------------------------

    def _propose(self, row: _Row, lookup: PromptLookup, most: int, min_new_tokens: int) -> None:
        """Set the row's proposals: what followed its last tokens before (:meth:`PromptLookup.follow`), while greedy could pick it.

        Only in ``+`` text (every newline-free token allowed, nothing pending).
        A proposal is kept while the grammar accepts it and, after it, the row
        is still free to pick among several tokens (no forced text, no only
        token, no end: there non-speculative decoding would feed tokens
        without picking them), and the row's budget leaves room for the pick
        after the last one. ``row.proposed_choices[j]`` is the choice after
        proposal ``j``: what verifying the pick at the next position uses.
        """
        row.proposed, row.proposed_choices = [], []
        room = min(most, row.budget - row.tokens - 1)
        if row.stop or row.pending or room <= 0 or not self._choice(row, min_new_tokens).everything:
            return
        found, row.proposed_at = lookup.follow(row.ids, room, row.hint, row.resume)
        row.resume = None
        state, pending, tokens = row.state, row.pending, row.tokens
        plain, width = self.table.plain, min(self._width, len(self.table.plain))
        added = True  # the state is in '+' text with nothing pending (checked above)
        for token in found:
            if added and token < width and plain[token]:  # stays in '+' text: no grammar step needed
                tokens += 1
                row.proposed.append(token)
                row.proposed_choices.append(self._choice_at(state, pending, tokens, min_new_tokens))
                continue
            data = self.table.bytes[token] if token < self._width else None
            after = TokenTable.step(state, pending, data) if data else None
            if after is None:
                break
            state, pending = after
            tokens += 1
            if self.table.next_of(state).field == "forced":
                break
            choice = self._choice_at(state, pending, tokens, min_new_tokens)
            if choice.only is not None or choice.empty:
                break
            added = choice.everything and not pending
            row.proposed.append(token)
            row.proposed_choices.append(choice)
        row.source = found

    def _verify(self, logits: torch.Tensor, live: list[int], rows: list[_Row], choices: list[_Choice],
                opts: DecodeOptions) -> list[tuple[list[int], int]]:
        """Greedy picks at each row's last position and after each of its proposals, in one :meth:`_pick`.

        Returns per row (the picks, how many proposals equal the pick before them).
        """
        width = logits.shape[1]
        at_row, at_col, flat = [], [], []
        for r, i in enumerate(live):
            n = len(rows[i].proposed)
            at_row += [r] * (n + 1)
            at_col += range(width - n - 1, width)
            flat += [choices[r]] + rows[i].proposed_choices
        index = _to_device(torch.tensor([at_row, at_col], dtype=torch.long), logits.device)
        picks = self._pick(logits[index[0], index[1]], flat, opts)
        out, start = [], 0
        for i in live:
            proposed = rows[i].proposed
            mine = picks[start:start + len(proposed) + 1]
            start += len(proposed) + 1
            good = 0
            while good < len(proposed) and mine[good] == proposed[good]:
                good += 1
            out.append((mine, good))
        return out

    # -- the batch ----------------------------------------------------------------------------

    def _pick(self, logits: torch.Tensor, choices: list[_Choice], opts: DecodeOptions) -> list[int | None]:
        """One token per row from its allowed set (None: nothing allowed); one transfer each way.

        The mask is built once per distinct choice (rows in ``+`` text, and a
        row's positions under speculation, mostly share one) and gathered per row.
        """
        device = logits.device
        size = min(self.table.size, logits.shape[1])
        if self._newline_free is None or self._newline_free.device != device:
            self._newline_free = self.table.newline_free[:size].to(device)
        at: dict[int, int] = {}
        distinct: list[_Choice] = []
        inverse = []
        for c in choices:
            k = at.get(id(c))
            if k is None:
                k = at[id(c)] = len(distinct)
                distinct.append(c)
            inverse.append(k)
        wide = [k for k, c in enumerate(distinct) if c.everything]
        empty = [k for k, c in enumerate(distinct) if c.empty]
        rows_at: list[int] = []
        ids_at: list[int] = []
        for k, c in enumerate(distinct):
            if c.ids:
                rows_at += [k] * len(c.ids)
                ids_at += c.ids
        index = _to_device(torch.tensor(inverse + wide + empty + rows_at + ids_at, dtype=torch.long), device)
        m = len(inverse)
        a, b, n = m + len(wide), m + len(wide) + len(empty), m + len(wide) + len(empty) + len(rows_at)
        mask = torch.zeros((len(distinct), logits.shape[1]), dtype=torch.bool, device=device)
        if wide:
            mask[index[m:a], :size] = self._newline_free
        if empty:  # no token fits (the row ends): any finite scores keep sampling well defined
            mask[index[a:b]] = True
        if n > b:
            mask[index[b:n], index[n:]] = True
        mask = mask[index[:m]]
        scores = logits.float().masked_fill(~mask, float("-inf"))
        if opts.temperature <= 0:
            picked = scores.argmax(dim=-1)
        else:
            scores = scores / opts.temperature
            if opts.top_k and opts.top_k < scores.shape[1]:
                kth = torch.topk(scores, opts.top_k, dim=-1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            if opts.top_p < 1.0:
                ordered, order = torch.sort(scores, descending=True, dim=-1)
                probs = ordered.softmax(dim=-1)
                drop = probs.cumsum(dim=-1) - probs >= opts.top_p
                drop[:, 0] = False
                scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
            picked = torch.multinomial(scores.softmax(dim=-1), 1).squeeze(1)
        return [None if c.empty else t for c, t in zip(choices, picked.tolist())]

    @staticmethod
    def _plain_layers(cache, width: int) -> list | None:
        """The cache's layers when each is a plain, growing key/value layer ``width`` positions long; else None.

        Only those are rewritten here (compacted, merged); another cache keeps its padding and its rows.
        """
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) not in (DynamicLayer, GrowingLayer) or not layer.is_initialized
                             or layer.keys.dim() != 4 or layer.keys.shape[-2] != width for layer in layers):
            return None
        return layers

    @classmethod
    def _compact(cls, cache, mask: torch.Tensor, longest: int) -> torch.Tensor | None:
        """Drop padding columns from the KV cache: each row's real entries move, in order, to the right end.

        Attention ignores masked columns and every cached key already holds its
        position, so the model sees the same thing; returns the new attention
        mask (``longest`` columns), or None when the cache is not one this can
        rewrite (:meth:`_plain_layers`).
        """
        width = mask.shape[1]
        layers = cls._plain_layers(cache, width)
        if layers is None:
            return None
        keep = torch.sort(mask, dim=1, stable=True).indices[:, width - longest:]  # pads first, real columns in order
        for layer in layers:
            at = keep[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = layer.keys.gather(2, at)
            layer.values = layer.values.gather(2, keep[:, None, :, None].expand(-1, layer.values.shape[1], -1,
                                                                                  layer.values.shape[3]))
        return mask.gather(1, keep)

    @classmethod
    def _merge(cls, cache, mask: torch.Tensor, other, other_mask: torch.Tensor) -> torch.Tensor:
        """Append the rows of the KV cache ``other`` to ``cache``; returns the attention mask of all of them.

        The narrower of the two is padded on the left with masked columns (keys
        hold their positions, so where a row's entries sit does not matter).
        Both must be caches :meth:`_plain_layers` accepts.
        """
        mine, theirs = cls._plain_layers(cache, mask.shape[1]), cls._plain_layers(other, other_mask.shape[1])
        if mine is None or theirs is None or len(mine) != len(theirs):
            raise RuntimeError("only plain key/value caches of the same model can be merged")
        width = max(mask.shape[1], other_mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            short = width - t.shape[dim]
            if not short:
                return t
            shape = list(t.shape)
            shape[dim] = short
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for a, b in zip(mine, theirs):
            a.keys = torch.cat([pad(a.keys, 2), pad(b.keys, 2)], dim=0)
            a.values = torch.cat([pad(a.values, 2), pad(b.values, 2)], dim=0)
        return torch.cat([pad(mask, 1), pad(other_mask, 1)], dim=0)

    def generate(self, prompts: list[list[int]], codes: list[str], num_samples: int, budgets: list[int],
                 opts: DecodeOptions, capacity: int | None = None,
                 progress: Callable[[int], None] | None = None, cuda_graphs: bool = True) -> list[list[Edit]]:
        """``result[p][k]``: sample ``k`` of prompt ``p``; ``budgets[p]``: its most new tokens.

        ``capacity``: the most rows (prompts x samples) decoded at once (default:
        all); prompts are admitted in order as rows finish (see the module
        docstring). ``progress(n)``: called as ``n`` more prompts are finished.
        ``cuda_graphs``: False runs fixed places' passes eagerly (so does :attr:`cuda_graphs` False).
        """
        try:
            return self._generate(prompts, codes, num_samples, budgets, opts, capacity, progress,
                                  cuda_graphs and self.cuda_graphs)
        finally:
            self.table.forget()
            self._choices.clear()
            self._spelt.clear()

    def _step_inputs(self, chunks: list[list[int]], lengths: list[int], device) -> tuple[torch.Tensor, ...]:
        """(ids, position ids, attention mask) of one forward: chunks left-padded, built on the host at once."""
        width = max(len(c) for c in chunks)
        ids, positions, mask = [], [], []
        for chunk, at in zip(chunks, lengths):
            pad = width - len(chunk)
            ids.append([self.pad_id] * pad + chunk)
            positions.append([at] * pad + list(range(at, at + len(chunk))))
            mask.append([0] * pad + [1] * len(chunk))
        return tuple(_to_device(torch.tensor([ids, positions, mask], dtype=torch.long), device))

    def _new_rows(self, code: str, num_samples: int, budget: int, opts: DecodeOptions) -> list[_Row]:
        """The ``num_samples`` rows of one prompt, fed the forced opening and any only-allowed tokens after it."""
        start = DiffGrammar(code).start()
        opening = start.allowed_next().forced  # every diff opens with forced text ("@@ -")
        spell = (LEAD + opening, -1)
        first = self._spelt.get(spell)
        if first is None:
            first = self.table.encode_forced(self.tokenizer, LEAD + opening)
            if len(first) > 1:
                first = first[:-1]  # held back, as every forced span's last token
            self._spelt[spell] = first
        text = b"".join(self.table.bytes[i] for i in first).decode("utf-8", "replace")
        out = []
        for _ in range(num_samples):
            row = _Row(code, start, budget)
            if first and row.budget >= len(first):
                row.state = start.feed(text[len(LEAD):])
                row.tokens = row.forced = len(first)
                row.chunk, row.ids = list(first), list(first)
                self._take_only(row, opts.min_new_tokens)
            else:
                row.stop = STOP_LENGTH
            out.append(row)
        return out

    @torch.inference_mode()
    def _generate(self, prompts: list[list[int]], codes: list[str], num_samples: int, budgets: list[int],
                  opts: DecodeOptions, capacity: int | None, progress: Callable[[int], None] | None,
                  graphs: bool) -> list[list[Edit]]:
        self.forward_calls = self.compactions = self.widest_cache = self.proposed = self.accepted = self.admissions = 0
        speculate = opts.speculate if opts.temperature <= 0 else 0  # sampling: never
        lookups: dict[int, PromptLookup] = {}
        device = self.model.device
        self._width = getattr(self.model.config, "vocab_size", None) or self.table.size  # the logits' width
        capacity = max(capacity or len(prompts) * num_samples, num_samples)
        admit_at = max(num_samples, math.ceil(ADMIT_SHARE * capacity))
        rows: list[_Row] = []  # prompt-major, samples next: row i is sample i % num_samples of prompt i // num_samples
        open_rows = [num_samples] * len(prompts)  # rows of each prompt not finished yet
        live: list[int] = []  # the rows in the cache, in its order
        lengths: list[int] = []  # each live row's real tokens in the cache (its next position)
        cache = mask = logits = None
        waiting = 0  # the next prompt to admit
        self.places = places = None  # the rows' fixed places, once the first prefill says they fit
        fixed = device.type == "cuda" if self.fixed_places is None else self.fixed_places
        at: list[int] = []  # each live row's place
        longest = max(len(p) + b for p, b in zip(prompts, budgets)) if prompts else 0  # a row's most positions

        def finished(i: int) -> None:
            p = i // num_samples
            open_rows[p] -= 1
            if not open_rows[p] and progress is not None:
                progress(1)

        while True:
            free = capacity - len(live)
            enough = min(admit_at, (len(prompts) - waiting) * num_samples)  # the last few prompts: as soon as they fit
            if waiting < len(prompts) and free >= num_samples and (
                    not live or (free >= enough and (places is not None
                                                     or self._plain_layers(cache, mask.shape[1]) is not None))):
                count = min(free // num_samples, len(prompts) - waiting)
                new: list[int] = []
                for p in range(waiting, waiting + count):
                    for row in self._new_rows(codes[p], num_samples, budgets[p], opts):
                        rows.append(row)
                        if row.stop:
                            finished(len(rows) - 1)
                        else:
                            new.append(len(rows) - 1)
                waiting += count
                if new:
                    inputs = [prompts[i // num_samples] + rows[i].chunk for i in new]
                    ids, positions, new_mask = self._step_inputs(inputs, [0] * len(new), device)
                    new_cache, new_logits = self._forward(ids, new_mask, positions, None)
                    if new_logits.shape[-1] != self._width:
                        self._width = new_logits.shape[-1]
                        self._choices.clear()
                    for i in new:
                        rows[i].chunk = []
                    if places is None and fixed and not live and PlaceCache.fits(self.model, new_cache, capacity, longest):
                        self.places = places = PlaceCache(new_cache, capacity, longest, self._pass, self.pad_id,
                                                          speculate + 1, graphs=graphs)
                    if places is not None:
                        at += places.admit(new_cache, new_mask)
                    if live:
                        if places is None:
                            mask = self._merge(cache, mask, new_cache, new_mask)
                        keep = logits.shape[1]
                        if keep > 1:  # the newcomers' one position, right-aligned with the proposals' columns
                            new_logits = torch.cat([new_logits.new_zeros((len(new), keep - 1, new_logits.shape[2])),
                                                    new_logits], dim=1)
                        logits = torch.cat([logits, new_logits], dim=0)
                        self.admissions += 1
                    else:
                        logits = new_logits
                        if places is None:
                            cache, mask = new_cache, new_mask
                            _grow_in_place(cache)
                    live += new
                    lengths += [len(x) for x in inputs]
                    self.widest_cache = max(self.widest_cache, new_mask.shape[1] if mask is None else mask.shape[1])
            if not live:
                if waiting >= len(prompts):
                    break
                continue
            choices = [self._choice(rows[i], opts.min_new_tokens) for i in live]
            if logits.shape[1] == 1:
                for i, token, choice in zip(live, self._pick(logits[:, -1], choices, opts), choices):
                    self._advance(rows[i], token, choice, opts.min_new_tokens)
            else:  # speculation: accept the proposals greedy picks, then take the pick after them
                rejected = []
                for r, (i, (picks, good)) in enumerate(zip(live, self._verify(logits, live, rows, choices, opts))):
                    row = rows[i]
                    if good:  # already in the cache: taken as picked, not fed again
                        row.take(row.proposed[:good], self.table, forced=False)
                        row.chunk = []
                        lengths[r] += good
                        if row.proposed_at:
                            row.hint = row.proposed_at + good
                        self.accepted += good
                    rejected.append(len(row.proposed) - good)
                    if row.proposed:  # the pick stands for the source's next token: the copy goes on after it
                        row.resume = (row.source, good + 1)
                    self._advance(row, picks[good], ([choices[r]] + row.proposed_choices)[good], opts.min_new_tokens)
                if places is None:  # the rejected proposals stay in the cache as pads: attention 0
                    width = logits.shape[1]  # (in fixed places they lie past the row's length: written over next)
                    cut = _to_device(torch.tensor(rejected, dtype=torch.long), device)
                    real = torch.arange(width, device=device)[None, :] < (width - cut)[:, None]
                    mask = torch.cat([mask[:, :-width], mask[:, -width:] * real], dim=1)
            keep = [r for r, i in enumerate(live) if not rows[i].stop]
            for r, i in enumerate(live):
                if rows[i].stop:
                    finished(i)
            if len(keep) < len(live):  # finished rows leave the cache (or give their places back)
                if places is not None:
                    places.release([at[r] for r, i in enumerate(live) if rows[i].stop])
                    at = [at[r] for r in keep]
                if not keep:
                    live, lengths, cache, mask, logits = [], [], None, None, None
                    continue
                if places is None:
                    index = _to_device(torch.tensor(keep, dtype=torch.long), device)
                    cache.batch_select_indices(index)
                    mask = mask[index]
                lengths = [lengths[r] for r in keep]
                live = [live[r] for r in keep]
            top = max(lengths)
            if places is None and mask.shape[1] - top > COMPACT_SHARE * top:
                compact = self._compact(cache, mask, top)
                if compact is not None:
                    mask = compact
                    self.compactions += 1
            most = 0
            if speculate:
                for i in live:
                    p = i // num_samples
                    lookup = lookups.get(p)
                    if lookup is None:
                        lookup = lookups[p] = PromptLookup(prompts[p])
                    self._propose(rows[i], lookup, speculate, opts.min_new_tokens)
                    most = max(most, len(rows[i].proposed))
                    self.proposed += len(rows[i].proposed)
            chunks = [rows[i].chunk + rows[i].proposed for i in live]
            if places is not None:
                logits = places.step(chunks, lengths, at, keep=most + 1)
                self.forward_calls += 1
            else:
                ids, positions, step_mask = self._step_inputs(chunks, lengths, device)
                mask = torch.cat([mask, step_mask], dim=1)
                cache, logits = self._forward(ids, mask, positions, cache, keep=most + 1)
            for r, i in enumerate(live):
                lengths[r] += len(rows[i].chunk)  # proposals count once accepted
                rows[i].chunk = []
        self.last_ids = [row.ids for row in rows]
        if places is not None:
            self.widest_cache = max(self.widest_cache, places.widest)
        edits: list[list[Edit]] = []
        for p in range(len(codes)):
            edits.append([self._finish(rows[p * num_samples + k]) for k in range(num_samples)])
        return edits

    @staticmethod
    def _finish(row: _Row) -> Edit:
        if row.stop in (STOP_EOS, STOP_MARKER) and row.state.can_end:
            diff = row.state.finish()
        elif row.stop in (STOP_EOS, STOP_MARKER):  # only by a stop token the grammar did not offer: never raise
            diff = row.state.finish(partial=True)
            row.notes.append("the model stopped where the diff cannot end: the unfinished last line or hunk was dropped")
        else:
            diff = row.state.finish(partial=True)
            if row.tokens >= row.budget:  # else a note already says why the row stopped
                row.notes.append(f"generation stopped after {row.tokens} tokens (--max_new_tokens or the model's positions): "
                                 "the unfinished last line or hunk was dropped")
        edit = finish_edit(row.code, diff, row.stop or STOP_LENGTH, row.tokens)
        edit.notes = row.notes + edit.notes
        edit.forced_tokens = row.forced
        return edit


__all__ = ["LEAD", "ConstrainedDecoder", "DecodeOptions", "TokenTable", "token_bytes"]
