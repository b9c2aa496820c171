"""``diffmodel edit``: write the diff for a file and an instruction with a diff model, and apply it.

One file::

    diffmodel edit --model OUT/checkpoint-500 src/app.py -m "Handle an empty list"

prints the generated diff (coloured on a terminal) and, on stderr, whether it
applies; ``--apply`` also replaces the file (atomically) with the edited one.

Many files::

    diffmodel edit --model DIR --jsonl requests.jsonl edits.jsonl

reads one request per line (``name`` or ``path``, ``before`` or ``code``,
``message``), generates in batches, and writes each row back with ``diff``,
``new_code``, ``status`` and ``notes`` added (one row per sample when
``--num_samples`` > 1, with ``sample`` numbered from 0). The rows are written
piece by piece to ``OUT.partial`` (:mod:`diffmodel.infer.partial`): a run that
dies resumes from where it stopped when run again. Under torchrun the processes
share the pieces out and process 0 joins them (:mod:`diffmodel.infer.shards`).

``--edit_format`` names the format the model was trained on (docs/formats.md):
``diff`` is then the unified diff from the file to the edited file (empty when
the edit failed), and ``output`` what the model wrote in its format. Diff-aware
decoding is for ``carper`` only; another format is decoded unconstrained and a
note says so.

Invariants:
- Every input problem (flags, a missing model folder or file, each bad jsonl
  line as FILE:LINE) is reported before the model is loaded.
- ``--apply`` writes only an edit that applied; the file is replaced through
  a temporary file and a rename, keeping its permissions.
- Exit status: 0 when the edit applied (``--jsonl``: when the run finished),
  1 when no sample applied, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections import Counter

from diffmodel.commands.options import (
    add_format_flag, add_generation_flags, add_model_flags, check_generation, check_model, generation_options,
    generation_settings, load_model, model_identity,
)
from diffmodel.errors import DiffModelError, raise_if_problems
from diffmodel.infer.requests import prompt_name, read_requests, read_text_file

_EPILOG = """\
examples:
  diffmodel edit --model runs/model src/app.py -m "Add type hints"
  diffmodel edit --model runs/model src/app.py -m "Add type hints" --apply
  diffmodel edit --model runs/model src/app.py -m "Fix the bug" --num_samples 8 --temperature 0.8
  diffmodel edit --model runs/model --jsonl requests.jsonl edits.jsonl --batch_size 32
  diffmodel edit --model runs/model src/app.py -m "Add type hints" --unconstrained   # no diff grammar
  diffmodel edit --model runs/commit_model src/app.py -m "Add type hints" --edit_format commit

Decoding is diff-aware unless --unconstrained is given: context and removed
lines are the file's own, so a finished diff always applies strictly; greedy,
it proposes tokens copied from the file and keeps those the model picks
(--no_speculation turns that off; the diff is the same). Only
--edit_format carper (the default) has diff-aware decoding; commit, linediff
and search_replace are decoded unconstrained, and the edit is read and applied
by the format's own parser; the diff shown is from the file to the edited file.

status: strict (applied at the stated lines), lenient (applied after the
lenient applier relocated hunks), failed, too_long (prompt longer than the
model's positions). Exit status: 0 applied (--jsonl: the run finished), 1 nothing applied, 2 usage error.
"""

RED, GREEN, CYAN, BOLD, RESET = "\033[31m", "\033[32m", "\033[36m", "\033[1m", "\033[0m"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffmodel edit",
        description="Write the diff for FILE and an instruction (-m) with a diff model, and apply it.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", nargs="?", help="the file to edit (not with --jsonl)")
    add_model_flags(p)
    p.add_argument("-m", "--message", help="the instruction, written like a commit message")
    add_format_flag(p)
    p.add_argument("--name", help="the file's name in the prompt (default: FILE relative to the current folder)")
    p.add_argument("--apply", action="store_true", help="replace FILE with the edited file when the diff applies")
    p.add_argument("--jsonl", nargs=2, metavar=("IN", "OUT"), help="batch mode: requests from IN (name/path, before/code, message), results to OUT")
    p.add_argument("--color", "--colour", choices=("auto", "always", "never"), default="auto", help="colour the diff (default: on a terminal, unless NO_COLOR is set)")
    p.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar in --jsonl mode")
    add_generation_flags(p)
    return p


# -- inputs ----------------------------------------------------------------------------------


def validate(args: argparse.Namespace) -> None:
    problems: list[str] = []
    check_model(args, problems)
    if args.jsonl:
        for flag, value in (("FILE", args.file), ("-m/--message", args.message), ("--apply", args.apply or None), ("--name", args.name)):
            if value is not None:
                problems.append(f"{flag} does not go with --jsonl (each jsonl row names its file and message)")
        src, out = args.jsonl
        if not os.path.isfile(src):
            problems.append(f"--jsonl IN {src!r} " + ("is not a file" if os.path.exists(src) else "does not exist"))
        if os.path.isdir(out):
            problems.append(f"--jsonl OUT {out!r} is a folder; give a file name")
        elif os.path.isfile(src) and os.path.exists(out) and os.path.samefile(src, out):
            problems.append(f"--jsonl OUT {out!r} is IN: give another file (the results would replace the requests)")
        elif not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            problems.append(f"--jsonl OUT {out!r}: its folder does not exist")
    else:
        if args.file is None:
            problems.append("give FILE to edit (or --jsonl IN OUT for many files)")
        else:
            try:
                read_text_file(args.file)  # missing, a folder, unreadable or not UTF-8: with the other problems
            except DiffModelError as err:
                problems.append(str(err))
        if args.message is None:
            problems.append("give the instruction with -m/--message")
    check_generation(args, problems)
    raise_if_problems(problems, "diffmodel edit cannot start")


# -- output ----------------------------------------------------------------------------------


def use_color(choice: str, stream) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def colorize(diff: str) -> str:
    """ANSI colours for a diff: removed lines red, added green, ``@@`` headers cyan."""
    out = []
    for line in diff.splitlines(keepends=True):
        body, end = (line[:-1], "\n") if line.endswith("\n") else (line, "")
        if line.startswith(("---", "+++")):
            out.append(f"{BOLD}{body}{RESET}{end}")
        elif line.startswith("@@"):
            out.append(f"{CYAN}{body}{RESET}{end}")
        elif line.startswith("-"):
            out.append(f"{RED}{body}{RESET}{end}")
        elif line.startswith("+"):
            out.append(f"{GREEN}{body}{RESET}{end}")
        else:
            out.append(line)
    return "".join(out)


def describe(edit) -> str:
    text = {
        "strict": "applies (strict)",
        "lenient": "applies after relocating hunks (lenient)",
        "failed": "does not apply",
        "too_long": "not generated: the prompt is too long for the model",
    }[str(edit.status)]
    return text + ("" if edit.stop != "length" else "; generation hit --max_new_tokens")


def _print_diff(diff: str, color: bool) -> None:
    if diff and not diff.endswith("\n"):
        diff += "\n"
    sys.stdout.write(colorize(diff) if color else diff)


def _note_decoding(args) -> None:
    note = generation_settings(args).get("constrained_note")
    if note:
        print(f"note: {note}", file=sys.stderr)


def run_one(args) -> int:
    from diffmodel.atomic import write_bytes

    code = read_text_file(args.file)
    name = args.name or prompt_name(args.file)
    model = load_model(args, quiet=True)
    _note_decoding(args)
    edits = model.edit_many([(code, args.message, name)], **generation_options(args))[0]
    color = use_color(args.color, sys.stdout)
    many = len(edits) > 1
    for k, edit in enumerate(edits):
        if many:
            print(f"# sample {k + 1}/{len(edits)}: {edit.status}", flush=True)
        _print_diff(edit.diff or edit.output, color)  # a failed edit in another format: what the model wrote
        sys.stdout.flush()
        label = f"{name}" + (f" (sample {k + 1})" if many else "")
        print(f"{label}: {describe(edit)}", file=sys.stderr)
        for note in edit.notes:
            print(f"  note: {note}", file=sys.stderr)
    chosen = next((k for k, e in enumerate(edits) if e.ok), None)
    if chosen is None:
        if args.apply:
            print(f"nothing written: {'no sample' if many else 'the diff'} applied", file=sys.stderr)
        return 1
    if args.apply:
        # through a symlink: the file it points to is edited, the link stays a link
        write_bytes(os.path.realpath(args.file), edits[chosen].new_code.encode("utf-8"))
        which = f" (sample {chosen + 1})" if many else ""
        print(f"wrote {args.file}{which}", file=sys.stderr)
    return 0


def run_jsonl(args) -> int:
    """Batch mode, written piece by piece to ``OUT.partial`` so that a run that dies resumes (same command)."""
    from diffmodel.evaluate.edits import forced_share
    from diffmodel.infer import partial as pieces
    from diffmodel.infer import shards
    from diffmodel.infer.partial import file_hash, generate_share, join

    src, dst = args.jsonl
    rows = read_requests(src)
    if any("diff" in row for row in rows):
        print("note: input rows have a 'diff' field: kept as 'reference_diff'; 'diff' is the generated one", file=sys.stderr)
    options = generation_options(args)
    piece = pieces.PIECE_BATCHES * args.batch_size
    fingerprint = {"in": file_hash(src), **model_identity(args), "options": options, "piece": piece}
    _note_decoding(args)
    loading = []  # seconds spent loading the model, left out of the rate

    def load():
        began = time.perf_counter()
        model = load_model(args, quiet=True)
        loading.append(time.perf_counter() - began)
        return model

    start = time.perf_counter()
    try:
        got = generate_share(load, rows, dst, fingerprint, piece, options, functools.partial(_result_lines, args),
                             not args.no_progress, lambda line: print(line, file=sys.stderr))
    except shards.OtherProcessReports:  # under torchrun: this process's share is kept, process 0 writes OUT
        return 0
    finally:
        shards.finish()
    seconds = time.perf_counter() - start - sum(loading)
    counts = Counter(json.loads(line)["status"] for part in got.parts for line in part.read_lines())
    got.parts[0].finish() if len(got.parts) == 1 else join(got.parts, dst)
    summary = ", ".join(f"{status} {counts[status]}" for status in ("strict", "lenient", "failed", "too_long") if counts[status])
    made = sum(counts.values()) - got.kept * args.num_samples  # by every process, in this run
    rate = made / seconds if seconds > 0 else float("inf")
    forced = f", {forced_share(got.made):.0%} of tokens forced" if options["constrained"] and got.made else ""
    this_run = f" ({made} in this run)" if got.kept else ""
    print(f"{len(rows)} requests, {sum(counts.values())} edits{this_run} in {seconds:.1f}s ({rate:.2f} edits/s{forced}): "
          f"{summary}; wrote {dst}", file=sys.stderr)
    return 0


def _result_lines(args, requests: list[dict], results) -> list[str]:
    """The OUT lines of ``requests``: each row with its edit added (one line per sample)."""
    lines = []
    for row, edits in zip(requests, results):
        for k, edit in enumerate(edits):
            out = dict(row)
            if "diff" in out:
                out["reference_diff"] = out.pop("diff")
            if args.num_samples > 1:
                out["sample"] = k
            out.update(diff=edit.diff, new_code=edit.new_code, status=str(edit.status), notes=edit.notes)
            if args.edit_format != "carper":
                out.update(edit_format=args.edit_format, output=edit.output)
            lines.append(json.dumps(out, ensure_ascii=False) + "\n")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    validate(args)
    if args.jsonl:
        return run_jsonl(args)
    return run_one(args)


__all__ = ["build_parser", "colorize", "main"]
