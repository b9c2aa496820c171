"""Diff-aware decoding against plain decoding: the same checkpoint, samples and batch, alternating.

    PYTHONPATH=src python benchmarks/constrained_decoding.py --model runs/diff --data heldout.jsonl \\
        [--max_samples 400] [--batch_size 32] [--max_new_tokens 512] [--rounds 2] [--device cuda] [--out r.md]
    PYTHONPATH=src python benchmarks/constrained_decoding.py --tiny --device cpu   # a quick check of the script
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/constrained_decoding.py --tiny --device cpu --profile \\
        --max_samples 50 --batch_size 50 --max_new_tokens 256 --rounds 1           # host time per step (CPU proxy)

Set-up:

- Samples: held-out rows of ``--data`` (any form ``diffmodel eval edits``
  reads: name/before/message/diff fields or rendered text), made into cases by
  :func:`diffmodel.evaluate.edits.make_cases` (references that do not apply are
  skipped and counted).
- Both arms run :func:`diffmodel.evaluate.edits.evaluate_edits` (what
  ``diffmodel eval edits`` runs) with the same model object, greedy, the same
  ``--batch_size`` and ``--max_new_tokens``; only ``constrained`` differs.
  They alternate (constrained, unconstrained, constrained, ...) ``--rounds``
  times each, so a warm-up or a clock change does not favour one arm; the
  quality numbers come from the first round (greedy: every round gives the
  same edits), edits/s is the median over rounds. On a GPU the clock is read
  after ``torch.cuda.synchronize()``.
- ``--tiny``: a tiny GPT-2 with random weights and a byte-level BPE trained on
  the bundled quickstart samples, on their first ``--max_samples`` rows: the
  numbers mean nothing, the run only checks the script.

- ``--no_speculation``: the constrained arm without prompt-lookup
  speculation (:mod:`diffmodel.infer.constrained`); by default it runs with
  it, as ``diffmodel`` does. Greedy edits are the same either way.
- ``--profile``: also times every forward pass of the model (hooks on the
  model, after a device sync) and reports per arm the forward passes, the
  total, forward and host (the rest) milliseconds per forward pass (a
  decoding step). With ``--tiny --device cpu`` the forwards are cheap, so
  the host figures isolate the Python work per step of each decoder. A
  second table splits prefill passes (new batches, prompts admitted while
  others decode) from decoding steps, with the mean rows, attention mask
  width and new positions per row of a step.
  ``--cprofile FILE`` writes cProfile stats of the first constrained round.
- ``--places auto|on|off`` (default auto: on a GPU, as ``diffmodel`` runs) holds the constrained arm's
  rows in fixed places or in the growing cache; ``--no_graphs`` runs fixed
  places without CUDA graphs (:mod:`diffmodel.infer.places`). The report says
  which, with the graphs captured and the seconds their capture took.

Prints a Markdown table (applies_strict, exact, line_similarity, edits/s,
forced share; the ratio constrained / unconstrained) and writes it to
``--out`` when given. Results on a GPU go to ``benchmarks/RESULTS.md`` with
the device, the date and the command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter

import torch
import transformers

from diffmodel.evaluate.edits import evaluate_edits, make_cases
from diffmodel.infer import DiffModel
from diffmodel.infer.places import PlaceCache

METRICS = ("parses", "applies_strict", "applies", "exact", "line_similarity", "forced_share")


def _rows(path: str, limit: int) -> list[dict]:
    from diffmodel.data.load import LoadOptions, load_raw_datasets

    raw, _ = load_raw_datasets(LoadOptions(train_files=[path], validation_split_percentage=0))
    ds = raw["train"]
    return [ds[i] for i in range(min(limit, len(ds)))]


def _tiny_model(rows: list[dict], folder: str) -> str:
    from diffmodel.sample import render
    from diffmodel.tiny import save_tiny_checkpoint

    texts = [render(r["name"], r["before"], r["message"], r["diff"]) for r in rows]
    return str(save_tiny_checkpoint(folder, "gpt2", texts, vocab_size=1024, n_positions=2048, seed=0))


def _random_model(size: str, tokenizer: str, folder: str) -> str:
    """An untrained Llama of ``train_throughput.MODELS[size]`` with ``tokenizer``'s vocabulary, saved to ``folder``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_throughput import MODELS

    tok = AutoTokenizer.from_pretrained(tokenizer)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, **MODELS[size])
    AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class _ForwardClock:
    """Counts and times the model's forward passes (top-level calls only).

    A pass without a KV cache, or with an empty one, is a prefill (a new
    batch, or prompts admitted while others decode); the others are decoding
    steps, for which the rows, the attention mask's width (cached positions
    plus the new ones) and the new positions per row are summed. A pass of
    fixed places (:class:`~diffmodel.infer.places.PlaceCache`, perhaps a CUDA
    graph's replay, which no hook sees) is timed around its ``step`` (a
    graph's first capture included) and counted as a decoding step of the
    live rows, the columns attention reads and the padded chunk width.
    """

    def __init__(self, module: torch.nn.Module, device) -> None:
        self._start, self._device, self._prefill, self._shape = 0.0, device, False, (0, 0, 0)
        self._inside = False  # in a PlaceCache step: its model calls (eager, warm-up, capture) are not timed apart
        self.reset()
        self._hooks = [module.register_forward_pre_hook(self._pre, with_kwargs=True), module.register_forward_hook(self._post)]
        self._step = PlaceCache.step
        clock = self

        def step(places, chunks, lengths, at, keep):
            clock._inside = True
            _sync(device)
            start = time.perf_counter()
            try:
                return clock._step(places, chunks, lengths, at, keep)
            finally:
                _sync(device)
                clock._inside = False
                clock._count(time.perf_counter() - start, False, places.shape)

        PlaceCache.step = step

    def _pre(self, _module, _args, kwargs):
        if self._inside:
            return
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._prefill = cache is None or cache.get_seq_length() == 0
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        self._shape = (ids.shape[0], mask.shape[-1] if mask is not None else 0, ids.shape[1]) if ids is not None else (0, 0, 0)
        _sync(self._device)
        self._start = time.perf_counter()

    def _post(self, *_):
        if self._inside:
            return
        _sync(self._device)
        self._count(time.perf_counter() - self._start, self._prefill, self._shape)

    def _count(self, took: float, prefill: bool, shape: tuple[int, int, int]) -> None:
        self.seconds += took
        self.calls += 1
        if prefill:
            self.prefills += 1
            self.prefill_seconds += took
        else:
            self.rows, self.keys, self.new = (a + b for a, b in zip((self.rows, self.keys, self.new), shape))

    def reset(self) -> None:
        self.calls, self.seconds, self.prefills, self.prefill_seconds = 0, 0.0, 0, 0.0
        self.rows = self.keys = self.new = 0

    def split(self) -> tuple:
        """(prefills, prefill s, decoding steps, their forward s, mean rows, mask width, new positions a step)."""
        steps = max(self.calls - self.prefills, 1)
        return (self.prefills, self.prefill_seconds, self.calls - self.prefills, self.seconds - self.prefill_seconds,
                self.rows / steps, self.keys / steps, self.new / steps)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        PlaceCache.step = self._step


def load(args) -> tuple[str, list, dict, DiffModel]:
    """The decoding benchmarks' inputs: the data file, its cases, the rows skipped by reason, and the model."""
    from importlib.resources import files

    data = args.data or str(files("diffmodel") / "samples" / "quickstart.jsonl")
    rows = _rows(data, args.max_samples)
    cases, skipped = make_cases(rows)
    with tempfile.TemporaryDirectory() as tmp:
        if getattr(args, "random", None):
            folder = _random_model(args.random, args.tokenizer, tmp)
        else:
            folder = _tiny_model(rows, tmp) if args.tiny else args.model
        model = DiffModel.from_pretrained(folder, device=args.device, dtype=getattr(args, "dtype", None), quiet=True)
    return data, cases, skipped, model


def run(args) -> str:
    data, cases, skipped, model = load(args)
    decoder = model.decoder
    decoder.fixed_places = {"auto": None, "on": True, "off": False}[args.places]
    decoder.cuda_graphs = not args.no_graphs
    options = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, temperature=0.0, seed=0)
    results: dict[bool, dict] = {}
    stops: dict[bool, dict[str, int]] = {}  # why each generation ended (eos, marker, length), first round
    held: list[str] = []  # how the constrained arm held its KV cache, each round
    seconds: dict[bool, list[float]] = {True: [], False: []}
    steps: dict[bool, list[tuple[int, float, float]]] = {True: [], False: []}  # (forwards, forward s, total s)
    split: dict[bool, list[tuple]] = {True: [], False: []}  # _ForwardClock.split() of each round
    clock = _ForwardClock(model.model, model.device) if args.profile else None
    for _ in range(args.rounds):
        for constrained in (True, False):
            profiler = None
            if args.cprofile and constrained and not steps[True]:
                import cProfile

                profiler = cProfile.Profile()
            if clock:
                clock.reset()
            _sync(model.device)
            start = time.perf_counter()
            if profiler:
                profiler.enable()
            summary, per_case = evaluate_edits(model, cases, constrained=constrained, speculate=not args.no_speculation,
                                        **options)
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.cprofile)
            _sync(model.device)
            seconds[constrained].append(time.perf_counter() - start)
            if clock:
                steps[constrained].append((clock.calls, clock.seconds, seconds[constrained][-1]))
                split[constrained].append(clock.split())
            results.setdefault(constrained, summary)
            stops.setdefault(constrained, dict(sorted(Counter(g["stop"] for r in per_case for g in r["generations"]).items())))
            if constrained:
                places = decoder.places
                held.append("growing cache" if places is None else
                            f"{places.places} fixed places x {places.length} columns, {places.passes} passes, "
                            f"{places.replays} replayed from {places.captures} CUDA graphs captured in {places.capture_s:.2f} s")
    if clock:
        clock.remove()
    generations = results[True]["metrics"]["generations"]
    rate = {c: generations / statistics.median(s) for c, s in seconds.items()}
    lines = [
        f"# Diff-aware decoding vs plain decoding ({dt.date.today().isoformat()})",
        "",
        f"- model: {'tiny random GPT-2 (--tiny: a check of the script)' if args.tiny else args.model}; "
        f"device {model.device}, dtype {model.model.dtype}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}",
        f"- data: {data}, {len(cases)} samples ({json.dumps(skipped) if skipped else 'none skipped'}); greedy, "
        f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, {args.rounds} round(s) each, alternating; "
        f"speculation {'off' if args.no_speculation else 'on'} in the constrained arm",
        f"- constrained arm's KV cache (--places {args.places}{', --no_graphs' if args.no_graphs else ''}), each round: "
        + "; ".join(held),
        f"- why generations ended (eos, marker: the next sample's <NME>, length: max_new_tokens): constrained "
        f"{json.dumps(stops[True])}, unconstrained {json.dumps(stops[False])}",
        f"- command: `{' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])}`",
        "",
        "| metric | constrained | unconstrained | ratio |",
        "|---|---|---|---|",
    ]
    for m in METRICS:
        a, b = results[True]["metrics"][m], results[False]["metrics"][m]
        lines.append(f"| {m} | {a:.4f} | {b:.4f} | {a / b:.2f} |" if b else f"| {m} | {a:.4f} | {b:.4f} | - |")
    lines.append(f"| edits/s | {rate[True]:.2f} | {rate[False]:.2f} | {rate[True] / rate[False]:.2f} |")
    if args.profile:
        lines += ["", "Per forward pass (a decoding step; medians over rounds; host = total - forward):", "",
                  "| arm | forwards | total s | total ms/step | forward ms/step | host ms/step |", "|---|---|---|---|---|---|"]
        for constrained in (True, False):
            calls = statistics.median(c for c, _, _ in steps[constrained])
            fwd = statistics.median(f for _, f, _ in steps[constrained])
            total = statistics.median(t for _, _, t in steps[constrained])
            lines.append(f"| {'constrained' if constrained else 'unconstrained'} | {calls:.0f} | {total:.2f} | "
                         f"{1000 * total / calls:.2f} | {1000 * fwd / calls:.2f} | {1000 * (total - fwd) / calls:.2f} |")
        lines += ["", "Prefill passes (new batches, admitted prompts) and decoding steps (medians over rounds; per step: "
                  "rows, attention mask width = cached + new positions, new positions per row):", "",
                  "| arm | prefills | prefill ms each | decoding steps | forward ms/step | rows | mask width | new positions |",
                  "|---|---|---|---|---|---|---|---|"]
        for constrained in (True, False):
            pre, pre_s, dec, dec_s, rows_, width, new = (statistics.median(x) for x in zip(*split[constrained]))
            lines.append(f"| {'constrained' if constrained else 'unconstrained'} | {pre:.0f} | {1000 * pre_s / max(pre, 1):.1f} | "
                         f"{dec:.0f} | {1000 * dec_s / max(dec, 1):.2f} | {rows_:.1f} | {width:.0f} | {new:.2f} |")
        ratio = statistics.median(seconds[True]) / statistics.median(seconds[False])
        lines.append(f"\ntotal time constrained / unconstrained: {ratio:.2f}")
    return "\n".join(lines) + "\n"


#: --tiny's defaults, so that it is a quick check (a minute or two on a CPU); flags given on the command line keep their values.
TINY_DEFAULTS = {"max_samples": 32, "max_new_tokens": 128, "rounds": 1}


def model_arguments(p: argparse.ArgumentParser, max_samples: int, batch_size: int, max_new_tokens: int) -> None:
    """The decoding benchmarks' common arguments: the model (or --tiny), the data, the batch and the rounds."""
    p.add_argument("--model", help="a saved diff model folder (diffmodel train --output_dir)")
    p.add_argument("--data", help="held-out samples (jsonl, jsonl.zst, ...; default with --tiny: the quickstart samples)")
    p.add_argument("--tiny", action="store_true",
                   help="a tiny random model instead of --model: checks the script only (unless given: --max_samples "
                        f"{TINY_DEFAULTS['max_samples']}, --max_new_tokens {TINY_DEFAULTS['max_new_tokens']}, "
                        f"--rounds {TINY_DEFAULTS['rounds']})")
    p.add_argument("--max_samples", type=int, default=max_samples, help="held-out samples decoded (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=batch_size, help="requests decoded together (default: %(default)s)")
    p.add_argument("--max_new_tokens", type=int, default=max_new_tokens, help="longest diff, in tokens (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="timed runs of each arm, alternating (default: %(default)s)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")


def checked(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The parsed arguments; an error unless --model and --data (or --tiny) are given. With --tiny the flags of
    :data:`TINY_DEFAULTS` that the command line leaves out take those values."""
    args = p.parse_args(argv)
    if args.tiny:
        p.set_defaults(**TINY_DEFAULTS)
        args = p.parse_args(argv)
    if getattr(args, "random", None) and not getattr(args, "tokenizer", None):
        p.error("--random needs --tokenizer DIR (the vocabulary of the untrained model)")
    if not args.tiny and not ((args.model or getattr(args, "random", None)) and args.data):
        p.error("give --model DIR and --data FILE (or --tiny for a quick check of the script)")
    return args


def publish(report: str, out: str | None) -> None:
    """Print a benchmark's Markdown report, and write it to ``out`` when given."""
    print(report, end="")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(report)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(p, max_samples=400, batch_size=32, max_new_tokens=512)
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="default: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--out", help="also write the Markdown table here")
    p.add_argument("--profile", action="store_true", help="also time each forward pass: host ms per step per arm")
    p.add_argument("--cprofile", metavar="FILE", help="write cProfile stats of the first constrained round to FILE")
    p.add_argument("--places", choices=("auto", "on", "off"), default="auto",
                   help="the constrained arm's rows in fixed places (diffmodel.infer.places); auto: on a GPU")
    p.add_argument("--no_graphs", action="store_true", help="fixed places without CUDA graphs (every pass eager)")
    p.add_argument("--no_speculation", action="store_true",
                   help="the constrained arm without prompt-lookup speculation (default: with it, as diffmodel runs)")
    args = checked(p, argv)
    publish(run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
