"""A KV cache of fixed places for diff-aware decoding, whose decoding pass can be replayed as a CUDA graph.

A decoding pass of a small model is bound by the host launching kernels (on
an H200 the call of a ~110M Llama returns after ~10 of its ~14 ms:
benchmarks/RESULTS.md), and diff-aware decoding changes its shapes at every
step (rows finish and join, chunks have different widths, the cache grows),
so it cannot be captured as it is. Here every row gets a *place* for the
whole of its generation, and every shape is fixed:

- each layer keeps keys and values of ``[places, heads, length, dim]``; a row's
  token at position ``p`` sits in column ``p`` (its prompt in ``0..n-1``), so
  a row's cache has no holes: proposals that were not accepted lie past its
  length and are written over by the next tokens;
- a pass feeds every place a chunk of one of a few widths (:data:`WIDTHS`),
  the row's tokens on the right, pads on the left; idle places and pads write
  to the last column (:attr:`PlaceCache.trash`), which no row ever reads;
- attention reads the first ``span`` columns (a multiple of :data:`SPAN_STEP`
  covering the longest row), with a mask that lets the token in column ``c``
  see the columns ``0..c`` of its own place.

So a pass is one of a few (width, span) shapes, each captured once as a CUDA
graph (on a CUDA device; one memory pool for all of them) and replayed with
new ids, positions and columns copied into its input buffers. Elsewhere (CPU)
and for chunks wider than the widest graph the same pass runs eagerly.
Admitted prompts are prefilled as before (one eager pass of their own) and
their keys and values copied into free places.

Only plain per-layer key/value caches (``DynamicLayer``) of models whose
attention takes a 4D additive mask (sdpa, eager) are held this way, when the
buffers take at most :data:`MEMORY_SHARE` of the memory left (the device's,
or the host's on the CPU) (:meth:`PlaceCache.fits`); the decoder keeps its
growing cache otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer

logger = logging.getLogger(__name__)

#: The widths a pass is padded to (a chunk wider than the last runs eagerly at its own width).
WIDTHS = (1, 2, 4, 8, 16, 32, 64)
#: Attention reads the first ``span`` columns: the longest row rounded up to a multiple of this.
SPAN_STEP = 256
#: Keep the places only when their buffers take at most this share of the device's free memory.
MEMORY_SHARE = 0.5
#: Attention implementations that take the 4D additive mask built here.
MASKED_ATTENTION = ("sdpa", "eager")


class PlaceLayer(DynamicLayer):
    """A key/value layer of fixed places: a pass's keys go to the columns in ``at``; attention reads ``span`` columns.

    ``keys``/``values``: ``[places, heads, length, dim]``; ``at``: ``[places,
    1, width, 1]`` column of each fed token; both set by :class:`PlaceCache`
    before each pass.
    """

    at: torch.Tensor
    span: int

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        index = self.at.expand(-1, key_states.shape[1], -1, key_states.shape[3])
        self.keys.scatter_(2, index, key_states)
        self.values.scatter_(2, index, value_states)
        return self.keys[:, :, :self.span], self.values[:, :, :self.span]


def _plain(cache) -> list | None:
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized or layer.keys.dim() != 4
                         for layer in layers):
        return None
    return layers


def _available_memory() -> int | None:
    """Bytes of memory the host can still give (Linux's MemAvailable), or None where that is not known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _columns(length: int) -> int:
    """The columns a place holds for rows of at most ``length`` positions: a multiple of :data:`SPAN_STEP`, and the trash."""
    return -(-length // SPAN_STEP) * SPAN_STEP + 1


def _bucket(width: int) -> int:
    return next((w for w in WIDTHS if w >= width), width)


class PlaceCache:
    """``places`` rows' keys and values, ``length`` positions each, and the pass that feeds them (see the module docstring).

    Made from the cache of a first prefill pass (:meth:`fits` says whether it
    can be); ``forward(ids, mask, positions, cache, keep)`` runs the model
    and returns the logits of each row's last ``keep`` positions.
    """

    def __init__(self, cache, places: int, length: int, forward: Callable, pad_id: int, keep: int,
                 graphs: bool = True):
        self.layers = _plain(cache)
        if self.layers is None:
            raise ValueError("only plain key/value caches can be held in places")
        first = self.layers[0].keys
        self.device, self.dtype = first.device, first.dtype
        self.length = _columns(length)  # the last column is the trash
        self.trash = self.length - 1
        self.places = places
        self.forward = forward
        self.pad_id = pad_id
        self.keep = keep  # the most positions whose logits a pass returns
        self.graphs = graphs and self.device.type == "cuda"
        self.cache = cache  # the container the model is given; its layers become PlaceLayers below
        self.free = list(range(places))
        #: passes run, passes replayed from a graph, graphs captured and the seconds their capture took
        self.passes = self.replays = self.captures = 0
        self.capture_s = 0.0
        self.widest = 0  # the most columns attention read
        self.shape = (0, 0, 0)  # the last pass's rows, columns read and (padded) chunk width
        self._inputs: dict[int, torch.Tensor] = {}  # width -> [3, places, width]: ids, positions, columns
        self._graphs: dict[tuple[int, int], tuple[torch.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        self._columns = torch.arange(self.length, device=self.device)
        self._rows: list[tuple[torch.Tensor, torch.Tensor]] = [(layer.keys, layer.values) for layer in self.layers]
        for layer in self.layers:
            keys, values = layer.keys, layer.values
            layer.keys = keys.new_zeros((places, keys.shape[1], self.length, keys.shape[3]))
            layer.values = values.new_zeros((places, values.shape[1], self.length, values.shape[3]))
            layer.__class__ = PlaceLayer

    @staticmethod
    def fits(model, cache, places: int, length: int) -> bool:
        """Whether ``cache`` (a prefill pass's) can become a :class:`PlaceCache` of ``places`` x ``length`` on its device."""
        layers = _plain(cache)
        if layers is None or getattr(model.config, "_attn_implementation", None) not in MASKED_ATTENTION:
            return False
        size = sum(2 * places * layer.keys.shape[1] * _columns(length) * layer.keys.shape[3]
                   * layer.keys.element_size() for layer in layers)
        device = layers[0].keys.device
        if device.type == "cuda":  # free on the device, and what torch holds for reuse but does not use
            free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        else:
            free = _available_memory()
        return free is None or size <= MEMORY_SHARE * free

    def admit(self, cache, mask: torch.Tensor) -> list[int]:
        """Copy the rows of a prefill pass's cache (left-padded, ``mask`` marks their tokens) into free places; returns them.

        The first call takes the rows of the cache this was made from (``cache`` is then that one).
        """
        lengths = mask.sum(dim=1)
        rows = len(lengths)
        if rows > len(self.free):
            raise RuntimeError(f"{rows} rows do not fit the {len(self.free)} free places")
        taken, self.free = self.free[:rows], self.free[rows:]
        width = mask.shape[1]
        sources = self._rows if cache is self.cache else [(layer.keys, layer.values) for layer in _plain(cache)]
        self._rows = []
        # row r's tokens sit in its last lengths[r] columns: rotate them to the front (what follows is never read)
        shift = (torch.arange(width, device=self.device)[None, :] + (width - lengths.to(self.device))[:, None]) % width
        at = torch.tensor(taken, device=self.device)
        for layer, (keys, values) in zip(self.layers, sources):
            index = shift[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
            layer.keys[at, :, :width] = keys.gather(2, index)
            layer.values[at, :, :width] = values.gather(2, index)
        return taken

    def release(self, places: list[int]) -> None:
        """Give finished rows' places back (their columns are written over by the next row)."""
        self.free = sorted(self.free + list(places))

    def step(self, chunks: list[list[int]], lengths: list[int], places: list[int], keep: int) -> torch.Tensor:
        """One pass: row ``r`` (in ``places[r]``, ``lengths[r]`` tokens cached) is fed ``chunks[r]``.

        Returns the logits of each row's last ``keep`` positions, ``[rows, keep, vocabulary]``.
        """
        host, span = self.inputs(chunks, lengths, places)
        width = host.shape[2]
        self.widest = max(self.widest, span)
        self.shape = (len(chunks), span, width)
        order = torch.tensor(places, dtype=torch.long)
        if self.device.type == "cuda":
            host, order = host.pin_memory(), order.pin_memory()
        order = order.to(self.device, non_blocking=True)
        self.passes += 1
        found = self._graph(width, span) if self.graphs and width <= WIDTHS[-1] else None
        if found is None:
            logits = self._run(host.to(self.device, non_blocking=True), span)
        else:
            graph, logits = found
            self._inputs[width].copy_(host, non_blocking=True)
            with torch.cuda.device(self.device):
                graph.replay()
            self.replays += 1
        return logits[order, -keep:]

    def inputs(self, chunks: list[list[int]], lengths: list[int], places: list[int]) -> tuple[torch.Tensor, int]:
        """A pass's inputs on the host, ``[3, places, width]`` (ids, positions, columns), and the columns attention reads."""
        width = max(len(c) for c in chunks)
        top = max(n + len(c) for n, c in zip(lengths, chunks))
        if self.graphs:  # few shapes, each a graph; an eager pass takes its own
            width, span = _bucket(width), min(-(-top // SPAN_STEP) * SPAN_STEP, self.trash)
        else:
            span = top
        if top > self.trash:
            raise RuntimeError(f"a row would reach position {top}, past the {self.trash} positions its place holds")
        out = np.empty((3, self.places, width), dtype=np.int64)  # ids, positions, columns
        out[0], out[1], out[2] = self.pad_id, 0, self.trash
        for chunk, n, p in zip(chunks, lengths, places):
            left = width - len(chunk)
            out[0, p, left:] = chunk
            out[1:, p, left:] = np.arange(n, n + len(chunk))  # a token's column is its position
        return torch.from_numpy(out), span

    def _run(self, inputs: torch.Tensor, span: int) -> torch.Tensor:
        """The pass itself on ``inputs`` ([3, places, width]: ids, positions, columns): what a graph captures."""
        ids, positions, columns = inputs[0], inputs[1], inputs[2]
        at = columns[:, None, :, None]
        for layer in self.layers:
            layer.at, layer.span = at, span
        seen = self._columns[None, None, None, :span] <= at  # a token sees its place's columns up to its own
        mask = torch.zeros(seen.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~seen, torch.finfo(self.dtype).min)
        return self.forward(ids, mask, positions, self.cache, min(self.keep, ids.shape[1]))

    def _graph(self, width: int, span: int) -> tuple[torch.CUDAGraph, torch.Tensor] | None:
        """The graph of a pass of this shape and its logits buffer, captured on first use.

        None when the model's pass cannot be captured (a warning says why): then every pass runs eagerly.
        """
        found = self._graphs.get((width, span))
        if found is not None:
            return found
        try:
            with torch.cuda.device(self.device):  # the model's GPU, whichever is current
                return self._capture(width, span)
        except Exception as err:  # noqa: BLE001 - a model whose pass cannot be captured still decodes, eagerly
            logger.warning("diff-aware decoding: the decoding pass could not be captured as a CUDA graph (%s: %s); "
                           "running every pass eagerly", type(err).__name__, str(err)[:200])
            self.graphs = False
            return None

    def _capture(self, width: int, span: int) -> tuple[torch.CUDAGraph, torch.Tensor]:
        started = time.perf_counter()
        inputs = self._inputs.get(width)
        if inputs is None:
            inputs = self._inputs[width] = torch.empty((3, self.places, width), dtype=torch.long, device=self.device)
        inputs[0].fill_(self.pad_id)  # captured on pads written to the trash column: no row's cache is touched
        inputs[1].fill_(0)
        inputs[2].fill_(self.trash)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # a first run off the graph: lazy initialisation (cuBLAS handles) happens here
            self._run(inputs, span)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._run(inputs, span)
        torch.cuda.synchronize(self.device)
        self._graphs[(width, span)] = found = (graph, logits)
        self.captures += 1
        self.capture_s += time.perf_counter() - started
        return found
