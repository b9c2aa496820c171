"""``diffmodel inspect``: see which tokens of a dataset are masked and which are trained.

Takes the same data flags as ``diffmodel train`` (``--train_file``,
``--dataset_name``, ``--load_from_disk``, ``--skip_concat``,
``--train_diff_model``, ``--packing``, ``--block_size`` ...) plus a tokenizer,
runs the same load and preprocessing code, and prints the sanity report and
the first rows decoded with trained spans in green (or ``⟦brackets⟧`` when the
output is not a terminal), masked context dim and padding summarised.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from transformers import AutoTokenizer, HfArgumentParser

from diffmodel.errors import DiffModelError
from diffmodel.preprocess.sanity import format_report, mark_spans
from diffmodel.train.args import DataArguments, arg
from diffmodel.train.data import build_datasets


@dataclass
class InspectArguments:
    tokenizer_name: str | None = arg(None, "Tokenizer folder (or a model checkpoint folder) to tokenize with. Required.")
    rows: int = arg(3, "How many rows to show.")
    split: str = arg("train", "Which split to show.")
    cache_dir: str | None = arg(None, "Cache folder (preprocessing results are cached in CACHE/diffmodel_preprocess).")
    color: str = arg("auto", "Colour the output: auto (when a terminal), always or never.", choices=["auto", "always", "never"])
    max_chars: int = arg(3000, "Cut each shown row after this many characters.")


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser((InspectArguments, DataArguments))
    parser.prog = "diffmodel inspect"
    parser.description = __doc__.split("\n\n")[0]
    args, data_args = parser.parse_args_into_dataclasses(args=list(argv or []))
    if not args.tokenizer_name:
        raise DiffModelError("give --tokenizer_name DIR (a tokenizer or model checkpoint folder)")
    if not data_args.dataset_name and not data_args.train_file:
        raise DiffModelError("no data: give --train_file FILE... or --dataset_name DIR")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name)
    except (OSError, ValueError) as err:
        raise DiffModelError(f"cannot load a tokenizer from {args.tokenizer_name!r}: {err}") from None
    data_args.validation_split_percentage = 0 if args.split == "train" else data_args.validation_split_percentage
    block_size = data_args.block_size or 1024
    processed, reports = build_datasets(data_args, tokenizer, block_size, args.cache_dir)
    if args.split not in processed:
        raise DiffModelError(f"no {args.split!r} split; splits: {', '.join(processed)}")
    for report in reports.values():
        report.examples = []
    print(format_report(reports))
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    rows = processed[args.split]
    for i in range(min(args.rows, len(rows))):
        print(f"\n--- {args.split} row {i} ---")
        print(mark_spans(rows[i], tokenizer, color=color, max_chars=args.max_chars))
    return 0
