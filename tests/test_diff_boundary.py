"""Where the diff starts: the ``<DFF>`` line after the last ``<MSG>`` line, in every path.

The samples are real-looking files that hold the markers themselves: Python
code that names all four, and a format note whose lines start with them. The
label arrays are exact, with the hand-made character tokenizer (one id per
character without merges; with its default merges "\\n<" is one token).
"""

from __future__ import annotations

import json

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmodel.evaluate.loss import encode_rows as loss_encode_rows
from diffmodel.preprocess.labels import IGNORE_INDEX
from diffmodel.preprocess.options import PreprocessOptions
from diffmodel.preprocess.pipeline import preprocess
from diffmodel.preprocess.stream import StreamingDataset
from diffmodel.sample import MARKERS, Sample, diff_start, render, render_prompt, split
from handmade import char_tokenizer, ids

X = IGNORE_INDEX

CODE = (
    '"""Read diff-model samples."""\n'
    'MARKERS = ("<NME>", "<BEF>", "<MSG>", "<DFF>")\n'
    "\n"
    "def diff_of(text):\n"
    '    return text.split("<DFF>", 1)[1]\n'
)
CODE_SAMPLE = Sample(
    "src/markers.py", CODE, "Name the <EOS> marker after <DFF>",
    '@@ -2 +2 @@\n-MARKERS = ("<NME>", "<BEF>", "<MSG>", "<DFF>")\n+MARKERS = ("<NME>", "<BEF>", "<MSG>", "<DFF>", "<EOS>")\n',
)
NOTE = (  # a file whose lines start with each marker
    "# The sample format\n"
    "<NME> path/to/file.py\n"
    "<BEF> the file before the commit\n"
    "<MSG> the commit message\n"
    "<DFF> the unified diff\n"
)
NOTE_SAMPLE = Sample(
    "docs/format.md", NOTE, "Say what follows <DFF>",
    "@@ -5 +5 @@\n-<DFF> the unified diff\n+<DFF> the unified diff of that file\n",
)
SAMPLES = [CODE_SAMPLE, NOTE_SAMPLE]


def text_of(s: Sample) -> str:
    return render(s.name, s.before, s.message, s.diff)


def boundary(s: Sample) -> int:
    """Character offset of the real <DFF>: the prompt is the text up to and including it."""
    return len(render_prompt(s.name, s.before, s.message)) - len("<DFF>")


def expected_labels(text: str, start: int) -> list[int]:
    return [X] * start + ids(text)[start:]


def test_the_samples_hold_every_marker_before_the_diff():
    for s in SAMPLES:
        text = text_of(s)
        for marker in MARKERS:
            assert text.index(marker) < boundary(s) - len(s.message)
    assert "\n<DFF> the unified diff\n" in NOTE and "\n<MSG> the commit message\n" in NOTE


class TestSplit:
    @pytest.mark.parametrize("s", SAMPLES, ids=["code", "note"])
    def test_split_gives_back_the_fields(self, s):
        assert split(text_of(s)) == s

    def test_markers_at_the_start_of_file_lines_and_in_the_message(self):
        s = Sample("a/<DFF>.py", "<NME> x\n<BEF> y\n<MSG> z\n<DFF> w\n<MSG>\n<DFF>\n", "Fix <DFF> and <MSG> and\n<NME> and <BEF>", "@@ -1 +1 @@\n-a <DFF>\n+b <MSG>\n")
        assert split(text_of(s)) == s


LINE = st.text(alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=12)
PIECE = st.one_of(LINE, st.sampled_from(MARKERS), st.sampled_from([m + " " for m in MARKERS]))


def _joined(pieces: list[str]) -> str:
    return "".join(pieces)


@st.composite
def samples_with_markers(draw):
    """Fields of a sample with markers inserted anywhere the format allows.

    The file: any lines, markers anywhere (also starting a line). The message:
    markers anywhere but at the start of a line for <MSG> and <DFF>. The diff:
    lines that start as unified diff lines do, with markers after that.
    """
    name = _joined(draw(st.lists(PIECE, max_size=4)))
    file_lines = draw(st.lists(st.lists(PIECE, max_size=4).map(_joined), min_size=1, max_size=6))
    before = "".join(line + "\n" for line in file_lines)
    if before == "ADDFILE\n":
        before = "x" + before
    msg_lines = draw(st.lists(st.lists(PIECE, max_size=4).map(_joined), min_size=1, max_size=3))
    msg_lines = [("." + line) if line.lstrip().startswith(("<MSG>", "<DFF>")) else line for line in msg_lines]
    message = "\n".join(msg_lines).strip()
    if message.startswith(("<MSG>", "<DFF>")):
        message = "." + message
    diff_lines = draw(st.lists(st.tuples(st.sampled_from(" +-@\\"), st.lists(PIECE, max_size=4).map(_joined)), max_size=5))
    diff = "".join(lead + rest + "\n" for lead, rest in diff_lines)
    return Sample(name, before, message, diff)


@settings(max_examples=300, deadline=None)
@given(samples_with_markers())
def test_split_round_trips_fields_holding_markers(s):
    assert split(text_of(s)) == s
    prompt = render_prompt(s.name, s.before, s.message)  # what inference gives the model
    assert diff_start(prompt) == diff_start(text_of(s)) == len(prompt) - len("<DFF>")


class TestLabels:
    """Exact labels through preprocessing, streaming and eval loss (one id per character)."""

    @pytest.mark.parametrize("s", SAMPLES, ids=["code", "note"])
    def test_preprocess(self, s, tmp_path):
        text = text_of(s)
        opts = PreprocessOptions(block_size=4096, train_diff_model=True, ignore_long_samples=True, skip_concat=True, cache_dir=str(tmp_path))
        out, reports = preprocess(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [text]})}), char_tokenizer(merges=[]), opts, "fp-" + text)
        assert out["train"]["input_ids"] == [ids(text)]
        assert out["train"]["labels"] == [expected_labels(text, boundary(s))]
        assert reports["train"].dropped_no_diff == 0

    @pytest.mark.parametrize("s", SAMPLES, ids=["code", "note"])
    def test_preprocess_with_the_marker_merged_into_the_newline(self, s, tmp_path):
        text = text_of(s)
        tok = char_tokenizer()
        opts = PreprocessOptions(block_size=4096, train_diff_model=True, ignore_long_samples=True, skip_concat=True, cache_dir=str(tmp_path))
        out, _ = preprocess(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [text]})}), tok, opts, "fp-merged-" + text)
        row_ids = tok(text)["input_ids"]
        first = len(tok(text[:boundary(s) - 1])["input_ids"])  # tokens before the "\n<" of the real marker
        assert tok.convert_ids_to_tokens(row_ids[first:first + 2]) == ["\n<", "DFF"]
        assert out["train"]["labels"] == [[X] * first + row_ids[first:]]

    @pytest.mark.parametrize("s", SAMPLES, ids=["code", "note"])
    def test_stream(self, s, tmp_path):
        text = text_of(s)
        path = tmp_path / "data.jsonl"
        path.write_text(json.dumps({"text": text}) + "\n")
        opts = PreprocessOptions(block_size=4096, train_diff_model=True, packing=True)
        tok = char_tokenizer(merges=[])
        rows = list(StreamingDataset([str(path)], tok, opts, shuffle=False, epochs=1, with_positions=False))
        assert len(rows) == 1
        assert rows[0]["input_ids"] == ids(text) + [tok.eos_token_id]
        assert rows[0]["labels"] == expected_labels(text, boundary(s)) + [tok.eos_token_id]

    def test_eval_loss(self):
        tok = char_tokenizer(merges=[])
        samples, skipped = loss_encode_rows([{"text": text_of(s)} for s in SAMPLES], tok)
        assert skipped == {}
        for s, got in zip(SAMPLES, samples):
            text = text_of(s)
            assert got.input_ids == ids(text) + [tok.eos_token_id]
            assert got.labels == expected_labels(text, boundary(s)) + [tok.eos_token_id]

    @pytest.mark.parametrize("merges", [[], None], ids=["one-id-per-char", "merged-newline"])
    def test_pretokenized_rows_without_text(self, merges, tmp_path):
        tok = char_tokenizer() if merges is None else char_tokenizer(merges=merges)
        rows = [tok(text_of(s))["input_ids"] for s in SAMPLES]
        firsts = [len(tok(text_of(s)[:boundary(s) - 1])["input_ids"]) + (1 if merges == [] else 0) for s in SAMPLES]
        opts = PreprocessOptions(block_size=4096, train_diff_model=True, ignore_long_samples=True, skip_concat=True, cache_dir=str(tmp_path))
        out, reports = preprocess(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": rows})}), tok, opts, f"fp-ids-{merges}")
        assert reports["train"].dropped_no_diff == 0
        assert out["train"]["labels"] == [[X] * f + r[f:] for r, f in zip(rows, firsts)]
        samples, skipped = loss_encode_rows([{"input_ids": r} for r in rows], tok)
        assert skipped == {}
        assert [x.labels for x in samples] == [[X] * f + r[f:] + [tok.eos_token_id] for r, f in zip(rows, firsts)]


class TestEmptyDiffIsDroppedAndCounted:
    """A text that ends in <DFF> (or <DFF> and whitespace) has nothing to train: dropped and counted everywhere."""

    TEXTS = [
        text_of(CODE_SAMPLE),
        render("a.py", "x = 1\n", "Nothing changed", ""),  # ends in <DFF>
        "no marker here\n",
        render("b.py", "y = 2\n", "Whitespace only", "\n"),  # ends in "<DFF> \n"
        text_of(NOTE_SAMPLE),
    ]

    def test_the_texts(self):
        assert self.TEXTS[1].endswith("\n<DFF>") and self.TEXTS[3].endswith("\n<DFF> \n")

    def test_preprocess_report_and_data_report_json(self, tmp_path):
        from diffmodel.preprocess.sanity import format_report, write_report_json

        opts = PreprocessOptions(block_size=4096, train_diff_model=True, packing=True, cache_dir=str(tmp_path))
        out, reports = preprocess(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": self.TEXTS})}), char_tokenizer(merges=[]), opts, "fp-empty")
        r = reports["train"]
        assert (r.samples_loaded, r.dropped_too_long, r.dropped_no_diff, r.dropped_empty_diff, r.samples_kept) == (5, 0, 1, 2, 2)
        assert sorted(len(x) for x in out["train"]["input_ids"]) == [len(self.TEXTS[0]) + 1 + len(self.TEXTS[4]) + 1]
        report = json.loads(write_report_json(reports, tmp_path / "data_report.json").read_text())
        assert (report["train"]["dropped_no_diff"], report["train"]["dropped_empty_diff"]) == (1, 2)
        assert [line.split() for line in format_report(reports).splitlines() if line.startswith("dropped: empty diff")] == [["dropped:", "empty", "diff", "2"]]

    def test_stream_counts_and_run_summary(self, tmp_path):
        from diffmodel.preprocess.stream import STREAM_KEY
        from diffmodel.train.streaming import _summary

        path = tmp_path / "data.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in self.TEXTS))
        opts = PreprocessOptions(block_size=4096, train_diff_model=True, packing=True)
        rows = list(StreamingDataset([str(path)], char_tokenizer(merges=[]), opts, shuffle=False, epochs=1))
        counts = rows[-1][STREAM_KEY]["counts"]
        assert {k: counts[k] for k in ("samples_read", "dropped_no_diff", "dropped_empty_diff", "samples_kept", "rows")} == {
            "samples_read": 5, "dropped_no_diff": 1, "dropped_empty_diff": 2, "samples_kept": 2, "rows": 1,
        }
        summary = _summary([{"counts": counts, "rows_trained": 1, "epoch": 1}], 4096)
        assert "1 dropped without <DFF>, 2 dropped with an empty diff," in summary

    @pytest.mark.parametrize("edit_format, marker", [(None, "<DFF>"), ("search_replace", "<DFF>"), ("commit", "<commit_after>"),
                                                     ("linediff", "<commit_after>")])
    def test_run_summary_names_the_formats_target_marker(self, edit_format, marker):
        from diffmodel.train.streaming import _summary

        counts = {"samples_read": 5, "dropped_no_diff": 1, "dropped_empty_diff": 2, "samples_kept": 2}
        assert _summary([{"counts": counts, "rows_trained": 1, "epoch": 1}], 4096, edit_format) == (
            f"5 samples read, 0 dropped as >= --block_size 4096 tokens, 1 dropped without {marker}, "
            "2 dropped with an empty diff, 0 bad records skipped, 1 rows trained over 1 rank(s), epoch 1"
        )

    def test_inspect_shows_the_count(self, tmp_path, capsys):
        from diffmodel.cli import main as diffmodel

        tok_dir = tmp_path / "tok"
        char_tokenizer(merges=[]).save_pretrained(str(tok_dir))
        path = tmp_path / "data.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in self.TEXTS))
        assert diffmodel(["inspect", "--tokenizer_name", str(tok_dir), "--train_file", str(path), "--train_diff_model", "--packing",
                          "--block_size", "4096", "--rows", "0", "--cache_dir", str(tmp_path / "cache")]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[-1] for line in lines if line.startswith(("dropped: no <DFF>", "dropped: empty diff", "samples kept"))] == ["1", "2", "2"]

    def test_eval_loss_counts_it(self):
        samples, skipped = loss_encode_rows([{"text": t} for t in self.TEXTS], char_tokenizer(merges=[]))
        assert skipped == {"skipped_no_diff": 1, "skipped_empty_diff": 2}
        assert len(samples) == 2
