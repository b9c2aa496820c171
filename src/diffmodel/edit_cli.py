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
``--num_samples`` > 1, with ``sample`` numbered from 0).

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
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from diffmodel.errors import DiffModelError, raise_if_problems

#: At most this many bad jsonl lines are listed in one error.
MAX_LISTED = 20

_EPILOG = """\
examples:
  diffmodel edit --model runs/model src/app.py -m "Add type hints"
  diffmodel edit --model runs/model src/app.py -m "Add type hints" --apply
  diffmodel edit --model runs/model src/app.py -m "Fix the bug" --num_samples 8 --temperature 0.8
  diffmodel edit --model runs/model --jsonl requests.jsonl edits.jsonl --batch_size 32

status: strict (applied at the stated lines), lenient (applied after the
lenient applier relocated hunks), failed, too_long (prompt longer than the
model's positions). Exit status: 0 applied, 1 nothing applied, 2 usage error.
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
    p.add_argument("--model", required=True, metavar="DIR", help="saved model and tokenizer (diffmodel train --output_dir, or a checkpoint-N folder)")
    p.add_argument("-m", "--message", help="the instruction, written like a commit message")
    p.add_argument("--name", help="the file's name in the prompt (default: FILE relative to the current folder)")
    p.add_argument("--apply", action="store_true", help="replace FILE with the edited file when the diff applies")
    p.add_argument("--jsonl", nargs=2, metavar=("IN", "OUT"), help="batch mode: requests from IN (name/path, before/code, message), results to OUT")
    p.add_argument("--num_samples", "--num-samples", type=int, metavar="N", default=1, help="samples per request (needs --temperature > 0; default: %(default)s)")
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=int, metavar="N", default=512, help="longest diff, in tokens (default: %(default)s)")
    p.add_argument("--temperature", type=float, metavar="T", default=0.0, help="0 for greedy decoding, above 0 to sample (default: %(default)s)")
    p.add_argument("--top_p", "--top-p", type=float, metavar="P", default=0.95, help="nucleus sampling threshold when sampling (default: %(default)s)")
    p.add_argument("--batch_size", "--batch-size", type=int, metavar="N", default=8, help="prompts generated together (default: %(default)s)")
    p.add_argument("--seed", type=int, metavar="N", default=None, help="random seed for sampling")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="weights' precision (default: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--color", "--colour", choices=("auto", "always", "never"), default="auto", help="colour the diff (default: on a terminal, unless NO_COLOR is set)")
    p.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar in --jsonl mode")
    return p


# -- inputs ----------------------------------------------------------------------------------


def read_text_file(path: str, what: str = "FILE") -> str:
    """A file's text, byte for byte (CRLF kept); clear errors for missing or non-UTF-8 files."""
    if not os.path.exists(path):
        raise DiffModelError(f"{what} {path!r} does not exist (to write a new file, create it empty first)")
    if os.path.isdir(path):
        raise DiffModelError(f"{what} {path!r} is a folder, not a file")
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DiffModelError(f"cannot read {what} {path!r}: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DiffModelError(f"{what} {path!r} is not UTF-8 text (byte {err.start}); diff models read text files") from None


def prompt_name(path: str) -> str:
    """The name FILE gets in the prompt: relative to the current folder when inside it, else its base name."""
    full = os.path.abspath(path)
    here = os.getcwd()
    try:
        rel = os.path.relpath(full, here)
    except ValueError:  # another drive
        rel = os.path.basename(full)
    if rel.startswith(".." + os.sep) or rel == "..":
        rel = os.path.basename(full)
    return rel.replace(os.sep, "/")


def _field(row: dict, names: tuple[str, ...]) -> tuple[str | None, object]:
    for name in names:
        if name in row:
            return name, row[name]
    return None, None


def read_requests(path: str) -> list[dict]:
    """Rows of a jsonl request file, each checked; every bad line is reported at once as FILE:LINE."""
    if not os.path.isfile(path):
        raise DiffModelError(f"--jsonl IN {path!r} does not exist" if not os.path.exists(path) else f"--jsonl IN {path!r} is not a file")
    rows: list[dict] = []
    problems: list[str] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(f"{where}: not UTF-8")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"{where}: not valid JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(row, dict):
                problems.append(f"{where}: expected a JSON object, got {type(row).__name__}")
                continue
            bad = []
            for names in (("name", "path"), ("before", "code"), ("message",)):
                key, value = _field(row, names)
                label = " or ".join(repr(n) for n in names)
                if key is None:
                    bad.append(f"missing {label}")
                elif not isinstance(value, str):
                    bad.append(f"{key!r} must be a string, got {type(value).__name__}")
            if bad:
                problems.append(f"{where}: {'; '.join(bad)}")
                continue
            rows.append(row)
    if len(problems) > MAX_LISTED:
        problems = problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more bad lines"]
    raise_if_problems(problems, f"cannot read --jsonl IN {path!r}")
    if not rows:
        raise DiffModelError(f"--jsonl IN {path!r} has no requests")
    return rows


def validate(args: argparse.Namespace) -> None:
    from diffmodel.infer import check_model_folder

    problems = []
    try:
        check_model_folder(args.model)
    except DiffModelError as err:
        problems.append(f"--model: {err}")
    if args.jsonl:
        for flag, value in (("FILE", args.file), ("-m/--message", args.message), ("--apply", args.apply or None), ("--name", args.name)):
            if value is not None:
                problems.append(f"{flag} does not go with --jsonl (each jsonl row names its file and message)")
        src, out = args.jsonl
        if not os.path.isfile(src):
            problems.append(f"--jsonl IN {src!r} " + ("is not a file" if os.path.exists(src) else "does not exist"))
        if os.path.isdir(out):
            problems.append(f"--jsonl OUT {out!r} is a folder; give a file name")
        elif not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            problems.append(f"--jsonl OUT {out!r}: its folder does not exist")
    else:
        if args.file is None:
            problems.append("give FILE to edit (or --jsonl IN OUT for many files)")
        elif not os.path.isfile(args.file):
            problems.append(f"FILE {args.file!r} " + ("is not a file" if os.path.exists(args.file) else "does not exist (to write a new file, create it empty first)"))
        if args.message is None:
            problems.append("give the instruction with -m/--message")
    if args.num_samples < 1:
        problems.append(f"--num_samples must be at least 1, got {args.num_samples}")
    elif args.num_samples > 1 and args.temperature <= 0:
        problems.append(f"--num_samples {args.num_samples} needs sampling: set --temperature above 0 (e.g. 0.8); greedy decoding gives identical samples")
    if args.temperature < 0:
        problems.append(f"--temperature must be 0 (greedy) or more, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        problems.append(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.max_new_tokens < 1:
        problems.append(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}")
    if args.batch_size < 1:
        problems.append(f"--batch_size must be at least 1, got {args.batch_size}")
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


def _load(args):
    from transformers.utils import logging as hf_logging

    from diffmodel.infer import DiffModel

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on stderr
    try:
        return DiffModel.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _generation_options(args) -> dict:
    return dict(
        num_samples=args.num_samples, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_p=args.top_p, batch_size=args.batch_size, seed=args.seed,
    )


def run_one(args) -> int:
    from diffmodel.atomic import write_bytes

    code = read_text_file(args.file)
    name = args.name or prompt_name(args.file)
    model = _load(args)
    edits = model.edit_many([(code, args.message, name)], **_generation_options(args))[0]
    color = use_color(args.color, sys.stdout)
    many = len(edits) > 1
    for k, edit in enumerate(edits):
        if many:
            print(f"# sample {k + 1}/{len(edits)}: {edit.status}", flush=True)
        _print_diff(edit.diff, color)
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
        write_bytes(os.path.abspath(args.file), edits[chosen].new_code.encode("utf-8"))
        which = f" (sample {chosen + 1})" if many else ""
        print(f"wrote {args.file}{which}", file=sys.stderr)
    return 0


def run_jsonl(args) -> int:
    from diffmodel.atomic import write_bytes

    src, dst = args.jsonl
    rows = read_requests(src)
    if any("diff" in row for row in rows):
        print("note: input rows have a 'diff' field: kept as 'reference_diff'; 'diff' is the generated one", file=sys.stderr)
    model = _load(args)
    start = time.perf_counter()
    results = model.edit_many(rows, progress=not args.no_progress, **_generation_options(args))
    seconds = time.perf_counter() - start
    counts: Counter[str] = Counter()
    lines = []
    for row, edits in zip(rows, results):
        for k, edit in enumerate(edits):
            out = dict(row)
            if "diff" in out:
                out["reference_diff"] = out.pop("diff")
            if args.num_samples > 1:
                out["sample"] = k
            out.update(diff=edit.diff, new_code=edit.new_code, status=str(edit.status), notes=edit.notes)
            counts[str(edit.status)] += 1
            lines.append(json.dumps(out, ensure_ascii=False) + "\n")
    write_bytes(os.path.abspath(dst), "".join(lines).encode("utf-8"))
    summary = ", ".join(f"{status} {counts[status]}" for status in ("strict", "lenient", "failed", "too_long") if counts[status])
    rate = sum(counts.values()) / seconds if seconds > 0 else float("inf")
    print(f"{len(rows)} requests, {sum(counts.values())} edits in {seconds:.1f}s ({rate:.2f} edits/s): {summary}; wrote {dst}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    validate(args)
    if args.jsonl:
        return run_jsonl(args)
    return run_one(args)


__all__ = ["build_parser", "colorize", "main", "prompt_name", "read_requests"]
