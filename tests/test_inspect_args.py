"""``diffmodel inspect``: command-line mistakes are one error naming the flag, before anything is loaded."""

from __future__ import annotations

from diffmodel.cli import main


def test_unknown_flags_are_named_with_close_matches(tmp_path, capsys):
    rc = main(["inspect", "--tokenizer_name", str(tmp_path / "tok"), "--train_file", "data.jsonl",
               "--block-sise", "12", "--bogus_flag", "stray", "--rows", "2"])
    assert rc == 2
    assert capsys.readouterr().err == (
        "diffmodel inspect: error: unknown argument(s): --block-sise 12 (did you mean --block_size?); "
        "--bogus_flag stray. See diffmodel inspect --help for its flags "
        "(diffmodel train flags that do not shape the rows are not taken)\n")


def test_a_split_other_than_train_or_validation_is_refused_with_the_other_problems(tmp_path, capsys):
    rc = main(["inspect", "--tokenizer_name", str(tmp_path / "tok"), "--train_file", str(tmp_path / "d.jsonl"),
               "--split", "valid", "--rows", "-1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("diffmodel inspect: error: diffmodel inspect cannot start:\n"
                          "  - --rows -1 must be 0 or more (rows shown)\n"
                          "  - --split valid: give train or validation\n")


def test_a_bad_value_prints_the_short_usage_and_the_flag(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as done:
        main(["inspect", "--tokenizer_name", str(tmp_path / "tok"), "--train_file", "d.jsonl", "--block_size", "abc"])
    assert done.value.code == 2
    assert capsys.readouterr().err == (
        "usage: diffmodel inspect --tokenizer_name DIR (--train_file FILE... | --dataset_name DIR) [FLAGS]\n"
        "diffmodel inspect: error: argument --block_size/--block-size: invalid int value: 'abc'\n")


def test_a_block_size_above_the_tokenizer_folders_model_is_shown_with_a_warning_not_refused(tiny_gpt2_dir, tiny_texts,
                                                                                           tmp_path, capsys):
    import json

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_texts[:4]))
    rc = main(["inspect", "--tokenizer_name", str(tiny_gpt2_dir), "--train_file", str(data), "--train_diff_model",
               "--packing", "--block_size", "512", "--rows", "0", "--no_progress", "--cache_dir", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert rc == 0
    assert (f"diffmodel inspect: warning: --block_size 512 is larger than the 256 positions of the model in "
            f"{tiny_gpt2_dir}: diffmodel train refuses it with --model_name_or_path {tiny_gpt2_dir} (use --block_size "
            "256 or less there), not with a model of more positions\n") in captured.err
    assert "samples loaded                     4" in captured.out
