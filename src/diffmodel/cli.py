"""The ``diffmodel`` command line: a thin dispatcher.

Each subcommand lives in its own module with a ``main(argv) -> int`` function
and is imported only when called, so ``diffmodel --help`` stays fast. A
:class:`~diffmodel.errors.DiffModelError` is printed as a one-paragraph error
(no traceback) and the process exits with status 2; Ctrl-C prints one line and
exits with 130; output piped into a reader that stops early (``| head``) ends
quietly.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

from diffmodel.errors import DiffModelError

#: name -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("diffmodel.commands.quickstart", "train a tiny diff model on the bundled samples (CPU, a few minutes)"),
    "train": ("diffmodel.commands.train", "train a diff model (every transformers TrainingArguments flag, plus data flags)"),
    "inspect": ("diffmodel.commands.inspect", "show which tokens of a dataset are masked and which are trained"),
    "mine": ("diffmodel.commands.mine", "build training data from git repositories (and CommitPack-style rows)"),
    "edit": ("diffmodel.commands.edit", "write and apply the diff for a file and an instruction with a diff model (one file or --jsonl)"),
    "apply": ("diffmodel.commands.apply", "apply a diff or git-style patch to files (strict, or --lenient for model output)"),
    "eval": ("diffmodel.commands.eval", "measure a diff model: held-out loss, edit accuracy, HumanEval bug fixing (pass@k); compare two reports"),
    "slurm": ("diffmodel.commands.slurm", "write an sbatch script running diffmodel train on N nodes x G GPUs, requeued and resumed on preemption"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return (
        "usage: diffmodel COMMAND [options]\n\n"
        "Train, run and evaluate diff models.\n\n"
        f"commands:\n{rows}\n\n"
        "Run 'diffmodel COMMAND --help' for the options of a command, 'diffmodel --version' for the version."
    )


def _unknown(name: str) -> str:
    """The one-line error for a command that does not exist, with the nearest command when one is close."""
    from diffmodel.errors import did_you_mean

    close = [repr(c) for c in difflib.get_close_matches(name, list(COMMANDS), n=1)]
    return (f"diffmodel: error: unknown command {name!r}{did_you_mean(close)}; choose from {', '.join(COMMANDS)} "
            "(diffmodel --help says what each does)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["help"] and len(argv) > 1:  # diffmodel help edit: edit's own help
        argv = [argv[1], "--help"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from diffmodel import __version__

        print(f"diffmodel {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(_unknown(name), file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(COMMANDS[name][0]).main(rest) or 0)
    except DiffModelError as err:
        print(f"diffmodel {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ndiffmodel {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of the output went away: nothing more to say, and nowhere to say it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
