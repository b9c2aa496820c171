"""``--loss_on diff | message+diff``: exact label arrays in every layout, the cache key, the report and inspect."""

import json

import datasets
import pytest

from diffmodel.preprocess.labels import EMPTY_DIFF, IGNORE_INDEX, NO_DIFF, diff_start_from_ids
from diffmodel.preprocess.options import PreprocessOptions
from diffmodel.preprocess.pipeline import preprocess
from diffmodel.preprocess.tokenize import tokenize_batch
from diffmodel.formats import loss_start
from diffmodel.sample import message_start
from diffmodel.train.args import DataArguments, data_problems
from diffmodel.preprocess.pipeline import encode_batch
from diffmodel.preprocess.stream import StreamingDataset
from handmade import char_tokenizer, ids

X = IGNORE_INDEX
# handmade tokenizer with merges ("D","F"), ("DF","F"): x=33 \n=96 <=79 M=48 S=54 G=42 >=81 a=10 b=11 DFF=101 EOS=102
x, NL, LT, M, S, G, GT, A, B, DFF, EOS = 33, 96, 79, 48, 54, 42, 81, 10, 11, 101, 102
TEXT = "x\n<MSG>a\n<DFF>b"
IDS = [x, NL, LT, M, S, G, GT, A, NL, LT, DFF, GT, B]


def _tok():
    return char_tokenizer(merges=[("D", "F"), ("DF", "F")])


def _run(tmp_path, loss_on, texts=(TEXT,), **kw):
    opts = PreprocessOptions(cache_dir=str(tmp_path), train_diff_model=True, loss_on=loss_on, **kw)
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": list(texts)})})
    return preprocess(raw, _tok(), opts, source_fingerprint="fp-loss-on")


class TestLossStartInText:
    def test_message_start_is_the_last_line_start_msg_before_the_diff(self):
        text = "<NME> f\n<BEF> <MSG> not here\n<MSG> also not\n<MSG> m\n<DFF> +y\n"
        assert message_start(text) == text.index("<MSG> m")
        assert loss_start(text, "message+diff") == text.index("<MSG> m")
        assert loss_start(text, "diff") == text.index("<DFF>")

    def test_no_diff_means_no_message_start(self):
        assert message_start("<NME> f\n<MSG> m\n") == -1
        assert loss_start("<MSG> m <DFF> +y", "message+diff") == -1

    def test_unknown_choice_is_refused(self):
        with pytest.raises(ValueError, match="message\\+diff"):
            loss_start(TEXT, "message")


class TestTokenBoundary:
    def test_both_choices_by_offset_and_by_decoding(self):
        tok = _tok()
        assert tokenize_batch({"text": [TEXT]}, tok, loss_on="diff")["diff_start"] == [9]
        assert tokenize_batch({"text": [TEXT]}, tok, loss_on="message+diff")["diff_start"] == [2]
        assert diff_start_from_ids(IDS, tok, "message+diff") == 2
        assert diff_start_from_ids(IDS, tok, "diff") == 9

    def test_drops_are_the_same_for_both_choices(self):
        texts = ["x\n<MSG>a\n<DFF>", "x\n<MSG>a <DFF>b"]
        for loss_on in ("diff", "message+diff"):
            assert tokenize_batch({"text": texts}, _tok(), loss_on=loss_on)["diff_start"] == [EMPTY_DIFF, NO_DIFF]


class TestExactRowsPerLayout:
    @pytest.mark.parametrize("loss_on, masked", [("diff", 9), ("message+diff", 2)])
    def test_pad(self, tmp_path, loss_on, masked):
        out, reports = _run(tmp_path, loss_on, block_size=16, ignore_long_samples=True)
        assert out["train"][0] == {
            "input_ids": [EOS, EOS, *IDS, EOS],
            "labels": [X, X] + [X] * masked + IDS[masked:] + [EOS],
            "attention_mask": [0, 0] + [1] * 14,
            "position_ids": [0, 0, *range(14)],
        }
        assert reports["train"].loss_on == loss_on

    def test_pad_message_plus_diff_exact(self, tmp_path):
        out, _ = _run(tmp_path, "message+diff", block_size=16, ignore_long_samples=True)
        assert out["train"][0]["labels"] == [X, X, X, X, LT, M, S, G, GT, A, NL, LT, DFF, GT, B, EOS]

    @pytest.mark.parametrize("loss_on, labels", [
        ("diff", ([X, X, X, X, X, X, X, X], [X, LT, DFF, GT, B, EOS, X, X])),
        ("message+diff", ([X, X, LT, M, S, G, GT, A], [NL, LT, DFF, GT, B, EOS, X, X])),
    ])
    def test_concat(self, tmp_path, loss_on, labels):
        out, _ = _run(tmp_path, loss_on, block_size=8, concatenate_texts=True)
        rows = out["train"]
        assert rows["input_ids"] == [IDS[:8], IDS[8:] + [EOS, EOS, EOS]]
        assert rows["labels"] == list(labels)

    @pytest.mark.parametrize("loss_on, labels", [
        ("diff", [X] * 9 + [LT, DFF, GT, B, EOS] + [X] * 9 + [LT, DFF, GT, B, EOS]),
        ("message+diff", [X, X, LT, M, S, G, GT, A, NL, LT, DFF, GT, B, EOS] * 2),
    ])
    def test_pack(self, tmp_path, loss_on, labels):
        out, _ = _run(tmp_path, loss_on, texts=(TEXT, TEXT), block_size=28, packing=True)
        assert out["train"]["input_ids"] == [IDS + [EOS] + IDS + [EOS]]
        assert out["train"]["labels"] == [labels]
        assert out["train"]["position_ids"] == [list(range(14)) * 2]

    def test_message_plus_diff_at_the_first_token_of_a_packed_sample_is_not_trained(self, tmp_path):
        out, _ = _run(tmp_path, "message+diff", texts=("<MSG>a\n<DFF>b",), block_size=16, packing=True)
        assert out["train"]["labels"] == [[X, M, S, G, GT, A, NL, LT, DFF, GT, B, EOS]]


class TestOtherEditFormats:
    """The format names its two markers; --loss_on picks one of them (one character, one id: no merges)."""

    COMMIT = "<commit_before>a\n<commit_msg>m<commit_after>b\n"
    LINEDIFF = "<file_name>\nf\n<commit_before>\n  1 a\n<commit_msg>\nm\n<commit_after>\n-  1 a\n+  1 b"

    def _pack(self, tmp_path, text, edit_format, loss_on, **kw):
        tok = char_tokenizer(merges=[])
        opts = PreprocessOptions(block_size=128, packing=True, train_diff_model=True, loss_on=loss_on, edit_format=edit_format,
                                 cache_dir=str(tmp_path), **kw)
        raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [text]})})
        out, reports = preprocess(raw, tok, opts, source_fingerprint="fp-formats")
        return out["train"], reports["train"], tok.eos_token_id

    @pytest.mark.parametrize("loss_on, context", [
        ("message+diff", "<commit_before>a\n"),
        ("diff", "<commit_before>a\n<commit_msg>m"),
    ])
    def test_commit_exact_labels(self, tmp_path, loss_on, context):
        rows, report, eos = self._pack(tmp_path, self.COMMIT, "commit", loss_on)
        assert rows["input_ids"] == [ids(self.COMMIT) + [eos]]
        assert rows["labels"] == [[X] * len(context) + ids(self.COMMIT[len(context):]) + [eos]]
        assert report.loss_on == loss_on

    def test_commit_message_plus_diff_label_array(self, tmp_path):
        rows, _, eos = self._pack(tmp_path, "<commit_before>a<commit_msg>m<commit_after>b", "commit", "message+diff")
        # string.printable ids: < 79, > 81, _ 88, a 10, b 11, c 12, e 14, f 15, g 16, i 18, m 22, o 24, r 27, s 28, t 29; EOS 100
        commit_msg = [79, 12, 24, 22, 22, 18, 29, 88, 22, 28, 16, 81]
        commit_after = [79, 12, 24, 22, 22, 18, 29, 88, 10, 15, 29, 14, 27, 81]
        assert eos == 100
        assert rows["labels"] == [[X] * 16 + commit_msg + [22] + commit_after + [11, 100]]

    @pytest.mark.parametrize("loss_on, context", [
        ("message+diff", "<file_name>\nf\n<commit_before>\n  1 a\n"),
        ("diff", "<file_name>\nf\n<commit_before>\n  1 a\n<commit_msg>\nm\n"),
    ])
    def test_linediff_exact_labels(self, tmp_path, loss_on, context):
        rows, _, eos = self._pack(tmp_path, self.LINEDIFF, "linediff", loss_on)
        assert rows["labels"] == [[X] * len(context) + ids(self.LINEDIFF[len(context):]) + [eos]]

    def test_carper_text_read_as_commit_has_no_target(self, tmp_path):
        with pytest.raises(Exception, match=r"1 dropped without <commit_after>, .*--edit_format"):
            self._pack(tmp_path, TEXT, "commit", "message+diff")

    @pytest.mark.parametrize("loss_on", ["diff", "message+diff"])
    def test_the_report_names_the_commit_target_marker_for_either_choice(self, tmp_path, loss_on):
        from diffmodel.preprocess.sanity import drop_warning, format_report

        tok = char_tokenizer(merges=[])
        opts = PreprocessOptions(block_size=128, packing=True, train_diff_model=True, loss_on=loss_on, edit_format="commit",
                                 cache_dir=str(tmp_path))
        texts = [self.COMMIT, TEXT, "<commit_before>a\n<commit_msg>m\n", "plain\n"]  # carper text, no <commit_after>, nothing
        raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})})
        _, reports = preprocess(raw, tok, opts, "fp-report")
        report = reports["train"]
        assert (report.edit_format, report.loss_on, report.dropped_no_diff, report.samples_kept) == ("commit", loss_on, 3, 1)
        assert "\ndropped: no <commit_after>               3\n" in format_report(reports)
        assert drop_warning("train", report) == (
            "the train split drops 3 of 4 samples (75%): 3 without <commit_after>. To keep more: "
            "give every text a <commit_after> line after its <commit_msg> line (or name the text with --text_column)"
        )

    @pytest.mark.parametrize("loss_on", ["diff", "message+diff"])
    def test_prompt_completion_rows_keep_loss_on_the_completion(self, loss_on):
        tok = char_tokenizer(merges=[])
        opts = PreprocessOptions(block_size=64, train_diff_model=True, loss_on=loss_on, edit_format="commit")
        text = self.COMMIT + "ok"  # the prompt holds both commit markers; the completion is "ok"
        out = encode_batch({"text": [text], "completion_start": [len(self.COMMIT)]}, tok, opts)
        assert out["labels"] == [[X] * len(self.COMMIT) + ids("ok")]

    def test_the_stream_uses_the_format_and_the_choice(self, tmp_path):
        data = tmp_path / "d.jsonl"
        data.write_text(json.dumps({"text": self.COMMIT}) + "\n")
        tok = char_tokenizer(merges=[])
        opts = PreprocessOptions(block_size=64, packing=True, train_diff_model=True, loss_on="message+diff", edit_format="commit")
        rows = list(StreamingDataset([str(data)], tok, opts, buffer_size=4, shuffle=False, epochs=1))
        context = len("<commit_before>a\n")
        assert [r["labels"] for r in rows] == [[X] * context + ids(self.COMMIT[context:]) + [tok.eos_token_id]]

    def test_format_and_choice_are_both_part_of_the_cache_key(self, tmp_path):
        seen = {}
        for edit_format in ("commit", "linediff"):
            for loss_on in ("diff", "message+diff"):
                text = self.COMMIT if edit_format == "commit" else self.LINEDIFF
                rows, _, _ = self._pack(tmp_path, text, edit_format, loss_on)
                seen[edit_format, loss_on] = rows["labels"][0].count(X)
        assert seen == {("commit", "message+diff"): 17, ("commit", "diff"): 30, ("linediff", "message+diff"): 36, ("linediff", "diff"): 51}
        assert len(list(tmp_path.glob("diffmodel_preprocess/encode-*"))) == 4


class TestCacheAndFlags:
    def test_the_choice_is_part_of_the_cache_key(self, tmp_path):
        first, _ = _run(tmp_path, "diff", block_size=16, ignore_long_samples=True)
        second, _ = _run(tmp_path, "message+diff", block_size=16, ignore_long_samples=True)
        assert first["train"][0]["labels"] != second["train"][0]["labels"]
        assert len(list(tmp_path.glob("diffmodel_preprocess/encode-*"))) == 2

    def test_flag_problems(self, tmp_path):
        (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
        base = dict(train_file=[str(tmp_path / "d.jsonl")])
        assert data_problems(DataArguments(**base, loss_on="message+diff", train_diff_model=True)) == []
        assert data_problems(DataArguments(**base, loss_on="message+diff")) == [
            "--loss_on message+diff chooses which tokens of a diff sample carry loss; add --train_diff_model (without it every token is trained)"
        ]
        assert data_problems(DataArguments(**base, loss_on="message", train_diff_model=True)) == ["--loss_on 'message' is not one of: diff, message+diff"]


def test_inspect_shows_the_choice(tmp_path, capsys):
    from diffmodel.cli import main

    tok_dir = tmp_path / "tok"
    _tok().save_pretrained(tok_dir)
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "x\\n<MSG>a\\n<DFF>b"}\n')
    rc = main(["inspect", "--tokenizer_name", str(tok_dir), "--train_file", str(data), "--train_diff_model", "--loss_on", "message+diff",
               "--packing", "--block_size", "32", "--rows", "1", "--cache_dir", str(tmp_path / "cache"), "--color", "never"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "loss on" in out and "message+diff" in out.split("loss on")[1].splitlines()[0]
    assert "x\n\u27e6<MSG>a\n<DFF>b<|endoftext|>\u27e7" in out


class TestGivenLabelsAreReportedAsGiven:
    DIFF_LABELS = [X] * 9 + IDS[9:]

    def _tokenized(self, tmp_path, **kw):
        opts = PreprocessOptions(block_size=16, ignore_long_samples=True, train_diff_model=True, loss_on="message+diff", cache_dir=str(tmp_path), **kw)
        raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": [IDS], "labels": [self.DIFF_LABELS]})})
        out, reports = preprocess(raw, _tok(), opts, source_fingerprint="fp-given-labels")
        return out["train"][0]["labels"], reports["train"].loss_on

    def test_kept_labels_are_not_reported_as_loss_on(self, tmp_path, caplog):
        labels, loss_on = self._tokenized(tmp_path)
        assert labels == [X, X, *self.DIFF_LABELS, EOS]
        assert loss_on == "labels as given"
        assert any("its labels are kept, whatever --train_diff_model and --loss_on say" in r.message for r in caplog.records)

    def test_force_label_rebuilds_and_reports_loss_on(self, tmp_path):
        labels, loss_on = self._tokenized(tmp_path, force_label=True)
        assert labels == [X, X, X, X, *IDS[2:], EOS]
        assert loss_on == "message+diff"
