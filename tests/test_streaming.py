"""``--streaming``: the stream gives the rows of ``preprocess``, shares every epoch between readers, and resumes exactly.

The data: rendered samples of 49 to 97 tokens with the tiny tokenizer (two or
three fit a packed row of 160), one text without ``<DFF>`` and one too long
for a row, so both drop counters are exercised.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from torch.utils.data import DataLoader

from diffmodel.data.load import LoadOptions, load_raw_datasets
from diffmodel.data.stream_sources import BadRecords, Position, read_records
from diffmodel.errors import DiffModelError
from diffmodel.preprocess.options import PreprocessOptions
from diffmodel.preprocess.pipeline import preprocess
from diffmodel.preprocess.stream import STREAM_KEY, StreamingDataset
from diffmodel.sample import render
from diffmodel.train.run import last_complete_checkpoint
from diffmodel.commands.train import main as train_main

BLOCK = 160
N = 40
NO_DIFF, TOO_LONG = 5, 17  # line numbers (1-based) of the two samples every layout that drops them drops


def _texts(n=N):
    out = []
    for i in range(n):
        before = "".join(f"v{j} = {j * i}\n" for j in range(i % 7 + 1))
        out.append(render(f"m{i}.py", before, f"v0 in m{i}", f"@@ -1 +1 @@\n-v0 = 0\n+v0 = {i}\n"))
    out[NO_DIFF - 1] = "a text without the diff marker, so it carries no loss\n"
    out[TOO_LONG - 1] = render("big.py", "".join(f"line{j} = {j}\n" for j in range(60)), "too long for a row", "@@ -1 +1 @@\n")
    return out


def _opts(cache, layout="pack") -> PreprocessOptions:
    return PreprocessOptions(
        block_size=BLOCK, train_diff_model=True, packing=layout == "pack", ignore_long_samples=layout != "concat",
        concatenate_texts=layout == "concat", cache_dir=str(cache),
    )


def _ids(rows):
    return [r[STREAM_KEY]["samples"] for r in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    lines = "".join(json.dumps({"text": t}) + "\n" for t in _texts())
    (d / "data.jsonl").write_text(lines)
    (d / "data.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    pq.write_table(pa.table({"text": _texts()}), d / "data.parquet", row_group_size=7)
    return d


def _stream(files, tok, opts, **kw):
    kw.setdefault("epochs", 1)
    return StreamingDataset([str(f) for f in files], tok, opts, **kw)


class TestSameRowsAsPreprocess:
    @pytest.mark.parametrize("layout", ["pack", "pad", "concat"])
    def test_one_reader_whole_buffer_no_shuffle_gives_preprocess_rows(self, data, tiny_tokenizer, layout):
        opts = _opts(data / "cache", layout)
        raw, _ = load_raw_datasets(LoadOptions(train_files=[str(data / "data.jsonl")], validation_split_percentage=0))
        expected, reports = preprocess(raw, tiny_tokenizer, opts, source_fingerprint=f"stream-test-{layout}")
        streamed = list(_stream([data / "data.jsonl"], tiny_tokenizer, opts, buffer_size=1000, shuffle=False, with_positions=False))
        assert streamed == [dict(r) for r in expected["train"]]
        if layout == "pack":
            assert reports["train"].rows < reports["train"].samples_kept  # rows really hold several samples

    def test_pretokenized_rows_give_preprocess_rows(self, data, tiny_tokenizer, tmp_path):
        path = tmp_path / "tokens.jsonl"
        path.write_text("".join(json.dumps({"input_ids": tiny_tokenizer(t)["input_ids"]}) + "\n" for t in _texts()))
        opts = _opts(data / "cache")
        raw, _ = load_raw_datasets(LoadOptions(train_files=[str(path)], validation_split_percentage=0))
        expected, _ = preprocess(raw, tiny_tokenizer, opts, source_fingerprint="stream-test-tokens")
        streamed = list(_stream([path], tiny_tokenizer, opts, buffer_size=1000, shuffle=False, with_positions=False))
        assert streamed == [dict(r) for r in expected["train"]]

    def test_counts_match_the_pipeline_report(self, data, tiny_tokenizer):
        opts = _opts(data / "cache")
        raw, _ = load_raw_datasets(LoadOptions(train_files=[str(data / "data.jsonl")], validation_split_percentage=0))
        _, reports = preprocess(raw, tiny_tokenizer, opts, source_fingerprint="stream-test-pack")
        rows = list(_stream([data / "data.jsonl"], tiny_tokenizer, opts, buffer_size=1000, shuffle=False))
        counts = rows[-1][STREAM_KEY]["counts"]
        rep = reports["train"]
        assert (counts["samples_read"], counts["dropped_too_long"], counts["dropped_no_diff"], counts["samples_kept"], counts["rows"]) == (
            rep.samples_loaded, rep.dropped_too_long, rep.dropped_no_diff, rep.samples_kept, rep.rows
        ) == (N, 1, 1, N - 2, len(rows))

    def test_shuffled_rows_are_the_same_rows(self, data, tiny_tokenizer):
        opts = _opts(data / "cache")
        plain = list(_stream([data / "data.jsonl"], tiny_tokenizer, opts, buffer_size=1000, shuffle=False, with_positions=False))
        mixed = list(_stream([data / "data.jsonl"], tiny_tokenizer, opts, buffer_size=1000, shuffle=True, with_positions=False))
        assert mixed != plain and sorted(map(str, mixed)) == sorted(map(str, plain))

    @pytest.mark.parametrize("name", ["data.jsonl.zst", "data.parquet"])
    def test_zst_and_parquet_stream_the_same_rows(self, data, tiny_tokenizer, name):
        opts = _opts(data / "cache")
        ref = list(_stream([data / "data.jsonl"], tiny_tokenizer, opts, buffer_size=6, world_size=2, rank=1, with_positions=False))
        got = list(_stream([data / name], tiny_tokenizer, opts, buffer_size=6, world_size=2, rank=1, with_positions=False))
        assert got == ref


def _samples(rows):
    return [s for r in rows for s in r[STREAM_KEY]["samples"]]


def _kept(data):
    return {f"{data / 'data.jsonl'}:{i}" for i in range(1, N + 1)} - {f"{data / 'data.jsonl'}:{i}" for i in (NO_DIFF, TOO_LONG)}


class TestRanksShareEachEpoch:
    def test_small_buffer_two_ranks_each_sample_once_and_disjoint(self, data, tiny_tokenizer):
        opts = _opts(data / "cache")
        per_rank = [_samples(_stream([data / "data.jsonl"], tiny_tokenizer, opts, buffer_size=4, rank=r, world_size=2, seed=3)) for r in range(2)]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert Counter(per_rank[0] + per_rank[1]) == Counter(_kept(data))

    def test_deterministic_for_a_seed(self, data, tiny_tokenizer):
        opts = _opts(data / "cache")
        def run(seed):
            return list(_stream([data / "data.jsonl"], tiny_tokenizer, opts, buffer_size=4, rank=1, world_size=2, seed=seed))
        assert run(3) == run(3)
        assert _samples(run(3)) != _samples(run(4))

    def test_every_epoch_once_and_in_a_new_order(self, data, tiny_tokenizer):
        opts = _opts(data / "cache")
        rows = list(_stream([data / "data.jsonl"], tiny_tokenizer, opts, buffer_size=4, epochs=2, seed=3))
        epochs = [[s for r in rows if r[STREAM_KEY]["epoch"] == e for s in r[STREAM_KEY]["samples"]] for e in range(2)]
        assert Counter(epochs[0]) == Counter(epochs[1]) == Counter(_kept(data))
        assert epochs[0] != epochs[1]

    def test_dataloader_workers_split_a_rank_further(self, data, tiny_tokenizer):
        opts = _opts(data / "cache")
        seen = []
        for rank in range(2):
            ds = _stream([data / "data.jsonl"], tiny_tokenizer, opts, buffer_size=4, rank=rank, world_size=2)
            loader = DataLoader(ds, batch_size=None, num_workers=2)
            rows = list(loader)
            assert {r[STREAM_KEY]["reader"] for r in rows} == {2 * rank, 2 * rank + 1} and rows[0][STREAM_KEY]["stride"] == 4
            seen += _samples(rows)
        assert Counter(seen) == Counter(_kept(data))

    def test_parquet_start_positions_inside_row_groups(self, data):
        full = [o for _, o, _ in read_records([str(data / "data.parquet")], Position(), 3, 1, BadRecords(False))]
        positions = [p for _, _, p in read_records([str(data / "data.parquet")], Position(), 3, 1, BadRecords(False))]
        for k, pos in enumerate(positions):
            rest = [o for _, o, _ in read_records([str(data / "data.parquet")], pos, 3, 1, BadRecords(False))]
            assert rest == full[k + 1:]


class TestResumeFromState:
    @pytest.mark.parametrize("cut", [1, 3, 4, 9, 13, 19])  # rows of 2 epochs: 10 each
    def test_restarted_stream_continues_with_the_next_row(self, data, tiny_tokenizer, cut):
        opts = _opts(data / "cache")
        kw = dict(buffer_size=5, rank=0, world_size=2, seed=7, epochs=2)
        whole = list(_stream([data / "data.jsonl.zst"], tiny_tokenizer, opts, **kw))
        assert len(whole) == 20 and whole[cut][STREAM_KEY]["epoch"] == (cut >= 10)
        meta = whole[cut - 1][STREAM_KEY]
        again = _stream([data / "data.jsonl.zst"], tiny_tokenizer, opts, **kw)
        again.load_state_dict({"stride": meta["stride"], "readers": {str(meta["reader"]): meta["resume"]}})
        assert list(again) == whole[cut:]

    def test_bad_record_names_file_line_and_flag(self, tmp_path, tiny_tokenizer):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"text": render("x.py", "x\n", "m", "y")}) + "\n{not json\n")
        with pytest.raises(DiffModelError, match=r"bad.jsonl:2: not valid JSON.*--skip_bad_records"):
            list(_stream([tmp_path / "bad.jsonl"], tiny_tokenizer, _opts(tmp_path)))
        rows = list(_stream([tmp_path / "bad.jsonl"], tiny_tokenizer, _opts(tmp_path), skip_bad_records=True))
        assert rows[-1][STREAM_KEY]["counts"]["bad_records"] == 1

    def test_a_diff_that_does_not_apply_in_another_format_names_file_and_line(self, tmp_path, tiny_tokenizer):
        import dataclasses

        rows = [{"name": "a.py", "before": "x = 1\n", "message": "m", "diff": "@@ -1 +1 @@\n-x = 1\n+x = 2\n"},
                {"name": "b.py", "before": "y = 1\n", "message": "m", "diff": "@@ -1 +1 @@\n-other\n+y = 2\n"}]
        (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        opts = dataclasses.replace(_opts(tmp_path), edit_format="commit")
        with pytest.raises(DiffModelError) as err:
            list(_stream([tmp_path / "d.jsonl"], tiny_tokenizer, opts))
        assert str(err.value).startswith(f"{tmp_path / 'd.jsonl'}:2: row 'b.py': its diff does not apply to its before")
        assert "with --streaming, --skip_bad_records does not skip such a row" in str(err.value)

    def test_text_that_is_not_a_string_is_a_bad_record(self, tmp_path, tiny_tokenizer):
        (tmp_path / "bad.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["<MSG> x\n<DFF> y", None, 5, "<MSG> z\n<DFF> w"]))
        with pytest.raises(DiffModelError, match=r"bad.jsonl:2: 'text' is null, not text \(a JSON string\)\. .*--skip_bad_records"):
            list(_stream([tmp_path / "bad.jsonl"], tiny_tokenizer, _opts(tmp_path)))
        rows = list(_stream([tmp_path / "bad.jsonl"], tiny_tokenizer, _opts(tmp_path), skip_bad_records=True))
        counts = rows[-1][STREAM_KEY]["counts"]
        assert (counts["bad_records"], counts["samples_read"], counts["samples_kept"]) == (2, 2, 2)

    @pytest.mark.parametrize("skip", [False, True])
    def test_truncated_zst_is_an_error_not_a_bad_record(self, data, tmp_path, tiny_tokenizer, skip):
        whole = (data / "data.jsonl.zst").read_bytes()
        cut = tmp_path / "cut.jsonl.zst"
        cut.write_bytes(whole[: len(whole) * 9 // 10])
        with pytest.raises(DiffModelError, match=rf"{cut}: the file is truncated.*Download or create it again"):
            list(_stream([cut], tiny_tokenizer, _opts(tmp_path), skip_bad_records=skip))


# --------------------------------------------------------------------------- diffmodel train --streaming

BATCH = 2


def _args(model, data, out, steps, extra=()):
    return [
        "--model_name_or_path", str(model), "--train_file", str(data / "data.jsonl"), "--output_dir", str(out),
        "--streaming", "--stream_buffer", "8", "--packing", "--train_diff_model", "--block_size", str(BLOCK),
        "--per_device_train_batch_size", str(BATCH), "--learning_rate", "1e-3", "--report_to", "none",
        "--save_strategy", "steps", "--save_steps", "3", "--logging_steps", "1", "--seed", "5", "--do_train", "--use_cpu",
        "--max_steps", str(steps), *extra,
    ]


def _trained(log_dir: Path, rank=0):
    lines = [json.loads(x) for x in (log_dir / f"stream-rank{rank}.jsonl").read_text().splitlines()]
    return [(row["epoch"], s) for line in lines for row in line["rows"] for s in row["samples"]]


class TestTrainResume:
    def test_interrupted_and_resumed_run_sees_each_sample_once(self, data, tiny_gpt2_dir, tmp_path, monkeypatch, caplog):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tiny_gpt2_dir))
        rows = len(list(_stream([data / "data.jsonl"], tok, _opts(tmp_path), buffer_size=8, seed=5, with_positions=False)))
        steps = -(-rows // BATCH)  # one epoch's worth of steps (the last may reach into the next epoch)

        monkeypatch.setenv("DIFFMODEL_STREAM_LOG", str(tmp_path / "log_once"))
        assert train_main(_args(tiny_gpt2_dir, data, tmp_path / "once", steps)) == 0
        monkeypatch.setenv("DIFFMODEL_STREAM_LOG", str(tmp_path / "log_cut"))
        assert train_main(_args(tiny_gpt2_dir, data, tmp_path / "cut", 3)) == 0  # stopped at the checkpoint of step 3
        assert (tmp_path / "cut" / "checkpoint-3" / "stream_state.json").is_file()
        caplog.set_level("INFO", logger="diffmodel")
        assert train_main(_args(tiny_gpt2_dir, data, tmp_path / "cut", steps)) == 0
        assert any("resuming from the last checkpoint" in r.message and "checkpoint-3" in r.message for r in caplog.records)
        assert any("--ignore_data_skip set" in r.message for r in caplog.records)
        assert any("stream at the end of training" in r.message and "1 dropped without <DFF>" in r.message for r in caplog.records)

        trained = _trained(tmp_path / "log_cut")
        first_epoch = [s for e, s in trained if e == 0]
        assert Counter(first_epoch) == Counter(_kept(data))  # each sample exactly once over both runs
        assert len(set(trained)) == len(trained)
        assert trained == _trained(tmp_path / "log_once")  # and in the order of a run never interrupted
        state = json.loads((tmp_path / "cut" / "trainer_state.json").read_text())
        assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, steps + 1))
        # the token metrics: cumulative counts continue across the resume, equal to the uninterrupted run's
        once = json.loads((tmp_path / "once" / "trainer_state.json").read_text())
        counts = [[(h["num_tokens"], h["num_loss_tokens"]) for h in s["log_history"] if "loss" in h] for s in (state, once)]
        assert counts[0] == counts[1] and len(counts[0]) == steps
        assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(counts[0], counts[0][1:]))
        assert all(0 <= h["mean_token_accuracy"] <= 1 for h in state["log_history"] if "loss" in h)

    def test_a_bad_record_mid_run_keeps_the_steps_trained(self, data, tiny_gpt2_dir, tmp_path, monkeypatch):
        lines = (data / "data.jsonl").read_text().splitlines(keepends=True)
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "data.jsonl").write_text("".join(lines[:30]) + '{"text": 1}\n' + "".join(lines[30:]))
        steps = 12
        monkeypatch.setenv("DIFFMODEL_STREAM_LOG", str(tmp_path / "log_once"))
        skip = ("--skip_bad_records",)
        assert train_main(_args(tiny_gpt2_dir, bad, tmp_path / "once", steps, ("--save_steps", "100", *skip))) == 0

        monkeypatch.setenv("DIFFMODEL_STREAM_LOG", str(tmp_path / "log_cut"))
        with pytest.raises(DiffModelError) as err:
            train_main(_args(tiny_gpt2_dir, bad, tmp_path / "cut", steps, ("--save_steps", "100")))
        message = str(err.value)
        assert f"{bad / 'data.jsonl'}:31" in message and "--skip_bad_records" in message
        done = len((tmp_path / "log_cut" / "stream-rank0.jsonl").read_text().splitlines())
        assert 0 < done < steps  # the record is met mid-run, before the buffer reaches the last rows
        saved = tmp_path / "cut" / f"checkpoint-{done}"
        assert message.endswith(f"The steps trained up to step {done} are saved in {saved}; the same command (with the record "
                                "fixed, or --skip_bad_records) resumes from there.")
        assert sorted(p.name for p in (tmp_path / "cut").glob("checkpoint-*")) == [saved.name]
        assert (saved / "stream_state.json").is_file() and (saved / "trainer_state.json").is_file()

        assert train_main(_args(tiny_gpt2_dir, bad, tmp_path / "cut", steps, ("--save_steps", "100", *skip))) == 0
        assert _trained(tmp_path / "log_cut") == _trained(tmp_path / "log_once")  # as if it had never failed
        state = json.loads((tmp_path / "cut" / "trainer_state.json").read_text())
        assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, steps + 1))

    def test_checkpoint_without_stream_state_counts_as_cut_short(self, tmp_path):
        for step, files in ((2, ("trainer_state.json", "stream_state.json")), (4, ("trainer_state.json",))):
            (tmp_path / f"checkpoint-{step}").mkdir()
            for f in files:
                (tmp_path / f"checkpoint-{step}" / f).write_text("{}")
        assert last_complete_checkpoint(tmp_path, "stream_state.json").endswith("checkpoint-2")
        assert last_complete_checkpoint(tmp_path).endswith("checkpoint-4")

    def test_max_steps_is_required(self, data, tiny_gpt2_dir, tmp_path):
        args = _args(tiny_gpt2_dir, data, tmp_path / "x", 1)
        args = args[: args.index("--max_steps")]
        with pytest.raises(DiffModelError, match=r"--streaming needs --max_steps"):
            train_main(args)


def test_torchrun_two_ranks(data, tiny_gpt2_dir, tmp_path):
    """torchrun --nproc_per_node 2 on CPU (gloo): the ranks train on disjoint samples and save one state per rank.

    Run through ``tests/ddp_probe.py`` (``diffmodel train`` plus a record per rank), which lists the
    threads left once ``train`` has returned: the process group's gloo threads must have ended with it.
    """
    probe = tmp_path / "probe"
    probe.mkdir()
    env = dict(os.environ, DIFFMODEL_STREAM_LOG=str(tmp_path / "log"), DIFFMODEL_PROBE_DIR=str(probe), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(Path(__file__).parent / "ddp_probe.py"),
           *_args(tiny_gpt2_dir, data, tmp_path / "out", 3, ["--ddp_backend", "gloo"])]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    for r in range(2):
        threads = json.loads((probe / f"rank{r}-final.json").read_text())["threads_after_main"]
        assert threads and not [t for t in threads if "gloo" in t], f"rank {r}: {threads}"
    per_rank = [_trained(tmp_path / "log", r) for r in range(2)]
    assert all(len(p) >= 3 * BATCH for p in per_rank)  # at least one sample per row, BATCH rows per step, 3 steps
    assert not set(per_rank[0]) & set(per_rank[1])
    state = json.loads((tmp_path / "out" / "checkpoint-3" / "stream_state.json").read_text())
    assert [sorted(s["readers"]) for s in state["ranks"]] == [["0"], ["1"]]
    assert state["config"]["world_size"] == 2
