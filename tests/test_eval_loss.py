"""eval loss equals the loss computed by hand, token by token, with the tiny model on the same tokens."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from edit_model import trained_edit_model, training_text

from diffmodel.cli import main as diffmodel
from diffmodel.errors import DiffModelError
from diffmodel.evaluate.loss import encode_rows, evaluate_loss
from diffmodel.mine.languages import language_of
from diffmodel.sample import render, split


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_gpt2_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval(), AutoTokenizer.from_pretrained(tiny_gpt2_dir)


def by_hand(model, tokenizer, texts: list[str]) -> tuple[float, int, list[tuple[float, int]]]:
    """Sum of -log p over every token from the one holding <DFF>'s '<' to EOS, one sample at a time."""
    total, count, per_sample = 0.0, 0, []
    for text in texts:
        enc = tokenizer(text, return_offsets_mapping=True)
        ids = enc["input_ids"] + [tokenizer.eos_token_id]
        at = text.find("<DFF>")
        first = next(i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > at and e > s)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        positions = list(range(max(first, 1), len(ids)))  # token at pos is predicted from position pos - 1
        s = -logp[[p - 1 for p in positions], [ids[p] for p in positions]].sum().item()
        n = len(positions)
        per_sample.append((s, n))
        total += s
        count += n
    return total, count, per_sample


@pytest.fixture(scope="module")
def hand(model_and_tokenizer, tiny_texts):
    return by_hand(*model_and_tokenizer, tiny_texts)


def test_equals_the_token_weighted_loss_by_hand(model_and_tokenizer, tiny_texts, hand):
    model, tok = model_and_tokenizer
    samples, skipped = encode_rows(({"text": t} for t in tiny_texts), tok)
    assert skipped == {} and len(samples) == len(tiny_texts)
    report = evaluate_loss(model, samples, batch_size=4)
    total, count, _ = hand
    m = report["metrics"]
    assert m["loss_tokens"] == count
    assert m["loss"] == pytest.approx(total / count, rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_per_language_sums_that_languages_tokens_only(model_and_tokenizer, tiny_texts, hand):
    model, tok = model_and_tokenizer
    samples, _ = encode_rows(({"text": t} for t in tiny_texts), tok)
    report = evaluate_loss(model, samples, batch_size=3)
    _, _, per_sample = hand
    langs = [language_of(split(t).name) or "other" for t in tiny_texts]
    for lang in set(langs):
        s = sum(x for (x, _), l in zip(per_sample, langs) if l == lang)
        n = sum(y for (_, y), l in zip(per_sample, langs) if l == lang)
        got = report["by_language"][lang]
        assert got["loss_tokens"] == n
        assert got["samples"] == langs.count(lang)
        assert got["loss"] == pytest.approx(s / n, rel=1e-5)
    assert {"Python", "JavaScript", "Shell", "Markdown", "INI"} <= set(report["by_language"])


def test_is_a_mean_over_tokens_not_over_samples_or_batches(tmp_path_factory, tiny_texts):
    # a model that knows one text by heart (low loss) and not the other (high loss)
    folder = trained_edit_model(tmp_path_factory)
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    texts = [training_text("calc"), tiny_texts[0]]
    samples, _ = encode_rows(({"text": t} for t in texts), tok)
    _, _, per_sample = by_hand(model, tok, texts)
    assert per_sample[0][1] != per_sample[1][1]
    mean_of_means = sum(s / n for s, n in per_sample) / 2
    token_weighted = sum(s for s, _ in per_sample) / sum(n for _, n in per_sample)
    assert abs(mean_of_means - token_weighted) > 0.1
    for batch_size in (1, 2):
        assert evaluate_loss(model, samples, batch_size=batch_size)["metrics"]["loss"] == pytest.approx(token_weighted, rel=1e-5)


def test_language_column_wins_over_the_extension(model_and_tokenizer, tiny_texts):
    model, tok = model_and_tokenizer
    rows = [{"text": t, "language": "Klingon" if i % 2 else ""} for i, t in enumerate(tiny_texts[:6])]
    samples, _ = encode_rows(rows, tok)
    report = evaluate_loss(model, samples)
    assert report["by_language"]["Klingon"]["samples"] == 3
    assert report["by_language"]["Python"]["samples"] == 3


def test_tokenized_rows_and_text_rows_give_the_same_loss(model_and_tokenizer, tiny_texts):
    model, tok = model_and_tokenizer
    text_samples, _ = encode_rows(({"text": t} for t in tiny_texts[:5]), tok)
    token_rows = [{"input_ids": s.input_ids[:-1], "labels": s.labels[:-1]} for s in text_samples]
    token_samples, _ = encode_rows(token_rows, tok)
    a = evaluate_loss(model, text_samples)["metrics"]
    b = evaluate_loss(model, token_samples)["metrics"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["loss_tokens"] == b["loss_tokens"]


def test_laid_out_rows_are_refused(model_and_tokenizer):
    _, tok = model_and_tokenizer
    with pytest.raises(DiffModelError, match="laid out"):
        encode_rows([{"input_ids": [1, 2], "labels": [1, 2], "attention_mask": [1, 1]}], tok)


def test_long_samples_and_samples_without_a_diff_are_counted_not_truncated(model_and_tokenizer, tiny_texts):
    model, tok = model_and_tokenizer
    rows = [{"text": tiny_texts[0]}, {"text": "no marker here"}, {"text": tiny_texts[1]}]
    samples, skipped = encode_rows(rows, tok)
    assert skipped == {"skipped_no_diff": 1}
    shortest = min(len(s.input_ids) for s in samples)
    done = []
    report = evaluate_loss(model, samples, max_length=shortest, progress=done.append)
    assert report["metrics"]["skipped_too_long"] == 1 and report["metrics"]["samples"] == 1
    assert sum(done) == len(samples)  # a progress bar sized on the samples reaches its end


def test_the_command_reads_structured_rows_and_writes_json_and_markdown(tiny_gpt2_dir, model_and_tokenizer, tmp_path, capsys):
    model, tok = model_and_tokenizer
    rows = [
        {"name": "src/a.py", "before": "x = 1\n", "message": "Bump x", "diff": "@@ -1 +1 @@\n-x = 1\n+x = 2\n"},
        {"name": "web/b.js", "before": "let y = 1;\n", "message": "Bump y", "diff": "@@ -1 +1 @@\n-let y = 1;\n+let y = 2;\n"},
        {"name": "c.py", "before": "", "message": "Add c", "diff": "@@ -0,0 +1 @@\n+c = 3\n"},
    ]
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report" / "loss.json"
    assert diffmodel(["eval", "loss", "--model", str(tiny_gpt2_dir), "--data", str(data), "--out", str(out), "--no_progress"]) == 0
    report = json.loads(out.read_text())
    texts = [render(r["name"], r["before"], r["message"], r["diff"]) for r in rows]
    total, count, per_sample = by_hand(model, tok, texts)
    assert report["kind"] == "loss"
    assert report["metrics"]["loss"] == pytest.approx(total / count, rel=1e-5)
    py = [per_sample[0], per_sample[2]]
    assert report["by_language"]["Python"]["loss"] == pytest.approx(sum(s for s, _ in py) / sum(n for _, n in py), rel=1e-5)
    assert report["by_language"]["JavaScript"]["samples"] == 1
    md = out.with_suffix(".md").read_text()
    assert "| Python |" in md and "| perplexity |" in md
    assert "| loss |" in capsys.readouterr().out


def test_the_command_reports_every_usage_problem(tmp_path, capsys):
    assert diffmodel(["eval", "loss", "--model", str(tmp_path / "none"), "--max_samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "no data" in err and "--max_samples" in err


def test_nothing_scored_is_an_error_that_names_the_skips_and_the_fix(tiny_gpt2_dir, tmp_path, capsys):
    rows = [
        {"text": render("src/a.py", "x = 1\n", "Bump x", "@@ -1 +1 @@\n-x = 1\n+x = 2\n")},
        {"text": render("src/b.py", "y = 1\n", "Bump y", "@@ -1 +1 @@\n-y = 1\n+y = 2\n")},
        {"text": render("src/c.py", "z = 1\n", "Nothing", "")},
        {"text": "no marker here"},
    ]
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "loss.json"
    code = diffmodel(["eval", "loss", "--model", str(tiny_gpt2_dir), "--data", str(data), "--out", str(out), "--no_progress", "--max_length", "8"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "Traceback" not in err
    assert "nothing to score: all 4 samples were skipped (2 longer than --max_length 8 tokens, 1 without <DFF>, 1 with an empty diff)" in err
    assert "--max_length" in err and "shorter samples" in err


def test_without_out_the_report_goes_to_the_models_folder(tiny_gpt2_dir, tmp_path, capsys):
    import shutil

    model = shutil.copytree(tiny_gpt2_dir, tmp_path / "model")
    data = tmp_path / "heldout.jsonl"
    data.write_text(json.dumps({"text": render("src/a.py", "x = 1\n", "Bump x", "@@ -1 +1 @@\n-x = 1\n+x = 2\n")}) + "\n")
    assert diffmodel(["eval", "loss", "--model", str(model), "--data", str(data), "--no_progress"]) == 0
    assert sorted(p.name for p in (model / "eval").iterdir()) == ["loss.json", "loss.md"]
    assert f"wrote {model / 'eval' / 'loss.json'}, {model / 'eval' / 'loss.md'}" in capsys.readouterr().err


@pytest.mark.parametrize("model_type, picked", [("llama", True), ("gemma2", False)])
def test_the_output_layer_runs_at_the_loss_positions_alone_where_the_model_type_allows(model_and_tokenizer, tiny_texts,
                                                                                       model_type, picked):
    """Llama-like heads: the output layer at the loss positions only (no rows x width x vocabulary logits); Gemma 2 soft-caps
    its logits, so it keeps its own forward. Both give the per-sample losses computed by hand."""
    from transformers import AutoConfig

    from diffmodel.evaluate.loss import sample_losses

    _, tok = model_and_tokenizer
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                                  pad_token_id=tok.eos_token_id)
    model = AutoModelForCausalLM.from_config(config).eval()
    rows_seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows_seen.append(args[0].reshape(-1, 32).shape[0]))
    samples, _ = encode_rows(({"text": t} for t in tiny_texts), tok)
    with torch.no_grad():
        got = sample_losses(model, samples, batch_size=3)
    rows_seen_scoring, rows_seen[:] = list(rows_seen), []
    _, _, want = by_hand(model, tok, tiny_texts)
    for (s, n), (hs, hn) in zip(got, want):
        assert n == hn and s == pytest.approx(hs, rel=1e-5)
    loss_tokens = sum(n for _, n in got)
    lengths = sorted((len(x.input_ids) for x in samples), reverse=True)  # batched longest first
    padded_positions = sum(len(lengths[i:i + 3]) * lengths[i] for i in range(0, len(lengths), 3))
    assert sum(rows_seen_scoring) == (loss_tokens if picked else padded_positions)


def test_more_samples_skipped_than_scored_is_a_warning_that_names_the_fix(tiny_gpt2_dir, tmp_path, capsys):
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    short = render("src/a.py", "x = 1\n", "Bump x", "@@ -1 +1 @@\n-x = 1\n+x = 2\n")
    long = render("src/b.py", "y = 1\n" * 40, "Bump y", "@@ -1 +1 @@\n-y = 1\n+y = 2\n")
    limit = len(tok(short)["input_ids"]) + 1  # the short sample with its EOS fits, the long one does not
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in (short, long, "no marker here")))
    out = tmp_path / "loss.json"
    assert diffmodel(["eval", "loss", "--model", str(tiny_gpt2_dir), "--data", str(data), "--out", str(out), "--no_progress",
                      "--max_length", str(limit)]) == 0
    warning = (f"2 of the 3 samples were skipped (1 longer than --max_length {limit} tokens, 1 without <DFF>): the loss is "
               "over the other 1 only; for more, give shorter samples (diffmodel mine --tokenizer_name TOKENIZER "
               "--max_tokens N) or a larger --max_length (up to the model's positions)")
    report = json.loads(out.read_text())
    assert report["metrics"]["samples"] == 1 and report["warning"] == warning
    assert report["data"] == str(data)  # the --data files are one set: no split named
    assert f"warning: {warning}\n" in capsys.readouterr().err
    assert f"\nwarning: {warning}  \n" in out.with_suffix(".md").read_text()
    # as many skipped as scored: no warning
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in (short, long)))
    assert diffmodel(["eval", "loss", "--model", str(tiny_gpt2_dir), "--data", str(data), "--out", str(out), "--no_progress",
                      "--max_length", str(limit)]) == 0
    assert "warning" not in json.loads(out.read_text()) and "warning" not in capsys.readouterr().err


def test_split_is_refused_with_data_files_which_are_one_set(tiny_gpt2_dir, tmp_path, capsys):
    data = tmp_path / "test-00000.jsonl"
    data.write_text(json.dumps({"text": render("src/a.py", "x = 1\n", "Bump x", "@@ -1 +1 @@\n-x = 1\n+x = 2\n")}) + "\n")
    out = tmp_path / "loss.json"
    assert diffmodel(["eval", "loss", "--model", str(tiny_gpt2_dir), "--data", str(data), "--split", "test",
                      "--out", str(out), "--no_progress"]) == 2
    assert capsys.readouterr().err == (
        "diffmodel eval: error: cannot run eval loss:\n"
        "  - --split test picks a split of --dataset_name; the --data files are evaluated as one set: give the files of "
        "that split (e.g. --data 'data/mined/test/*.jsonl.zst'), or the folder that holds the splits as --dataset_name "
        "(e.g. --dataset_name data/mined)\n")
    assert not out.exists()
