"""Multi-GPU training throughput: one GPU against DDP, FSDP and DeepSpeed ZeRO-3 on two.

A torchrun worker: ``torchrun --nproc_per_node=G benchmarks/scale_throughput.py --engine ENGINE``.
It trains a ~1B Llama-shaped model (random init) with ``transformers.Trainer``
on packed rows of real diff samples (the layout, collator and launch
configurations of the package; rows are built with the package's pure layout
functions, so the machine needs no ``datasets``), bf16 mixed precision, and
rank 0 appends one JSON line: tokens/s in all and per GPU, measured from step
``--skip`` to the last step.

Scaling efficiency = (tokens/s per GPU on G GPUs) / (tokens/s on one GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from train_throughput import MODELS, build_rows, load_samples  # noqa: E402

from diffmodel.launch import config_path  # noqa: E402
from diffmodel.train.collate import PackedCollator  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = [{c: r[c] for c in ("input_ids", "labels", "position_ids")} for r in rows]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def main() -> int:
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=["ddp", "fsdp", "zero3"], default="ddp", help="ddp also means plain training on one GPU")
    p.add_argument("--data", type=Path, default=Path(".bench/gpu/samples.npz"))
    p.add_argument("--model", choices=sorted(MODELS), default="1b")
    p.add_argument("--block_size", type=int, default=2048)
    p.add_argument("--batch_size", type=int, default=8, help="rows per GPU per step")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--skip", type=int, default=20, help="steps left out of the timing (warm-up)")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()

    samples, vocab, eos = load_samples(args.data, args.block_size)
    rows = build_rows("pack", samples, args.block_size, eos)
    tokens_per_row = sum(sum(r["pieces"]) for r in rows) / len(rows)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))

    extra = {}
    if args.engine == "fsdp":
        cfg = json.loads(config_path("fsdp.json").read_text())
        cfg["activation_checkpointing"] = False  # same compute as the DDP arm
        tmp = Path(tempfile.mkdtemp()) / "fsdp.json"
        tmp.write_text(json.dumps(cfg))
        extra = {"fsdp": "full_shard auto_wrap", "fsdp_config": str(tmp)}
    elif args.engine == "zero3":
        extra = {"deepspeed": str(config_path("ds_zero3.json"))}

    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        bf16=torch.cuda.is_available(), learning_rate=1e-4, warmup_steps=10, logging_steps=50, save_strategy="no", report_to="none",
        ddp_find_unused_parameters=False, dataloader_num_workers=2, seed=0, disable_tqdm=True, **extra,
    )
    mcfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=args.block_size, tie_word_embeddings=False, use_cache=False, **MODELS[args.model])
    torch.manual_seed(0)
    model = LlamaForCausalLM(mcfg)
    model.config._attn_implementation = "sdpa"

    class Clock(TrainerCallback):
        t0 = t1 = None

        def on_step_end(self, a, state, control, **kw):
            if state.global_step == args.skip:
                sync()
                Clock.t0 = time.perf_counter()
            if state.global_step == args.steps:
                sync()
                Clock.t1 = time.perf_counter()

    trainer = Trainer(model=model, args=targs, train_dataset=Rows(rows), data_collator=PackedCollator(eos, pad_to_multiple_of=args.block_size), callbacks=[Clock()])
    trainer.train()
    measured = args.steps - args.skip
    seconds = Clock.t1 - Clock.t0
    tokens = measured * args.batch_size * world * tokens_per_row
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    if rank == 0:
        line = {
            "engine": args.engine if world > 1 else "one GPU", "gpus": world, "model": args.model,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6 if args.engine != "zero3" else None,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "steps_timed": measured, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "tokens_per_s_per_gpu": tokens / seconds / world,
            "step_ms": seconds / measured * 1e3, "peak_gib_rank0": peak,
        }
        with open(args.json, "a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
