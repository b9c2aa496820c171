"""What the batches of ``benchmarks/train_default.py``'s arms hold: loss-bearing and real tokens a batch over
a whole epoch and over a window of steps.

Each arm's trainer is built as ``train_default.py`` builds it (the same samples, tokenizer, seed and batch),
with a tiny model on the CPU: what a batch holds depends on the packing, the collator and the order, not on the
model. Its training data loader is read through one epoch, in the order training would take it, and for each
arm the script prints the epoch's average loss-bearing (labels that count after the shift) and real tokens a
batch, and the average over batches ``--warmup`` + 1 .. ``--warmup`` + ``--steps`` (the window
``train_default.py`` times with the same flags). A tokens/s figure measured over a window is the window's tokens
over its time: where a window holds more than the epoch's average, the figure is that much higher.

With ``--positions N``, each diffmodel arm's first N batches are listed with their loss positions: the positions
``--loss_logits`` runs the output layer at (:func:`diffmodel.train.loss_logits.positions`, padding included), a
number the compiled step takes as changing from batch to batch. A batch whose number is the lowest or the highest
so far is marked: where torch.compile bounded that number by what the earlier batches held, such a batch is one
that can make a step compile again.

    PYTHONPATH=src python benchmarks/batch_content.py --data '.fetched/train_mined4/train/*.jsonl.zst' \\
        --tokenizer .fetched/tok16k --max_samples 3000 --warmup 4 --steps 10 --arms pack,trl --trl_workers 8

TRL (``trl``) must be installed (the ``[bench]`` extra).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import train_default  # noqa: E402

from diffmodel.preprocess.tokens import pad_id_of  # noqa: E402


def summary(counts: list[tuple[int, int]], warmup: int, steps: int) -> dict:
    """Averages a batch over the epoch (its last, partial batch left out) and over the window."""
    full = counts[:-1] if len(counts) > 1 else counts
    win = counts[warmup:warmup + steps]
    if not win:
        raise ValueError(f"the window (batches {warmup + 1}-{warmup + steps}) is past the epoch's {len(counts)} batches")
    return {"batches": len(counts),
            "epoch_loss": statistics.mean(c[0] for c in full), "epoch_real": statistics.mean(c[1] for c in full),
            "window_loss": statistics.mean(c[0] for c in win), "window_real": statistics.mean(c[1] for c in win)}


def arm_counts(arm: str, a, texts: list[str], data_file: Path, work: Path) -> tuple[list[tuple[int, int]], list[int]]:
    """(loss-bearing, real) tokens of each batch of ``arm``'s epoch, and each batch's loss positions (diffmodel's arms)."""
    import torch

    from diffmodel.train import loss_logits

    trainer, _ = (train_default.build_trl(a, texts, data_file, work) if arm == "trl"
                  else train_default.build_diffmodel(arm, a, data_file, work))
    tok = trainer.processing_class
    pad_id = pad_id_of(tok)
    torch.manual_seed(0)
    counts, positions = [], []
    for b in trainer.get_train_dataloader():
        counts.append(train_default.batch_tokens(b, pad_id, tok.eos_token_id)[:2])
        if arm != "trl":
            positions.append(len(loss_logits.positions(b["labels"].numpy(), minimum=loss_logits.MINIMUM)[0]))
    return counts, positions


def extremes(numbers: list[int]) -> list[str]:
    """For each number: "first", "lowest so far", "highest so far" (than all the earlier ones), or ""."""
    marks = []
    for i, n in enumerate(numbers):
        earlier = numbers[:i]
        marks.append("first" if not earlier else "lowest so far" if n < min(earlier)
                     else "highest so far" if n > max(earlier) else "")
    return marks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="samples: jsonl / jsonl.zst files with a text field (a glob)")
    p.add_argument("--tokenizer", help="tokenizer folder")
    p.add_argument("--arms", default="pack,trl")
    p.add_argument("--block_size", type=int, default=2048)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_samples", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--trl_workers", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="the bundled samples and a tokenizer trained on them")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--positions", type=int, default=0, metavar="N",
                   help="list the first N batches of each diffmodel arm with their loss positions (--loss_logits)")
    a = p.parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="batch_content_"))
    work.mkdir(parents=True, exist_ok=True)
    if a.tiny:
        from diffmodel.sample import render_row
        from diffmodel.samples import load_quickstart
        from diffmodel.tiny import train_tokenizer

        texts = [render_row(r) for r in load_quickstart()]
        a.tokenizer = str(work / "tok")
        train_tokenizer(texts, vocab_size=400, model_max_length=1 << 20).save_pretrained(a.tokenizer)
    else:
        texts = train_default.read_texts(a.data)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
    texts = train_default.select_samples(texts, tokenizer, a.block_size, a.max_samples)
    data_file = work / "samples.jsonl"
    data_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    # what train_default.py's builders read; the model is tiny and on the CPU (the batches do not depend on it)
    a.model, a.vocab_size, a.device, a.trl_compile = "tiny", len(tokenizer), "cpu", False
    print(f"{len(texts)} samples, batch {a.batch_size} x {a.block_size}, window: batches {a.warmup + 1}-{a.warmup + a.steps}")
    print("| arm | batches | loss-bearing tok a batch: epoch | window | window / epoch | real tok a batch: epoch | window |")
    print("|---|---|---|---|---|---|---|")
    listed = {}
    for arm in [x for x in a.arms.split(",") if x]:
        counts, listed[arm] = arm_counts(arm, a, texts, data_file, work)
        s = summary(counts, a.warmup, a.steps)
        print(f"| {arm} | {s['batches']} | {s['epoch_loss']:,.0f} | {s['window_loss']:,.0f} | "
              f"{s['window_loss'] / s['epoch_loss']:.3f} | {s['epoch_real']:,.0f} | {s['window_real']:,.0f} |", flush=True)
    for arm, positions in listed.items():
        if a.positions and positions:
            print(f"\n{arm}: loss positions of its first {min(a.positions, len(positions))} batches\n")
            print("| batch (step) | loss positions | |\n|---|---|---|")
            first = positions[:a.positions]
            for step, (n, mark) in enumerate(zip(first, extremes(first)), 1):
                print(f"| {step} | {n:,} | {mark} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
