"""``diffmodel quickstart``: train a tiny diff model on the bundled samples (CPU, a few minutes).

Shape: parse the flags, check them all before anything is written, call the
steps of :mod:`diffmodel.quickstart` (copy the samples, build the base model,
run ``diffmodel train`` on them), print each step and the final summary.
Heavy modules are imported after parsing, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from diffmodel.tiny import ARCHS

DESCRIPTION = ("Train a tiny diff model on the bundled samples (CPU, a few minutes) and print a summary. "
               "Everything is written under --output_dir; running the command again starts over.")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="diffmodel quickstart", description=DESCRIPTION)
    p.add_argument("-o", "--output_dir", default="quickstart_out", help="folder for everything the run writes (default: %(default)s)")
    p.add_argument("--arch", choices=ARCHS, default="gpt2", help="model architecture built from a config (default: %(default)s)")
    p.add_argument("--epochs", type=float, default=5, help="training epochs (default: %(default)s)")
    p.add_argument("--max_steps", type=int, default=-1, help="train this many optimizer steps, however many epochs they take (--epochs is then ignored; default: all --epochs)")
    p.add_argument("--block_size", type=int, default=512, help="row length in tokens (default: %(default)s)")
    p.add_argument("--layers", type=int, default=3, help="transformer layers (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=128, help="hidden size (default: %(default)s)")
    p.add_argument("--vocab_size", type=int, default=1024, help="BPE vocabulary size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights, the validation split and the training order (default: %(default)s)")
    p.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bars (passed on to the diffmodel train it runs)")
    return p.parse_args(argv)


def make_output_dir(output_dir: str) -> Path:
    """``--output_dir``, created and checked writable (a file written and removed in it), or a usage error naming it."""
    from diffmodel.errors import DiffModelError

    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as err:
        raise DiffModelError(f"--output_dir {output_dir}: cannot write in it ({err.strerror or err}); choose another folder") from None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)  # None: the command line (python -m diffmodel.commands.quickstart ...)
    from diffmodel.commands.train import main as train_main
    from diffmodel.progress import bars_off
    from diffmodel.quickstart import build_base_model, check_block_size, check_flags, copy_samples, summary, train_args

    check_flags(args)
    out = make_output_dir(args.output_dir)
    start = time.time()
    rows, data = copy_samples(out)
    print(f"[quickstart] {len(rows)} bundled diff samples -> {data}")
    with bars_off(args.no_progress):
        base = build_base_model(args, rows, out)
    print(f"[quickstart] tokenizer and untrained {args.arch} written to {base}")
    check_block_size(base, rows, args.block_size)
    code = train_main(train_args(args, data, base, out))
    if code:  # stopped (SIGTERM) with a checkpoint, which quickstart does not resume: it trains with --overwrite_output_dir
        print(f"[quickstart] training stopped (exit status {code}); running this command again starts training over", file=sys.stderr)
        return code
    table = summary(out / "model", args.block_size, start)
    width = max(len(k) for k, _ in table)
    print("\n[quickstart] done\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
