"""``diffmodel apply``: apply a diff (or a git-style patch) to files in a working folder.

Invariants:
- File names (``FILE`` and names from ``---``/``+++`` headers) are relative to
  the working folder (``-C``) and must stay inside it
  (:func:`diffmodel.diff.paths.safe_path`): absolute names, names with a
  ``..`` part and symlinks that lead outside are refused with a
  :class:`~diffmodel.errors.DiffModelError` before anything is read.
- All files are patched in memory first; nothing is written unless every hunk
  of every file applied. Each file is then replaced atomically (a temporary
  file in the same folder, fsync, ``os.replace``), keeping its permissions,
  so an interrupted run leaves either the old or the new file. A file's
  report ("applied", its hunks) is printed once it is written, so a write
  that fails (a clear error naming the path) follows no "applied" line; with
  a failed hunk or ``--dry-run`` every report is printed and nothing written.
- Bytes that are not UTF-8 pass through unchanged (``surrogateescape``).
- Exit status: 0 when every hunk applied, 1 when a hunk failed or the patch
  has no hunk, 2 for a usage error (via the dispatcher).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from diffmodel.atomic import write_bytes
from diffmodel.diff.apply import ApplyResult, ApplyStatus, apply_diff
from diffmodel.diff.parse import ParsedDiff, Status, parse_patch
from diffmodel.diff.paths import safe_path
from diffmodel.errors import DiffModelError

DEV_NULL = "/dev/null"

_DESCRIPTION = """\
Apply a unified diff to a file.

PATCH is either a bare diff body (hunks starting with '@@', as a diff model
writes them after <DFF>); then FILE names the file to change. Or it is a
git-style patch whose '---'/'+++' headers name the file(s); FILE may then be
left out ('a/' and 'b/' prefixes are dropped). PATCH '-' reads standard input.
What 'git diff' writes applies as git would: renames ('rename from/to': the
old file is read, the new one written, the old one removed), sections without
hunks (a pure rename, a new or deleted empty file) and the file names git
quotes (non-ASCII, tabs). Binary patches are not supported.

By default hunks must match exactly at the line numbers they state. With
--lenient each hunk is searched for near its stated place, then with line
endings, whitespace and up to two context lines ignored. A hunk whose header
lacks a range ('@@ -1,7 @@') needs --lenient and is placed only by all of its
context and removed lines. A patch whose lines all end in CRLF (its '@@'
lines too) is tried byte for byte, as git apply reads it, and with one CR
dropped per line; first the reading whose line ends agree with the file's.

Nothing is written unless every hunk applies; files are replaced atomically.
"""

_EPILOG = """\
examples:
  diffmodel apply generated.diff src/app.py
  diffmodel apply --lenient --dry-run generated.diff src/app.py
  git diff > change.patch && diffmodel apply -C ../other-checkout change.patch
  diffmodel apply generated.diff src/app.py --output /tmp/app.py

exit status: 0 all hunks applied, 1 a hunk failed, 2 usage error.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffmodel apply",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("patch", metavar="PATCH", help="the diff or patch file ('-' for standard input)")
    parser.add_argument(
        "file", metavar="FILE", nargs="?",
        help="file to patch, relative to the working folder (required when PATCH has no ---/+++ header)",
    )
    parser.add_argument(
        "--lenient", action="store_true",
        help="find hunks by their content near the stated lines, tolerating line-ending, whitespace and context differences",
    )
    parser.add_argument(
        "-o", "--output", metavar="PATH",
        help="write the patched text to PATH ('-' for standard output) instead of changing FILE; one file only",
    )
    parser.add_argument("-n", "--dry-run", "--dry_run", action="store_true", help="report what would happen; write nothing")
    parser.add_argument(
        "-C", "--directory", metavar="DIR", default=".",
        help="working folder: file names are relative to it and may not leave it (default: current folder)",
    )
    return parser


@dataclass
class _Job:
    name: str  # as the user or patch gave it
    path: str  # real path inside the working folder
    section: ParsedDiff
    exists: bool
    delete: bool = False
    result: ApplyResult | None = None
    source: str | None = None  # a renamed file: real path of its old name (read there, removed once written)


def _read_patch(name: str) -> str:
    try:
        data = sys.stdin.buffer.read() if name == "-" else open(name, "rb").read()
    except OSError as err:
        raise DiffModelError(f"cannot read PATCH {name!r}: {err.strerror}") from None
    return data.decode("utf-8", errors="surrogateescape")


def _target_name(section: ParsedDiff) -> tuple[str | None, bool]:
    """The file a section changes, and whether the patch deletes it."""
    if section.new_path and section.new_path != DEV_NULL:
        return section.new_path, False
    if section.old_path and section.old_path != DEV_NULL:
        return section.old_path, section.new_path == DEV_NULL
    return None, False


def _plan(args: argparse.Namespace, sections: list[ParsedDiff]) -> list[_Job]:
    if not os.path.isdir(args.directory):
        raise DiffModelError(f"working folder {args.directory!r} (-C) is not a folder")
    if args.file is not None:
        if len(sections) > 1:
            raise DiffModelError(
                f"PATCH changes {len(sections)} files; leave out FILE to patch the files its headers name"
            )
        names = [(args.file, _target_name(sections[0])[1])]
    else:
        names = []
        for section in sections:
            name, delete = _target_name(section)
            if name is None:
                raise DiffModelError(
                    "PATCH has no ---/+++ header naming the file; give it: diffmodel apply PATCH FILE"
                )
            names.append((name, delete))
    if args.output is not None and len(names) > 1:
        raise DiffModelError(f"--output takes one file, but PATCH changes {len(names)} files")
    jobs = []
    for (name, delete), section in zip(names, sections):
        path = safe_path(args.directory, name)
        if os.path.isdir(path):
            raise DiffModelError(f"{name!r} is a folder, not a file")
        job = _Job(name, path, section, os.path.exists(path), delete and args.output is None)
        if args.file is None and section.renamed_from is not None and section.renamed_from != name:
            job.source = safe_path(args.directory, section.renamed_from)
        jobs.append(job)
    return jobs


def _run_job(job: _Job, mode: str) -> ApplyResult:
    section = job.section
    new_file = section.old_path == DEV_NULL or all(h.old_len == 0 for h in section.hunks)
    if job.source is not None:  # git's "rename from": the text is the old file's, written at the new name
        if job.exists:
            return ApplyResult(None, ApplyStatus.FAILED, [], section.status,
                               [f"the patch renames {section.renamed_from} to this file, but it already exists"])
        if not os.path.isfile(job.source):
            raise DiffModelError(f"{section.renamed_from!r} (renamed to {job.name!r}): no such file in the working folder")
        with open(job.source, "rb") as handle:
            before = handle.read().decode("utf-8", errors="surrogateescape")
    elif job.exists:
        with open(job.path, "rb") as handle:
            before = handle.read().decode("utf-8", errors="surrogateescape")
        if section.old_path == DEV_NULL and before:
            return ApplyResult(None, ApplyStatus.FAILED, [], section.status, ["the patch creates this file, but it already exists"])
    elif new_file:
        before = ""
    else:
        raise DiffModelError(f"{job.name!r}: no such file in the working folder")
    if section.header_only:  # a rename without edits, a new empty file, a mode change: no line to change
        text = "" if section.new_path == DEV_NULL else before
        return ApplyResult(text, ApplyStatus.APPLIED, [], section.status, _rename_note(job))
    result = apply_diff(before, section, mode)
    result.notes[:0] = _rename_note(job)
    return result


def _rename_note(job: _Job) -> list[str]:
    return [f"renamed from {job.section.renamed_from}"] if job.source is not None else []


def _report(job: _Job, out) -> None:
    result = job.result
    print(f"{job.name}: {result.status}", file=out)
    for note in result.notes:
        print(f"  note: {note}", file=out)
    for number, outcome in enumerate(result.hunks, 1):
        print(f"  hunk {number}: {outcome.describe()}", file=out)


def _write(job: _Job, output: str | None) -> None:
    """Write the patched text of ``job``: to ``output`` (``-``: standard output), else over (or, deleted, in place of) its file."""
    data = job.result.text.encode("utf-8", errors="surrogateescape")
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    elif output is not None:
        write_bytes(output, data)
    elif job.delete and not data:
        try:
            os.remove(job.path)
        except OSError as err:
            raise DiffModelError(f"cannot delete {job.path}: {err.strerror}") from None
    else:
        write_bytes(job.path, data)  # makes the missing folders of a new file
        if job.source is not None:  # a rename: the old name goes once the new file is written
            try:
                os.remove(job.source)
            except OSError as err:
                raise DiffModelError(f"wrote {job.path}, but cannot delete the renamed {job.source}: {err.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sections = parse_patch(_read_patch(args.patch))
    if all(s.status is Status.EMPTY for s in sections):
        raise DiffModelError(f"PATCH {args.patch!r} is empty")
    jobs = _plan(args, sections)
    report_to = sys.stderr if args.output == "-" else sys.stdout
    for job in jobs:
        job.result = _run_job(job, "lenient" if args.lenient else "strict")
    applies = all(job.result.ok for job in jobs)
    if not applies or args.dry_run:  # nothing is written
        for job in jobs:
            _report(job, report_to)
        if not applies:
            # --lenient can only help a hunk that was read; a binary patch or a text without hunks it cannot
            hint = not args.lenient and any(job.section.hunks for job in jobs if not job.result.ok)
            print("nothing written: not every hunk applied" + (" (try --lenient)" if hint else ""), file=sys.stderr)
            return 1
        print("dry run: nothing written", file=report_to)
        return 0
    for job in jobs:  # each report once its file is written: a write that fails follows no "applied" line
        _write(job, args.output)
        _report(job, report_to)
        if args.output not in (None, "-"):
            print(f"wrote {args.output}", file=report_to)
    return 0


__all__ = ["build_parser", "main"]
