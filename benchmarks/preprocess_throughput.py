"""Preprocessing throughput: ``build_datasets`` (load + tokenize + label + layout) against the
reference algorithm, on the same mined diff samples, in the same run.

    PYTHONPATH=src python benchmarks/preprocess_throughput.py [--sizes 500 2000] [--rounds 3]
        [--memory_probe 8000] [--arms reference ours-concat ours-pack] [--block_size 2048]
        [--num_proc 2] [--no_cached] [--out benchmarks/results/preprocess_throughput.md]

Set-up (nothing is downloaded; everything lives under ``.bench/``, which git ignores):

- Data: ``diffmodel mine .bench/requests`` (a clone of a public Python
  repository) mined twice: once plainly, to train the tokenizer on, then with
  ``--tokenizer_name T --max_tokens BLOCK_SIZE-1`` and no validation/test split, so
  every sample fits a row with its EOS (what the reference command line's
  ``--ignore_long_samples`` keeps; both arms still run that filter). The
  first ``n`` samples of that output (cycled when ``n`` is larger than what
  was mined) are written for each size as ``.jsonl.zst`` (our arm reads it natively) and as plain ``.jsonl`` (the
  reference needed a loading script for zst, so it gets the decompressed
  file). Both files hold the same lines, all mined columns included (the
  reference's ``load_dataset`` is told they are strings: its type inference
  fails on ``date`` values with mixed UTC offsets).
- Tokenizer: byte-level BPE, vocabulary 8192, trained with
  ``diffmodel.tiny.train_tokenizer`` on the first 1500 texts of the plain mine.
- Reference arm (HF ``run_clm`` style, as the seed describes ``run_clm_diff.py``):
  ``load_dataset("json")`` -> ``map`` tokenize (batched, no offsets) ->
  ``filter`` len < block_size -> ``map`` labels by searching the ids of
  ``tokenizer("<DFF>")`` in each sample's list -> ``map`` concatenation per
  map batch (``sum(examples[k], [])`` with EOS appended, cut into block_size
  rows, the batch remainder dropped). Every ``map`` and ``filter`` has
  ``num_proc``. It is kept here: a baseline, not product code. The extra arm
  ``reference-chain`` is the same with ``list(itertools.chain(*lists))`` (as
  later ``run_clm`` versions concatenate), to show what ``sum`` costs.
- Our arm: ``diffmodel.train.data.build_datasets`` with ``--train_diff_model
  --ignore_long_samples`` and ``--concatenate_texts`` (like for like) or
  ``--packing``, ``preprocessing_num_workers=num_proc``, no validation split,
  and a fresh cache folder per run (the ``datasets`` cache and the stage
  cache), so nothing is reused. The sanity report that ``build_datasets``
  makes is part of the timed work. ``ours concat, cache reused`` runs
  ``build_datasets`` again on the folder a fresh concat run just filled.
- Every run is a fresh Python process (the tokenizer is loaded and the
  arm's modules imported before the clock starts). Arms alternate within a
  round and the order flips every round. Tokens are the non-pad tokens in
  the rows produced (reference rows: every slot, since its rows have no
  padding; ours: ``attention_mask`` ones for concat, row lengths for pack),
  counted after the clock stops. Besides wall time, the run's CPU time
  (user + system of the process and its reaped ``datasets`` workers) is
  reported: on a shared machine it moves much less than wall time.
- ``--memory_probe``: one more, larger size (cycled samples), our concat
  arm only, run once, to see whether peak memory keeps growing with the
  data. (The reference at that size would take minutes: its ``sum`` of lists.)
- Memory, per run: the process's RSS when the clock starts; its RSS
  high-water mark (``VmHWM`` from ``/proc``: unlike ``ru_maxrss`` it is not
  inherited across ``exec`` from the parent; it includes pages of the
  memory-mapped Arrow files it read); the largest high-water mark among its
  ``datasets`` workers (sampled every 0.1 s); and the peak, sampled every
  0.1 s, of proportional anonymous memory (``Pss_Anon`` of
  ``/proc/PID/smaps_rollup``) summed over the process and its workers: heap
  and Python objects with each copy-on-write page counted once, Arrow file
  pages excluded.

Prints a Markdown report and writes it to ``--out``, keeping a hand-written
section of that file that starts with ``## Analysis``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
WORK = BENCH / "preprocess_throughput"
REPO = BENCH / "requests"

#: A section of the results file from this heading on is hand-written and kept when the file is rewritten.
ANALYSIS = "## Analysis"

ARMS = ("reference", "ours-concat", "ours-pack")
EXTRA_ARMS = ("reference-chain",)
LABELS = {
    "reference": "reference concat (datasets.map, id search, sum of lists)",
    "reference-chain": "reference concat with itertools.chain instead of sum",
    "ours-concat": "ours concat (build_datasets)",
    "ours-pack": "ours pack (build_datasets)",
    "ours-concat-cached": "ours concat, cache reused",
}


# --------------------------------------------------------------------------- data and tokenizer


def run_cli(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "diffmodel.cli", *args], check=True, stdout=subprocess.DEVNULL)


def read_lines(folder: Path) -> list[bytes]:
    import zstandard

    lines: list[bytes] = []
    for shard in sorted(folder.glob("*.jsonl.zst")):
        with open(shard, "rb") as fh:
            reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
            with io.BufferedReader(reader, buffer_size=1 << 20) as buffered:
                lines.extend(line for line in buffered if line.strip())
    return lines


def prepare(sizes: list[int], block_size: int) -> tuple[Path, dict[int, tuple[Path, Path]], int]:
    """Mine, train the tokenizer and write the data files (each step skipped when its output exists)."""
    import zstandard

    if not (REPO / ".git").exists():
        sys.exit(f"{REPO} is not a git clone; clone a repository there (the benchmark mines its history)")
    WORK.mkdir(parents=True, exist_ok=True)
    plain = BENCH / "mined_requests"
    if not (plain / "manifest.json").exists():
        print("mining", REPO, flush=True)
        run_cli(["mine", str(REPO), "-o", str(plain), "--workers", "2", "--no_progress"])
    tok_dir = WORK / "tokenizer-8192"
    if not (tok_dir / "tokenizer.json").exists():
        from diffmodel.tiny import train_tokenizer

        print("training the tokenizer", flush=True)
        texts = [json.loads(line)["text"] for line in read_lines(plain / "train")[:1500]]
        train_tokenizer(texts, vocab_size=8192, model_max_length=block_size).save_pretrained(str(tok_dir))
    fitting = WORK / f"mined-max{block_size - 1}"
    if not (fitting / "manifest.json").exists():
        print(f"mining samples of at most {block_size - 1} tokens", flush=True)
        run_cli([
            "mine", str(REPO), "-o", str(fitting), "--workers", "2", "--no_progress",
            "--tokenizer_name", str(tok_dir), "--max_tokens", str(block_size - 1),
            "--validation_fraction", "0", "--test_fraction", "0",
        ])
    lines = read_lines(fitting / "train")
    files = {}
    for n in sizes:
        folder = WORK / "data"
        folder.mkdir(exist_ok=True)
        zst, plain_json = folder / f"samples-{n}.jsonl.zst", folder / f"samples-{n}.jsonl"
        body = b"".join(lines[i % len(lines)] for i in range(n))  # cycled past the unique samples
        if not plain_json.exists() or plain_json.read_bytes() != body:
            plain_json.write_bytes(body)
            zst.write_bytes(zstandard.ZstdCompressor(level=3).compress(body))
        files[n] = (zst, plain_json)
    return tok_dir, files, len(lines)


# --------------------------------------------------------------------------- the reference arm


def reference_arm(data: Path, tokenizer, block_size: int, num_proc: int, cache: Path, chain: bool = False):
    """The reference algorithm: run_clm-style ``datasets.map`` stages.

    ``chain``: concatenate with ``list(itertools.chain(*lists))``, as later ``run_clm`` versions do,
    instead of ``sum(lists, [])``, whose cost grows with the square of the map batch (an extra arm,
    ``--arms reference-chain``, to show how much of the reference's time that one line costs).
    """
    import itertools

    import datasets

    # Every mined field is a string; saying so keeps the json builder from parsing `date` as a timestamp
    # (it fails on mixed UTC offsets), which is how the reference "prepared the data for load_dataset".
    with open(data, "rb") as fh:
        columns = list(json.loads(fh.readline()))
    features = datasets.Features({c: datasets.Value("string") for c in columns})
    raw = datasets.load_dataset("json", data_files={"train": str(data)}, features=features, cache_dir=str(cache))["train"]
    column_names = raw.column_names
    text_column = "text" if "text" in column_names else column_names[0]

    def tokenize_function(examples):
        return tokenizer(examples[text_column])

    tokenized = raw.map(tokenize_function, batched=True, num_proc=num_proc, remove_columns=column_names, desc="tokenize")
    tokenized = tokenized.filter(lambda example: len(example["input_ids"]) < block_size, num_proc=num_proc, desc="drop long")

    marker = tokenizer("<DFF>")["input_ids"]

    def add_labels(examples):
        labels = []
        for ids in examples["input_ids"]:
            start = None
            for i in range(len(ids) - len(marker) + 1):
                if ids[i:i + len(marker)] == marker:
                    start = i
                    break
            if start is None:
                labels.append([-100] * len(ids))
            else:
                labels.append([-100] * start + ids[start:])
        examples["labels"] = labels
        return examples

    labeled = tokenized.map(add_labels, batched=True, num_proc=num_proc, desc="labels")
    eos = tokenizer.eos_token_id

    def group_texts(examples):
        examples["input_ids"] = [ids + [eos] for ids in examples["input_ids"]]
        examples["labels"] = [labs + [-100] for labs in examples["labels"]]
        examples["attention_mask"] = [mask + [0] for mask in examples["attention_mask"]]
        if chain:
            concatenated = {k: list(itertools.chain(*examples[k])) for k in examples.keys()}
        else:
            concatenated = {k: sum(examples[k], []) for k in examples.keys()}
        total_length = len(concatenated["input_ids"])
        total_length = (total_length // block_size) * block_size
        return {k: [t[i:i + block_size] for i in range(0, total_length, block_size)] for k, t in concatenated.items()}

    return labeled.map(group_texts, batched=True, num_proc=num_proc, desc=f"concatenate into {block_size}")


# --------------------------------------------------------------------------- our arm


def our_arm(data: Path, tokenizer, block_size: int, num_proc: int, cache: Path, layout: str):
    from diffmodel.train.args import DataArguments  # imported before the clock starts (see child)
    from diffmodel.train.data import build_datasets

    data_args = DataArguments(
        train_file=[str(data)],
        validation_split_percentage=0,
        block_size=block_size,
        preprocessing_num_workers=num_proc,
        train_diff_model=True,
        ignore_long_samples=True,
        concatenate_texts=layout == "concat",
        packing=layout == "pack",
    )
    processed, _reports = build_datasets(data_args, tokenizer, block_size, cache_dir=str(cache))
    return processed["train"]


def count_tokens(rows, arm: str, block_size: int) -> int:
    import pyarrow.compute as pc

    if rows._indices is not None:
        rows = rows.flatten_indices()
    if arm.startswith("reference"):
        return len(rows) * block_size
    if "attention_mask" in rows.column_names:
        return int(pc.sum(pc.list_flatten(rows.data.column("attention_mask"))).as_py() or 0)
    return int(pc.sum(pc.list_value_length(rows.data.column("input_ids"))).as_py() or 0)


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its reaped children (the ``datasets`` workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child(args) -> None:
    """One timed run in this (fresh) process; prints a JSON line."""
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if not args.child.startswith("reference"):
        import importlib

        for module in ("diffmodel.train.args", "diffmodel.train.data"):  # train.data pulls in datasets and pyarrow: seconds
            importlib.import_module(module)
    cache = Path(args.cache)
    base = _status_kib(os.getpid(), ("VmRSS",))["VmRSS"]
    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    if args.child.startswith("reference"):
        rows = reference_arm(Path(args.data), tokenizer, args.block_size, args.num_proc, cache, chain=args.child == "reference-chain")
    else:
        layout = "pack" if args.child == "ours-pack" else "concat"
        rows = our_arm(Path(args.data), tokenizer, args.block_size, args.num_proc, cache, layout)
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu0
    tokens = count_tokens(rows, args.child, args.block_size)
    hwm = _status_kib(os.getpid(), ("VmHWM",))["VmHWM"]  # this process's RSS high-water mark since exec
    print(json.dumps({"seconds": seconds, "tokens": tokens, "rows": len(rows), "hwm_kib": hwm, "base_kib": base, "cpu": cpu}), flush=True)


# --------------------------------------------------------------------------- the driver


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """Fields of ``/proc/PID/status`` in KiB (missing ones are 0)."""
    found = dict.fromkeys(keys, 0)
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in found:
                    found[key] = int(line.split()[1])
    except OSError:
        pass
    return found


def _pss_anon_kib(pid: int) -> int:
    """Proportional anonymous memory of ``pid`` (KiB): pages shared copy-on-write with forked
    workers are split between them, so the sum over a process tree counts each page once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_pids(pid: int) -> list[int]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid] + [p.pid for p in root.children(recursive=True)]
    except psutil.Error:
        return []


def run_once(arm: str, data: Path, tok_dir: Path, block_size: int, num_proc: int, cache: Path) -> dict:
    """Run one arm in a fresh process; returns its timing, token count and memory."""
    cmd = [
        sys.executable, __file__, "--child", arm.removesuffix("-cached"), "--data", str(data), "--tokenizer", str(tok_dir),
        "--cache", str(cache), "--block_size", str(block_size), "--num_proc", str(num_proc),
    ]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak_anon = [0]
    worker_hwm = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            anon = 0
            for pid in _tree_pids(proc.pid):
                anon += _pss_anon_kib(pid)
                if pid != proc.pid:
                    worker_hwm[0] = max(worker_hwm[0], _status_kib(pid, ("VmHWM",))["VmHWM"])
            peak_anon[0] = max(peak_anon[0], anon)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"{arm} run failed ({proc.returncode}):\n{err.decode(errors='replace')[-4000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["hwm_mib"] = result.pop("hwm_kib") / 1024
    result["base_mib"] = result.pop("base_kib") / 1024
    result["worker_hwm_mib"] = worker_hwm[0] / 1024
    result["anon_mib"] = peak_anon[0] / 1024
    return result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report(args, results: dict, files: dict, unique: int, started: str, wall: float, loads: list[float]) -> str:
    import datasets
    import tokenizers
    import transformers

    med = statistics.median
    sizes = [*args.sizes, *([args.memory_probe] if args.memory_probe else [])]

    def describe(n):
        zst, plain_json = files[n]
        cycled = f", cycled from {unique} unique" if n > unique else ""
        return f"{n} samples{cycled} ({plain_json.stat().st_size / 2**20:.1f} MiB jsonl, {zst.stat().st_size / 2**20:.1f} MiB zst)"

    lines = [
        "# Preprocessing throughput: build_datasets against the reference algorithm",
        "",
        f"- Date: {started}",
        f"- Machine: `nproc` {len(os.sched_getaffinity(0))}, {cpu_model()}, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; Python {platform.python_version()}, "
        f"datasets {datasets.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}",
        f"- Load average (1 min) seen before the runs: min {min(loads):.1f}, median {med(loads):.1f}, max {max(loads):.1f} "
        "(the machine is shared; wall times move with it, CPU seconds much less)",
        f"- Command: `{' '.join(['PYTHONPATH=src python benchmarks/preprocess_throughput.py', *sys.argv[1:]])}`",
        f"- block_size {args.block_size}, num_proc {args.num_proc}; {args.rounds} rounds, arms alternating, order flipped "
        f"each round; medians over rounds, memory the largest over rounds; whole benchmark {wall / 60:.1f} min",
        f"- Data: diff samples mined from the history of `{REPO.name}` with at most {args.block_size - 1} tokens: "
        + "; ".join(describe(n) for n in sizes),
        "",
        "## Throughput",
        "",
        "Tokens: non-pad tokens in the rows produced. CPU: user + system seconds of the run's process and "
        "its `datasets` workers while the clock ran.",
        "",
        f"| samples | arm | tokens | rows | wall s | tokens/s | vs {args.arms[0]} | CPU s | tokens per CPU s | vs {args.arms[0]} |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shown = (*args.arms, "ours-concat-cached")
    for n in sizes:
        ref = results.get((n, args.arms[0]))
        ref_rate = med([r["tokens"] / r["seconds"] for r in ref]) if ref else None
        ref_cpu_rate = med([r["tokens"] / r["cpu"] for r in ref]) if ref else None
        for arm in shown:
            runs = results.get((n, arm))
            if not runs:
                continue
            rate = med([r["tokens"] / r["seconds"] for r in runs])
            cpu_rate = med([r["tokens"] / r["cpu"] for r in runs])
            vs = f"{rate / ref_rate:.2f}x" if ref_rate else "n/a"
            vs_cpu = f"{cpu_rate / ref_cpu_rate:.2f}x" if ref_cpu_rate else "n/a"
            lines.append(
                f"| {n} | {LABELS[arm]} | {runs[0]['tokens']:,} | {runs[0]['rows']:,} | {med([r['seconds'] for r in runs]):.2f} | "
                f"{rate:,.0f} | {vs} | {med([r['cpu'] for r in runs]):.2f} | {cpu_rate:,.0f} | {vs_cpu} |"
            )
    lines += [
        "",
        "## Memory",
        "",
        "MiB. Start: RSS of the run's process when the clock started (imports and tokenizer loaded). "
        "Main peak / worker peak: RSS high-water marks (`VmHWM`; file-backed pages of memory-mapped Arrow files "
        "included). Anon PSS: the peak, sampled every 0.1 s, of proportional anonymous memory (`Pss_Anon`) summed over "
        "the process and its workers: heap and Python objects, each copy-on-write page counted once, Arrow files "
        "excluded.",
        "",
        "| samples | arm | start | main peak | main peak - start | worker peak | anon PSS peak |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        for arm in shown:
            runs = results.get((n, arm))
            if not runs:
                continue
            start, peak = max(r["base_mib"] for r in runs), max(r["hwm_mib"] for r in runs)
            lines.append(
                f"| {n} | {LABELS[arm]} | {start:.0f} | {peak:.0f} | {max(r['hwm_mib'] - r['base_mib'] for r in runs):.0f} | "
                f"{max(r['worker_hwm_mib'] for r in runs):.0f} | {max(r['anon_mib'] for r in runs):.0f} |"
            )
    lines += ["", "Per-run wall seconds / CPU seconds, in round order:", ""]
    for n in sizes:
        for arm in shown:
            runs = results.get((n, arm))
            if runs:
                lines.append(f"- {n}, {arm}: " + ", ".join(f"{r['seconds']:.2f}/{r['cpu']:.2f}" for r in runs))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000], help="dataset sizes in samples (N and 4N)")
    parser.add_argument("--arms", nargs="+", choices=ARMS + EXTRA_ARMS, default=list(ARMS), help="the first is the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block_size", type=int, default=2048)
    parser.add_argument("--num_proc", type=int, default=2)
    parser.add_argument("--memory_probe", type=int, default=8000,
                        help="one more size, our concat arm only, once: does peak memory keep growing? (0: skip)")
    parser.add_argument("--no_cached", action="store_true", help="skip the cache-reuse runs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "preprocess_throughput.md"))
    # internal: one timed run
    parser.add_argument("--child", choices=ARMS + EXTRA_ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not args.arms[0].startswith("reference"):
        parser.error("--arms: the first arm is the baseline; start with reference or reference-chain")

    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    all_sizes = [*args.sizes, *([args.memory_probe] if args.memory_probe else [])]
    tok_dir, files, unique = prepare(all_sizes, args.block_size)
    results: dict[tuple[int, str], list[dict]] = {}
    loads: list[float] = []

    def run(n: int, arm: str, cache: Path, rnd: int) -> None:
        loads.append(os.getloadavg()[0])
        zst, plain_json = files[n]
        res = run_once(arm, plain_json if arm.startswith("reference") else zst, tok_dir, args.block_size, args.num_proc, cache)
        results.setdefault((n, arm), []).append(res)
        print(f"round {rnd} n={n} {arm}: {res['seconds']:.2f} s, cpu {res['cpu']:.2f} s, {res['tokens']:,} tokens, "
              f"start {res['base_mib']:.0f} MiB, main {res['hwm_mib']:.0f} MiB, worker {res['worker_hwm_mib']:.0f} MiB, "
              f"anon PSS {res['anon_mib']:.0f} MiB", flush=True)

    arms = tuple(args.arms)
    plan = [(rnd, n, arms if rnd % 2 == 0 else arms[::-1]) for rnd in range(args.rounds) for n in args.sizes]
    if args.memory_probe:
        plan.append((args.rounds, args.memory_probe, ("ours-concat",)))
    for rnd, n, arms in plan:
        for arm in arms:
            cache = Path(tempfile.mkdtemp(prefix=f"{arm}-", dir=WORK))
            try:
                run(n, arm, cache, rnd + 1)
                if arm == "ours-concat" and not args.no_cached:
                    run(n, "ours-concat-cached", cache, rnd + 1)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    text = report(args, results, files, unique, started, time.perf_counter() - t0, loads)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.read_text() if out.exists() else ""
    if ANALYSIS in old:  # keep the hand-written analysis (it names the run it was written for)
        text += "\n" + old[old.index(ANALYSIS):]
    out.write_text(text)


if __name__ == "__main__":
    main()
