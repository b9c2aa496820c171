"""--edit_format through mine, load, labels, the stage cache, streaming and training: exact arrays on hand-made samples."""

from __future__ import annotations

import json

import datasets
import pytest

from diffmodel import formats
from diffmodel.commands.train import main as train_main
from diffmodel.data.load import LoadOptions, load_raw_datasets
from diffmodel.errors import DiffModelError
from diffmodel.mine.run import MineConfig, mine
from diffmodel.preprocess.labels import EMPTY_DIFF, IGNORE_INDEX, NO_DIFF
from diffmodel.preprocess.options import PreprocessOptions
from diffmodel.preprocess.pipeline import encode_batch, preprocess
from diffmodel.preprocess.stream import row_text
from diffmodel.tiny import save_tiny_checkpoint
from handmade import char_tokenizer, ids
from mine_gitrepo import build_small_repo, build_story_repo
from test_formats import AFTER, BEFORE, EXPECTED, LOSS_START, MESSAGE, NAME
from test_mine_run import all_rows

FORMATS = list(EXPECTED)
ROW = {"name": NAME, "before": BEFORE, "message": MESSAGE, "diff": formats.carper.parse(EXPECTED["carper"]).to_text()}


def _opts(name: str, **kw) -> PreprocessOptions:
    return PreprocessOptions(block_size=512, train_diff_model=True, edit_format=name, **kw)


@pytest.mark.parametrize("name", FORMATS)
class TestLabels:
    def test_exact_tokens_and_labels(self, name):
        text = EXPECTED[name]
        out = encode_batch({"text": [text]}, char_tokenizer(merges=[]), _opts(name))
        start = LOSS_START[name]
        assert out["input_ids"] == [ids(text)]
        assert out["diff_start"] == [start]
        assert out["labels"] == [[IGNORE_INDEX] * start + ids(text)[start:]]

    def test_marker_merged_with_the_newline_before_it_is_trained(self, name):
        tok = char_tokenizer()  # "\n<" is one token
        text = EXPECTED[name]
        out = encode_batch({"text": [text]}, tok, _opts(name))
        first = out["diff_start"][0]
        trained = tok.decode(out["input_ids"][0][first:])
        start = LOSS_START[name] - (text[LOSS_START[name] - 1] == "\n")
        assert trained == text[start:]
        assert out["labels"][0][:first] == [IGNORE_INDEX] * first

    def test_unchanged_file_and_other_formats_text_are_dropped(self, name):
        unchanged = formats.get(name).render(NAME, BEFORE, MESSAGE, BEFORE)
        out = encode_batch({"text": [unchanged, "plain text\n"]}, char_tokenizer(merges=[]), _opts(name))
        assert out["diff_start"] == [EMPTY_DIFF, NO_DIFF]


@pytest.mark.parametrize("name", FORMATS)
def test_load_and_stream_render_structured_rows_in_the_format(name, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROW) + "\n")
    raw, report = load_raw_datasets(LoadOptions(train_files=[str(path)], validation_split_percentage=0, edit_format=name, cache_dir=str(tmp_path / "hf")))
    assert raw["train"]["text"] == [EXPECTED[name]] and report.rendered_from_fields
    assert row_text(ROW, None, "rows.jsonl:1", name) == (EXPECTED[name], None)


def test_stage_cache_is_keyed_by_the_format(tmp_path):
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [EXPECTED["linediff"]] * 2})})
    tok = char_tokenizer(merges=[])
    rows, reports = preprocess(raw, tok, _opts("linediff", packing=True, cache_dir=str(tmp_path)), "same-source")
    assert reports["train"].samples_kept == 2
    with pytest.raises(DiffModelError, match=r"2 dropped without <DFF>.*--edit_format is the format its text is written in"):
        preprocess(raw, tok, _opts("carper", packing=True, cache_dir=str(tmp_path)), "same-source")


@pytest.mark.parametrize("name, text, marker", [
    ("commit", EXPECTED["carper"], "<commit_after>"),
    ("linediff", EXPECTED["commit"], "<commit_after>"),
    ("search_replace", EXPECTED["commit"], "<DFF>"),
])
def test_an_empty_split_names_the_target_marker_of_its_format(name, text, marker, tmp_path):
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [text] * 2})})
    with pytest.raises(DiffModelError) as err:
        preprocess(raw, char_tokenizer(merges=[]), _opts(name, packing=True, cache_dir=str(tmp_path)), "fp-empty-" + name)
    assert str(err.value) == (
        "the train split is empty after preprocessing (2 loaded, 0 dropped as >= --block_size 512 tokens, "
        f"2 dropped without {marker}, 0 dropped with an empty diff); "
        "check the data (and that --edit_format is the format its text is written in)"
    )


@pytest.mark.parametrize("name", ["commit", "linediff", "search_replace"])
def test_mine_writes_text_in_the_format(name, tmp_path):
    build_story_repo(tmp_path / "story", submodule_source=build_small_repo(tmp_path / "lib", 1, prefix="lib").path)
    manifest = mine(MineConfig(inputs=[str(tmp_path / "story")], output=str(tmp_path / "out"), workers=1, progress=False, edit_format=name))
    assert manifest["options"]["edit_format"] == name
    rows = all_rows(tmp_path / "out")
    fmt = formats.get(name)
    assert len(rows) == manifest["samples"]["total"] > 0
    for row in rows:
        after = formats.after_of(row["before"], row["diff"])
        assert row["text"] == fmt.render(row["name"], row["before"], row["message"], after)
        start = fmt.loss_start(row["text"])
        assert start >= 0 and fmt.apply(row["before"], row["text"][start + len(fmt.MARKER):]).text == after


def test_mine_refuses_an_unknown_format(tmp_path):
    with pytest.raises(DiffModelError, match="--edit_format udiff: unknown edit format; use one of carper, commit, linediff, search_replace"):
        mine(MineConfig(inputs=[str(tmp_path)], output=str(tmp_path / "out"), edit_format="udiff"))


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats_train")
    rows = []
    for i in range(12):
        before = "".join(f"x{j} = {j}\n" for j in range(i % 4 + 2))
        rows.append({"name": f"f{i}.py", "before": before, "message": f"set x0 to {i + 1}", "diff": f"@@ -1 +1 @@\n-x0 = 0\n+x0 = {i + 1}\n"})
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [formats.render_row(r, name) for r in rows for name in FORMATS]
    save_tiny_checkpoint(d / "gpt2", "gpt2", texts, n_positions=256)
    return d


@pytest.mark.parametrize("name", FORMATS)
def test_tiny_model_trains_on_each_format(name, train_dir):
    out = train_dir / f"out-{name}"
    assert train_main([
        "--model_name_or_path", str(train_dir / "gpt2"), "--train_file", str(train_dir / "data.jsonl"), "--edit_format", name,
        "--train_diff_model", "--packing", "--block_size", "256", "--validation_split_percentage", "0",
        "--do_train", "--max_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none",
        "--cache_dir", str(train_dir / "cache"), "--output_dir", str(out), "--save_strategy", "no",
    ]) == 0
    report = json.loads((out / "data_report.json").read_text())
    train = report["train"] if "train" in report else report
    assert train["samples_kept"] == 12 and train["loss_tokens"] > 0
    assert json.loads((out / "train_results.json").read_text())["train_loss"] > 0


def test_unknown_format_is_refused_with_the_other_flag_problems(train_dir, capsys):
    with pytest.raises(DiffModelError, match=r"--edit_format udiff: unknown edit format; use one of carper, commit, linediff, search_replace"):
        train_main(["--model_name_or_path", str(train_dir / "gpt2"), "--train_file", str(train_dir / "data.jsonl"),
                    "--edit_format", "udiff", "--do_train", "--output_dir", str(train_dir / "bad")])
