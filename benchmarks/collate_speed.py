"""Time to fetch and collate one packed batch: Python-list rows (before) against numpy rows (what training uses).

The training loop fetches a batch between two optimizer steps; with ``--dataloader_num_workers 0``
(Trainer's default) that time is added to every step. The arms, alternating ``--rounds`` times over the
same rows (``--rows`` rows of ``--width`` tokens, 5 samples each, random ids):

- ``lists``: rows read from a ``datasets.Dataset`` as Python lists and collated by concatenating
  lists and calling ``torch.tensor`` (how :class:`~diffmodel.train.collate.PackedCollator` worked before),
- ``numpy``: rows read from the same dataset in numpy format (``diffmodel train`` hands the Trainer its
  datasets so) and collated by the package's ``PackedCollator`` (numpy arrays, no copy into torch).

    PYTHONPATH=src python benchmarks/collate_speed.py [--batch 16] [--width 2048] [--rounds 5]

Prints ms per batch for each arm and the ratio; compare with the step time of a model (e.g. 98 ms at
~110M on an H200, benchmarks/RESULTS.md) to see the share of a step spent collating.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffmodel.preprocess.labels import IGNORE_INDEX  # noqa: E402
from diffmodel.train.collate import PackedCollator  # noqa: E402


def make_rows(n: int, width: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        length = width - int(rng.integers(0, 9))
        cuts = sorted(rng.choice(np.arange(1, length), 4, replace=False).tolist())
        positions = np.concatenate([np.arange(b - a) for a, b in zip([0, *cuts], [*cuts, length])]).tolist()
        ids = rng.integers(0, 32000, length).tolist()
        rows.append({"input_ids": ids, "labels": ids, "position_ids": positions})
    return rows


def collate_lists(rows: list[dict], pad_id: int = 0, multiple: int = 8) -> dict[str, torch.Tensor]:
    """The list-based collation the package used before (the baseline arm)."""
    width = max(len(r["input_ids"]) for r in rows)
    width = -(-width // multiple) * multiple
    ids, labels, pos = [], [], []
    for r in rows:
        pad = width - len(r["input_ids"])
        ids.append(list(r["input_ids"]) + [pad_id] * pad)
        labels.append(list(r["labels"]) + [IGNORE_INDEX] * pad)
        pos.append(list(r["position_ids"]) + list(range(pad)))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(pos)}


def main(argv=None) -> int:
    import datasets

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    ds = datasets.Dataset.from_list(make_rows(a.batch * a.batches, a.width))
    as_numpy = ds.with_format("numpy")
    collator = PackedCollator(0)
    arms = {
        "lists": lambda idx: collate_lists(ds.__getitems__(idx)),
        "numpy": lambda idx: collator(as_numpy.__getitems__(idx)),
    }
    first = {name: fn(list(range(a.batch))) for name, fn in arms.items()}
    for key in first["lists"]:
        if not torch.equal(first["lists"][key], first["numpy"][key]):
            raise SystemExit(f"the arms disagree on {key}")
    times = {name: [] for name in arms}
    for _ in range(a.rounds):
        for name, fn in arms.items():
            started = time.perf_counter()
            for b in range(a.batches):
                fn(list(range(b * a.batch, (b + 1) * a.batch)))
            times[name].append((time.perf_counter() - started) / a.batches * 1e3)
    lists, numpy_ = statistics.median(times["lists"]), statistics.median(times["numpy"])
    print(f"batch {a.batch} x {a.width} tokens, {a.rounds} rounds x {a.batches} batches, median ms per batch")
    print("| arm | ms per batch | vs lists |")
    print("|---|---|---|")
    print(f"| lists (before) | {lists:.2f} | 1.00x |")
    print(f"| numpy (now) | {numpy_:.2f} | {lists / numpy_:.1f}x faster |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
