"""The train / inspect / slurm / quickstart commands: fast grouped --help, every problem reported at once, doctests."""

from __future__ import annotations

import dataclasses
import doctest
import re
import subprocess
import sys

import pytest

from diffmodel.commands.inspect import main as inspect_main
from diffmodel.commands.train import main as train_main
from diffmodel.errors import DiffModelError
from diffmodel.train.args import LAYOUT_FLAGS, DataArguments, ModelArguments

HEAVY = re.compile(r"\|\s+(torch|transformers|datasets)(\.|$)")


def help_run(*args: str) -> subprocess.CompletedProcess:
    """``diffmodel ARGS`` in a fresh interpreter, with -X importtime (one line per imported module on stderr)."""
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "diffmodel.cli", *args], capture_output=True, text=True, timeout=120)


class TestHelpIsFastAndImportsNothingHeavy:
    @pytest.mark.parametrize("command", ["train", "inspect", "slurm", "quickstart"])
    def test_help_imports_no_torch_transformers_or_datasets(self, command):
        proc = help_run(command, "--help")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith(f"usage: diffmodel {command}")
        assert "import time:" in proc.stderr  # the check below saw the imports
        assert [line for line in proc.stderr.splitlines() if HEAVY.search(line)] == []


class TestNoProgressFlag:
    @pytest.mark.parametrize("command, section", [("train", "run flags"), ("inspect", "inspect flags"), ("quickstart", "options")])
    def test_listed_in_the_help(self, command, section):
        out = help_run(command, "--help").stdout
        assert out.index(f"\n{section}:\n") < out.index("\n  --no_progress")


def test_a_file_output_is_o_or_output_and_a_folder_output_o_or_output_dir_in_every_command():
    from diffmodel.commands import eval as eval_command
    from diffmodel.commands import quickstart, slurm

    for flag in ("-o", "--out", "--output"):
        assert eval_command.build_parser().parse_args(["edits", flag, "r.json"]).out == "r.json"
    assert slurm.make_parser().parse_args(["-o", "job.sbatch"]).output == "job.sbatch"
    assert quickstart.parse(["-o", "qs"]).output_dir == "qs"


class TestTrainHelp:
    def test_sections_in_order_diff_model_flags_before_trainer_options(self):
        out = help_run("train", "--help").stdout
        headings = ["diff-model layout flags:", "data flags:", "model flags:", "LoRA flags:", "Trainer options:"]
        where = [out.index(f"\n{h}\n") for h in headings]
        assert where == sorted(where)
        for name in LAYOUT_FLAGS:
            assert where[0] < out.index(f"  --{name}") < where[1]
        assert where[1] < out.index("  --train_file STR [STR ...]") < where[2]
        assert where[2] < out.index("  --model_name_or_path STR") < where[3]
        assert "diffmodel train --help-all" in out[where[4]:]
        assert "--per_device_train_batch_size" not in out[: where[4]]  # Trainer flags are not listed, only pointed to

    def test_flag_help_is_the_dataclass_field_metadata(self):
        def norm(text: str) -> str:  # argparse wraps lines, also after a hyphen
            return " ".join(text.split()).replace("- ", "-")

        out = norm(help_run("train", "--help").stdout)
        for dtype in (DataArguments, ModelArguments):
            for f in dataclasses.fields(dtype):
                assert f"--{f.name}" in out
                assert norm(f.metadata["help"]) in out, f.name

    def test_help_all_lists_every_trainer_flag(self):
        from transformers import TrainingArguments

        proc = subprocess.run([sys.executable, "-m", "diffmodel.cli", "train", "--help-all"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0
        for name in ("per_device_train_batch_size", "learning_rate", "deepspeed", "train_diff_model", "lora_r"):
            assert f"--{name}" in proc.stdout
        assert all(f"--{f.name}" in proc.stdout for f in dataclasses.fields(TrainingArguments) if f.init and not f.name.startswith("_"))


class TestEveryProblemAtOnce:
    def test_train_packing_with_concatenate_and_a_missing_file_before_loading(self, tmp_path):
        missing = tmp_path / "missing.jsonl"
        with pytest.raises(DiffModelError) as err:
            train_main(["--model_name_or_path", str(tmp_path / "no_model"), "--train_file", str(missing), "--packing", "--concatenate_texts",
                        "--do_train", "--output_dir", str(tmp_path / "out"), "--report_to", "none"])
        assert str(err.value) == (
            "diffmodel train cannot start:\n"
            f"  - --train_file {missing}: no such file\n"
            "  - --packing and --concatenate_texts are two different layouts; pass one of them\n"
            f"  - --model_name_or_path: model folder '{tmp_path / 'no_model'}' does not exist"
        )
        assert not (tmp_path / "out").exists()

    def test_train_packing_with_concatenate_is_refused_before_the_model_is_read(self, tmp_path):
        data = tmp_path / "data.jsonl"
        data.write_text('{"text": "<MSG> m\\n<DFF> d"}\n')
        with pytest.raises(DiffModelError, match="--packing and --concatenate_texts are two different layouts"):
            train_main(["--model_name_or_path", str(tmp_path / "no_model"), "--train_file", str(data), "--packing", "--concatenate_texts",
                        "--do_train", "--output_dir", str(tmp_path / "out"), "--report_to", "none"])

    def test_trainer_numbers_eval_split_and_output_folder_are_checked_before_the_data_is_read(self, tmp_path):
        data = tmp_path / "data.jsonl"
        data.write_text('{"text": "<MSG> m\\n<DFF> d"}\n')
        (tmp_path / "f.txt").write_text("a file")
        with pytest.raises(DiffModelError) as err:
            train_main(["--model_name_or_path", str(tmp_path / "no_model"), "--train_file", str(data), "--do_train", "--do_eval",
                        "--per_device_train_batch_size", "0", "--learning_rate", "-1", "--validation_split_percentage", "0",
                        "--output_dir", str(tmp_path / "f.txt" / "out"), "--report_to", "none"])
        assert str(err.value).splitlines()[1:] == [
            f"  - --model_name_or_path: model folder '{tmp_path / 'no_model'}' does not exist",
            "  - --per_device_train_batch_size 0 must be at least 1",
            "  - --learning_rate -1 must be 0 or more",
            "  - --do_eval needs a validation split: give --validation_file or a --validation_split_percentage above 0",
            f"  - --output_dir {tmp_path / 'f.txt' / 'out'}: {tmp_path / 'f.txt'} is a file, not a folder; choose another folder",
        ]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "f.txt"]  # nothing written

    def test_an_arguments_file_with_more_flags_says_it_must_stand_alone(self, tmp_path):
        with pytest.raises(DiffModelError, match=r"^an arguments file replaces the whole command line: put --max_steps 2 in "
                                                 r"args.yaml, or give every argument as a flag$"):
            train_main(["args.yaml", "--max_steps", "2"])

    def test_a_folder_that_holds_no_model_or_tokenizer_is_named(self, tmp_path):
        data = tmp_path / "data.jsonl"
        data.write_text('{"text": "<MSG> m\\n<DFF> d"}\n')
        (tmp_path / "empty").mkdir()
        (tmp_path / "f.txt").write_text("x")
        with pytest.raises(DiffModelError, match=r"--model_name_or_path: model folder '.*/empty' has no config.json"):
            train_main(["--model_name_or_path", str(tmp_path / "empty"), "--train_file", str(data), "--do_train",
                        "--output_dir", str(tmp_path / "out"), "--report_to", "none"])
        with pytest.raises(DiffModelError, match=r"^--tokenizer_name .*/empty: the folder holds no tokenizer \(tokenizer.json / "
                                                 r"tokenizer_config.json\); give a folder written by save_pretrained"):
            inspect_main(["--train_file", str(data), "--tokenizer_name", str(tmp_path / "empty")])
        with pytest.raises(DiffModelError, match=r"^--tokenizer_name .*/f.txt: is a file; give the folder that holds the tokenizer$"):
            inspect_main(["--train_file", str(data), "--tokenizer_name", str(tmp_path / "f.txt")])
        with pytest.raises(DiffModelError, match=r"^--tokenizer_name .*/nope: no such folder$"):
            inspect_main(["--train_file", str(data), "--tokenizer_name", str(tmp_path / "nope")])

    def test_inspect_reports_every_problem_at_once(self, tmp_path):
        missing = tmp_path / "missing.jsonl"
        with pytest.raises(DiffModelError) as err:
            inspect_main(["--train_file", str(missing), "--packing", "--concatenate_texts", "--block_size", "1", "--rows", "-1"])
        assert str(err.value) == (
            "diffmodel inspect cannot start:\n"
            "  - give --tokenizer_name DIR (a tokenizer or model checkpoint folder)\n"
            "  - --rows -1 must be 0 or more (rows shown)\n"
            f"  - --train_file {missing}: no such file\n"
            "  - --packing and --concatenate_texts are two different layouts; pass one of them\n"
            "  - --block_size 1 is too small; use at least 2 (typical: 1024 or 2048)"
        )

    def test_inspect_refuses_the_flags_of_training_runs_and_does_not_list_them(self, tmp_path, capsys):
        data = tmp_path / "data.jsonl"
        data.write_text('{"text": "<MSG> m\\n<DFF> d"}\n')
        with pytest.raises(DiffModelError) as err:
            inspect_main(["--tokenizer_name", "t", "--train_file", str(data), "--streaming", "--save_final_dataset"])
        assert str(err.value).splitlines()[1:] == [
            "  - --save_final_dataset is a diffmodel train flag: inspect shows the rows the data flags make; drop it",
            "  - --streaming is a diffmodel train flag: inspect shows the rows the data flags make; drop it",
        ]
        assert inspect_main(["--help"]) == 0
        shown = capsys.readouterr().out
        listed = re.findall(r"^  (--\w+)", shown, re.M)
        assert "--packing" in listed and "--streaming" not in listed and "--save_final_dataset" not in listed

    def test_cli_exits_2_without_traceback(self, tmp_path):
        proc = subprocess.run([sys.executable, "-m", "diffmodel.cli", "inspect", "--train_file", str(tmp_path / "x.jsonl")],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "--tokenizer_name" in proc.stderr and "x.jsonl: no such file" in proc.stderr


class TestLayoutDocstrings:
    @pytest.mark.parametrize("module", ["diffmodel.preprocess.layout", "diffmodel.preprocess.packing"])
    def test_examples_give_their_exact_output(self, module):
        mod = __import__(module, fromlist=["_"])
        result = doctest.testmod(mod, verbose=False)
        assert result.failed == 0 and result.attempted >= 1

    def test_every_layout_function_has_an_example(self):
        from diffmodel.preprocess.layout import concatenate, pad_left
        from diffmodel.preprocess.packing import pack_row

        for fn in (pack_row, pad_left, concatenate):
            assert ">>> " in fn.__doc__, fn.__name__
