"""The command lines and Python snippets that README.md and docs/*.md show work as written.

Command lines are taken from the shell code blocks of README.md and docs/*.md
(fenced with ```bash, ```sh, ```shell or no language; 4-space indented blocks
too, though the docs have none) and parsed with the real parser of their
subcommand, without running anything. Rules:

- A line ending in ``\\`` continues on the next one; ``# comments`` are dropped
  (as the shell does); ``&&``, ``||``, ``;`` and ``|`` separate commands.
- A command is ``diffmodel ARGS``, ``... -m diffmodel.cli ARGS`` or
  ``... --module diffmodel.cli ARGS`` (python, torchrun, accelerate,
  deepspeed), or ``... run_clm_diff.py ARGS`` (the same as ``diffmodel train``).
  ``-m`` with another diffmodel module fails (``-m diffmodel`` too, while the
  package has no ``__main__``).
- Output shown in a block (``diffmodel edit: error: ...``: the word after
  ``diffmodel`` ends in ``:``) is not a command and is skipped.
- Placeholders: a word containing ``...`` ("more flags", ``...same flags...``)
  and the word ``ARGS`` ("the train arguments") are removed; ``$CFG`` becomes
  the shipped configuration folder (scale.md sets it so), so the DeepSpeed and
  FSDP configuration files exist; other names (FILE, runs/model) stay, as
  parsing does not read them. A lone arguments file (``diffmodel train
  args.yaml``), which parsing reads, is written first in a temporary folder.
- ``--help`` lines run the command (it prints and exits 0); train arguments
  after ``diffmodel slurm ... --`` are parsed by train's parser too, after
  slurm's own check of them (``check_train_args``).
- ``train`` is parsed by :func:`diffmodel.train.args.parse_args`, which builds
  TrainingArguments (FSDP options and config read) and trains nothing; with
  ``--deepspeed`` and no DeepSpeed installed, only argparse and the config
  file's existence are checked (TrainingArguments would import DeepSpeed).
- A line the shell cannot split (an unclosed quote) fails when it starts like
  a command, and is prose of a listing otherwise.

A flag that does not exist or is abbreviated (argparse takes a unique prefix,
which a new flag can make ambiguous), a wrong choice or type, a missing
required argument (argparse's, plus FILE and -m for ``edit`` without
``--jsonl`` and a subcommand for ``eval``) or an unknown ``--edit_format``
fails, named by the file and line of the command (test ids like
``README.md:123``).

The Python snippets of README.md (``from diffmodel.infer import DiffModel``)
and the first Python block of docs/edit.md are run against the tiny model of
:mod:`edit_model`, with ``runs/...`` replaced by its folder and ``code``,
``message`` and ``name`` taken from a sample; the ``edit_many`` request list
with ``...`` placeholders is replaced by real requests in both of its forms,
the keyword arguments kept as written.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from diffmodel.cli import COMMANDS
from diffmodel.cli import main as cli_main
from diffmodel.errors import DiffModelError
from diffmodel.launch import CONFIG_DIR
from edit_model import SAMPLES, trained_edit_model

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"", "bash", "sh", "shell", "console"}
HELP = {"-h", "--help", "--help-all", "--help_all"}
#: How a command line that runs diffmodel starts.
LAUNCHERS = r"(diffmodel|python3?|torchrun|accelerate|deepspeed)\s"


# -- finding the commands -----------------------------------------------------------------------


def shell_lines(path: Path):
    """(line number, logical line) of the shell code of a Markdown file, continued lines joined."""
    fence, lang, held, start = None, "", "", 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if fence is None and (opening := re.match(r"(`{3,})\s*([\w+-]*)", line)):
            fence, lang = opening.group(1), opening.group(2).lower()
            continue
        if fence is not None and re.fullmatch(fence + r"`*\s*", line):
            fence = None
            continue
        indented = fence is None and line.startswith("    ") and (held or is_command(line))
        if not (indented or (fence is not None and lang in SHELL)):
            held = ""
            continue
        held, start = (f"{held} {line.strip()}", start) if held else (line.strip(), n)
        if held.endswith("\\"):
            held = held[:-1].rstrip()
            continue
        yield start, held
        held = ""


def words_of(line: str) -> list[list[str]]:
    """The words of each command of a shell line (comments dropped, split at && || ; |)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    commands, words = [], []
    for word in lex:
        if word in ("&&", "||", ";", "|", "&"):
            commands.append(words)
            words = []
        else:
            words.append(word)
    return [*commands, words]


def diffmodel_argv(words: list[str]) -> list[str] | None:
    """The arguments given to diffmodel by one command, or None when it does not run diffmodel."""
    if words[:1] == ["diffmodel"]:
        return words[1:]
    for i, word in enumerate(words[:-1]):
        module = words[i + 1]
        if word in ("-m", "--module") and module.split(".")[0] == "diffmodel":
            runs_cli = module == "diffmodel.cli" or (module == "diffmodel" and importlib.util.find_spec("diffmodel.__main__"))
            return words[i + 2:] if runs_cli else [f"-m {module}", *words[i + 2:]]  # the latter: no command
    for i, word in enumerate(words[1:], 1):  # python3 / torchrun / deepspeed run_clm_diff.py (not a file tree's name)
        if word.endswith("run_clm_diff.py"):
            return ["train", *words[i + 1:]]
    return None


def is_command(line: str) -> bool:
    try:
        return any(diffmodel_argv(w) is not None for w in words_of(line))
    except ValueError:
        return False


def commands_in(path: Path):
    """(line number, line, diffmodel argv with the placeholders resolved; None: the shell cannot split it)."""
    for n, line in shell_lines(path):
        try:
            commands = words_of(line)
        except ValueError:  # an unclosed quote: a listing's prose, or a broken command
            if re.match(LAUNCHERS, line):
                yield n, line, None
            continue
        for words in commands:
            argv = diffmodel_argv(words)
            if argv is not None and not (argv and argv[0].endswith(":")):
                yield n, line, [w.replace("$CFG", str(CONFIG_DIR)) for w in argv if "..." not in w and w != "ARGS"]


COMMANDS_IN_DOCS = [pytest.param(argv, line, id=f"{path.relative_to(ROOT)}:{n}")
                    for path in DOCS for n, line, argv in commands_in(path)]


# -- parsing them -----------------------------------------------------------------------------


def parse_train(argv: list[str]) -> None:
    from diffmodel.train.args import make_parser, parse_args

    if not (len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json"))):  # not one arguments file
        make_parser().parse_args(argv)  # every flag, choice and type: argparse's message
    if "--deepspeed" in argv:
        config = Path(argv[argv.index("--deepspeed") + 1])
        assert config.is_file(), f"--deepspeed {config}: no such file"
        if importlib.util.find_spec("deepspeed") is None:
            return  # TrainingArguments loads DeepSpeed to read its config: the argparse check above is what runs here
    _, data_args, _ = parse_args(argv)  # builds TrainingArguments: fsdp options, --fsdp_config, the dataclasses' checks
    check_format(data_args.edit_format)


def check_format(name: str) -> None:
    from diffmodel import formats

    formats.get(name)


def parse_inspect(argv: list[str]) -> None:
    from transformers import HfArgumentParser

    from diffmodel.commands.inspect import DataArguments, InspectArguments

    _, data_args = HfArgumentParser((InspectArguments, DataArguments)).parse_args_into_dataclasses(args=argv)
    check_format(data_args.edit_format)


def parse_edit(argv: list[str]) -> None:
    from diffmodel.commands.edit import build_parser

    args = build_parser().parse_args(argv)
    if not args.jsonl:
        assert args.file and args.message is not None, "diffmodel edit needs FILE and -m MESSAGE (or --jsonl IN OUT)"


def parse_eval(argv: list[str]) -> None:
    from diffmodel.commands.eval import build_parser

    assert build_parser().parse_args(argv).command, "diffmodel eval needs a subcommand"


def parse_slurm(argv: list[str]) -> None:
    from diffmodel.commands.slurm import make_parser, split_argv
    from diffmodel.launch.slurm import SlurmOptions, check_train_args

    own, train_args = split_argv(argv)
    ns = vars(make_parser().parse_args(own))
    check_train_args(train_args, SlurmOptions(**{k: v for k, v in ns.items() if k not in ("output", "dry_run")}))
    parse_train(train_args)


def parse_mine(argv: list[str]) -> None:
    from diffmodel.commands.mine import build_parser

    build_parser().parse_args(argv)


def parse_apply(argv: list[str]) -> None:
    from diffmodel.commands.apply import build_parser

    build_parser().parse_args(argv)


def parse_quickstart(argv: list[str]) -> None:
    from diffmodel.commands.quickstart import parse

    parse(argv)


PARSERS = {"train": parse_train, "inspect": parse_inspect, "edit": parse_edit, "eval": parse_eval, "slurm": parse_slurm,
           "mine": parse_mine, "apply": parse_apply, "quickstart": parse_quickstart}


def test_every_command_has_a_parser_here():
    assert set(PARSERS) == set(COMMANDS)


def test_the_docs_show_commands_of_every_kind():
    shown = {p.values[0][0] for p in COMMANDS_IN_DOCS if p.values[0]}
    assert {"train", "inspect", "edit", "apply", "eval", "mine", "slurm", "quickstart"} <= shown
    assert len(COMMANDS_IN_DOCS) >= 30


@pytest.fixture
def no_abbreviations(monkeypatch):
    """Every parser built while the test runs takes flags spelt out in full only."""
    init = argparse.ArgumentParser.__init__

    def strict_init(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "allow_abbrev": False})

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", strict_init)


@pytest.mark.parametrize(("argv", "line"), COMMANDS_IN_DOCS)
def test_documented_command_parses(argv, line, tmp_path, monkeypatch, capsys, no_abbreviations):
    monkeypatch.chdir(tmp_path)
    assert argv is not None, f"the shell cannot split `{line}` (an unclosed quote)"
    assert argv and argv[0] in COMMANDS, f"`{line}` runs no diffmodel command ({argv[:1]})"
    name, rest = argv[0], argv[1:]
    if HELP & set(rest[: rest.index("--")] if "--" in rest else rest):
        assert cli_main(argv) == 0 and capsys.readouterr().out, f"{line}: no help printed"
        return
    if name == "train" and len(rest) == 1 and rest[0].endswith((".yaml", ".yml", ".json")):
        (tmp_path / rest[0]).write_text('{"train_file": "a.jsonl", "output_dir": "out", "do_train": true}\n')
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            PARSERS[name](rest)
    except SystemExit as exit_:  # argparse's error: the message went to stderr
        pytest.fail(f"`{line}` does not parse (exit {exit_.code}): {stderr.getvalue().strip().splitlines()[-1:]}")
    except Exception as err:  # DiffModelError, a failed assertion, transformers' ValueError
        pytest.fail(f"`{line}` is refused: {type(err).__name__}: {err}")


def test_the_extraction_rules(tmp_path):
    md = tmp_path / "x.md"
    md.write_text(
        "```bash\n"
        "diffmodel train --a 1 \\\n    --b 'x y' ...   # a comment\n"     # line 2, continued on 3
        "pip install x && diffmodel quickstart\n"                           # 4
        "torchrun --nproc_per_node 8 -m diffmodel.cli train ARGS --cfg $CFG\n"  # 5
        "```\n```\ndiffmodel edit: error: cannot read\n```\n"             # output: skipped
        "```python\ndiffmodel train = 1\n```\n"                            # not shell: skipped
        "Text:\n\n    diffmodel apply p.diff\n"                          # 15: an indented block
    )
    assert [(n, argv) for n, _, argv in commands_in(md)] == [
        (2, ["train", "--a", "1", "--b", "x y"]), (4, ["quickstart"]), (5, ["train", "--cfg", str(CONFIG_DIR)]),
        (15, ["apply", "p.diff"])]
    assert diffmodel_argv(["python", "-m", "diffmodel.commands.train", "--x"]) == ["-m diffmodel.commands.train", "--x"]


def test_a_wrong_flag_in_a_documented_command_fails(tmp_path, monkeypatch, no_abbreviations):
    """The check above catches a doc mistake: a made-up or abbreviated flag, a wrong choice, an unknown format."""
    monkeypatch.chdir(tmp_path)
    for name, rest in (("edit", ["--model", "m", "f.py", "-m", "x", "--temprature", "0"]),
                       ("eval", ["loss", "--model", "m", "--data", "d", "--loss_on", "everything"]),
                       ("eval", ["edits", "--model", "m", "--data", "d", "--max_sample", "5"]),
                       ("train", ["--output_dir", "o", "--pack"]),
                       ("train", ["--edit_format", "udiff"]),
                       ("slurm", ["--nodes", "2", "--", "--output_dir", "o", "--no_such_flag"])):
        with pytest.raises((SystemExit, DiffModelError)), contextlib.redirect_stderr(io.StringIO()):
            PARSERS[name](rest)


# -- the Python snippets ------------------------------------------------------------------------


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return trained_edit_model(tmp_path_factory)


def _namespace() -> dict:
    s = SAMPLES["calc"]
    return {"code": s["before"], "message": s["message"], "name": s["name"]}


STATUSES = ("strict", "lenient", "failed", "too_long")  # the statuses both snippets list


def test_readme_python_snippet_runs(model_dir):
    (block,) = [b for b in python_blocks(ROOT / "README.md") if "from diffmodel.infer import DiffModel" in b]
    assert '"runs/diff"' in block, "README.md's DiffModel snippet changed: update this test"
    ns = _namespace()
    exec(block.replace('"runs/diff"', repr(str(model_dir))), ns)
    assert ns["edit"].status in STATUSES


def test_edit_md_first_python_block_runs(model_dir):
    block = python_blocks(ROOT / "docs" / "edit.md")[0]
    placeholder = re.search(r"^\s*\[.*\.\.\..*\],\n", block, flags=re.M)
    assert '"runs/model"' in block and placeholder, "docs/edit.md's first block changed: update this test"
    block = block.replace('"runs/model"', repr(str(model_dir))).replace(placeholder.group(0), "    requests,\n")
    c, g = SAMPLES["calc"], SAMPLES["greet"]
    requests = [(c["before"], c["message"], c["name"]), {"name": g["name"], "before": g["before"], "message": g["message"]}]
    ns = {**_namespace(), "requests": requests}
    exec(block, ns)
    assert ns["edit"].status in STATUSES and ns["edit"].ok == (ns["edit"].status in ("strict", "lenient"))
    assert [len(samples) for samples in ns["results"]] == [4, 4]


def test_readme_tokenizer_snippet_runs(tmp_path, monkeypatch):
    import json

    from diffmodel.mine.shards import ShardWriter

    (block,) = [b for b in python_blocks(ROOT / "README.md") if "train_tokenizer" in b]
    assert "data/mined/train/*.jsonl.zst" in block and '"tok"' in block, "README.md's tokenizer snippet changed: update this test"
    with ShardWriter(tmp_path / "data" / "mined" / "train", "train") as shards:
        for sample in SAMPLES.values():
            shards.write(json.dumps({k: sample[k] for k in ("name", "before", "message", "diff")}).encode(), "x")
    monkeypatch.chdir(tmp_path)
    exec(block.replace("vocab_size=16384", "vocab_size=400"), {})
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert 257 < len(tokenizer) <= 400 and tokenizer.eos_token == "<|endoftext|>"
