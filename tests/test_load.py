"""Tests for diffmodel.data.load: every source format, rendering, validation cuts and user errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from diffmodel.data import records
from diffmodel.data.load import SUPPORTED_EXTENSIONS, LoadOptions, LoadReport, load_raw_datasets
from diffmodel.errors import DiffModelError
from diffmodel.sample import FIELDS, render_row

# --------------------------------------------------------------------------- helpers


def structured(i: int) -> dict:
    return {
        "name": f"pkg/mod{i}.py",
        "before": f"x = {i}\n" if i % 3 else "",
        "message": f"Change {i}",
        "diff": f"@@ -1 +1 @@\n-x = {i}\n+x = {i + 1}\n",
    }


def jsonl_bytes(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jsonl_bytes(rows))
    return path


def write_zst(path: Path, data: bytes, frames: int = 1) -> Path:
    """Write ``data`` zstd-compressed, as ``frames`` concatenated frames (as appended shards are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    step = max(1, len(data) // frames + 1)
    comp = zstandard.ZstdCompressor()
    path.write_bytes(b"".join(comp.compress(data[i : i + step]) for i in range(0, len(data), step)))
    return path


def load(tmp_path: Path, **kwargs) -> tuple[datasets.DatasetDict, LoadReport]:
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    kwargs.setdefault("validation_split_percentage", 0)
    return load_raw_datasets(LoadOptions(**kwargs))


def rows_of(ds: datasets.Dataset) -> list[dict]:
    return ds.to_list()


def error_of(tmp_path: Path, **kwargs) -> str:
    with pytest.raises(DiffModelError) as info:
        load(tmp_path, **kwargs)
    return str(info.value)


TEXT_ROWS = [{"text": "first sample"}, {"text": "second\nsample"}, {"text": "third"}]


# --------------------------------------------------------------------------- formats


class TestEachFormatYieldsExactRows:
    def test_jsonl(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", TEXT_ROWS)
        raw, report = load(tmp_path, train_files=[str(f)])
        assert list(raw) == ["train"]
        assert rows_of(raw["train"]) == TEXT_ROWS
        assert report.files == [str(f)]
        assert report.text_column == "text"
        assert not report.rendered_from_fields and not report.validation_from_split

    def test_jsonl_zst_over_several_frames(self, tmp_path):
        rows = [{"text": f"row {i}", "n": i} for i in range(50)]
        f = write_zst(tmp_path / "d.jsonl.zst", jsonl_bytes(rows), frames=4)
        raw, _ = load(tmp_path, train_files=[str(f)])
        assert rows_of(raw["train"]) == rows

    def test_json_array(self, tmp_path):
        f = tmp_path / "d.json"
        f.write_text(json.dumps(TEXT_ROWS, indent=2))
        raw, _ = load(tmp_path, train_files=[str(f)])
        assert rows_of(raw["train"]) == TEXT_ROWS

    def test_json_holding_json_lines(self, tmp_path):
        f = write_jsonl(tmp_path / "d.json", TEXT_ROWS)
        raw, _ = load(tmp_path, train_files=[str(f)])
        assert rows_of(raw["train"]) == TEXT_ROWS

    def test_json_zst_array(self, tmp_path):
        f = write_zst(tmp_path / "d.json.zst", json.dumps(TEXT_ROWS).encode())
        raw, _ = load(tmp_path, train_files=[str(f)])
        assert rows_of(raw["train"]) == TEXT_ROWS

    def test_parquet(self, tmp_path):
        f = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(TEXT_ROWS), f)
        raw, _ = load(tmp_path, train_files=[str(f)])
        assert rows_of(raw["train"]) == TEXT_ROWS

    def test_csv(self, tmp_path):
        f = tmp_path / "d.csv"
        f.write_text('text,n\nfirst,1\n"with, comma",2\n')
        raw, _ = load(tmp_path, train_files=[str(f)])
        assert rows_of(raw["train"]) == [{"text": "first", "n": 1}, {"text": "with, comma", "n": 2}]

    @pytest.mark.parametrize(
        "keep, expected",
        [(True, ["a\n", "\n", "b\n", "c"]), (False, ["a", "", "b", "c"])],
    )
    def test_txt_one_sample_per_line(self, tmp_path, keep, expected):
        f = tmp_path / "d.txt"
        f.write_text("a\n\nb\nc")
        raw, report = load(tmp_path, train_files=[str(f)], keep_linebreaks=keep)
        assert rows_of(raw["train"]) == [{"text": t} for t in expected]
        assert report.text_column == "text"

    def test_jsonl_and_jsonl_zst_mix_in_one_split(self, tmp_path):
        a = write_jsonl(tmp_path / "a.jsonl", TEXT_ROWS[:1])
        b = write_zst(tmp_path / "b.jsonl.zst", jsonl_bytes(TEXT_ROWS[1:]))
        raw, report = load(tmp_path, train_files=[str(a), str(b)])
        assert rows_of(raw["train"]) == TEXT_ROWS
        assert report.files == [str(a), str(b)]

    def test_blank_lines_and_bom_are_ignored(self, tmp_path):
        f = tmp_path / "d.jsonl"
        f.write_bytes(b"\xef\xbb\xbf" + jsonl_bytes(TEXT_ROWS[:1]) + b"\n   \n" + jsonl_bytes(TEXT_ROWS[1:]))
        raw, _ = load(tmp_path, train_files=[str(f)])
        assert rows_of(raw["train"]) == TEXT_ROWS

    def test_missing_keys_become_null(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "extra": "x"}, {"text": "b"}])
        raw, _ = load(tmp_path, train_files=[str(f)])
        assert rows_of(raw["train"]) == [{"text": "a", "extra": "x"}, {"text": "b", "extra": None}]


# --------------------------------------------------------------------------- text column


class TestTextColumn:
    def test_structured_rows_are_rendered_by_render_row(self, tmp_path):
        rows = [structured(i) for i in range(6)]
        f = write_zst(tmp_path / "s.jsonl.zst", jsonl_bytes(rows))
        raw, report = load(tmp_path, train_files=[str(f)])
        assert report.rendered_from_fields and report.text_column == "text"
        got = rows_of(raw["train"])
        assert [r["text"] for r in got] == [render_row(r) for r in rows]
        assert [{k: r[k] for k in FIELDS} for r in got] == rows  # the fields stay

    def test_structured_parquet_is_rendered_too(self, tmp_path):
        rows = [structured(i) for i in range(3)]
        f = tmp_path / "s.parquet"
        pq.write_table(pa.Table.from_pylist(rows), f)
        raw, report = load(tmp_path, train_files=[str(f)])
        assert report.rendered_from_fields
        assert list(raw["train"]["text"]) == [render_row(r) for r in rows]

    def test_existing_text_column_wins_over_fields(self, tmp_path):
        rows = [dict(structured(0), text="given")]
        f = write_jsonl(tmp_path / "s.jsonl", rows)
        raw, report = load(tmp_path, train_files=[str(f)])
        assert not report.rendered_from_fields
        assert list(raw["train"]["text"]) == ["given"]

    def test_text_column_option_selects_another_column(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", [{"content": "a", "text": "no"}, {"content": "b", "text": "no"}])
        raw, report = load(tmp_path, train_files=[str(f)], text_column="content")
        assert report.text_column == "content"
        assert rows_of(raw["train"]) == [{"content": "a", "text": "no"}, {"content": "b", "text": "no"}]

    def test_tokenized_rows_pass_through(self, tmp_path):
        rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
        f = write_jsonl(tmp_path / "t.jsonl", rows)
        raw, report = load(tmp_path, train_files=[str(f)])
        assert report.text_column is None and not report.rendered_from_fields
        assert rows_of(raw["train"]) == rows

    def test_no_text_names_file_columns_and_flags(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", [{"name": "a.py", "body": "x"}])
        msg = error_of(tmp_path, train_files=[str(f)])
        assert str(f) in msg
        assert "name, body" in msg
        assert "--text_column" in msg and "before, message, diff" in msg

    def test_unknown_text_column(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", TEXT_ROWS)
        msg = error_of(tmp_path, train_files=[str(f)], text_column="content")
        assert str(f) in msg and "--text_column content" in msg and "columns: text" in msg

    def test_non_string_text_column(self, tmp_path):
        f = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist([{"text": 1}, {"text": 2}]), f)
        msg = error_of(tmp_path, train_files=[str(f)])
        assert str(f) in msg and "not text" in msg

    def test_text_column_with_tokenized_rows_is_refused(self, tmp_path):
        f = write_jsonl(tmp_path / "t.jsonl", [{"input_ids": [1], "text": "a"}])
        msg = error_of(tmp_path, train_files=[str(f)], text_column="text")
        assert "already tokenized" in msg and "drop --text_column" in msg


# --------------------------------------------------------------------------- globs


class TestGlobs:
    def test_glob_expands_sorted(self, tmp_path):
        for i in (2, 0, 1):
            write_zst(tmp_path / "out" / "train" / f"shard-{i:05d}.jsonl.zst", jsonl_bytes([{"text": f"s{i}"}]))
        raw, report = load(tmp_path, train_files=[str(tmp_path / "out/train/*.jsonl.zst")])
        assert list(raw["train"]["text"]) == ["s0", "s1", "s2"]
        assert report.files == [str(tmp_path / "out" / "train" / f"shard-{i:05d}.jsonl.zst") for i in range(3)]

    def test_recursive_glob_and_duplicates_dropped(self, tmp_path):
        a = write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "a"}])
        b = write_jsonl(tmp_path / "d" / "sub" / "b.jsonl", [{"text": "b"}])
        raw, report = load(tmp_path, train_files=[str(tmp_path / "d/**/*.jsonl"), str(a)])
        assert report.files == [str(a), str(b)]
        assert list(raw["train"]["text"]) == ["a", "b"]

    def test_glob_matching_nothing(self, tmp_path):
        pattern = str(tmp_path / "none" / "*.jsonl.zst")
        msg = error_of(tmp_path, train_files=[pattern])
        assert f"--train_file {pattern}: the glob matches no file" in msg

    def test_missing_file(self, tmp_path):
        path = str(tmp_path / "missing.jsonl")
        msg = error_of(tmp_path, train_files=[path])
        assert f"--train_file {path}: no such file" in msg

    def test_missing_validation_file(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", TEXT_ROWS)
        path = str(tmp_path / "val.jsonl")
        msg = error_of(tmp_path, train_files=[str(f)], validation_files=[path])
        assert f"--validation_file {path}: no such file" in msg

    def test_all_missing_files_reported_at_once(self, tmp_path):
        a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
        msg = error_of(tmp_path, train_files=[a, b])
        assert a in msg and b in msg

    def test_folder_given_as_file(self, tmp_path):
        (tmp_path / "out").mkdir()
        msg = error_of(tmp_path, train_files=[str(tmp_path / "out")])
        assert "is a folder" in msg and "--dataset_name" in msg


# --------------------------------------------------------------------------- validation split


def numbered(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "n.jsonl", [{"text": f"r{i:03d}"} for i in range(n)])


class TestValidationSplit:
    @pytest.mark.parametrize("n, pct, n_val", [(100, 5, 5), (100, 10, 10), (41, 5, 3), (10, 1, 1)])
    def test_sizes(self, tmp_path, n, pct, n_val):
        raw, report = load(tmp_path, train_files=[str(numbered(tmp_path, n))], validation_split_percentage=pct)
        assert report.validation_from_split
        assert (len(raw["train"]), len(raw["validation"])) == (n - n_val, n_val)

    def test_cut_is_a_partition_in_source_order(self, tmp_path):
        raw, _ = load(tmp_path, train_files=[str(numbered(tmp_path, 60))], validation_split_percentage=20)
        train, val = list(raw["train"]["text"]), list(raw["validation"]["text"])
        assert train == sorted(train) and val == sorted(val)
        assert sorted(train + val) == [f"r{i:03d}" for i in range(60)]

    def test_deterministic_per_seed(self, tmp_path):
        f = str(numbered(tmp_path, 60))

        def cut(seed):
            raw, _ = load(tmp_path, train_files=[f], validation_split_percentage=20, seed=seed)
            return list(raw["validation"]["text"])

        assert cut(1) == cut(1)
        assert cut(1) != cut(2)

    def test_zero_percent_cuts_nothing(self, tmp_path):
        raw, report = load(tmp_path, train_files=[str(numbered(tmp_path, 10))], validation_split_percentage=0)
        assert list(raw) == ["train"] and len(raw["train"]) == 10
        assert not report.validation_from_split

    def test_validation_files_are_used_as_given(self, tmp_path):
        t = write_jsonl(tmp_path / "t.jsonl", TEXT_ROWS)
        v = write_zst(tmp_path / "v.jsonl.zst", jsonl_bytes([{"text": "held out"}]))
        raw, report = load(tmp_path, train_files=[str(t)], validation_files=[str(v)], validation_split_percentage=50)
        assert rows_of(raw["train"]) == TEXT_ROWS
        assert rows_of(raw["validation"]) == [{"text": "held out"}]
        assert not report.validation_from_split
        assert report.files == [str(t), str(v)]

    def test_too_few_rows_to_cut(self, tmp_path):
        msg = error_of(tmp_path, train_files=[str(numbered(tmp_path, 1))], validation_split_percentage=5)
        assert "1 row(s)" in msg and "--validation_split_percentage 0" in msg

    @pytest.mark.parametrize("pct", [-1, 100])
    def test_percentage_out_of_range(self, tmp_path, pct):
        msg = error_of(tmp_path, train_files=[str(numbered(tmp_path, 5))], validation_split_percentage=pct)
        assert f"--validation_split_percentage {pct}" in msg


# --------------------------------------------------------------------------- saved datasets and folders


class TestLoadFromDisk:
    def test_dataset_becomes_train(self, tmp_path):
        saved = tmp_path / "saved"
        datasets.Dataset.from_list(TEXT_ROWS).save_to_disk(str(saved))
        raw, report = load(tmp_path, dataset_name=str(saved), load_from_disk=True)
        assert list(raw) == ["train"]
        assert rows_of(raw["train"]) == TEXT_ROWS
        assert report.files == [str(saved)]

    def test_dataset_gets_a_validation_cut(self, tmp_path):
        saved = tmp_path / "saved"
        datasets.Dataset.from_list([{"text": str(i)} for i in range(20)]).save_to_disk(str(saved))
        raw, report = load(tmp_path, dataset_name=str(saved), load_from_disk=True, validation_split_percentage=10)
        assert (len(raw["train"]), len(raw["validation"])) == (18, 2)
        assert report.validation_from_split

    def test_dataset_dict_as_is(self, tmp_path):
        saved = tmp_path / "saved"
        tokenized = [{"input_ids": [1, 2], "labels": [-100, 2]}]
        datasets.DatasetDict(
            {"train": datasets.Dataset.from_list(tokenized * 3), "validation": datasets.Dataset.from_list(tokenized)}
        ).save_to_disk(str(saved))
        raw, report = load(tmp_path, dataset_name=str(saved), load_from_disk=True, validation_split_percentage=5)
        assert {k: len(v) for k, v in raw.items()} == {"train": 3, "validation": 1}
        assert rows_of(raw["validation"]) == tokenized
        assert report.text_column is None and not report.validation_from_split

    def test_saved_structured_rows_are_rendered(self, tmp_path):
        saved = tmp_path / "saved"
        rows = [structured(i) for i in range(3)]
        datasets.Dataset.from_list(rows).save_to_disk(str(saved))
        raw, report = load(tmp_path, dataset_name=str(saved), load_from_disk=True)
        assert report.rendered_from_fields
        assert list(raw["train"]["text"]) == [render_row(r) for r in rows]

    def test_nothing_is_written_into_the_saved_folder(self, tmp_path):
        saved = tmp_path / "saved"
        datasets.DatasetDict({"train": datasets.Dataset.from_list([structured(i) for i in range(6)]),
                              "validation": datasets.Dataset.from_list([structured(9)])}).save_to_disk(str(saved))
        before = sorted((str(p.relative_to(saved)), p.stat().st_mtime_ns) for p in saved.rglob("*"))
        raw, report = load(tmp_path, dataset_name=str(saved), load_from_disk=True)
        assert report.rendered_from_fields  # rendering maps over the rows: a cache file beside the dataset's own
        later = raw["train"].map(lambda r: {"n": len(r["text"])})  # as the preprocessing stages do
        assert sorted((str(p.relative_to(saved)), p.stat().st_mtime_ns) for p in saved.rglob("*")) == before
        assert all(str(tmp_path / "cache") in f["filename"] for f in later.cache_files)
        assert report.files == [str(saved)]  # the report names the user's folder, not the links

    def test_a_saved_folder_written_again_is_read_again(self, tmp_path):
        saved = tmp_path / "saved"
        datasets.Dataset.from_list([{"text": "a"}]).save_to_disk(str(saved))
        assert rows_of(load(tmp_path, dataset_name=str(saved), load_from_disk=True)[0]["train"]) == [{"text": "a"}]
        datasets.Dataset.from_list([{"text": "b"}, {"text": "c"}]).save_to_disk(str(saved))
        assert rows_of(load(tmp_path, dataset_name=str(saved), load_from_disk=True)[0]["train"]) == [{"text": "b"}, {"text": "c"}]

    def test_not_a_saved_folder(self, tmp_path):
        folder = tmp_path / "plain"
        write_jsonl(folder / "train.jsonl", TEXT_ROWS)
        msg = error_of(tmp_path, dataset_name=str(folder), load_from_disk=True)
        assert str(folder) in msg and "drop --load_from_disk" in msg

    def test_missing_folder(self, tmp_path):
        msg = error_of(tmp_path, dataset_name=str(tmp_path / "nope"), load_from_disk=True)
        assert "no such folder" in msg

    def test_saved_folder_without_the_flag(self, tmp_path):
        saved = tmp_path / "saved"
        datasets.Dataset.from_list(TEXT_ROWS).save_to_disk(str(saved))
        msg = error_of(tmp_path, dataset_name=str(saved))
        assert "add --load_from_disk" in msg


class TestDatasetFolder:
    def test_split_names_from_file_names(self, tmp_path):
        folder = tmp_path / "ds"
        write_zst(folder / "train-00000.jsonl.zst", jsonl_bytes(TEXT_ROWS[:2]))
        write_zst(folder / "train-00001.jsonl.zst", jsonl_bytes(TEXT_ROWS[2:]))
        write_jsonl(folder / "validation.jsonl", [{"text": "v"}])
        (folder / "README.md").write_text("# notes\n")
        raw, report = load(tmp_path, dataset_name=str(folder))
        assert rows_of(raw["train"]) == TEXT_ROWS
        assert rows_of(raw["validation"]) == [{"text": "v"}]
        assert len(report.files) == 3

    def test_unnamed_files_are_train(self, tmp_path):
        folder = tmp_path / "ds"
        folder.mkdir()
        pq.write_table(pa.Table.from_pylist([structured(i) for i in range(4)]), folder / "a.parquet")
        raw, report = load(tmp_path, dataset_name=str(folder))
        assert list(raw) == ["train"] and len(raw["train"]) == 4
        assert report.rendered_from_fields

    def test_file_given_as_dataset_name(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", TEXT_ROWS)
        msg = error_of(tmp_path, dataset_name=str(f))
        assert f"--train_file {f}" in msg


# --------------------------------------------------------------------------- bad records and other errors


class TestBadRecords:
    def lines(self, tmp_path: Path, name: str = "d.jsonl") -> Path:
        f = tmp_path / name
        body = b'{"text": "ok 1"}\n{"text": "ok 2"}\n{"text": broken\n[1, 2]\n{"text": "ok 5"}\n"just a string"\n'
        if name.endswith(".zst"):
            return write_zst(f, body, frames=2)
        f.write_bytes(body)
        return f

    @pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.zst", "d.json"])
    def test_malformed_line_names_file_and_line(self, tmp_path, name):
        f = self.lines(tmp_path, name)
        msg = error_of(tmp_path, train_files=[str(f)])
        assert f"{f}:3: not valid JSON (" in msg
        assert "--skip_bad_records" in msg

    def test_non_object_line_is_an_error(self, tmp_path):
        f = tmp_path / "d.jsonl"
        f.write_bytes(b'{"text": "a"}\n\n[1, 2]\n')
        msg = error_of(tmp_path, train_files=[str(f)])
        assert f"{f}:3: not a JSON object (got an array)" in msg

    def test_invalid_utf8(self, tmp_path):
        f = tmp_path / "d.jsonl"
        f.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
        msg = error_of(tmp_path, train_files=[str(f)])
        assert f"{f}:2: not valid UTF-8" in msg

    def test_unexpected_key(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b", "extra": 1}])
        msg = error_of(tmp_path, train_files=[str(f)])
        assert f"{f}:2: key(s) 'extra' not among the columns of the first record ({f}:1: text)" in msg

    @pytest.mark.parametrize("name", ["manifest.json", "d.jsonl"])
    def test_one_document_over_several_lines_is_named_as_such(self, tmp_path, name):
        f = tmp_path / name
        f.write_text('{\n  "text": "a",\n  "rows": 2\n}\n')
        msg = error_of(tmp_path, train_files=[str(f)], skip_bad_records=True)
        assert msg == (f"{f} holds one JSON document over several lines, not records: a .json or .jsonl file is read as one "
                       "record per line (JSON lines), or, for .json, as a JSON array of records ([{...}, {...}])")

    def test_broken_json_array(self, tmp_path):
        f = tmp_path / "d.json"
        f.write_text('[\n{"text": "a"},\n{"text": }\n]')
        msg = error_of(tmp_path, train_files=[str(f)], skip_bad_records=True)
        assert f"{f}:3: not valid JSON" in msg

    def test_skipped_records_are_one_warning_per_split(self, tmp_path, caplog):
        f = self.lines(tmp_path)
        caplog.set_level("INFO", logger="diffmodel")
        load(tmp_path, train_files=[str(f)], skip_bad_records=True)
        said = [r for r in caplog.records if "bad record" in r.getMessage()]
        assert [(r.levelname, r.getMessage().split(", e.g.")[0]) for r in said] == [("WARNING", "train split: skipped 3 bad record(s)")]

    @pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.zst"])
    def test_skip_counts_and_reports(self, tmp_path, name):
        f = self.lines(tmp_path, name)
        raw, report = load(tmp_path, train_files=[str(f)], skip_bad_records=True)
        assert list(raw["train"]["text"]) == ["ok 1", "ok 2", "ok 5"]
        assert report.bad_records == 3
        assert report.bad_record_examples[0].startswith(f"{f}:3: not valid JSON (")
        assert report.bad_record_examples[1:] == [
            f"{f}:4: not a JSON object (got an array)",
            f"{f}:6: not a JSON object (got a string)",
        ]

    def test_skip_counts_survive_the_cache(self, tmp_path):
        f = self.lines(tmp_path)
        _, first = load(tmp_path, train_files=[str(f)], skip_bad_records=True)
        _, again = load(tmp_path, train_files=[str(f)], skip_bad_records=True)
        assert again == first and again.bad_records == 3

    def test_skip_counts_add_up_over_splits_and_examples_are_capped(self, tmp_path):
        bad = b"nope\n" * 8
        t = tmp_path / "t.jsonl"
        t.write_bytes(b'{"text": "a"}\n' + bad)
        v = tmp_path / "v.jsonl"
        v.write_bytes(bad + b'{"text": "b"}\n')
        _, report = load(tmp_path, train_files=[str(t)], validation_files=[str(v)], skip_bad_records=True)
        assert report.bad_records == 16
        assert len(report.bad_record_examples) == records.MAX_EXAMPLES
        assert report.bad_record_examples[-1] == f"{v}:2: not valid JSON (Expecting value at column 1)"

    @pytest.mark.parametrize("value, kind", [(None, "null"), (5, "a number")])
    def test_text_that_is_not_a_string_names_the_line(self, tmp_path, value, kind):
        f = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok 1"}, {"text": "ok 2"}, {"text": value}, {"text": "ok 4"}])
        msg = error_of(tmp_path, train_files=[str(f)])
        assert f"{f}:3: 'text' is {kind}, not text (a JSON string). Fix the record, or pass --skip_bad_records" in msg

    def test_text_that_is_not_a_string_is_a_counted_skip(self, tmp_path):
        rows = [{"text": 5}, {"text": "ok 2"}, {"text": None}, {"text": "ok 4"}, {"text": [1]}]
        f = write_jsonl(tmp_path / "d.jsonl", rows)
        raw, report = load(tmp_path, train_files=[str(f)], skip_bad_records=True)
        assert list(raw["train"]["text"]) == ["ok 2", "ok 4"]
        assert report.bad_records == 3
        assert report.bad_record_examples == [
            f"{f}:1: 'text' is a number, not text (a JSON string)",
            f"{f}:3: 'text' is null, not text (a JSON string)",
            f"{f}:5: 'text' is an array, not text (a JSON string)",
        ]

    def test_missing_text_in_a_later_record(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "id": 1}, {"id": 2}])
        msg = error_of(tmp_path, train_files=[str(f)])
        assert f"{f}:2: no 'text' (the first record has it)" in msg

    def test_text_column_option_is_the_field_checked(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", [{"content": "a", "text": 1}, {"content": None, "text": 2}])
        msg = error_of(tmp_path, train_files=[str(f)], text_column="content")
        assert f"{f}:2: 'content' is null, not text (a JSON string)" in msg

    def test_structured_fields(self, tmp_path):
        rows = [structured(1), dict(structured(2), name=None), dict(structured(3), diff=7), dict(structured(4), before=None, message=None, diff=None)]
        f = write_jsonl(tmp_path / "s.jsonl", rows)
        msg = error_of(tmp_path, train_files=[str(f)])
        assert f"{f}:2: 'name' is null, not text (a JSON string)" in msg
        raw, report = load(tmp_path, train_files=[str(f)], skip_bad_records=True)
        assert list(raw["train"]["text"]) == [render_row(rows[0]), render_row(dict(rows[3], before="", message="", diff=""))]
        assert report.bad_record_examples == [
            f"{f}:2: 'name' is null, not text (a JSON string)",
            f"{f}:3: 'diff' is a number, not text (a JSON string, or null for an empty one)",
        ]

    def test_all_records_bad_is_empty(self, tmp_path):
        f = tmp_path / "d.jsonl"
        f.write_bytes(b"nope\n[]\n")
        msg = error_of(tmp_path, train_files=[str(f)], skip_bad_records=True)
        assert "train split is empty" in msg and str(f) in msg and "2 record(s) were bad" in msg


class TestTruncatedZst:
    """A .zst file cut short (an interrupted download) is an error, never a skipped record."""

    ROWS = [structured(i) for i in range(320)]

    def cut(self, tmp_path: Path, frames: int, keep: float = 0.9) -> Path:
        whole = write_zst(tmp_path / "whole.jsonl.zst", jsonl_bytes(self.ROWS), frames=frames)
        f = tmp_path / "cut.jsonl.zst"
        data = whole.read_bytes()
        f.write_bytes(data[: int(len(data) * keep)])
        return f

    @pytest.mark.parametrize("frames", [1, 3])
    @pytest.mark.parametrize("skip", [False, True])
    def test_cut_file_is_an_error_naming_it(self, tmp_path, frames, skip):
        f = self.cut(tmp_path, frames)
        msg = error_of(tmp_path, train_files=[str(f)], skip_bad_records=skip)
        assert f"{f}: the file is truncated" in msg and "Download or create it again" in msg
        assert "bad record" not in msg

    def test_whole_file_reads_every_row(self, tmp_path):
        f = write_zst(tmp_path / "whole.jsonl.zst", jsonl_bytes(self.ROWS), frames=3)
        raw, report = load(tmp_path, train_files=[str(f)], skip_bad_records=True)
        assert len(raw["train"]) == 320 and report.bad_records == 0

    def test_not_zstd_is_an_error_naming_it(self, tmp_path):
        f = tmp_path / "plain.jsonl.zst"
        f.write_bytes(jsonl_bytes(TEXT_ROWS))
        msg = error_of(tmp_path, train_files=[str(f)], skip_bad_records=True)
        assert f"{f}: not valid zstd data" in msg


class TestOtherErrors:
    @pytest.mark.parametrize("name", ["empty.jsonl", "empty.jsonl.zst"])
    def test_empty_json_file(self, tmp_path, name):
        f = tmp_path / name
        f.write_bytes(zstandard.ZstdCompressor().compress(b"") if name.endswith(".zst") else b"\n")
        msg = error_of(tmp_path, train_files=[str(f)])
        assert "train split is empty" in msg and str(f) in msg

    def test_empty_txt_file(self, tmp_path):
        f = tmp_path / "empty.txt"
        f.write_text("")
        msg = error_of(tmp_path, train_files=[str(f)])
        assert "empty" in msg and str(f) in msg

    def test_empty_saved_dataset(self, tmp_path):
        saved = tmp_path / "saved"
        datasets.Dataset.from_dict({"text": []}).save_to_disk(str(saved))
        msg = error_of(tmp_path, dataset_name=str(saved), load_from_disk=True)
        assert str(saved) in msg and ("empty" in msg or "holds rows" in msg)

    def test_unknown_extension_lists_supported(self, tmp_path):
        f = tmp_path / "d.jsonl.gz"
        f.write_bytes(b"")
        msg = error_of(tmp_path, train_files=[str(f)])
        assert f"{f}: unsupported file type" in msg
        assert all(ext in msg for ext in SUPPORTED_EXTENSIONS)

    def test_mixed_types_in_one_split(self, tmp_path):
        a = write_jsonl(tmp_path / "a.jsonl", TEXT_ROWS)
        b = tmp_path / "b.parquet"
        pq.write_table(pa.Table.from_pylist(TEXT_ROWS), b)
        msg = error_of(tmp_path, train_files=[str(a), str(b)])
        assert "train split mixes file types" in msg and str(a) in msg and str(b) in msg

    def test_different_types_per_split_are_fine(self, tmp_path):
        a = write_jsonl(tmp_path / "a.jsonl", TEXT_ROWS)
        b = tmp_path / "b.txt"
        b.write_text("v\n")
        raw, _ = load(tmp_path, train_files=[str(a)], validation_files=[str(b)], keep_linebreaks=False)
        assert rows_of(raw["validation"]) == [{"text": "v"}]

    def test_splits_must_agree_on_text(self, tmp_path):
        t = write_jsonl(tmp_path / "t.jsonl", [{"input_ids": [1]}])
        v = write_jsonl(tmp_path / "v.jsonl", TEXT_ROWS)
        msg = error_of(tmp_path, train_files=[str(t)], validation_files=[str(v)])
        assert "disagree" in msg

    def test_no_source(self, tmp_path):
        assert "--train_file" in error_of(tmp_path)

    def test_two_sources(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", TEXT_ROWS)
        assert "only one source" in error_of(tmp_path, train_files=[str(f)], dataset_name=str(tmp_path))

    def test_validation_without_train(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", TEXT_ROWS)
        assert "without --train_file" in error_of(tmp_path, validation_files=[str(f)])


class TestCache:
    def test_changed_file_is_read_again(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", [{"text": "old"}])
        raw, _ = load(tmp_path, train_files=[str(f)])
        assert list(raw["train"]["text"]) == ["old"]
        write_jsonl(f, [{"text": "new"}, {"text": "rows"}])
        st = os.stat(f)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        raw, _ = load(tmp_path, train_files=[str(f)])
        assert list(raw["train"]["text"]) == ["new", "rows"]

    def test_second_load_is_served_from_the_cache(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", TEXT_ROWS)
        raw1, _ = load(tmp_path, train_files=[str(f)])
        raw2, _ = load(tmp_path, train_files=[str(f)])
        assert raw2["train"].cache_files == raw1["train"].cache_files


class TestRowsWhoseDiffDoesNotApply:
    """In a format that writes the new file, a row whose diff does not apply to its before cannot be rendered."""

    ROWS = [
        {"name": "a.py", "before": "x = 1\n", "message": "m", "diff": "@@ -1 +1 @@\n-x = 1\n+x = 2\n"},
        {"name": "b.py", "before": "y = 1\n", "message": "m", "diff": "@@ -1 +1 @@\n-nothing like it\n+y = 2\n"},
        {"name": "c.py", "before": "z = 1\n", "message": "m", "diff": "@@ -1 +1 @@\n-z = 1\n+z = 2\n"},
    ]

    def test_named_by_record_or_skipped_and_counted(self, tmp_path):
        f = write_jsonl(tmp_path / "d.jsonl", self.ROWS)
        msg = error_of(tmp_path, train_files=[str(f)], edit_format="commit")
        assert msg.startswith(f"{f}: record 2: row 'b.py': its diff does not apply to its before (")
        assert msg.endswith("Fix the record, or pass --skip_bad_records to skip and count bad records.")
        raw, report = load(tmp_path, train_files=[str(f)], edit_format="commit", skip_bad_records=True)
        assert [t.split("\n")[0] for t in raw["train"]["text"]] == ["<commit_before>x = 1", "<commit_before>z = 1"]
        assert "_diffmodel_unrendered" not in raw["train"].column_names
        assert (report.bad_records, report.bad_records_by_split) == (1, {"train": 1})
        assert report.bad_record_examples[0].startswith(f"{f}: record 2: row 'b.py': its diff does not apply")
        raw, report = load(tmp_path, train_files=[str(f)])  # carper writes the diff as given
        assert (len(raw["train"]), report.bad_records) == (3, 0)
