"""Weighted mixing of training sources: parsing, the exact rule for a seed, the report, YAML, flags and --streaming (resumable)."""

import itertools
import json
from fractions import Fraction
from pathlib import Path

import pytest

from diffmodel.data.load import LoadOptions, load_raw_datasets
from diffmodel.data.mix import Source, mix_counts, mix_indices, parse_sources
from diffmodel.errors import DiffModelError
from diffmodel.preprocess.options import PreprocessOptions
from diffmodel.preprocess.sanity import format_report
from diffmodel.preprocess.stream import STREAM_KEY, StreamingDataset
from diffmodel.train.args import DataArguments, data_problems, read_args_file
from diffmodel.train.data import build_datasets
from handmade import char_tokenizer


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"a{i}"}) + "\n" for i in range(6)))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": f"b{i}"}) + "\n" for i in range(3)))
    return tmp_path


class TestParse:
    def test_only_a_final_number_is_a_weight(self):
        sources, problems = parse_sources(["data:v2/a.jsonl.zst:0.7", "b/*.jsonl.zst:0.3"])
        assert sources == [Source("data:v2/a.jsonl.zst", Fraction(7, 10), "data:v2/a.jsonl.zst:0.7"), Source("b/*.jsonl.zst", Fraction(3, 10), "b/*.jsonl.zst:0.3")]
        assert problems == []
        assert parse_sources(["data:v2/a.jsonl", "c.jsonl"]) == ([Source("data:v2/a.jsonl", None, "data:v2/a.jsonl"), Source("c.jsonl", None, "c.jsonl")], [])

    def test_problems(self):
        assert parse_sources(["a.jsonl:0", "b.jsonl:-1"])[1] == [
            "--train_file a.jsonl:0: the weight 0 must be a positive number (e.g. a.jsonl:0.5)",
            "--train_file b.jsonl:-1: the weight -1 must be a positive number (e.g. b.jsonl:0.5)",
        ]
        assert parse_sources(["a.jsonl:2", "b.jsonl"])[1] == [
            "--train_file b.jsonl: no :WEIGHT while other --train_file values have one; give every source a weight (e.g. a.jsonl:0.7 'b/*.jsonl:0.3') or none"
        ]

    def test_a_source_given_twice(self):
        assert parse_sources(["a.jsonl:1", "b.jsonl:1", "a.jsonl:2"])[1] == [
            "--train_file a.jsonl is given twice (its rows would be read twice); give it once, with the sum of its weights"
        ]
        assert parse_sources(["a.jsonl", "a.jsonl"])[1] == [
            "--train_file a.jsonl is given twice (its rows would be read twice); give it once"
        ]


class TestTheRule:
    def test_counts_stop_at_the_first_source_used_up(self):
        assert mix_counts([10, 4], [Fraction(7, 10), Fraction(3, 10)]) == [9, 4]  # N = floor(min(10/0.7, 4/0.3)) = 13
        assert mix_counts([10, 4], [Fraction(1, 2), Fraction(1, 2)]) == [4, 4]
        assert mix_counts([10, 4], [Fraction(7, 10), Fraction(3, 10)], mix_size=20) == [14, 6]
        assert mix_counts([5, 5, 5], [Fraction(1, 3)] * 3, mix_size=4) == [2, 1, 1]  # equal remainders: the earlier source

    def test_exact_rows_and_order_for_a_seed(self):
        indices, counts = mix_indices([0] * 6 + [1] * 3, [Fraction(2, 3), Fraction(1, 3)], seed=0)
        assert counts == [6, 3] and sorted(indices) == list(range(9))
        assert indices == [2, 4, 7, 8, 6, 3, 0, 5, 1]
        assert mix_indices([0] * 6 + [1] * 3, [Fraction(2, 3), Fraction(1, 3)], seed=0) == (indices, counts)
        assert mix_indices([0] * 6 + [1] * 3, [Fraction(2, 3), Fraction(1, 3)], seed=1)[0] != indices

    def test_a_larger_mix_size_repeats_the_smaller_source_pass_by_pass(self):
        indices, counts = mix_indices([0] * 6 + [1] * 3, [Fraction(1, 2), Fraction(1, 2)], seed=0, mix_size=10)
        assert counts == [5, 5]
        b = [i for i in indices if i >= 6]
        assert set(b) == {6, 7, 8} and sorted(b) == [6, 7, 7, 8, 8]  # one whole pass, then 2 rows of the next
        assert len(set(i for i in indices if i < 6)) == 5


class TestLoad:
    def test_train_split_mixed_and_reported(self, files):
        raw, report = load_raw_datasets(LoadOptions(train_files=[f"{files}/a.jsonl:2", f"{files}/b.jsonl:1"], validation_split_percentage=0, seed=3))
        assert list(raw["train"]["text"]) == ["a0", "a5", "a4", "a3", "a2", "b0", "b1", "b2", "a1"]  # mix_indices(..., seed=3): [0, 5, 4, 3, 2, 6, 7, 8, 1]
        assert raw["train"].column_names == ["text"]
        assert report.sources == [
            {"train_file": f"{files}/a.jsonl", "files": 1, "weight": 2.0, "share": 2 / 3, "rows": 6, "rows_mixed": 6, "effective_share": 2 / 3},
            {"train_file": f"{files}/b.jsonl", "files": 1, "weight": 1.0, "share": 1 / 3, "rows": 3, "rows_mixed": 3, "effective_share": 1 / 3},
        ]

    def test_mix_size_and_validation_cut_first(self, files):
        raw, report = load_raw_datasets(LoadOptions(train_files=[f"{files}/a.jsonl:1", f"{files}/b.jsonl:1"], validation_split_percentage=30, seed=3, mix_size=6))
        validation = raw["validation"]["text"]
        assert len(validation) == 3 and not set(validation) & set(raw["train"]["text"])
        assert [s["rows"] for s in report.sources] == [6 - sum(t.startswith("a") for t in validation), 3 - sum(t.startswith("b") for t in validation)]
        assert [s["rows_mixed"] for s in report.sources] == [3, 3]
        assert sorted(t[0] for t in raw["train"]["text"]) == ["a", "a", "a", "b", "b", "b"]

    def test_the_report_table_lists_the_sources(self, files, tmp_path):
        args = DataArguments(train_file=[f"{files}/a.jsonl:2", f"{files}/b.jsonl:1"], validation_split_percentage=0)
        _, reports = build_datasets(args, char_tokenizer(), 8, str(tmp_path / "cache"), seed=3)
        text = format_report(reports)
        assert f"train source {files}/a.jsonl (1 file(s)): weight 2 (share 66.7%), 6 rows, 6 taken (66.7% of the mix)" in text
        assert f"train source {files}/b.jsonl (1 file(s)): weight 1 (share 33.3%), 3 rows, 3 taken (33.3% of the mix)" in text

    def test_sources_of_different_columns_are_refused(self, files):
        (files / "c.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
        with pytest.raises(DiffModelError, match=r"the weighted --train_file sources have different columns \(.*a.jsonl: text; .*c.jsonl: prompt, completion\)"):
            load_raw_datasets(LoadOptions(train_files=[f"{files}/a.jsonl:1", f"{files}/c.jsonl:1"], validation_split_percentage=0))


class TestArguments:
    def test_yaml_list_of_path_and_weight(self, tmp_path):
        path = tmp_path / "args.yaml"
        path.write_text("train_file:\n  - {path: a.jsonl, weight: 0.7}\n  - {path: 'b/*.jsonl', weight: 0.3}\n  - c.jsonl:1\n")
        assert read_args_file(path, {"train_file"})["train_file"] == ["a.jsonl:0.7", "b/*.jsonl:0.3", "c.jsonl:1"]
        path.write_text("train_file:\n  - {file: a.jsonl}\n")
        with pytest.raises(DiffModelError, match=r"args.yaml: train_file entry \{'file': 'a.jsonl'\}: write a source as \{path: FILE_OR_GLOB, weight: NUMBER\}"):
            read_args_file(path, {"train_file"})

    def test_flag_problems(self, files):
        ok = DataArguments(train_file=[f"{files}/a.jsonl:0.7", f"{files}/b.jsonl:0.3"], mix_size=100)
        assert data_problems(ok) == []
        assert data_problems(DataArguments(train_file=[f"{files}/a.jsonl"], mix_size=5)) == [
            "--mix_size 5 sizes a weighted mix; give every --train_file a :WEIGHT (e.g. a.jsonl:0.7 b.jsonl:0.3) or drop --mix_size"
        ]
        assert data_problems(DataArguments(train_file=[f"{files}/nope.jsonl:1"])) == [f"--train_file {files}/nope.jsonl: no such file"]


def _stream(files, **kw):
    sources, _ = parse_sources([f"{files}/a.jsonl:2", f"{files}/b.jsonl:1"])
    opts = PreprocessOptions(block_size=8, ignore_long_samples=True)
    return StreamingDataset(
        [f"{files}/a.jsonl", f"{files}/b.jsonl"], char_tokenizer(), opts, buffer_size=4, seed=3, shuffle=False,
        sources=[(s.pattern, [s.pattern], s.weight) for s in sources], **kw,
    )


def _origins(rows):
    return [Path(r[STREAM_KEY]["samples"][0]).name for r in rows]


class TestStreaming:
    def test_exact_draws_for_a_seed_and_sources_restart_when_they_end(self, files):
        rows = list(itertools.islice(iter(_stream(files)), 15))
        assert _origins(rows) == [
            "a.jsonl:1", "b.jsonl:1", "b.jsonl:2", "a.jsonl:2", "a.jsonl:3", "a.jsonl:4", "a.jsonl:5", "a.jsonl:6",
            "a.jsonl:1", "a.jsonl:2", "a.jsonl:3", "b.jsonl:3", "a.jsonl:4", "a.jsonl:5", "b.jsonl:1",
        ]
        resume = rows[-1][STREAM_KEY]["resume"]  # row 15 is the 3rd of the buffer of rows 13..16: resume at its start, 3 rows done
        assert (resume["position"]["draws"], resume["position"]["taken"], resume["skip"]) == (12, [9, 3], 3)

    @pytest.mark.parametrize("cut", [3, 6, 9])
    def test_a_resumed_stream_continues_with_the_next_row(self, files, cut):
        whole = list(itertools.islice(iter(_stream(files)), 20))
        resumed = _stream(files)
        resumed.load_state_dict({"stride": 1, "readers": {"0": whole[cut - 1][STREAM_KEY]["resume"]}})
        assert _origins(itertools.islice(iter(resumed), 20 - cut)) == _origins(whole[cut:])

    def test_the_saved_config_names_the_weights(self, files):
        assert _stream(files).config()["sources"] == [[f"{files}/a.jsonl", "2"], [f"{files}/b.jsonl", "1"]]


def test_streaming_train_on_weighted_sources_writes_the_sources_to_the_report(files, tiny_gpt2_dir, tmp_path):
    from diffmodel.commands.train import main as train_main
    from diffmodel.sample import render

    for name, n in (("x.jsonl", 8), ("y.jsonl", 4)):
        (tmp_path / name).write_text("".join(json.dumps({"text": render(f"{name}{i}.py", "a = 1\n", "set a", f"@@ -1 +1 @@\n-a = 1\n+a = {i}\n")}) + "\n" for i in range(n)))
    out = tmp_path / "out"
    assert train_main([
        "--model_name_or_path", str(tiny_gpt2_dir), "--train_file", f"{tmp_path}/x.jsonl:3", f"{tmp_path}/y.jsonl:1", "--output_dir", str(out),
        "--streaming", "--stream_buffer", "8", "--packing", "--train_diff_model", "--block_size", "128", "--per_device_train_batch_size", "2",
        "--max_steps", "2", "--do_train", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "--seed", "3",
    ]) == 0
    report = json.loads((out / "data_report.json").read_text())["train (first buffer)"]
    assert [(s["train_file"], s["weight"], s["share"]) for s in report["sources"]] == [(f"{tmp_path}/x.jsonl", 3.0, 0.75), (f"{tmp_path}/y.jsonl", 1.0, 0.25)]
    assert sum(s["rows_mixed"] for s in report["sources"]) == report["samples_loaded"] == 8
