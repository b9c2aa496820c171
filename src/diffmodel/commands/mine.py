"""``diffmodel mine``: build diff-model training data from git repositories.

Thin: parses the command line into a :class:`~diffmodel.mine.run.MineConfig`,
validates all of it (every problem reported at once, before any repository is
read), runs :func:`~diffmodel.mine.run.mine`, prints a summary.

Flags are spelled snake_case, as in the rest of ``diffmodel``; the kebab-case
spelling of each (and the older ``--output``/``--tokenizer``) is accepted as a
hidden alias, so ``--help`` lists every flag once.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys

from diffmodel.errors import raise_if_problems
from diffmodel.formats import DEFAULT as DEFAULT_FORMAT
from diffmodel.formats import FORMATS
from diffmodel.mine.filters import PERMISSIVE, FilterOptions
from diffmodel.mine.run import MineConfig, mine
from diffmodel.mine.shards import DEFAULT_SHARD_BYTES

_DEFAULTS = FilterOptions()

EPILOG = f"""\
examples:
  diffmodel mine ~/src/myproject -o data/myproject
  diffmodel mine ~/src --languages Python,Rust --licenses permissive -o data/mine
  diffmodel mine --rows commitpack-python.jsonl.zst -o data/commitpack

files written:
  OUTPUT_DIR/train/*.jsonl.zst, OUTPUT_DIR/validation/*.jsonl.zst, OUTPUT_DIR/test/*.jsonl.zst and
  OUTPUT_DIR/manifest.json (drop counts per filter, languages, repositories, shards, options).
  Train on it with:  diffmodel train --train_file OUTPUT_DIR/train/*.jsonl.zst ...

resume:
  Rerun the same command after an interruption: finished repositories are skipped and
  unfinished shards are discarded. A rerun with other output options is refused.

licences (--licenses):
  SPDX ids such as MIT,Apache-2.0; 'permissive' stands for {','.join(PERMISSIVE)}.

flag spellings:
  Each flag is also accepted in kebab-case (--first-parent for --first_parent);
  --output is --output_dir and --tokenizer is --tokenizer_name.
"""


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 256MB, 1G, 500000)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _flag(group, *names: str, old: tuple[str, ...] = (), **kwargs) -> argparse.Action:
    """``group.add_argument(*names, **kwargs)``, also accepting the kebab-case spelling of each
    snake_case name and the ``old`` names; those aliases are hidden from ``--help``."""
    aliases = (*(n.replace("_", "-") for n in names if "_" in n), *old)
    action = group.add_argument(*names, *aliases, **kwargs)
    action.hidden_aliases = aliases
    return action


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser for which a prefix matching a flag and its aliases (``--first`` of
    ``--first_parent`` and ``--first-parent``) is a prefix of one flag, not an ambiguous one."""

    def _get_option_tuples(self, option_string: str) -> list[tuple]:
        matches = super()._get_option_tuples(option_string)
        return [m for i, m in enumerate(matches) if all(m[0] is not n[0] for n in matches[:i])]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Lists each flag under its documented spelling only (the epilog names the aliases)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "hidden_aliases", ())
        if hidden:
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if s not in hidden]
        return super()._format_action_invocation(action)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="diffmodel mine",
        description="Build diff-model training data from git history: one sample per changed file of "
                    "every non-merge commit, filtered, deduplicated, split by repository and written as "
                    "jsonl.zst shards.",
        epilog=EPILOG, formatter_class=_HelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="REPO",
                   help="git repositories, or folders searched (3 levels deep) for repositories")
    _flag(p, "-o", "--output_dir", old=("--output",), dest="output", metavar="OUTPUT_DIR", required=True,
          help="output folder (created; a rerun resumes it)")
    _flag(p, "--rows", action="append", default=[], metavar="FILE",
          help="also convert CommitPack/CommitPackFT-style rows (old_file, new_file, old_contents, "
                "new_contents, message) from a .jsonl, .jsonl.zst, .json or .parquet file; repeatable")

    g = p.add_argument_group("history")
    _flag(g, "--rev", default="HEAD", help="revision to mine the history of (default: HEAD)")
    _flag(g, "--first_parent", action="store_true",
          help="follow only the first parent of merges (the main line); merges themselves are never mined")
    _flag(g, "--context", type=int, metavar="N", default=3,
          help="unchanged lines around each change in a hunk (default: 3)")
    _flag(g, "--keep_deleted", action="store_true", help="also make samples of deleted files")
    _flag(g, "--edit_format", choices=tuple(FORMATS), default=DEFAULT_FORMAT,
          help="the edit format each sample's text is written in (docs/formats.md; default: carper)")

    g = p.add_argument_group("filters (each on by default; drops are counted in manifest.json)")
    _flag(g, "--min_message_chars", type=int, metavar="N", default=_DEFAULTS.min_message_chars,
          help=f"drop commits with shorter messages (default: {_DEFAULTS.min_message_chars})")
    _flag(g, "--max_message_chars", type=int, metavar="N", default=_DEFAULTS.max_message_chars,
          help=f"drop commits with longer messages (default: {_DEFAULTS.max_message_chars})")
    _flag(g, "--min_message_words", type=int, metavar="N", default=_DEFAULTS.min_message_words,
          help=f"drop commits whose message has fewer words (default: {_DEFAULTS.min_message_words})")
    _flag(g, "--max_message_words", type=int, metavar="N", default=_DEFAULTS.max_message_words,
          help=f"drop commits whose message has more words (default: {_DEFAULTS.max_message_words})")
    _flag(g, "--keep_noise_messages", action="store_true",
          help="keep merge, web-editor ('Update README.md'), 'wip', version-bump and bot messages")
    _flag(g, "--drop_reverts", action="store_true", help="also drop 'Revert \"...\"' commits")
    _flag(g, "--keep_bot_authors", action="store_true", help="keep commits by authors such as dependabot[bot]")
    _flag(g, "--languages", type=_csv, default=None, metavar="LIST",
          help="comma-separated languages to keep, e.g. Python,Rust (default: every file with a known "
                "language; 'all' keeps every text file)")
    _flag(g, "--max_before_chars", type=int, metavar="N", default=_DEFAULTS.max_before_chars,
          help=f"drop files longer than this before the commit (default: {_DEFAULTS.max_before_chars})")
    _flag(g, "--max_diff_chars", type=int, metavar="N", default=_DEFAULTS.max_diff_chars,
          help=f"drop files whose diff is longer (default: {_DEFAULTS.max_diff_chars})")
    _flag(g, "--tokenizer_name", old=("--tokenizer",), dest="tokenizer", default=None, metavar="PATH",
          help="a tokenizer (folder or hub name) to enforce --max_tokens with")
    _flag(g, "--max_tokens", type=int, metavar="N", default=None,
          help=f"with --tokenizer_name, drop samples whose text has more tokens (default: {_DEFAULTS.max_tokens}); "
               "for diffmodel train --block_size B give B-1 (one slot stays for EOS)")
    _flag(g, "--no_dedup", action="store_true", help="keep exact duplicates (same before and diff)")
    _flag(g, "--licenses", type=_csv, default=None, metavar="LIST",
          help="mine only repositories whose licence file is one of these SPDX ids, or 'permissive' "
                "(default: every repository)")

    g = p.add_argument_group("output")
    _flag(g, "--split_by", choices=("auto", "repository", "commit"), default="auto",
          help="what the train/validation/test hash is of; auto: repository when there are several, "
                "else commit (default: auto)")
    _flag(g, "--validation_fraction", type=float, metavar="F", default=0.05,
          help="share for validation (default: 0.05)")
    _flag(g, "--test_fraction", type=float, metavar="F", default=0.05, help="share for test (default: 0.05)")
    _flag(g, "--shard_size", type=_size, default=DEFAULT_SHARD_BYTES, metavar="SIZE",
          help="uncompressed JSON per shard, e.g. 256MB (default: 256MB)")
    _flag(g, "--overwrite", action="store_true",
          help="delete earlier output of diffmodel mine in --output_dir first instead of resuming it")

    g = p.add_argument_group("speed")
    _flag(g, "--workers", type=int, metavar="N", default=min(8, os.cpu_count() or 1),
          help="worker processes (default: CPU count, at most 8)")
    _flag(g, "--batch_size", type=int, metavar="N", default=64,
          help="commits per batch handed to a worker (default: 64)")
    _flag(g, "--no_progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> MineConfig:
    filters = FilterOptions(
        min_message_chars=args.min_message_chars, max_message_chars=args.max_message_chars,
        min_message_words=args.min_message_words, max_message_words=args.max_message_words,
        noise_messages=not args.keep_noise_messages, drop_reverts=args.drop_reverts,
        bot_authors=not args.keep_bot_authors, languages=args.languages,
        max_before_chars=args.max_before_chars, max_diff_chars=args.max_diff_chars,
        max_tokens=(args.max_tokens or _DEFAULTS.max_tokens) if args.tokenizer else None, dedup=not args.no_dedup,
        licenses=args.licenses,
    )
    return MineConfig(
        inputs=list(args.inputs), output=args.output, rows=list(args.rows), rev=args.rev,
        first_parent=args.first_parent, context=args.context, keep_deleted=args.keep_deleted,
        filters=filters, tokenizer=args.tokenizer, split_by=args.split_by,
        validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
        shard_bytes=args.shard_size, workers=args.workers, batch_size=args.batch_size,
        overwrite=args.overwrite, progress=not args.no_progress, edit_format=args.edit_format,
    )


def summary(manifest: dict, output: str) -> str:
    s = manifest["samples"]
    lines = [f"wrote {s['total']} samples to {output}: train {s['train']}, validation {s['validation']}, "
             f"test {s['test']} (split by {manifest['split_by']})"]
    c = manifest["commits"]
    lines.append(f"commits: {c['commits']} listed, {c['commits_with_samples']} gave samples, "
                 f"{c['merge_commits']} merges, {c['empty_commits']} empty; changed files: {manifest['changed_files']}")
    if manifest.get("rows_converted"):
        lines.append(f"rows converted: {manifest['rows_converted']}")
    dropped = sorted(((v, k) for k, v in manifest["dropped"].items() if v), reverse=True)
    if dropped:
        lines.append("dropped: " + ", ".join(f"{k} {v}" for v, k in dropped))
    langs = list(manifest["languages"].items())[:8]
    if langs:
        lines.append("languages: " + ", ".join(f"{k} {v}" for k, v in langs))
    lines.append(f"manifest: {os.path.join(output, 'manifest.json')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    problems = config.problems()
    if args.max_tokens is not None and not args.tokenizer:
        problems.insert(0, "--max_tokens needs --tokenizer_name (the tokenizer that counts the tokens)")
    raise_if_problems(problems, "diffmodel mine cannot start")
    manifest = mine(config)
    print(summary(manifest, config.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
