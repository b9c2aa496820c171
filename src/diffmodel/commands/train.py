"""``diffmodel train``: parse -> validate all -> :func:`diffmodel.train.run.run`.

``--help`` prints the diff-model layout, data, model and LoRA flags, grouped,
from the dataclasses of :mod:`diffmodel.train.args` (the same field metadata
the parser reads), then a "Trainer options" section pointing to
``--help-all``, the full list with every ``transformers.TrainingArguments``
flag. Both are handled before anything heavy is imported; every Trainer flag
is accepted on the command line (parsed by ``HfArgumentParser`` afterwards).
"""

from __future__ import annotations

import sys

from diffmodel.commands.help import dataclass_help, wants_help
from diffmodel.train.args import HELP_SECTIONS, TRAIN_DESCRIPTION

#: Flags that print the full help, Trainer flags included (slow: imports transformers).
HELP_ALL_FLAGS = ("--help-all", "--help_all")

USAGE = "diffmodel train [FLAGS] (see the sections below, and --help-all for the Trainer flags)\n       diffmodel train ARGS.yaml|ARGS.json"

TRAINER_OPTIONS = (
    "Trainer options",
    "Every transformers TrainingArguments flag is accepted too, e.g. --output_dir, --do_train, --do_eval, --bf16,\n"
    "--per_device_train_batch_size, --gradient_accumulation_steps, --learning_rate, --num_train_epochs, --max_steps,\n"
    "--eval_strategy, --save_strategy, --deepspeed, --fsdp, --seed. Their full list, with their meaning:\n"
    "  diffmodel train --help-all",
)


def help_text() -> str:
    """The short help: diff-model, data, model and LoRA flags first, then the pointer to the Trainer options."""
    return dataclass_help("diffmodel train", TRAIN_DESCRIPTION, HELP_SECTIONS, usage=USAGE, trailer=TRAINER_OPTIONS,
                          more_help=(("--help-all", "show every flag, the Trainer's included, and exit (slower: loads transformers)"),))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP_ALL_FLAGS for a in argv):
        from diffmodel.train.args import make_parser

        make_parser().print_help()
        return 0
    if wants_help(argv):
        print(help_text())
        return 0
    from diffmodel.train.args import parse_args, validate

    model_args, data_args, training_args = parse_args(argv)
    validate(model_args, data_args, training_args)
    from diffmodel.train.run import run

    return run(model_args, data_args, training_args)


if __name__ == "__main__":
    sys.exit(main())
