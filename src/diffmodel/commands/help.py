"""Fast ``--help`` for commands whose flags are dataclass fields parsed by ``HfArgumentParser``.

:func:`dataclass_help` formats the flags of dataclasses (``field.metadata["help"]``,
the default, the choices) under short headings, reading only the dataclasses:
nothing from torch, transformers or datasets is imported, so ``--help`` is
printed in a fraction of a second. The help text has one source, the same
field metadata that ``HfArgumentParser`` reads when it parses the flags.

Invariants: this module only formats text; parsing always goes through
``HfArgumentParser`` after help has been handled (:func:`wants_help`).
"""

from __future__ import annotations

import argparse
import dataclasses

#: Flags that ask for the short help (handled before any parsing).
HELP_FLAGS = ("-h", "--help")


def wants_help(argv: list[str]) -> bool:
    """True when ``argv`` asks for help (``-h`` / ``--help`` before a ``--``)."""
    own = argv[: argv.index("--")] if "--" in argv else argv
    return any(a in HELP_FLAGS for a in own)


def _metavar(f: dataclasses.Field) -> tuple[str | None, str | None]:
    """(metavar, nargs) for the field's type, read from its annotation text (no import of the annotated types)."""
    hint = str(f.type).replace(" ", "")
    if hint.startswith("bool"):
        return None, None
    if "list[" in hint:
        inner = hint.split("list[", 1)[1].split("]", 1)[0]
        return inner.upper(), "+"
    return hint.split("|", 1)[0].upper(), None


def add_fields(group, dataclass_type, names: tuple[str, ...] | None = None, skip: set[str] | None = None) -> set[str]:
    """Add the fields ``names`` (default: every field not in ``skip``) of ``dataclass_type`` to ``group``; returns the names added."""
    by_name = {f.name: f for f in dataclasses.fields(dataclass_type)}
    chosen = names if names is not None else [n for n in by_name if n not in (skip or set())]
    for name in chosen:
        f = by_name[name]
        metavar, nargs = _metavar(f)
        default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        text = f.metadata.get("help", "")
        if default is True:
            text += f" (default: True; --no_{name} turns it off)"
        elif not (default is None or default is False or default == []):
            text += f" (default: {default})"
        kw = {"help": text.replace("%", "%%")}
        if metavar is None:
            kw["action"] = "store_true"
        else:
            kw.update(metavar=metavar, nargs=nargs)
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
                kw["metavar"] = "{" + ",".join(map(str, f.metadata["choices"])) + "}"
        group.add_argument(f"--{name}", **kw)
    return set(chosen)


def dataclass_help(prog: str, description: str, sections, usage: str | None = None, trailer: tuple[str, str] | None = None,
                   more_help: tuple[tuple[str, str], ...] = ()) -> str:
    """The help text: ``sections`` is ``[(heading, dataclass, names or None), ...]`` (None: its fields not shown yet).

    ``usage``: the usage line (default: argparse's, every flag listed).
    ``more_help``: other help flags, as (flag, help) pairs, listed after ``-h``.

    ``trailer``: an extra (heading, text) section printed after the flags,
    e.g. the pointer to the Trainer options.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description, usage=usage, add_help=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    shown: dict[type, set[str]] = {}
    for heading, dataclass_type, names in sections:
        group = parser.add_argument_group(heading)
        shown.setdefault(dataclass_type, set()).update(add_fields(group, dataclass_type, names, shown.get(dataclass_type)))
    group = parser.add_argument_group("help")
    group.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    for flag, text in more_help:
        group.add_argument(flag, action="store_true", help=text)
    if trailer is not None:
        parser.add_argument_group(trailer[0], trailer[1])
    return parser.format_help()
