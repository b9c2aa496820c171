"""The model card: exact Markdown for a hand-made run, and the flags that differ from their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from diffmodel.train.card import changed_flags, render_card

INFO = {
    "output_dir": "runs/diff", "date": "2025-03-04", "version": "0.1.0",
    "training": {
        "base model": "models/base", "layout": "pack", "block size": 2048, "learning rate": 0.0003,
        "batch": "8 per device x 2 accumulation x 4 process(es) = 64 rows per step", "steps": "1000 (--max_steps)",
        "precision": "bf16", "seed": 42,
    },
    "flags": {"--train_diff_model": True, "--packing": True, "--train_file": ["a.jsonl", "b.jsonl"], "--dropout": 0.0},
    "results": {"final_train_loss": 0.8125, "train_loss": 1.25, "eval_loss": 0.75, "perplexity": 2.117, "eval_mean_token_accuracy": 0.8},
    "data": {
        "train": {"samples_loaded": 1200, "bad_records": 0, "dropped_too_long": 3, "dropped_no_diff": 1, "dropped_empty_diff": 0,
                  "samples_kept": 1196, "rows": 90, "tokens": 170000, "loss_share": 0.25, "fill_ratio": 0.921875, "warning": None},
        "validation": {"samples_loaded": 10, "bad_records": 0, "dropped_too_long": 6, "dropped_no_diff": 0, "dropped_empty_diff": 0,
                       "samples_kept": 4, "rows": 1, "tokens": 1500, "loss_share": 0.5, "fill_ratio": 0.732421875,
                       "warning": "validation: 6 of 10 samples dropped"},
    },
}

EXPECTED = """\
# Diff model: runs/diff

Trained with diffmodel 0.1.0 on 2025-03-04. It reads a file, its name and a commit message and writes the unified diff that makes the change; only the tokens it writes (from `<DFF>` on) carried loss.

## Use

```bash
diffmodel edit --model runs/diff path/to/file.py -m "Describe the change"            # print the diff
diffmodel edit --model runs/diff path/to/file.py -m "Describe the change" --apply    # and write the file
```

```python
from diffmodel.infer import DiffModel
edit = DiffModel.from_pretrained("runs/diff").edit(code, "Describe the change", "path/to/file.py")
```

## Results

| metric | value |
|---|---|
| final train loss (last logged step) | 0.8125 |
| mean train loss (the steps the last command trained) | 1.2500 |
| eval loss (diff tokens) | 0.7500 |
| eval perplexity | 2.1170 |
| eval mean token accuracy | 0.8000 |

## Training

| setting | value |
|---|---|
| base model | models/base |
| layout | pack |
| block size | 2048 |
| learning rate | 0.0003 |
| batch | 8 per device x 2 accumulation x 4 process(es) = 64 rows per step |
| steps | 1000 (--max_steps) |
| precision | bf16 |
| seed | 42 |

## Flags that differ from the defaults

| flag | value |
|---|---|
| `--train_diff_model` | True |
| `--packing` | True |
| `--train_file` | a.jsonl b.jsonl |
| `--dropout` | 0.0 |

## Data

| split | samples | bad records | too long | no `<DFF>` | empty diff | kept | rows | tokens | loss share | fill |
|---|---|---|---|---|---|---|---|---|---|---|
| train | 1,200 | 0 | 3 | 1 | 0 | 1,196 | 90 | 170,000 | 0.2500 | 0.9219 |
| validation | 10 | 0 | 6 | 0 | 0 | 4 | 1 | 1,500 | 0.5000 | 0.7324 |

Warning: validation: 6 of 10 samples dropped
"""


def test_a_hand_made_run_renders_exactly():
    assert render_card(INFO) == EXPECTED


def test_values_the_run_did_not_produce_are_left_out():
    info = dict(INFO, results={"final_train_loss": 0.5}, flags={}, data={})
    text = render_card(info)
    assert "| final train loss (last logged step) | 0.5000 |" in text
    assert "eval" not in text.split("## Results")[1].split("## Training")[0]
    assert "## Flags" not in text and "## Data" not in text


@dataclass
class Args:
    a: int = 1
    b: list[str] | None = None
    c: list[int] = field(default_factory=lambda: [1, 2])
    d: bool = False


def test_changed_flags_are_the_fields_off_their_default_in_order():
    assert changed_flags(Args()) == {}
    assert changed_flags(Args(a=2, c=[1, 2], d=True), Args(b=["x"])) == {"--a": 2, "--d": True, "--b": ["x"]}
    assert changed_flags(Args(a=2, d=True), only=("d",)) == {"--d": True}


def test_the_trainer_flags_that_decide_what_is_learnt_are_listed():
    from diffmodel.train.args import parse_args
    from diffmodel.train.card import TRAINER_FLAGS

    _, _, training = parse_args(["--model_name_or_path", "m", "--train_file", "a.jsonl", "--do_train", "--output_dir", "o",
                                 "--learning_rate", "1e-3", "--lr_scheduler_type", "cosine", "--warmup_steps", "20",
                                 "--weight_decay", "0.01", "--num_train_epochs", "5", "--report_to", "none", "--logging_steps", "7"])
    assert changed_flags(training, only=TRAINER_FLAGS) == {"--num_train_epochs": 5.0, "--learning_rate": 0.001,
                                                          "--lr_scheduler_type": "cosine", "--warmup_steps": 20,
                                                          "--weight_decay": 0.01}


def test_speed_medians_leave_out_the_first_log():
    from diffmodel.train.card import speed_results

    history = [{"loss": 3.0, "tokens_per_second": 10.0, "loss_tokens_per_second": 2.0, "mfu": 0.01},  # compiling
               {"loss": 2.0, "tokens_per_second": 300.4, "loss_tokens_per_second": 60.0, "mfu": 0.30},
               {"eval_loss": 2.5},
               {"loss": 1.5, "tokens_per_second": 320.0, "loss_tokens_per_second": 70.0, "mfu": 0.32},
               {"loss": 1.2, "tokens_per_second": 500.0, "loss_tokens_per_second": 90.0, "mfu": 0.36}]
    assert speed_results(history) == {"median_tokens_per_second": 320, "median_loss_tokens_per_second": 70, "median_mfu": 0.32}
    assert speed_results(history[:1]) == {}
    no_peak = [{k: v for k, v in h.items() if k != "mfu"} for h in history]
    assert "median_mfu" not in speed_results(no_peak)
    text = render_card(dict(INFO, results=speed_results(history)))
    assert "| tokens/s (median of the logs after the first) | 320 |" in text
    assert "| MFU (median of the logs after the first) | 0.3200 |" in text


def _lora_card(*flags: str) -> str:
    from diffmodel.train.args import lora_args_from, parse_args
    from diffmodel.train.card import card_info

    model, data, training = parse_args(["--model_name_or_path", "models/base", "--train_file", "a.jsonl", "--do_train",
                                        "--output_dir", "runs/lora", "--report_to", "none", *flags])
    info = card_info(model, data, lora_args_from(training), training, {}, 512, None, None, [], "2025-03-04", "0.1.0")
    text = render_card(info)
    return text.split("## Use\n\n")[1].split("## Training")[0]


def test_a_lora_run_with_lora_merge_points_edit_at_the_merged_model():
    # the adapter folder has no config.json: `diffmodel edit --model runs/lora` cannot load it
    assert _lora_card("--lora_r", "4", "--lora_merge") == """\
The merged model (the LoRA adapters folded into the weights) is in `runs/lora/merged`; `runs/lora` holds the adapter alone (`PeftModel.from_pretrained(base_model, "runs/lora")`).

```bash
diffmodel edit --model runs/lora/merged path/to/file.py -m "Describe the change"            # print the diff
diffmodel edit --model runs/lora/merged path/to/file.py -m "Describe the change" --apply    # and write the file
```

```python
from diffmodel.infer import DiffModel
edit = DiffModel.from_pretrained("runs/lora/merged").edit(code, "Describe the change", "path/to/file.py")
```

"""


def test_a_lora_run_without_merge_says_how_to_merge_instead_of_a_command_that_fails():
    assert _lora_card("--lora_r", "4") == """\
`runs/lora` holds a LoRA adapter, not a whole model: `diffmodel edit --model` and `diffmodel eval --model` load whole models, so fold the adapter into the base model first (or train with `--lora_merge`, which writes the merged model to `runs/lora/merged`):

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
from diffmodel.infer import DiffModel
model = AutoPeftModelForCausalLM.from_pretrained("runs/lora").merge_and_unload()
model.save_pretrained("runs/lora/merged"); AutoTokenizer.from_pretrained("runs/lora").save_pretrained("runs/lora/merged")
edit = DiffModel.from_pretrained("runs/lora/merged").edit(code, "Describe the change", "path/to/file.py")
```

"""
    assert "diffmodel edit --model runs/lora " not in _lora_card("--lora_r", "4")


def test_a_full_run_keeps_edit_on_the_output_dir():
    assert 'diffmodel edit --model runs/lora path/to/file.py -m "Describe the change"' in _lora_card()


def test_the_last_generation_eval_is_in_the_results():
    from diffmodel.train.args import lora_args_from, parse_args
    from diffmodel.train.card import card_info

    model, data, training = parse_args(["--model_name_or_path", "models/base", "--train_file", "a.jsonl", "--do_train",
                                        "--output_dir", "runs/gen", "--report_to", "none"])
    history = [{"loss": 2.0, "step": 1},
               {"eval_gen_applies": 0.25, "eval_gen_exact": 0.0, "eval_gen_line_similarity": 0.5, "step": 1},
               {"eval_gen_applies": 0.75, "eval_gen_exact": 0.5, "eval_gen_line_similarity": 0.875, "step": 2}]
    info = card_info(model, data, lora_args_from(training), training, {}, 512, None, None, history, "2025-03-04", "0.1.0")
    text = render_card(info)
    assert ("| held-out diffs that apply (last generation eval) | 0.7500 |\n"
            "| held-out diffs exactly right (last generation eval) | 0.5000 |\n"
            "| line similarity to the true file (last generation eval, mean) | 0.8750 |") in text
    assert "generation eval" not in render_card(card_info(model, data, lora_args_from(training), training, {}, 512, None, None,
                                                          history[:1], "2025-03-04", "0.1.0"))


def _data_table_head(text: str) -> str:
    return text.split("## Data\n\n")[1].splitlines()[0]


def test_the_card_names_the_commit_formats_target_marker():
    text = render_card(dict(INFO, edit_format="commit", loss_on="diff"))
    assert text.splitlines()[2] == (
        "Trained with diffmodel 0.1.0 on 2025-03-04. It reads a file, its name and a commit message and writes the whole file "
        "after the change; only the tokens it writes (from `<commit_after>` on) carried loss.")
    assert _data_table_head(text) == (
        "| split | samples | bad records | too long | no `<commit_after>` | empty diff | kept | rows | tokens | loss share "
        "| fill |")


def test_the_card_of_message_plus_diff_names_the_message_marker_and_the_drops_target_marker():
    text = render_card(dict(INFO, edit_format="search_replace", loss_on="message+diff"))
    assert text.splitlines()[2] == (
        "Trained with diffmodel 0.1.0 on 2025-03-04. It reads a file, its name and a commit message and writes the "
        "SEARCH/REPLACE blocks that make the change; only the commit message and the tokens it writes (from `<MSG>` on) carried loss.")
    assert _data_table_head(text) == (
        "| split | samples | bad records | too long | no `<DFF>` | empty diff | kept | rows | tokens | loss share | fill |")
    linediff = render_card(dict(INFO, edit_format="linediff", loss_on="message+diff"))
    assert "writes the numbered lines that the change removes and adds; " in linediff and "(from `<commit_msg>` on)" in linediff


def test_card_info_takes_the_format_and_choice_from_the_run():
    from diffmodel.preprocess.sanity import SplitReport
    from diffmodel.train.args import lora_args_from, parse_args
    from diffmodel.train.card import card_info

    model, data, training = parse_args(["--model_name_or_path", "models/base", "--train_file", "a.jsonl", "--do_train",
                                        "--output_dir", "runs/commit", "--report_to", "none", "--train_diff_model",
                                        "--edit_format", "commit", "--loss_on", "message+diff"])
    reports = {"train": SplitReport(samples_loaded=4, dropped_no_diff=3, samples_kept=1, edit_format="commit")}
    info = card_info(model, data, lora_args_from(training), training, reports, 512, None, None, [], "2025-03-04", "0.1.0")
    assert (info["edit_format"], info["loss_on"]) == ("commit", "message+diff")
    text = render_card(info)
    assert "only the commit message and the tokens it writes (from `<commit_msg>` on) carried loss." in text
    assert "| no `<commit_after>` |" in _data_table_head(text)
    assert ("Warning: the train split drops 3 of 4 samples (75%): 3 without <commit_after>. To keep more: "
            "give every text a <commit_after> line after its <commit_msg> line (or name the text with --text_column)") in text
