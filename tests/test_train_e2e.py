"""diffmodel train end to end on CPU with tiny real models (nothing downloaded)."""

import json
import math
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml

from diffmodel.errors import DiffModelError
from diffmodel.sample import render
from diffmodel.tiny import save_tiny_checkpoint
from diffmodel.commands.train import main as train_main
from sample_rows import edit_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    rows = edit_rows()
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [render(**r) for r in rows]
    save_tiny_checkpoint(d / "gpt2", "gpt2", texts, n_positions=256)
    save_tiny_checkpoint(d / "llama", "llama", texts, n_positions=256)
    return d


REFERENCE = (
    "--model_name_or_path=MODEL_DIR --per_device_train_batch_size=2 --ignore_long_samples --train_diff_model "
    "--save_final_dataset --concatenate_texts --num_train_epochs 1 --preprocessing_num_workers 2 --save_strategy=epoch "
    "--output_dir=OUT --dataset_name DATA_DIR --load_from_disk --tokenizer_name MODEL_DIR --block_size 2048 "
    "--gradient_accumulation_steps 2 --do_train --logging_strategy=epoch --overwrite_output_dir --adam_beta1=0.9 "
    "--adam_beta2=0.95 --weight_decay=2e-02 --learning_rate=1e-05 --warmup_steps=895 --per_device_eval_batch_size=1 "
    "--cache_dir=CACHE --gradient_checkpointing=True --force_label"
)


#: A tqdm bar as drawn on stderr: "40%|####  | 2/5 [...]", or "40 examples [00:00, 5039.41 examples/s]" without a total.
BAR = re.compile(r"%\||/s\]")


def _reference_args(model, out, data, extra=()):
    args = REFERENCE.replace("MODEL_DIR", str(model)).replace("OUT", str(out)).replace("DATA_DIR", str(data)).replace("CACHE", "cache")
    # the tiny model has 256 positions; everything else is the reference line unchanged
    return args.replace("--block_size 2048", "--block_size 256").split() + list(extra)


def _run_script(args, cwd):
    proc = subprocess.run([sys.executable, str(ROOT / "run_clm_diff.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


class TestReferenceCommandLine:
    def test_runs_unchanged_then_again_from_final_dataset(self, workdir):
        ds = datasets.load_dataset("json", data_files=str(workdir / "data.jsonl"), split="train")
        ds.save_to_disk(str(workdir / "saved"))
        log = _run_script(_reference_args(workdir / "gpt2", workdir / "out1", workdir / "saved"), workdir)
        assert "Data sanity report" in log
        assert (workdir / "final_dataset" / "dataset_dict.json").exists()
        results = json.loads((workdir / "out1" / "train_results.json").read_text())
        assert math.isfinite(results["train_loss"])
        assert list((workdir / "out1").glob("checkpoint-*")), "a checkpoint is written at the end of the epoch"
        assert (workdir / "out1" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        report = json.loads((workdir / "out1" / "data_report.json").read_text())
        assert report["train"]["layout"] == "concat" and 0 < report["train"]["loss_share"] < 1

        # the same command with --skip_concat on the folder the first run saved
        args = _reference_args(workdir / "gpt2", workdir / "out2", workdir / "final_dataset", ["--skip_concat", "--final_dataset_dir", "final2"])
        log = _run_script(args, workdir)
        assert "--force_label has no effect" in log
        results = json.loads((workdir / "out2" / "train_results.json").read_text())
        assert math.isfinite(results["train_loss"])
        first = datasets.load_from_disk(str(workdir / "final_dataset"))
        second = datasets.load_from_disk(str(workdir / "final2"))
        assert first["train"]["input_ids"] == second["train"]["input_ids"]
        assert first["train"]["labels"] == second["train"]["labels"]


def _common(workdir, out, model="gpt2"):
    return {
        "model_name_or_path": str(workdir / model),
        "train_file": [str(workdir / "data.jsonl")],
        "output_dir": str(out),
        "block_size": 128,
        "train_diff_model": True,
        "ignore_long_samples": True,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "report_to": "none",
        "cache_dir": str(workdir / "cache"),
        "save_strategy": "no",
        "logging_steps": 1,
        "seed": 1,
    }


class TestArgumentFiles:
    @pytest.mark.parametrize("suffix", [".yaml", ".json"])
    def test_single_file_of_arguments(self, workdir, suffix):
        args = dict(_common(workdir, workdir / f"out{suffix}", "llama"), do_train=True, do_eval=True, max_steps=3, validation_split_percentage=10)
        path = workdir / f"args{suffix}"
        path.write_text(yaml.safe_dump(args) if suffix == ".yaml" else json.dumps(args))
        assert train_main([str(path)]) == 0
        ev = json.loads((workdir / f"out{suffix}" / "eval_results.json").read_text())
        assert ev["perplexity"] == pytest.approx(math.exp(ev["eval_loss"]))
        state = json.loads((workdir / f"out{suffix}" / "trainer_state.json").read_text())
        assert state["global_step"] == 3

    def test_a_single_value_for_a_list_argument_is_a_one_element_list(self, workdir):
        from diffmodel.train.args import parse_args

        path = workdir / "scalars.yaml"
        path.write_text("train_file: data.jsonl\nvalidation_file: val.jsonl\nlabel_names: labels\noutput_dir: o\n")
        _, data_args, training_args = parse_args([str(path)])
        assert data_args.train_file == ["data.jsonl"] and data_args.validation_file == ["val.jsonl"]
        assert training_args.label_names == ["labels"]

    def test_yaml_scalar_train_file_trains_through_the_cli(self, workdir):
        out = workdir / "scalar_out"
        args = dict(_common(workdir, out), do_train=True, do_eval=True, max_steps=1, train_file="data.jsonl", validation_file="data.jsonl")
        (workdir / "scalar.yaml").write_text(yaml.safe_dump(args))
        proc = subprocess.run([sys.executable, "-m", "diffmodel.cli", "train", "scalar.yaml"], cwd=workdir, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((out / "eval_results.json").read_text())["eval_samples"] == 40

    def test_arguments_file_that_is_not_yaml_names_the_file(self, workdir):
        path = workdir / "broken.yaml"
        path.write_text("train_file: [data.jsonl\n")
        with pytest.raises(DiffModelError, match=rf"{path}: not valid YAML"):
            train_main([str(path)])


def _flags(d):
    out = []
    for k, v in d.items():
        if isinstance(v, list):
            out += [f"--{k}", *map(str, v)]
        elif v is True:
            out.append(f"--{k}")
        else:
            out += [f"--{k}", str(v)]
    return out


class TestResume:
    def test_second_run_continues_from_last_checkpoint(self, workdir, caplog):
        out = workdir / "resume"
        base = dict(_common(workdir, out), do_train=True, save_strategy="steps", save_steps=2)
        assert train_main(_flags(dict(base, max_steps=2))) == 0
        assert (out / "checkpoint-2").is_dir()
        caplog.set_level("INFO", logger="diffmodel")
        assert train_main(_flags(dict(base, max_steps=4))) == 0
        assert any("resuming from the last checkpoint" in r.message and "checkpoint-2" in r.message for r in caplog.records)
        state = json.loads((out / "trainer_state.json").read_text())
        assert state["global_step"] == 4
        steps = [h["step"] for h in state["log_history"] if "loss" in h]
        assert steps == [1, 2, 3, 4]


class TestClearErrors:
    def test_block_size_beyond_model_positions(self, workdir):
        args = _flags(dict(_common(workdir, workdir / "bad"), do_train=True, block_size=4096))
        with pytest.raises(DiffModelError, match=r"--block_size 4096 is larger than the model's 256 positions"):
            train_main(args)

    def test_every_problem_reported_at_once(self, workdir):
        with pytest.raises(DiffModelError) as err:
            train_main(["--output_dir", str(workdir / "x")])
        msg = str(err.value)
        assert "no data" in msg and "no model" in msg and "nothing to do" in msg

    def test_empty_after_filtering_names_the_counts_and_fix(self, workdir):
        args = _flags(dict(_common(workdir, workdir / "empty"), do_train=True, block_size=8))
        with pytest.raises(DiffModelError, match=r"empty after preprocessing.*dropped as >= --block_size 8"):
            train_main(args)

    def test_cli_prints_error_without_traceback(self, workdir):
        proc = subprocess.run([sys.executable, "-m", "diffmodel.cli", "train", "--output_dir", str(workdir / "y")], capture_output=True, text=True)
        assert proc.returncode == 2
        assert "diffmodel train: error:" in proc.stderr and "Traceback" not in proc.stderr

    def test_bf16_without_bf16_hardware_is_a_clear_error_before_data_loads(self, workdir):
        args = _flags(dict(_common(workdir, workdir / "bf16"), do_train=True, bf16=True, max_steps=1))
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU, whatever this machine has
        proc = subprocess.run([sys.executable, "-m", "diffmodel.cli", "train", *args, "--output_dir", str(workdir / "bf16"), "--max_train_samples", "0"],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "diffmodel train cannot start:\n" in proc.stderr
        assert "  - --max_train_samples 0 must be at least 1\n" in proc.stderr  # reported with the other problems
        assert ("  - --bf16: this machine has no GPU, so it cannot train in bf16 here; drop --bf16 to train in float32, "
                "or add --use_cpu to run bf16 on the CPU (usually slower than float32)") in proc.stderr
        assert "Generating train split" not in proc.stdout + proc.stderr and not (workdir / "bf16").exists()

    def test_bf16_with_use_cpu_passes_validation(self, workdir, monkeypatch):
        from diffmodel.train.args import parse_args, validate

        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        parsed = parse_args(_flags(dict(_common(workdir, workdir / "bf16cpu"), do_train=True, bf16=True, use_cpu=True)))
        validate(*parsed)
        assert parsed[2].bf16 and parsed[2].use_cpu


class TestNoProgress:
    def test_no_progress_draws_no_bar_and_the_next_run_draws_every_kind_again(self, workdir, capfd):
        """Fresh caches, so that the preprocessing stages run (and draw) in both runs."""
        for name, flags in (("quiet", ["--no_progress"]), ("bars", [])):
            args = dict(_common(workdir, workdir / name), do_train=True, do_eval=True, max_steps=1, validation_split_percentage=10,
                        cache_dir=str(workdir / f"cache_{name}"))
            assert train_main(_flags(args) + flags) == 0
            captured = capfd.readouterr()
            if flags:
                assert not BAR.search(captured.out + captured.err), captured.err[-3000:]
                card = (workdir / name / "README.md").read_text()
                assert "no_progress" not in card and "disable_tqdm" not in card  # how a run looked is not what it learnt
            else:  # datasets' bars, transformers' (loading the weights) and the Trainer's
                assert "tokenize + label:" in captured.err and "Loading weights" in captured.err
                assert re.search(r"100%\|\S+\| 1/1 \[", captured.err)

    def test_no_progress_sets_disable_tqdm_and_refuses_disable_tqdm_false(self, workdir):
        from diffmodel.train.args import parse_args

        args = _flags(dict(_common(workdir, workdir / "tqdm"), do_train=True))
        assert parse_args([*args, "--no_progress"])[2].disable_tqdm is True
        with pytest.raises(DiffModelError, match=r"--no_progress turns the Trainer's progress bars off, and --disable_tqdm False "
                                                 r"asks for them; drop one of them"):
            train_main([*args, "--no_progress", "--disable_tqdm", "False"])


class TestBadRecordsAndDrops:
    """Null / number texts through the CLI, and a run that drops most of its samples."""

    def data(self, workdir) -> Path:
        texts = [render(**r) for r in edit_rows()]
        lines = [{"text": t} for t in texts]
        lines.insert(3, {"text": None})
        lines.insert(9, {"text": 5})
        path = workdir / "with_bad.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        return path

    def run_cli(self, workdir, out, data, block_size, *extra):
        args = dict(_common(workdir, out), do_train=True, max_steps=1, train_file=[str(data)], block_size=block_size, validation_split_percentage=0)
        return subprocess.run([sys.executable, "-m", "diffmodel.cli", "train", *_flags(args), *extra], capture_output=True, text=True, timeout=600)

    def test_null_text_names_file_and_line_without_traceback(self, workdir):
        data = self.data(workdir)
        proc = self.run_cli(workdir, workdir / "nulltext", data, 128)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"{data}:4: 'text' is null, not text (a JSON string). Fix the record, or pass --skip_bad_records" in proc.stderr

    def test_skipped_records_and_long_samples_are_counted_and_warned(self, workdir):
        from transformers import AutoTokenizer

        data = self.data(workdir)
        tok = AutoTokenizer.from_pretrained(workdir / "gpt2")
        lengths = [len(tok(render(**r))["input_ids"]) for r in edit_rows()]
        block = min(lengths) + 1  # only the shortest samples fit
        too_long = sum(n >= block for n in lengths)
        total = len(lengths) + 2
        assert 2 * (too_long + 2) > total and too_long < len(lengths)
        out = workdir / "mostly_dropped"
        proc = self.run_cli(workdir, out, data, block, "--skip_bad_records")
        assert proc.returncode == 0, proc.stderr[-3000:]
        warning = (
            f"the train split drops {too_long + 2} of {total} samples ({(too_long + 2) / total:.0%}): {too_long} too long "
            f"(>= --block_size tokens), 2 bad records skipped. To keep more: raise --block_size (up to the model's positions) "
            "or mine shorter samples (diffmodel mine --tokenizer_name TOKENIZER --max_tokens BLOCK_SIZE-1); fix the records the log names"
        )
        log = proc.stdout + proc.stderr
        assert f"WARNING diffmodel.train: {warning}" in log  # the log
        assert f"WARNING: {warning}" in log  # the report table
        report = json.loads((out / "data_report.json").read_text())["train"]
        assert (report["bad_records"], report["dropped_too_long"], report["samples_loaded"]) == (2, too_long, len(lengths))
        assert report["warning"] == warning


def _snapshot(folder: Path) -> dict:
    return {str(f.relative_to(folder)): (f.stat().st_mtime_ns, f.read_bytes()) for f in sorted(folder.rglob("*")) if f.is_file()}


class TestFinalDatasetIsNeverRewritten:
    def test_reference_multinode_line_leaves_its_input_untouched(self, workdir):
        d = workdir / "multinode"
        d.mkdir()
        final = d / "final_dataset"
        first = dict(_common(workdir, d / "prep"), save_final_dataset=True, final_dataset_dir=str(final))
        old = os.umask(0o022)
        try:
            assert train_main(_flags(first)) == 0
        finally:
            os.umask(old)
        assert stat.S_IMODE(final.stat().st_mode) == 0o755  # not mkdtemp's 0700
        before = _snapshot(final)

        # the reference's multinode line: read final_dataset, and --save_final_dataset to the same (default) folder
        again = dict(_common(workdir, d / "out"), do_train=True, max_steps=1, dataset_name="final_dataset", load_from_disk=True, skip_concat=True, save_final_dataset=True)
        del again["train_file"]
        proc = subprocess.run([sys.executable, "-m", "diffmodel.cli", "train", *_flags(again)], cwd=d, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "final_dataset exists, not rewritten; delete it to rebuild" in proc.stdout + proc.stderr
        assert _snapshot(final) == before
        assert sorted(p.name for p in d.iterdir()) == ["final_dataset", "out", "prep"]


class TestPackingRun:
    def test_packed_run_saves_and_reloads_its_final_dataset(self, workdir):
        out = workdir / "packed"
        final = workdir / "packed_final"
        args = dict(_common(workdir, out, "llama"), do_train=True, packing=True, max_steps=2, save_final_dataset=True, final_dataset_dir=str(final), preprocessing_num_workers=2)
        assert train_main(_flags(args)) == 0
        report = json.loads((out / "data_report.json").read_text())
        assert report["train"]["layout"] == "pack" and report["train"]["rows"] < report["train"]["samples_kept"]
        saved = datasets.load_from_disk(str(final))
        assert "attention_mask" not in saved["train"].column_names
        # packing turns the KV cache off for training only: the saved model generates with it
        assert json.loads((out / "config.json").read_text())["use_cache"] is True
        again = dict(_common(workdir, workdir / "packed2", "llama"), do_train=True, packing=True, max_steps=2, dataset_name=str(final), load_from_disk=True, skip_concat=True)
        del again["train_file"]
        assert train_main(_flags(again)) == 0

    def test_the_final_evaluation_is_the_last_one_during_training(self, workdir):
        """The saved config gets the KV cache back; the model evaluated after training keeps it off, as packing needs."""
        out = workdir / "packed_eval"
        args = dict(_common(workdir, out, "llama"), do_train=True, do_eval=True, packing=True, max_steps=2,
                    validation_split_percentage=20, eval_strategy="steps", eval_steps=2)
        assert train_main(_flags(args)) == 0
        [during] = [h["eval_loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "eval_loss" in h]
        assert json.loads((out / "eval_results.json").read_text())["eval_loss"] == pytest.approx(during, rel=1e-6)
        assert json.loads((out / "config.json").read_text())["use_cache"] is True


class TestInspect:
    def test_shows_report_and_marked_rows(self, workdir, capsys):
        from diffmodel.commands.inspect import main as inspect_main

        rc = inspect_main(["--tokenizer_name", str(workdir / "gpt2"), "--train_file", str(workdir / "data.jsonl"), "--train_diff_model",
                           "--ignore_long_samples", "--block_size", "128", "--rows", "1", "--cache_dir", str(workdir / "cache")])
        assert rc == 0
        out = capsys.readouterr().out
        assert "Data sanity report" in out and ["layout", "pad"] in [line.split() for line in out.splitlines()]
        assert "[PAD x" in out and "\u27e6<DFF> @@ -1 +1 @@\n-x0 = 0\n+x0 = 0\n<|endoftext|>\u27e7" in out

    def test_no_progress_draws_no_bar(self, workdir, capfd):
        from diffmodel.commands.inspect import main as inspect_main

        for name, flags in (("quiet", ["--no_progress"]), ("bars", [])):
            assert inspect_main(["--tokenizer_name", str(workdir / "gpt2"), "--train_file", str(workdir / "data.jsonl"), "--packing",
                                 "--block_size", "128", "--rows", "0", "--cache_dir", str(workdir / f"inspect_{name}"), *flags]) == 0
            err = capfd.readouterr().err
            assert bool(BAR.search(err)) is not bool(flags), err[-3000:]

    def test_a_block_size_above_the_models_positions_is_shown_with_a_warning(self, workdir, capsys):
        from diffmodel.commands.inspect import main as inspect_main

        capsys.readouterr()
        assert inspect_main(["--tokenizer_name", str(workdir / "gpt2"), "--train_file", str(workdir / "data.jsonl"), "--packing",
                             "--block_size", "4096", "--cache_dir", str(workdir / "cache"), "--no_progress"]) == 0
        out, err = capsys.readouterr()
        assert re.search(r"warning: --block_size 4096 is larger than the \d+ positions of the model in .*: diffmodel train "
                         r"refuses it with --model_name_or_path", err)
        assert "--- train row 0 ---" in out


class TestLoraRun:
    def test_adapters_and_merged_model_are_saved(self, workdir):
        from transformers import AutoModelForCausalLM

        out = workdir / "lora"
        args = dict(_common(workdir, out, "llama"), do_train=True, packing=True, max_steps=2, lora_r=4, lora_alpha=8, lora_merge=True)
        assert train_main(_flags(args)) == 0
        assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
        merged = AutoModelForCausalLM.from_pretrained(out / "merged")
        base = AutoModelForCausalLM.from_pretrained(workdir / "llama")
        changed = [n for n, p in merged.named_parameters() if not (p == dict(base.named_parameters())[n]).all()]
        assert changed and all("proj" in n for n in changed)  # only adapted linear layers moved


class TestMetricsAndModelCard:
    def test_log_eval_results_and_card_of_a_tiny_run(self, workdir):
        out = workdir / "metrics"
        args = dict(_common(workdir, out), do_train=True, do_eval=True, max_steps=3, packing=True, validation_split_percentage=10)
        assert train_main(_flags(args)) == 0
        state = json.loads((out / "trainer_state.json").read_text())
        logs = [h for h in state["log_history"] if "loss" in h]
        assert [h["step"] for h in logs] == [1, 2, 3]
        assert all(0 <= h["mean_token_accuracy"] <= 1 for h in logs)
        tokens = [h["num_tokens"] for h in logs]
        loss_tokens = [h["num_loss_tokens"] for h in logs]
        assert tokens[0] > 0 and tokens == sorted(tokens) and len(set(tokens)) == 3  # cumulative
        assert all(0 < lt < t for lt, t in zip(loss_tokens, tokens))
        ev = json.loads((out / "eval_results.json").read_text())
        assert 0 <= ev["eval_mean_token_accuracy"] <= 1 and 0 < ev["eval_num_loss_tokens"] < ev["eval_num_tokens"]
        report = json.loads((out / "data_report.json").read_text())
        assert ev["eval_num_loss_tokens"] == report["validation"]["loss_tokens"]

        card = (out / "README.md").read_text()
        assert f"# Diff model: {out}" in card
        assert "| layout | pack |" in card
        assert f"| final train loss (last logged step) | {logs[-1]['loss']:.4f} |" in card
        assert f"| eval mean token accuracy | {ev['eval_mean_token_accuracy']:.4f} |" in card
        assert "| `--packing` | True |" in card and "| `--max_steps` | 3 |" in card  # the Trainer's flags that decide what is learnt too
        assert "| `--output_dir`" not in card and "| `--report_to`" not in card
        assert f"diffmodel edit --model {out} " in card


class TestGenerationEval:
    """--generation_eval_samples: edit quality logged at each evaluation, plotted beside loss.png."""

    def test_scores_logged_at_each_evaluation_equal_eval_edits_on_the_saved_model(self, workdir, caplog):
        from diffmodel.evaluate.edits import evaluate_edits
        from diffmodel.infer import DiffModel
        from diffmodel.preprocess.options import options_from
        from diffmodel.train.args import DataArguments
        from diffmodel.train.generation_eval import LOGGED, held_out_cases

        out = workdir / "gen_eval"
        args = dict(_common(workdir, out), do_train=True, do_eval=True, max_steps=2, eval_strategy="steps", eval_steps=1,
                    validation_split_percentage=10, per_device_eval_batch_size=2,
                    generation_eval_samples=3, generation_eval_max_new_tokens=24)
        caplog.set_level("INFO", logger="diffmodel")
        assert train_main(_flags(args)) == 0
        state = json.loads((out / "trainer_state.json").read_text())
        logged = [e for e in state["log_history"] if "eval_gen_exact" in e]
        assert [e["step"] for e in logged] == [1, 2]
        # the final evaluation comes right after step 2's, on the same weights: the diffs are not written again
        assert sum(r.getMessage().startswith("generation eval on 3 held-out samples") for r in caplog.records) == 2
        for entry in logged:
            assert all(0.0 <= entry[f"eval_gen_{m}"] <= 1.0 for m in LOGGED)
            assert entry["eval_gen_forced_share"] > 0.0  # diff-aware decoding
        assert (out / "generation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        data = DataArguments(train_file=args["train_file"], validation_split_percentage=10, train_diff_model=True,
                             ignore_long_samples=True, block_size=128)
        load_opts, _ = options_from(data, 128, args["cache_dir"], args["seed"])
        cases, _ = held_out_cases(load_opts, 3)
        assert len(cases) == 3
        summary, _ = evaluate_edits(DiffModel.from_pretrained(out), cases, max_new_tokens=24, batch_size=2)
        assert {m: logged[-1][f"eval_gen_{m}"] for m in LOGGED} == {m: round(summary["metrics"][m], 4) for m in LOGGED}

    def test_needs_do_eval(self, workdir):
        args = dict(_common(workdir, workdir / "gen_x"), do_train=True, max_steps=1, generation_eval_samples=2,
                    generation_eval_max_new_tokens=0)
        with pytest.raises(DiffModelError) as err:
            train_main(_flags(args))
        assert "--generation_eval_samples runs at each evaluation: add --do_eval" in str(err.value)
        assert "--generation_eval_max_new_tokens 0 must be at least 1" in str(err.value)

    def test_refused_where_the_weights_are_sharded(self):
        from types import SimpleNamespace

        from diffmodel.train.args import DataArguments, generation_eval_problems

        zero3 = Path(__file__).resolve().parents[1] / "src/diffmodel/launch/configs/ds_zero3.json"
        data = DataArguments(train_file=["x.jsonl"], generation_eval_samples=2)
        for sharded in (SimpleNamespace(do_eval=True, fsdp="full_shard", deepspeed=None),
                        SimpleNamespace(do_eval=True, fsdp="", deepspeed=str(zero3))):
            assert ["FSDP or DeepSpeed ZeRO-3" in p for p in generation_eval_problems(data, sharded)] == [True]
        assert generation_eval_problems(data, SimpleNamespace(do_eval=True, fsdp="", deepspeed={"zero_optimization": {"stage": 2}})) == []
