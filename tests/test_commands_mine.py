"""``diffmodel mine``'s command line: snake_case flags, kebab-case aliases, all problems at once, a light --help."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from diffmodel.cli import main as cli_main
from diffmodel.commands.mine import build_parser, config_from_args
from diffmodel.mine.filters import FilterOptions
from diffmodel.mine.run import MineConfig

#: Every flag of ``diffmodel mine`` with a value other than its default, in the documented spelling.
SNAKE = [
    "repo", "--output_dir", "out", "--rows", "cp.jsonl", "--rev", "main", "--first_parent", "--context", "5",
    "--keep_deleted", "--edit_format", "linediff", "--min_message_chars", "3", "--max_message_chars", "900", "--min_message_words", "1",
    "--max_message_words", "50", "--keep_noise_messages", "--drop_reverts", "--keep_bot_authors",
    "--languages", "Python,Rust", "--max_before_chars", "1000", "--max_diff_chars", "500",
    "--tokenizer_name", "tok", "--max_tokens", "128", "--no_dedup", "--licenses", "MIT",
    "--split_by", "repository", "--validation_fraction", "0.1", "--test_fraction", "0.2",
    "--shard_size", "1MB", "--overwrite", "--workers", "3", "--batch_size", "16", "--no_progress",
]

#: The same command line in the spelling ``diffmodel mine`` had before: kebab-case, --output, --tokenizer.
OLD_NAMES = {"--output_dir": "--output", "--tokenizer_name": "--tokenizer"}
KEBAB = [OLD_NAMES.get(a, a.replace("_", "-")) if a.startswith("--") else a for a in SNAKE]

EXPECTED = MineConfig(
    inputs=["repo"], output="out", rows=["cp.jsonl"], rev="main", first_parent=True, context=5, keep_deleted=True,
    filters=FilterOptions(
        min_message_chars=3, max_message_chars=900, min_message_words=1, max_message_words=50,
        noise_messages=False, drop_reverts=True, bot_authors=False, languages=("Python", "Rust"),
        max_before_chars=1000, max_diff_chars=500, max_tokens=128, dedup=False, licenses=("MIT",)),
    tokenizer="tok", split_by="repository", validation_fraction=0.1, test_fraction=0.2, shard_bytes=1 << 20,
    workers=3, batch_size=16, overwrite=True, progress=False, edit_format="linediff",
)


class TestSpellings:
    @pytest.mark.parametrize("argv", [SNAKE, KEBAB, ["-o" if a == "--output" else a for a in KEBAB]],
                             ids=["snake_case", "kebab-case", "short -o"])
    def test_every_spelling_gives_the_same_config(self, argv):
        assert config_from_args(build_parser().parse_args(argv)) == EXPECTED

    def test_help_shows_only_the_snake_case_spelling(self):
        parser = build_parser()
        epilog, parser.epilog = parser.epilog, None
        lines = [line.strip().split("  ")[0] for line in parser.format_help().splitlines() if line.startswith("  -")]
        shown = [flag for line in lines for flag in re.findall(r"-{1,2}\w+", line)]
        assert shown == ["-h", "--help", "-o", "--output_dir"] + [a for a in SNAKE[3:] if a.startswith("--")]
        assert [line for line in lines if re.search(r"--\w+-", line)] == []
        assert epilog.endswith(
            "flag spellings:\n  Each flag is also accepted in kebab-case (--first-parent for --first_parent);\n"
            "  --output is --output_dir and --tokenizer is --tokenizer_name.\n")

    def test_a_prefix_of_a_flag_and_its_aliases_is_not_ambiguous(self):
        args = build_parser().parse_args(["repo", "--out", "o", "--first", "--keep-n", "--max-t", "9"])
        assert (args.output, args.first_parent, args.keep_noise_messages, args.max_tokens) == ("o", True, True, 9)

def test_every_problem_is_reported_at_once(tmp_path, capsys):
    assert cli_main(["mine", "-o", str(tmp_path / "o"), "--max-tokens", "100", "--context", "-1",
                     "--workers", "0", "--test_fraction", "1.5"]) == 2
    assert capsys.readouterr().err == (
        "diffmodel mine: error: diffmodel mine cannot start:\n"
        "  - --max_tokens needs --tokenizer_name (the tokenizer that counts the tokens)\n"
        "  - nothing to mine: pass git repositories (or folders of them) and/or --rows FILE\n"
        "  - --context must be >= 0, got -1\n"
        "  - --workers must be >= 1, got 0\n"
        "  - bad split fractions: --test_fraction must be in [0, 1), got 1.5\n")
    assert not (tmp_path / "o").exists()


def test_help_in_a_fresh_interpreter_imports_no_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "diffmodel.cli", "mine", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: diffmodel mine ")
    modules = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "diffmodel.mine.run" in modules  # what the command imports is seen (import_module itself is not timed)
    assert [m for m in modules if m.split(".")[0] in ("torch", "transformers", "datasets")] == []
