"""The whole preprocessing pipeline on hand-made samples: exact rows, counts, caching."""

import os
import stat

import datasets
import pytest

import diffmodel.preprocess.pipeline as pipeline
from diffmodel.errors import DiffModelError
from diffmodel.preprocess.labels import IGNORE_INDEX
from diffmodel.atomic import save_atomically
from diffmodel.preprocess.options import PreprocessOptions
from diffmodel.preprocess.pipeline import preprocess
from diffmodel.preprocess.tokens import pad_id_of
from handmade import char_tokenizer

X = IGNORE_INDEX
# handmade tokenizer with merges ("D","F"), ("DF","F"): 100 printable characters, DF=100, DFF=101, EOS=102
LT, GT, DFF, EOS, NL = 79, 81, 101, 102, 96  # "<MSG>a\n<DFF>b" is < M S G > a \n < DFF > b
MSG = [LT, 48, 54, 42, GT]
TEXTS = ["<MSG>a\n<DFF>b", "<MSG>\n<DFF>cc", "no marker here", "<MSG>xyz\n<DFF>" + "q" * 20]


def _tok():
    return char_tokenizer(merges=[("D", "F"), ("DF", "F")])


def _run(tmp_path, texts=TEXTS, **kw):
    opts = PreprocessOptions(block_size=kw.pop("block_size", 13), cache_dir=str(tmp_path), **kw)
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})})
    return preprocess(raw, _tok(), opts, source_fingerprint="fp-" + "|".join(texts))


class TestPadPipeline:
    def test_exact_rows_counts_and_report(self, tmp_path):
        out, reports = _run(tmp_path, train_diff_model=True, ignore_long_samples=True)
        rows = out["train"]
        # a=10 b=11 c=12 \n=96 <=79 DFF=101 >=81 ; EOS=102 ; pad = EOS (no pad token)
        assert rows[0] == {
            "input_ids": [EOS, *MSG, 10, NL, LT, DFF, GT, 11, EOS],
            "labels": [X, X, X, X, X, X, X, X, LT, DFF, GT, 11, EOS],
            "attention_mask": [0] + [1] * 12,
            "position_ids": [0, *range(12)],
        }
        assert rows[1] == {
            "input_ids": [EOS, *MSG, NL, LT, DFF, GT, 12, 12, EOS],
            "labels": [X, X, X, X, X, X, X, LT, DFF, GT, 12, 12, EOS],
            "attention_mask": [0] + [1] * 12,
            "position_ids": [0, *range(12)],
        }
        r = reports["train"]
        assert (r.samples_loaded, r.dropped_too_long, r.dropped_no_diff, r.samples_kept, r.rows) == (4, 2, 0, 2, 2)
        assert (r.tokens, r.loss_tokens) == (24, 11)
        assert r.examples[0].startswith("[PAD x1]<MSG>a\n\u27e6<DFF>b<|endoftext|>\u27e7")

    def test_samples_without_marker_are_dropped_and_counted(self, tmp_path):
        _, reports = _run(tmp_path, train_diff_model=True, ignore_long_samples=True, block_size=40)
        assert reports["train"].dropped_no_diff == 1
        assert reports["train"].dropped_empty_diff == 0
        assert reports["train"].dropped_too_long == 0

    def test_pad_token_of_tokenizer_is_used(self, tmp_path):
        tok = char_tokenizer(merges=[("D", "F"), ("DF", "F")], pad=True)
        opts = PreprocessOptions(block_size=14, train_diff_model=True, ignore_long_samples=True, cache_dir=str(tmp_path))
        out, _ = preprocess(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [TEXTS[0]]})}), tok, opts, "x")
        assert out["train"][0]["input_ids"][:2] == [tok.pad_token_id] * 2 != [EOS, EOS]


class TestConcatPipeline:
    def test_exact_rows_and_final_partial_row(self, tmp_path):
        out, reports = _run(tmp_path, texts=TEXTS[:2], train_diff_model=True, concatenate_texts=True, block_size=10)
        rows = out["train"]
        assert rows["input_ids"] == [[*MSG, 10, NL, LT, DFF, GT], [11, EOS, *MSG, NL, LT, DFF], [GT, 12, 12, EOS] + [EOS] * 6]
        assert rows["labels"] == [[X] * 7 + [LT, DFF, GT], [11, EOS] + [X] * 6 + [LT, DFF], [GT, 12, 12, EOS] + [X] * 6]
        assert rows["attention_mask"] == [[1] * 10, [1] * 10, [1] * 4 + [0] * 6]
        assert reports["train"].layout == "concat"

    def test_long_samples_force_concat_and_are_kept(self, tmp_path):
        out, reports = _run(tmp_path, train_diff_model=True, block_size=8)
        assert reports["train"].layout == "concat" and reports["train"].dropped_too_long == 0
        assert reports["train"].tokens == sum(len(t) - (2 if "<DFF>" in t else 0) + 1 for t in TEXTS if "<DFF>" in t)

    def test_plain_causal_lm_labels_without_train_diff_model(self, tmp_path):
        out, _ = _run(tmp_path, texts=["ab", "c"], concatenate_texts=True, ignore_long_samples=True, block_size=3)
        assert out["train"]["labels"] == [[10, 11, EOS], [12, EOS, X]]


class TestStageCache:
    def test_repeated_run_reuses_finished_stages(self, tmp_path, monkeypatch):
        first, _ = _run(tmp_path, train_diff_model=True, ignore_long_samples=True)

        def boom(*a, **k):
            raise RuntimeError("stage recomputed")

        monkeypatch.setattr(pipeline, "encode_split", boom)
        monkeypatch.setattr(pipeline, "layout_split", boom)
        second, reports = _run(tmp_path, train_diff_model=True, ignore_long_samples=True)
        assert second["train"]["input_ids"] == first["train"]["input_ids"]
        assert reports["train"].dropped_too_long == 2  # counts come back with the cached stage
        with pytest.raises(RuntimeError, match="recomputed"):
            _run(tmp_path, train_diff_model=True, ignore_long_samples=True, overwrite_cache=True)
        with pytest.raises(RuntimeError, match="recomputed"):  # another option is another fingerprint
            _run(tmp_path, train_diff_model=True, ignore_long_samples=True, block_size=14)

    def test_interrupted_save_leaves_nothing_that_looks_complete(self, tmp_path, monkeypatch):
        ds = datasets.Dataset.from_dict({"x": [1, 2, 3]})
        target = tmp_path / "final_dataset"

        def dies(self, path, *a, **k):
            (tmp_path / "partial").write_text("x")
            raise KeyboardInterrupt

        monkeypatch.setattr(datasets.Dataset, "save_to_disk", dies)
        with pytest.raises(KeyboardInterrupt):
            save_atomically(ds, target)
        assert not target.exists()
        assert [p.name for p in tmp_path.iterdir()] == ["partial"]

    def test_replacing_an_existing_folder(self, tmp_path):
        target = tmp_path / "final_dataset"
        save_atomically(datasets.Dataset.from_dict({"x": [1]}), target)
        save_atomically(datasets.Dataset.from_dict({"x": [2, 3]}), target)
        assert datasets.load_from_disk(str(target))["x"] == [2, 3]
        assert [p.name for p in tmp_path.iterdir()] == ["final_dataset"]

    @pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700)])
    def test_new_folder_mode_follows_the_umask(self, tmp_path, umask, mode):
        old = os.umask(umask)
        try:
            save_atomically(datasets.Dataset.from_dict({"x": [1]}), tmp_path / "final_dataset")
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / "final_dataset").stat().st_mode) == mode


class TestSanityCheck:
    def test_bad_rows_are_reported_together(self, tmp_path):
        from diffmodel.preprocess.sanity import check_rows

        batch = {"input_ids": [[1, 2, 3], [1, 2]], "labels": [[1, 9, X], [1, 2]], "attention_mask": [[0, 1, 1], [1, 1]]}
        with pytest.raises(DiffModelError) as err:
            check_rows([batch], block_size=3, split="train")
        msg = str(err.value)
        assert "row 1 has 2 tokens, expected block_size 3" in msg
        assert "label 9 is neither the token 2" in msg
        assert "padding (attention 0) but carries a label" in msg

    def test_no_eos_and_no_pad_is_refused(self):
        tok = _tok()
        tok.eos_token = None
        with pytest.raises(DiffModelError, match="neither a pad token nor an EOS token"):
            pad_id_of(tok)


class TestPackPipeline:
    def test_exact_rows_fill_ratio_and_long_samples_dropped(self, tmp_path):
        texts = ["<MSG>\n<DFF>b", "<MSG>\n<DFF>cc", "<MSG>\n<DFF>ddd", "<MSG>xyz\n<DFF>" + "q" * 20]
        out, reports = _run(tmp_path, texts=texts, train_diff_model=True, packing=True, block_size=24)
        rows = out["train"]
        # lengths with EOS: 11, 12, 13 (and 33: dropped); best fit decreasing into 24: [ddd, b], [cc]
        head = [*MSG, NL, LT, DFF, GT]
        assert rows["input_ids"] == [head + [13, 13, 13, EOS] + head + [11, EOS], head + [12, 12, EOS]]
        trained = [X] * 6 + [LT, DFF, GT]
        assert rows["labels"] == [trained + [13, 13, 13, EOS] + trained + [11, EOS], trained + [12, 12, EOS]]
        assert rows["position_ids"] == [[*range(13), *range(11)], [*range(12)]]
        assert "attention_mask" not in rows.column_names
        r = reports["train"]
        assert (r.dropped_too_long, r.rows, r.tokens, r.row_slots) == (1, 2, 36, 48)
        assert r.fill_ratio == pytest.approx(36 / 48)

    def test_parallel_workers_give_the_same_rows(self, tmp_path):
        texts = [f"<MSG>{'a' * (i % 9)}\n<DFF>b{'b' * (i % 5)}" for i in range(60)]
        one, _ = _run(tmp_path / "one", texts=texts, train_diff_model=True, packing=True, block_size=24)
        two, _ = _run(tmp_path / "two", texts=texts, train_diff_model=True, packing=True, block_size=24, num_proc=2)
        assert one["train"]["input_ids"] == two["train"]["input_ids"]
        assert one["train"]["labels"] == two["train"]["labels"]


class TestLaidOutRowsAreNotLaidOutAgain:
    def _saved_rows(self, tmp_path, **kw):
        out, _ = _run(tmp_path / "first", train_diff_model=True, **kw)
        return out

    @pytest.mark.parametrize("layout", [{"ignore_long_samples": True}, {"packing": True, "block_size": 24}])
    def test_padded_or_packed_rows_without_skip_concat_are_refused(self, tmp_path, layout):
        rows = self._saved_rows(tmp_path, **layout)
        opts = PreprocessOptions(block_size=13, train_diff_model=True, cache_dir=str(tmp_path / "second"))
        with pytest.raises(DiffModelError, match=r"the train split holds rows an earlier run laid out .*pass --skip_concat"):
            preprocess(rows, _tok(), opts, "laid-out")

    def test_samples_with_an_all_ones_mask_are_laid_out(self, tmp_path):
        ids = [*MSG, 10, NL, LT, DFF, GT, 11]
        raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": [ids], "attention_mask": [[1] * len(ids)], "labels": [ids]})})
        opts = PreprocessOptions(block_size=13, ignore_long_samples=True, cache_dir=str(tmp_path))
        out, _ = preprocess(raw, _tok(), opts, "tokenized")
        assert out["train"][0] == {
            "input_ids": [EOS, *ids, EOS],
            "labels": [X, X, *ids[1:], EOS],
            "attention_mask": [0] + [1] * 12,
            "position_ids": [0, *range(12)],
        }

    def test_wrong_block_size_names_the_rows_length(self, tmp_path):
        rows = self._saved_rows(tmp_path, ignore_long_samples=True)
        opts = PreprocessOptions(block_size=20, train_diff_model=True, skip_concat=True, cache_dir=str(tmp_path / "second"))
        with pytest.raises(DiffModelError, match=r"row 0 has 13 tokens, expected block_size 20 \(was the data laid out with another --block_size\? pass --block_size 13,"):
            preprocess(rows, _tok(), opts, "laid-out")


@pytest.mark.parametrize("edit_format,markers", [("carper", "(the <DFF> after the last <MSG>)"),
                                                 ("commit", "(the <commit_after> after the last <commit_msg>)")])
def test_pre_tokenized_rows_without_text_are_said_to_be_decoded_for_the_formats_markers(tmp_path, caplog, edit_format,
                                                                                         markers):
    ids = _tok()("<MSG>a\n<DFF>b")["input_ids"]
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": [ids]})})
    opts = PreprocessOptions(block_size=13, cache_dir=str(tmp_path), train_diff_model=True, ignore_long_samples=True,
                             edit_format=edit_format)
    with caplog.at_level("WARNING", logger="diffmodel"):
        try:
            preprocess(raw, _tok(), opts, source_fingerprint=f"fp-pretokenized-{edit_format}")
        except DiffModelError:
            pass  # read as commit, the carper sample has no target: nothing is left to train, which is not this test's point
    warning = "data is pre-tokenized without text: each token is decoded on its own to find where the loss starts "
    assert warning + markers in caplog.messages
