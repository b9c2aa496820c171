"""One decoding forward pass by chunk width: how much wider chunks (forced spans, proposals) cost.

    PYTHONPATH=src python benchmarks/forward_width.py [--batch 50] [--cached 1500] [--widths 1 2 4 9 20] [--rounds 2]

A random Llama of the ~110M shape (hidden 768, 12 layers, 16,384-token
vocabulary) in bf16 on the GPU prefills ``--batch`` rows of ``--cached``
tokens (every third row left-padded by 200), then times one forward pass
with the KV cache for each chunk width (half the rows' chunks padded on the
left, as the diff-aware decoder's are), cropping the cache back after each;
inside :func:`diffmodel.infer.model.decoding_attention` as decoding runs.
Median of 15 passes per width and round; widths alternate within a round.
Also prints, for widths 1 and 9, the time until the call returns (the
host launching kernels) against the time until the GPU is done.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from diffmodel.infer.model import decoding_attention

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import MODELS  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--cached", type=int, default=1500, help="positions in the KV cache before the chunk")
    p.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 9, 20])
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    cfg = LlamaConfig(vocab_size=16384, max_position_embeddings=4096, **MODELS["110m"])
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to("cuda", torch.bfloat16).eval()
    B, P = a.batch, a.cached
    ids = torch.randint(5, 16000, (B, P), device="cuda")
    mask = torch.ones(B, P, dtype=torch.long, device="cuda")
    mask[::3, :200] = 0
    pos = (torch.cumsum(mask, 1) - 1).clamp(min=0)

    def run(q: int, n: int = 15) -> tuple[float, float]:
        with torch.inference_mode(), decoding_attention():
            cache = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True).past_key_values
            x = torch.randint(5, 16000, (B, q), device="cuda")
            mq = torch.ones(B, q, dtype=torch.long, device="cuda")
            if q > 1:
                mq[::2, :q // 2] = 0
            pq = P + torch.arange(q, device="cuda").expand(B, q)
            launch, total = [], []
            for _ in range(n):
                extra = cache.get_seq_length() - P
                if extra:
                    cache.crop(-extra)
                torch.cuda.synchronize()
                start = time.perf_counter()
                model(input_ids=x, attention_mask=torch.cat([mask, mq], 1), position_ids=pq, past_key_values=cache,
                      use_cache=True, logits_to_keep=q)
                launch.append(time.perf_counter() - start)
                torch.cuda.synchronize()
                total.append(time.perf_counter() - start)
        return 1e3 * sorted(launch)[n // 2], 1e3 * sorted(total)[n // 2]

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch {B}, {P} cached positions")
    for q in (1, 9):
        launch, total = run(q)
        print(f"width {q}: the call returns after {launch:.1f} ms, the GPU is done after {total:.1f} ms")
    for r in range(a.rounds):
        print(f"round {r + 1}: " + "  ".join(f"width {q}: {run(q)[1]:.1f} ms" for q in a.widths), flush=True)


if __name__ == "__main__":
    main()
