"""Exact token, label, mask and position arrays for each preprocessing stage."""

import pytest

from diffmodel.preprocess.labels import EMPTY_DIFF, IGNORE_INDEX, NO_DIFF, diff_start_from_ids, diff_start_from_offsets, mask_before, token_at_char
from diffmodel.preprocess.layout import concatenate, pad_left
from diffmodel.preprocess.tokenize import is_short_enough, tokenize_batch
from handmade import char_tokenizer, ids

X = IGNORE_INDEX
TEXT = "<NME> a\n<BEF> x\n<MSG> m\n<DFF> +y\n"


class TestDiffBoundaryByCharacterOffset:
    def test_merged_marker_is_found_and_trained(self):
        tok = char_tokenizer()
        enc = tokenize_batch({"text": [TEXT]}, tok)
        toks = tok.convert_ids_to_tokens(enc["input_ids"][0])
        assert toks[21:23] == ["\n<", "DFF"]  # the marker's "<" is merged with the newline before it
        assert enc["diff_start"] == [21]

    def test_decoded_token_ids_find_the_merged_marker_too(self):
        tok = char_tokenizer()
        row = tok(TEXT)["input_ids"]
        assert diff_start_from_ids(row, tok) == 21

    def test_unmerged_marker_found_both_ways(self):
        tok = char_tokenizer(merges=[])
        row = tok(TEXT)["input_ids"]
        assert row == ids(TEXT)
        assert diff_start_from_ids(row, tok) == TEXT.index("<DFF>") == 24
        assert tokenize_batch({"text": [TEXT]}, tok)["diff_start"] == [24]

    def test_no_marker(self):
        assert diff_start_from_offsets("no marker", [(0, 2), (2, 9)]) == NO_DIFF
        assert tokenize_batch({"text": ["<NME> a\n", "a<MSG>\n<DFF> +y\n", "<MSG> m <DFF> +y\n"]}, char_tokenizer())["diff_start"] == [NO_DIFF] * 3

    def test_empty_diff(self):
        texts = ["<NME> a\n<BEF> x\n<MSG> m\n<DFF>", "<NME> a\n<BEF> x\n<MSG> m\n<DFF> \n"]
        assert tokenize_batch({"text": texts}, char_tokenizer())["diff_start"] == [EMPTY_DIFF] * 2
        assert [diff_start_from_ids(ids(t), char_tokenizer(merges=[])) for t in texts] == [EMPTY_DIFF] * 2

    def test_zero_width_special_token_is_never_the_boundary(self):
        # BOS at (0, 0) then a token holding character 0
        assert token_at_char([(0, 0), (0, 5), (5, 6)], 0) == 1


class TestLabels:
    def test_mask_before(self):
        assert mask_before([5, 6, 7, 8], 2) == [X, X, 7, 8]
        assert mask_before([5, 6], 0) == [5, 6]

    def test_long_sample_policy_leaves_one_slot_for_eos(self):
        assert is_short_enough(3, 4)
        assert not is_short_enough(4, 4)


class TestPadLayout:
    def test_left_pad_with_positions_from_zero_and_trained_eos(self):
        row = pad_left([11, 12, 13], [X, 12, 13], block_size=6, pad_id=0, eos_id=99)
        assert row == {
            "input_ids": [0, 0, 11, 12, 13, 99],
            "labels": [X, X, X, 12, 13, 99],
            "attention_mask": [0, 0, 1, 1, 1, 1],
            "position_ids": [0, 0, 0, 1, 2, 3],
        }

    def test_exact_fit(self):
        row = pad_left([1, 2, 3], [1, 2, 3], block_size=4, pad_id=0, eos_id=9)
        assert row["input_ids"] == [1, 2, 3, 9] and row["attention_mask"] == [1, 1, 1, 1]

    def test_too_long_is_refused(self):
        with pytest.raises(ValueError):
            pad_left([1, 2, 3, 4], [1, 2, 3, 4], block_size=4, pad_id=0, eos_id=9)


class TestConcatLayout:
    def test_rows_span_samples_and_eos_is_trained(self):
        samples = [([1, 2, 3], [X, 2, 3]), ([4, 5], [X, 5]), ([6, 7, 8, 9], [X, X, 8, 9])]
        rows = list(concatenate(samples, block_size=4, eos_id=99, pad_id=0))
        assert [r["input_ids"] for r in rows] == [[1, 2, 3, 99], [4, 5, 99, 6], [7, 8, 9, 99]]
        assert [r["labels"] for r in rows] == [[X, 2, 3, 99], [X, 5, 99, X], [X, 8, 9, 99]]
        assert all(r["attention_mask"] == [1, 1, 1, 1] for r in rows)
        assert all(r["position_ids"] == [0, 1, 2, 3] for r in rows)

    def test_remainder_is_kept_right_padded(self):
        rows = list(concatenate([([1, 2, 3, 4], [1, 2, 3, 4])], block_size=3, eos_id=99, pad_id=0))
        assert rows[-1] == {"input_ids": [4, 99, 0], "labels": [4, 99, X], "attention_mask": [1, 1, 0], "position_ids": [0, 1, 0]}
        assert len(rows) == 2

    def test_result_does_not_depend_on_how_samples_arrive(self):
        samples = [([i] * (i % 5 + 1), [i] * (i % 5 + 1)) for i in range(1, 30)]
        whole = list(concatenate(samples, 7, 99, 0))
        assert list(concatenate(iter(samples), 7, 99, 0)) == whole
        assert sum(sum(r["attention_mask"]) for r in whole) == sum(len(s[0]) + 1 for s in samples)


class TestDropWarningWhenMoreThanHalfIsDropped:
    def test_names_the_count_reason_and_flag(self):
        from diffmodel.preprocess.sanity import SplitReport, drop_warning

        assert drop_warning("train", SplitReport(samples_loaded=10, dropped_too_long=6, samples_kept=4)) == (
            "the train split drops 6 of 10 samples (60%): 6 too long (>= --block_size tokens). "
            "To keep more: raise --block_size (up to the model's positions) or mine shorter samples (diffmodel mine --tokenizer_name TOKENIZER --max_tokens BLOCK_SIZE-1)"
        )

    def test_half_or_less_gives_none(self):
        from diffmodel.preprocess.sanity import SplitReport, drop_warning

        assert drop_warning("train", SplitReport(samples_loaded=10, dropped_no_diff=5, samples_kept=5)) is None
        assert drop_warning("train", SplitReport()) is None

    def test_every_drop_counter_counts_bad_records_too_largest_first(self):
        from dataclasses import dataclass

        from diffmodel.preprocess.sanity import SplitReport, drop_counts, drop_warning

        @dataclass
        class WithAnotherCounter(SplitReport):
            dropped_unknown_reason: int = 0

        report = WithAnotherCounter(samples_loaded=9, bad_records=2, dropped_no_diff=1, dropped_empty_diff=4, dropped_unknown_reason=1, samples_kept=2)
        assert drop_counts(report) == {"bad_records": 2, "dropped_too_long": 0, "dropped_no_diff": 1, "dropped_empty_diff": 4, "dropped_unknown_reason": 1}
        assert drop_warning("validation", report) == (
            "the validation split drops 8 of 11 samples (73%): 4 with an empty diff or completion (nothing to train), 2 bad records skipped, "
            "1 without <DFF>, 1 unknown reason. "
            "To keep more: fix the records the log names; give every text a <DFF> line after its <MSG> line (or name the text with --text_column)"
        )

    @pytest.mark.parametrize("edit_format, target, message", [
        ("commit", "<commit_after>", "<commit_msg>"),
        ("linediff", "<commit_after>", "<commit_msg>"),
        ("search_replace", "<DFF>", "<MSG>"),
    ])
    def test_names_the_markers_of_the_edit_format(self, edit_format, target, message):
        from diffmodel.preprocess.sanity import SplitReport, drop_reasons, drop_warning

        report = SplitReport(samples_loaded=4, dropped_no_diff=3, samples_kept=1, loss_on="diff", edit_format=edit_format)
        assert drop_warning("train", report) == (
            f"the train split drops 3 of 4 samples (75%): 3 without {target}. "
            f"To keep more: give every text a {target} line after its {message} line (or name the text with --text_column)"
        )
        assert drop_reasons(edit_format)["dropped_no_diff"][0] == f"without {target}"

    def test_commit_warning_exact(self):
        from diffmodel.preprocess.sanity import SplitReport, drop_warning

        assert drop_warning("train", SplitReport(samples_loaded=4, dropped_no_diff=3, samples_kept=1, edit_format="commit")) == (
            "the train split drops 3 of 4 samples (75%): 3 without <commit_after>. To keep more: "
            "give every text a <commit_after> line after its <commit_msg> line (or name the text with --text_column)"
        )

    @pytest.mark.parametrize("edit_format, expected", [
        ("carper", "3 without <DFF>. To keep more: give every text a <DFF> line after its <MSG> line"),
        ("commit", "3 without <commit_after>. To keep more: give every text a <commit_after> line after its <commit_msg> line"),
    ])
    def test_message_plus_diff_drops_still_lack_the_target_marker(self, edit_format, expected):
        # with --loss_on message+diff the loss starts at the message marker, but only where the target marker follows it:
        # a sample is dropped for lacking the target marker (labels.loss_start_token), so the text names both, as with diff
        from diffmodel.preprocess.sanity import SplitReport, drop_warning

        report = SplitReport(samples_loaded=4, dropped_no_diff=3, samples_kept=1, loss_on="message+diff",
                             edit_format=edit_format)
        assert drop_warning("train", report) == (
            f"the train split drops 3 of 4 samples (75%): {expected} (or name the text with --text_column)"
        )

    def test_the_default_format_keeps_the_carper_reasons(self):
        from diffmodel.preprocess.sanity import DROP_REASONS, SplitReport, drop_reasons

        assert SplitReport().edit_format == "carper"
        assert drop_reasons() == drop_reasons("carper") == DROP_REASONS
        assert DROP_REASONS["dropped_no_diff"] == (
            "without <DFF>", "give every text a <DFF> line after its <MSG> line (or name the text with --text_column)")

    def test_report_table_names_the_marker_of_the_edit_format(self):
        from diffmodel.preprocess.sanity import SplitReport, format_report

        commit = format_report({"train": SplitReport(samples_loaded=2, dropped_no_diff=1, samples_kept=1, edit_format="commit")})
        lines = commit.splitlines()
        assert lines[1] == " " * 28 + "         train"
        assert lines[4:7] == [
            "dropped: too long                        0",
            "dropped: no <commit_after>               1",
            "dropped: empty diff                      0",
        ]
        carper = format_report({"train": SplitReport(samples_loaded=2, dropped_no_diff=1, samples_kept=1)}).splitlines()
        assert carper[1] == " " * 22 + "         train" and carper[5] == "dropped: no <DFF>                  1"
        mixed = {"train": SplitReport(edit_format="search_replace"), "validation": SplitReport(edit_format="linediff")}
        assert "dropped: no <DFF> or <commit_after>" in format_report(mixed)

    def test_report_table_and_json_carry_it(self, tmp_path):
        import json

        from diffmodel.preprocess.sanity import SplitReport, drop_warning, format_report, write_report_json

        reports = {"train": SplitReport(samples_loaded=3, bad_records=1, dropped_too_long=2, samples_kept=1), "validation": SplitReport(samples_loaded=2, samples_kept=2)}
        text = format_report(reports)
        assert f"\nWARNING: {drop_warning('train', reports['train'])}" in text and text.count("WARNING") == 1
        assert "skipped: bad records" in text
        data = json.loads(write_report_json(reports, tmp_path / "r.json").read_text())
        assert data["train"]["warning"] == drop_warning("train", reports["train"]) and data["train"]["bad_records"] == 1
        assert data["validation"]["warning"] is None

    def test_report_columns_of_long_words_stay_apart(self):
        from diffmodel.preprocess.sanity import SplitReport, format_report

        fields = "name/before/message/diff"
        reports = {s: SplitReport(samples_kept=1, layout="pack", row_format=fields, loss_on="diff") for s in ("train", "validation")}
        [line] = [line for line in format_report(reports).splitlines() if line.startswith("rows are")]
        assert line.split() == ["rows", "are", fields, fields]


def test_samples_longer_than_the_tokenizer_maximum_are_not_warned_of():
    # they are dropped and counted by length later; transformers' "indexing errors" warning only alarms
    from diffmodel.infer import DiffModel
    from diffmodel.infer.prompt import EditRequest
    from diffmodel.sample import render
    from diffmodel.tiny import build_model, train_tokenizer

    long_text = render("a.py", "x = 1\n" * 20, "m", "@@ -1 +1 @@\n-x = 1\n+x = 2\n")
    tokenizer = train_tokenizer([long_text] * 4, vocab_size=300, model_max_length=8)
    tokenize_batch({"text": [long_text]}, tokenizer)
    model = DiffModel(build_model("gpt2", tokenizer, n_positions=64), tokenizer)
    assert len(model.encode([EditRequest("x = 1\n" * 20, "m", "a.py")])[0]) > 8
    assert "sequence-length-is-longer-than-the-specified-maximum" not in tokenizer.deprecation_warnings
    tokenizer(long_text)  # what a plain call does: the test would see it
    assert "sequence-length-is-longer-than-the-specified-maximum" in tokenizer.deprecation_warnings
