"""Reports: JSON and Markdown written whole, numbers formatted, two reports compared side by side."""

from __future__ import annotations

import json

import pytest

from diffmodel.cli import main as diffmodel
from diffmodel.errors import DiffModelError
from diffmodel.evaluate.report import compare, flatten, fmt, markdown, read_report, write_report


def loss_report(loss: float, python: float, model: str = "runs/a") -> dict:
    return {
        "kind": "loss", "model": model, "settings": {"batch_size": 8},
        "metrics": {"samples": 3, "loss_tokens": 120, "loss": loss, "perplexity": float("inf") if loss > 700 else 2.0},
        "by_language": {"Python": {"samples": 2, "loss": python}, "JavaScript": {"samples": 1, "loss": float("nan")}},
    }


def test_json_and_markdown_are_written_side_by_side_without_temporary_files(tmp_path):
    json_path, md_path = write_report(loss_report(1.5, 1.25), tmp_path / "out" / "loss.json")
    assert md_path == tmp_path / "out" / "loss.md"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["loss.json", "loss.md"]
    data = json.loads(json_path.read_text())  # strict JSON: NaN became null
    assert data["by_language"]["JavaScript"]["loss"] is None
    md = md_path.read_text()
    assert md.startswith("# diffmodel eval loss\n")
    assert "| loss | 1.5000 |" in md
    assert "| language | samples | loss |" in md and "| Python | 2 | 1.2500 |" in md and "| JavaScript | 1 | nan |" in md


def test_an_infinite_perplexity_is_null_in_json(tmp_path):
    json_path, _ = write_report(loss_report(800.0, 1.0), tmp_path / "loss.json")
    assert json.loads(json_path.read_text())["metrics"]["perplexity"] is None


def test_a_report_is_replaced_whole(tmp_path):
    path = tmp_path / "loss.json"
    write_report(loss_report(1.0, 1.0), path)
    write_report(loss_report(2.0, 1.0), path)
    assert json.loads(path.read_text())["metrics"]["loss"] == 2.0


@pytest.mark.parametrize("value, text", [(3, "3"), (0.5, "0.5000"), (1.23456789, "1.2346"), (0.0, "0.0000"),
                                         (1e-7, "1.000e-07"), (123456.0, "1.235e+05"), (None, "-"), (True, "yes")])
def test_fmt(value, text):
    assert fmt(value) == text


def test_compare_lines_up_headline_and_breakdown_metrics():
    text = compare(loss_report(1.5, 1.25, "runs/a"), loss_report(1.0, 1.5, "runs/b"), "a", "b")
    assert "| metric | a | b | b - a |" in text
    assert "| loss | 1.5000 | 1.0000 | -0.5000 |" in text
    assert "| language/Python/loss | 1.2500 | 1.5000 | 0.2500 |" in text
    assert "`runs/a`" in text and "`runs/b`" in text
    assert "language/Python/loss" in flatten(loss_report(1.0, 1.0))


def test_compare_refuses_reports_of_different_evals():
    other = {"kind": "edits", "metrics": {}}
    with pytest.raises(DiffModelError, match="same eval"):
        compare(loss_report(1, 1), other)


def test_compare_command(tmp_path, capsys):
    write_report(loss_report(1.5, 1.25, "runs/a"), tmp_path / "a" / "loss.json")
    write_report(loss_report(1.0, 1.5, "runs/b"), tmp_path / "b" / "loss.json")
    assert diffmodel(["eval", "compare", str(tmp_path / "a" / "loss.json"), str(tmp_path / "b" / "loss.json")]) == 0
    assert "| loss | 1.5000 | 1.0000 | -0.5000 |" in capsys.readouterr().out  # columns named after the folders
    assert diffmodel(["eval", "compare", str(tmp_path / "a" / "loss.md"), str(tmp_path / "b" / "loss.json")]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert diffmodel(["eval", "compare", str(tmp_path / "none.json"), str(tmp_path / "b" / "loss.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert diffmodel(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b" / "loss.json")]) == 2
    assert "is a folder; give the NAME.json that diffmodel eval wrote in it" in capsys.readouterr().err


def test_reports_go_to_the_models_folder_by_default(tmp_path, monkeypatch):
    from diffmodel.commands.eval import default_out

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    assert default_out("loss", "runs/a") == "runs/a/eval/loss.json"
    assert default_out("edits", None) == "eval/edits.json"  # --calibrate
    assert default_out("humanevalfix", "owner/model-on-the-hub") == "eval/humanevalfix.json"


def test_compare_columns_are_the_nearest_names_that_differ(tmp_path):
    from diffmodel.commands.eval import compare_labels

    assert compare_labels(tmp_path / "x" / "a.json", tmp_path / "x" / "b.json") == ["a", "b"]
    assert compare_labels(tmp_path / "runs/a/eval/edits.json", tmp_path / "runs/b/eval/edits.json") == ["a", "b"]
    assert compare_labels(tmp_path / "r.json", tmp_path / "r.json") == ["A", "B"]


def test_read_report_needs_metrics(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DiffModelError, match="not a diffmodel eval report"):
        read_report(tmp_path / "x.json")


def test_markdown_of_a_humanevalfix_report_has_operator_and_outcome_tables():
    md = markdown({"kind": "humanevalfix", "model": "m", "metrics": {"pass@1": 0.25},
                   "by_operator": {"comparison": {"problems": 4, "pass@1": 0.25}},
                   "outcomes": {"passed": 5, "failed": 15, "timed_out": 0, "crashed": 0, "did_not_apply": 0}})
    assert "## operator" in md and "| comparison | 4 | 0.2500 |" in md
    assert "| passed | failed | timed_out | crashed | did_not_apply |" in md


def test_eval_without_a_subcommand_shows_help(capsys):
    assert diffmodel(["eval"]) == 2
    assert "humanevalfix" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["loss", "edits", "humanevalfix", "compare"])
def test_each_eval_help_says_what_it_does_and_shows_an_example(kind, capsys):
    with pytest.raises(SystemExit):
        diffmodel(["eval", kind, "--help"])
    out = capsys.readouterr().out
    assert out.split("\n\n")[1][0].isupper()  # the description, after the usage
    assert f"example:\n  diffmodel eval {kind} " in out


def test_compare_shows_each_reports_data_and_names_what_differs_besides_the_model():
    a = loss_report(1.5, 1.25, "runs/a") | {"data": "mined/test/*.jsonl.zst", "settings": {"batch_size": 8, "max_length": None}}
    b = loss_report(1.0, 1.5, "runs/b") | {"data": "mined/validation/*.jsonl.zst", "settings": {"batch_size": 4, "max_length": 512}}
    text = compare(a, b, "a", "b")
    assert ("data A: `mined/test/*.jsonl.zst`  \n"
            "data B: `mined/validation/*.jsonl.zst`  \n"
            "settings A: batch_size=8, max_length=None  \n"
            "settings B: batch_size=4, max_length=512  \n"
            "note: the two reports differ in data, max_length, so B - A is not the models' difference alone  \n") in text
    same = compare(a, a | {"model": "runs/b", "settings": {"batch_size": 16, "max_length": None}}, "a", "b")
    assert "note:" not in same  # the batch size does not change the numbers
