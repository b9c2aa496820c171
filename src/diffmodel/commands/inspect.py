"""``diffmodel inspect``: see which tokens of a dataset are masked and which are trained.

Takes the same data flags as ``diffmodel train`` (``--train_file``,
``--dataset_name``, ``--load_from_disk``, ``--skip_concat``,
``--train_diff_model``, ``--packing``, ``--block_size`` ...) plus a tokenizer,
runs the same load and preprocessing code, and prints the sanity report and
the first rows decoded with trained spans in green (or ``⟦brackets⟧`` when the
output is not a terminal), masked context dim and padding summarised.

The tokenizer folder may hold a model: its positions bound the default
``--block_size``; a larger ``--block_size`` given is shown with a warning (the
rows may be meant for a model of more positions, which inspect does not know),
where ``diffmodel train`` with that model refuses it.

Shape: ``--help`` is printed from the dataclasses before anything heavy is
imported; then parse (``HfArgumentParser``), validate every flag at once
(:func:`inspect_problems`, with :func:`diffmodel.train.args.data_problems`),
and only then load the tokenizer and the data. Parsed arguments are not
changed: the data flags used are a copy (``dataclasses.replace``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass

from diffmodel.commands.help import dataclass_help, wants_help
from diffmodel.errors import DiffModelError, did_you_mean, raise_if_problems
from diffmodel.train.args import LAYOUT_FLAGS, DataArguments, arg, data_problems


@dataclass
class InspectArguments:
    tokenizer_name: str | None = arg(None, "Tokenizer folder (or a model checkpoint folder) to tokenize with. Required.")
    rows: int = arg(3, "How many rows to show.")
    split: str = arg("train", "Which split to show: train (every row of the train data: none is held out when viewing it) or validation (--validation_file, or the --validation_split_percentage that diffmodel train holds out).")
    cache_dir: str | None = arg(None, "Cache folder (preprocessing results are cached in CACHE/diffmodel_preprocess).")
    color: str = arg("auto", "Colour the output: auto (when a terminal), always or never.", choices=["auto", "always", "never"])
    max_chars: int = arg(3000, "Cut each shown row after this many characters.")
    no_progress: bool = arg(False, "No progress bars while the data is loaded and preprocessed.")


DESCRIPTION = ("See which tokens of a dataset are masked and which are trained: the sanity report of diffmodel train, "
               "then the first rows with the trained spans marked.")
USAGE = "diffmodel inspect --tokenizer_name DIR (--train_file FILE... | --dataset_name DIR) [FLAGS]"

#: Data flags about training runs, not about the rows: inspect refuses them rather than ignore them.
TRAIN_ONLY = ("max_eval_samples", "save_final_dataset", "final_dataset_dir", "streaming", "stream_buffer", "stream_shuffle",
              "generation_eval_samples", "generation_eval_max_new_tokens")

#: The sections of ``diffmodel inspect --help``: (heading, dataclass, field names; None: the fields not shown yet).
HELP_SECTIONS = (
    ("inspect flags", InspectArguments, None),
    ("diff-model layout flags", DataArguments, LAYOUT_FLAGS),
    ("data flags", DataArguments, [f.name for f in dataclasses.fields(DataArguments) if f.name not in (*LAYOUT_FLAGS, *TRAIN_ONLY)]),
)


def inspect_problems(args: InspectArguments, data_args: DataArguments) -> list[str]:
    """Every problem of an inspect command line, found without reading the tokenizer or the data."""
    problems = []
    if not args.tokenizer_name:
        problems.append("give --tokenizer_name DIR (a tokenizer or model checkpoint folder)")
    if args.rows < 0:
        problems.append(f"--rows {args.rows} must be 0 or more (rows shown)")
    if args.split not in ("train", "validation"):
        problems.append(f"--split {args.split}: give train or validation")
    if args.max_chars < 1:
        problems.append(f"--max_chars {args.max_chars} must be at least 1 (characters shown per row)")
    defaults = DataArguments()
    for name in TRAIN_ONLY:
        if getattr(data_args, name) != getattr(defaults, name):
            problems.append(f"--{name} is a diffmodel train flag: inspect shows the rows the data flags make; drop it")
    return problems + data_problems(data_args)


def unknown_flags_message(unknown: list[str], parser) -> str:
    """The command-line words no inspect flag took (a flag with the values after it), each unknown
    flag with its close matches among the known ones."""
    import difflib

    known = [s for action in parser._actions for s in action.option_strings
             if s.startswith("--") and "-" not in s[2:]]
    groups: list[list[str]] = []
    for word in unknown:
        if word.startswith("-") or not groups:
            groups.append([word])
        else:
            groups[-1].append(word)
    parts = []
    for group in groups:
        close = difflib.get_close_matches(group[0].split("=", 1)[0].replace("-", "_").replace("__", "--", 1), known, n=3) \
            if group[0].startswith("--") else []
        parts.append(" ".join(group) + did_you_mean(close))
    return (f"unknown argument(s): {'; '.join(parts)}. See diffmodel inspect --help for its flags "
            f"(diffmodel train flags that do not shape the rows are not taken)")


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if wants_help(argv):
        print(dataclass_help("diffmodel inspect", DESCRIPTION, HELP_SECTIONS, usage=USAGE))
        return 0
    from transformers import AutoTokenizer, HfArgumentParser

    from diffmodel.preprocess.sanity import format_report, mark_spans
    from diffmodel.progress import bars_off
    from diffmodel.train.data import build_datasets
    from diffmodel.train.model import resolve_block_size

    parser = HfArgumentParser((InspectArguments, DataArguments))
    parser.prog = "diffmodel inspect"
    parser.usage = USAGE  # argparse's own would list every data flag above a bad value's one-line error
    parser.description = DESCRIPTION
    args, data_args, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        raise DiffModelError(unknown_flags_message(unknown, parser))
    raise_if_problems(inspect_problems(args, data_args), "diffmodel inspect cannot start")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from diffmodel.checkpoint import check_tokenizer_source

    try:
        tokenizer = AutoTokenizer.from_pretrained(check_tokenizer_source(args.tokenizer_name, "--tokenizer_name"))
    except (OSError, ValueError) as err:
        raise DiffModelError(f"cannot load a tokenizer from {args.tokenizer_name!r}: {err}") from None
    if args.split == "train":
        data_args = dataclasses.replace(data_args, validation_split_percentage=0)
    config = None  # a model folder's positions bound the default block size as in diffmodel train
    if os.path.isfile(os.path.join(args.tokenizer_name, "config.json")):
        from transformers import AutoConfig

        from diffmodel.checkpoint import max_positions

        config = AutoConfig.from_pretrained(args.tokenizer_name)
        limit = max_positions(config)
        if data_args.block_size is not None and limit and data_args.block_size > limit:
            # only training that model is bounded by it: the tokenizer may be taken for another model or a new one
            # (--model_type, --config_overrides), which inspect does not know; show the rows, and say so
            print(f"diffmodel inspect: warning: --block_size {data_args.block_size} is larger than the {limit} positions "
                  f"of the model in {args.tokenizer_name}: diffmodel train refuses it with --model_name_or_path "
                  f"{args.tokenizer_name} (use --block_size {limit} or less there), not with a model of more positions",
                  file=sys.stderr)
            config = None
    block_size = resolve_block_size(data_args.block_size, tokenizer, config)
    with bars_off(args.no_progress):
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
