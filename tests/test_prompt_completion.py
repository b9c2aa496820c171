"""Prompt/completion rows (TRL's format): loss on the completion only, in every layout, streamed too, and trained end to end."""

import json

import pytest

from diffmodel.data.load import LoadOptions, load_raw_datasets
from diffmodel.errors import DiffModelError
from diffmodel.preprocess.labels import EMPTY_DIFF, IGNORE_INDEX
from diffmodel.preprocess.options import PreprocessOptions
from diffmodel.preprocess.stream import STREAM_KEY, StreamingDataset
from diffmodel.preprocess.tokenize import tokenize_batch
from diffmodel.train.data import build_datasets
from diffmodel.train.args import DataArguments
from handmade import char_tokenizer

X = IGNORE_INDEX
# handmade tokenizer, default merges ("\n","<") = 100, ("D","F") = 101, ("DF","F") = 102, EOS = 103
A, B, C, D, NL, LT, NL_LT, EOS = 10, 11, 12, 13, 96, 79, 100, 103
ROWS = [
    {"prompt": "ab\n", "completion": "cd"},      # a b \n | c d
    {"prompt": "a\n", "completion": "<b"},       # a \n< b : "\n<" merges across the seam and is trained
    {"prompt": "ab", "completion": ""},          # empty completion: dropped, counted
    {"prompt": "ab", "completion": " \n"},       # nothing but whitespace: dropped, counted
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _build(tmp_path, rows=ROWS, **flags):
    data = _write(tmp_path / "pc.jsonl", rows)
    args = DataArguments(train_file=[str(data)], validation_split_percentage=0, **flags)
    return build_datasets(args, char_tokenizer(), flags.get("block_size", 8), str(tmp_path / "cache"))


class TestTokenBoundary:
    def test_by_character_offset_across_a_merged_seam(self):
        enc = tokenize_batch({"text": ["ab\ncd", "a\n<b", "ab", "ab \n"], "completion_start": [3, 2, 2, 2]}, char_tokenizer())
        assert enc["input_ids"][:2] == [[A, B, NL, C, D], [A, NL_LT, B]]
        assert enc["diff_start"] == [3, 1, EMPTY_DIFF, EMPTY_DIFF]

    def test_a_row_without_completion_start_keeps_the_diff_rule(self):
        text = "<MSG> m\n<DFF> +y"
        enc = tokenize_batch({"text": ["ab\ncd", text], "completion_start": [3, None]}, char_tokenizer(merges=[]))
        assert enc["diff_start"] == [3, text.index("<DFF>")]


class TestLoad:
    def test_rows_are_joined_and_the_format_is_reported(self, tmp_path):
        raw, report = load_raw_datasets(LoadOptions(train_files=[str(_write(tmp_path / "pc.jsonl", ROWS))], validation_split_percentage=0))
        assert raw["train"]["text"] == ["ab\ncd", "a\n<b", "ab", "ab \n"]
        assert raw["train"]["completion_start"] == [3, 2, 2, 2]
        assert (report.row_format, report.text_column) == ("prompt/completion", "text")

    def test_a_null_completion_is_a_bad_record_naming_the_line(self, tmp_path):
        data = _write(tmp_path / "pc.jsonl", [ROWS[0], {"prompt": "a", "completion": None}])
        with pytest.raises(DiffModelError, match=r"pc.jsonl:2: 'completion' is null, not text \(a JSON string\)\. Fix the record, or pass --skip_bad_records"):
            load_raw_datasets(LoadOptions(train_files=[str(data)], validation_split_percentage=0))

    def test_splits_of_other_kinds_are_refused(self, tmp_path):
        train = _write(tmp_path / "pc.jsonl", ROWS[:1])
        val = _write(tmp_path / "t.jsonl", [{"text": "abc"}])
        with pytest.raises(DiffModelError, match=r"the splits disagree on their text \(train: prompt/completion, validation: text\)"):
            load_raw_datasets(LoadOptions(train_files=[str(train)], validation_files=[str(val)]))


class TestExactRowsPerLayout:
    @pytest.mark.parametrize("diff_flag", [True, False])
    def test_pad_with_or_without_train_diff_model(self, tmp_path, diff_flag):
        out, reports = _build(tmp_path, block_size=8, ignore_long_samples=True, train_diff_model=diff_flag)
        assert out["train"]["input_ids"] == [[EOS, EOS, A, B, NL, C, D, EOS], [EOS, EOS, EOS, EOS, A, NL_LT, B, EOS]]
        assert out["train"]["labels"] == [[X, X, X, X, X, C, D, EOS], [X, X, X, X, X, NL_LT, B, EOS]]
        r = reports["train"]
        assert (r.samples_loaded, r.dropped_empty_diff, r.dropped_no_diff, r.samples_kept) == (4, 2, 0, 2)
        assert (r.row_format, r.loss_on) == ("prompt/completion", "completion")

    def test_concat(self, tmp_path):
        out, _ = _build(tmp_path, block_size=5, concatenate_texts=True)
        assert out["train"]["input_ids"] == [[A, B, NL, C, D], [EOS, A, NL_LT, B, EOS]]
        assert out["train"]["labels"] == [[X, X, X, C, D], [EOS, X, NL_LT, B, EOS]]

    def test_pack(self, tmp_path):
        out, reports = _build(tmp_path, block_size=10, packing=True)
        assert out["train"]["input_ids"] == [[A, B, NL, C, D, EOS, A, NL_LT, B, EOS]]
        assert out["train"]["labels"] == [[X, X, X, C, D, EOS, X, NL_LT, B, EOS]]
        assert out["train"]["position_ids"] == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3]]
        assert "\u27e6cd<|endoftext|>\u27e7" in reports["train"].examples[0]

    def test_report_says_so(self, tmp_path):
        from diffmodel.preprocess.sanity import format_report

        _, reports = _build(tmp_path, block_size=10, packing=True)
        text = format_report(reports)
        assert "rows are" in text and "prompt/completion" in text.split("rows are")[1].splitlines()[0]
        assert "completion" in text.split("loss on")[1].splitlines()[0]


class TestStreaming:
    def test_the_stream_gives_the_same_rows_and_counts(self, tmp_path):
        data = _write(tmp_path / "pc.jsonl", ROWS)
        opts = PreprocessOptions(block_size=8, ignore_long_samples=True, cache_dir=str(tmp_path))
        stream = StreamingDataset([str(data)], char_tokenizer(), opts, buffer_size=4, shuffle=False, epochs=1)
        rows = list(stream)
        assert [r["input_ids"] for r in rows] == [[EOS, EOS, A, B, NL, C, D, EOS], [EOS, EOS, EOS, EOS, A, NL_LT, B, EOS]]
        assert [r["labels"] for r in rows] == [[X, X, X, X, X, C, D, EOS], [X, X, X, X, X, NL_LT, B, EOS]]
        counts = rows[-1][STREAM_KEY]["counts"]
        assert (counts["samples_read"], counts["dropped_empty_diff"], counts["samples_kept"]) == (4, 2, 2)

    def test_a_completion_that_is_not_text_names_the_line(self, tmp_path):
        data = _write(tmp_path / "pc.jsonl", [{"prompt": "a", "completion": 3}])
        stream = StreamingDataset([str(data)], char_tokenizer(), PreprocessOptions(block_size=8), shuffle=False, epochs=1)
        with pytest.raises(DiffModelError, match=r"pc.jsonl:1: 'completion' is a number, not text"):
            list(stream)


def test_train_end_to_end_on_prompt_completion_rows(tmp_path, tiny_gpt2_dir):
    from diffmodel.commands.train import main as train_main

    rows = [{"prompt": f"<NME> f{i}.py\n<MSG> set x to {i}\n", "completion": f"x = {i}\n"} for i in range(24)]
    data = _write(tmp_path / "pc.jsonl", rows + [{"prompt": "p", "completion": ""}])
    out = tmp_path / "out"
    assert train_main([
        "--model_name_or_path", str(tiny_gpt2_dir), "--train_file", str(data), "--output_dir", str(out), "--packing",
        "--block_size", "64", "--per_device_train_batch_size", "4", "--max_steps", "2", "--do_train", "--do_eval",
        "--validation_split_percentage", "20", "--report_to", "none", "--save_strategy", "no", "--use_cpu",
        "--cache_dir", str(tmp_path / "cache"),
    ]) == 0
    report = json.loads((out / "data_report.json").read_text())
    assert report["train"]["row_format"] == "prompt/completion" and report["train"]["loss_on"] == "completion"
    assert report["train"]["dropped_empty_diff"] + report["validation"]["dropped_empty_diff"] == 1
    assert report["train"]["samples_kept"] + report["validation"]["samples_kept"] == 24
    assert 0 < report["train"]["loss_share"] < 0.5  # the prompts carry no loss
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
