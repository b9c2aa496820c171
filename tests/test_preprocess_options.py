"""preprocess.options: the load and preprocessing options come from DataArguments in one function."""

from __future__ import annotations

import logging

from diffmodel.data.load import LoadOptions
from diffmodel.preprocess.options import PreprocessOptions, options_from
from diffmodel.train.args import DataArguments


def test_every_data_flag_reaches_its_option():
    data_args = DataArguments(
        dataset_name=None, train_file=["a.jsonl", "b/*.jsonl.zst"], validation_file=["v.jsonl"], validation_split_percentage=7,
        text_column="body", keep_linebreaks=False, skip_bad_records=True, block_size=99, preprocessing_num_workers=3,
        overwrite_cache=True, train_diff_model=True, ignore_long_samples=True, packing=True, skip_concat=True, force_label=True,
    )
    load, prep = options_from(data_args, 64, cache_dir="/c", seed=5)
    assert load == LoadOptions(
        dataset_name=None, dataset_config_name=None, train_files=["a.jsonl", "b/*.jsonl.zst"], validation_files=["v.jsonl"],
        validation_split_percentage=7, load_from_disk=False, text_column="body", keep_linebreaks=False, skip_bad_records=True,
        cache_dir="/c", seed=5,
    )
    assert prep == PreprocessOptions(
        block_size=64, train_diff_model=True, ignore_long_samples=True, concatenate_texts=False, packing=True, skip_concat=True,
        force_label=True, num_proc=3, text_column="body", overwrite_cache=True, cache_dir="/c", report_examples=2,
    )


def test_defaults_and_the_forced_concat_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="diffmodel.train"):
        load, prep = options_from(DataArguments(dataset_name="folder", load_from_disk=True), 128)
    assert load == LoadOptions(dataset_name="folder", load_from_disk=True)
    assert prep == PreprocessOptions(block_size=128)
    assert prep.layout == "concat"
    assert ["--ignore_long_samples not given: forcing --concatenate_texts, since left-padding cannot hold samples longer than --block_size"] == [
        r.getMessage() for r in caplog.records
    ]
