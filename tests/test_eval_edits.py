"""eval edits: a tiny model trained to reproduce known diffs scores exact match 1.0 on them, 0.0 on corrupted truths."""

from __future__ import annotations

import json
import re

import pytest
from edit_model import SAMPLES, count_calls, trained_edit_model

from diffmodel.cli import main as diffmodel
from diffmodel.evaluate.edits import (
    EditCase,
    EmptyEditor,
    ReferenceEditor,
    evaluate_edits,
    line_similarity,
    make_cases,
    normalize_ws,
)
from diffmodel.infer import DiffModel

#: samples whose reference diff applies strictly (``shift`` needs the lenient applier, ``wrong`` never applies)
STRICT = ["calc", "greet", "crlf", "marker"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return DiffModel.from_pretrained(trained_edit_model(tmp_path_factory))


def row(key: str, **changes) -> dict:
    s = SAMPLES[key]
    out = {"name": s["name"], "before": s["before"], "message": s["message"], "diff": s["diff"]}
    out.update(changes)
    return out


class TestTrainedModel:
    def test_reproducing_the_known_diffs_scores_exact_match_one(self, model):
        cases, skipped = make_cases([row(k) for k in STRICT])
        assert skipped == {}
        summary, rows = evaluate_edits(model, cases)
        m = summary["metrics"]
        assert (m["samples"], m["generations"]) == (4, 4)
        for metric in ("parses", "applies_strict", "applies", "exact", "exact_ws", "line_similarity", "exact_any"):
            assert m[metric] == 1.0, (metric, rows)

    def test_a_corrupted_reference_scores_exact_match_zero(self, model):
        calc = SAMPLES["calc"]["diff"].replace("+    return a + b", "+    return a * b")
        greet = SAMPLES["greet"]["diff"].replace("'hi '", "'hello '")
        cases, _ = make_cases([row("calc", diff=calc), row("greet", diff=greet)])
        assert [c.after for c in cases] == ["def add(a, b):\n    return a * b\n", "def greet(name):\n    return 'hello ' + name\n"]
        summary, rows = evaluate_edits(model, cases)
        m = summary["metrics"]
        assert m["applies"] == 1.0  # the model's diffs still apply ...
        assert m["exact"] == 0.0 and m["exact_ws"] == 0.0 and m["exact_any"] == 0.0  # ... but give another file
        assert 0.0 < m["line_similarity"] < 1.0
        assert rows[0]["generations"][0]["line_similarity"] == pytest.approx(0.5)  # 1 of 2 lines agree

    def test_a_whitespace_only_corruption_is_exact_under_normalisation_only(self, model):
        calc = SAMPLES["calc"]["diff"].replace("+    return a + b", "+    return  a + b  ")
        cases, _ = make_cases([row("calc", diff=calc)])
        summary, _ = evaluate_edits(model, cases)
        assert summary["metrics"]["exact"] == 0.0 and summary["metrics"]["exact_ws"] == 1.0

    def test_mixed_set_scores_the_share(self, model):
        wrong = SAMPLES["calc"]["diff"].replace("+    return a + b", "+    return a * b")
        rows = [row(k) for k in STRICT] + [row("calc", diff=wrong)]
        cases, _ = make_cases(rows)
        summary, _ = evaluate_edits(model, cases)
        assert summary["metrics"]["exact"] == pytest.approx(4 / 5)
        # calc.py, greet.py and more.py right, the corrupted calc.py wrong; setup.cfg right
        assert summary["by_language"]["Python"]["exact"] == pytest.approx(3 / 4)
        assert summary["by_language"]["INI"]["exact"] == 1.0

    def test_a_lenient_apply_counts_as_applied_but_not_strict(self, model):
        cases, skipped = make_cases([row("shift", after=SAMPLES["shift"]["after"])])
        assert skipped == {}
        summary, _ = evaluate_edits(model, cases, constrained=False)  # constrained, it applies strictly
        m = summary["metrics"]
        assert (m["applies_strict"], m["applies"], m["exact"]) == (0.0, 1.0, 1.0)

    def test_references_that_do_not_apply_are_skipped_and_counted(self):
        cases, skipped = make_cases([row("wrong"), row("shift"), row("calc", diff="")])
        assert cases == []
        assert skipped == {"skipped_reference_does_not_apply": 2, "skipped_empty_reference": 1}

    def test_samples_per_request_are_all_scored(self, model):
        cases, _ = make_cases([row("calc")])
        summary, rows = evaluate_edits(model, cases, num_samples=3, temperature=0.7, seed=0)
        assert summary["metrics"]["generations"] == 3 and len(rows[0]["generations"]) == 3


class TestCalibrationEditors:
    def cases(self):
        return make_cases([row(k) for k in STRICT])[0]

    def test_the_reference_editor_scores_one(self):
        cases = self.cases()
        truth = {c.before: c.after for c in cases}
        summary, _ = evaluate_edits(ReferenceEditor(lambda r: truth[r.code]), cases, num_samples=2)
        assert all(summary["metrics"][m] == 1.0 for m in ("parses", "applies_strict", "exact", "exact_ws"))

    def test_the_empty_editor_scores_zero(self):
        summary, _ = evaluate_edits(EmptyEditor(), self.cases())
        m = summary["metrics"]
        assert all(m[k] == 0.0 for k in ("parses", "applies", "exact", "exact_ws", "line_similarity", "exact_any"))
        assert summary["statuses"] == {"failed": 4}


class TestHelpers:
    def test_normalize_ws_ignores_layout_only(self):
        assert normalize_ws("a  =  1 \r\n\n\tb = 2\n") == normalize_ws("a = 1\nb = 2")
        assert normalize_ws("a = 1\n") != normalize_ws("a = 2\n")

    def test_line_similarity(self):
        assert line_similarity("a\nb\n", "a\nb\n") == 1.0
        assert line_similarity("a\nb\n", "a\nc\n") == 0.5
        assert line_similarity("", "x\n") == 0.0

    def test_text_rows_are_split_into_fields(self):
        from diffmodel.sample import render

        s = SAMPLES["calc"]
        cases, _ = make_cases([{"text": render(s["name"], s["before"], s["message"], s["diff"])}])
        assert cases == [EditCase("calc.py", s["before"], "Fix add", s["diff"], s["after"], "Python")]


def test_the_command_writes_reports_and_one_line_per_sample(tmp_path_factory, tmp_path, capsys):
    folder = trained_edit_model(tmp_path_factory)
    capsys.readouterr()  # the model's first training, when this test runs first, saves it with a bar of its own
    data = tmp_path / "heldout.jsonl"
    bad = SAMPLES["calc"]["diff"].replace("+    return a + b", "+    return a * b")
    rows = [row(k, language="") for k in STRICT] + [row("calc", diff=bad, language="Calc")]  # "": from the name
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "edits.json"
    assert diffmodel(["eval", "edits", "--model", str(folder), "--data", str(data), "--out", str(out), "--no_progress"]) == 0
    assert not re.search(r"%\||/s\]", capsys.readouterr().err)  # no bar: not the data's loading either
    report = json.loads(out.read_text())
    assert report["kind"] == "edits" and report["metrics"]["exact"] == pytest.approx(0.8)
    assert report["by_language"]["Calc"]["exact"] == 0.0
    lines = [json.loads(x) for x in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert [x["exact_any"] for x in lines] == [True, True, True, True, False]
    assert lines[0]["generations"][0]["status"] == "strict"
    assert "| exact |" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    oracle = tmp_path / "oracle.json"
    assert diffmodel(["eval", "edits", "--calibrate", "oracle", "--data", str(data), "--out", str(oracle), "--no_progress"]) == 0
    assert json.loads(oracle.read_text())["metrics"]["exact"] == 1.0
    assert diffmodel(["eval", "compare", str(out), str(oracle)]) == 0
    assert "| exact | 0.8000 | 1.0000 | 0.2000 |" in capsys.readouterr().out


def test_reports_record_the_decoder_and_the_forced_share(tmp_path_factory, tmp_path):
    folder = trained_edit_model(tmp_path_factory)
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(row(k)) + "\n" for k in STRICT))
    shares = {}
    for flags in ([], ["--unconstrained"], ["--no_speculation"]):
        out = tmp_path / f"edits{len(flags)}{''.join(flags)}.json"
        assert diffmodel(["eval", "edits", "--model", str(folder), "--data", str(data), "--out", str(out), "--no_progress", *flags]) == 0
        report = json.loads(out.read_text())
        settings = report["settings"]
        assert settings["constrained"] is (flags != ["--unconstrained"])
        assert settings["speculation"] is (not flags) and "speculate" not in settings
        assert list(settings)[list(settings).index("constrained") + 1] == "speculation"
        gens = [g for x in out.with_suffix(".samples.jsonl").read_text().splitlines() for g in json.loads(x)["generations"]]
        forced, tokens = sum(g["forced_tokens"] for g in gens), sum(g["num_tokens"] for g in gens)
        assert report["metrics"]["forced_share"] == pytest.approx(forced / tokens)
        assert report["metrics"]["exact"] == 1.0
        shares[tuple(flags)] = report["metrics"]["forced_share"]
    assert shares[()] == shares[("--no_speculation",)] > 0.0 and shares[("--unconstrained",)] == 0.0


def test_a_run_that_dies_resumes_its_generations_and_reports_what_an_unbroken_run_reports(tmp_path_factory, tmp_path,
                                                                                         capsys, monkeypatch):
    from diffmodel.infer import partial as pieces

    folder = trained_edit_model(tmp_path_factory)
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(row(k)) + "\n" for k in [*STRICT, "calc"]))  # 5 cases
    monkeypatch.setattr(pieces, "PIECE_BATCHES", 1)  # pieces of --batch_size requests
    flags = ["--model", str(folder), "--data", str(data), "--batch_size", "2", "--num_samples", "2", "--temperature", "0.7",
             "--seed", "3", "--no_progress"]
    unbroken = tmp_path / "unbroken" / "edits.json"
    assert diffmodel(["eval", "edits", *flags, "--out", str(unbroken)]) == 0
    assert sorted(p.name for p in unbroken.parent.iterdir()) == ["edits.json", "edits.md", "edits.samples.jsonl"]

    count_calls(monkeypatch, dies_at=2)
    out = tmp_path / "resumed" / "edits.json"
    assert diffmodel(["eval", "edits", *flags, "--out", str(out)]) == 130  # Ctrl-C
    kept = out.parent / "edits.generations.partial"
    assert not out.exists() and len(kept.read_text().splitlines()) == 2  # the first piece's two requests
    capsys.readouterr()

    sizes = count_calls(monkeypatch)
    assert diffmodel(["eval", "edits", *flags, "--out", str(out)]) == 0
    assert "resuming: 2 of 5 requests were done (edits.generations.partial)" in capsys.readouterr().err
    assert sizes == [2, 1]  # only the requests not done
    assert out.with_suffix(".samples.jsonl").read_text() == unbroken.with_suffix(".samples.jsonl").read_text()
    got, want = json.loads(out.read_text()), json.loads(unbroken.read_text())
    assert (got["metrics"], got["by_language"], got["statuses"]) == (want["metrics"], want["by_language"], want["statuses"])
    assert "resumed" not in want and got["resumed"] == {
        "requests_kept": 2, "requests": 5, "note": "generated by an earlier run of the same command; seconds cover this run only"}
    assert "2 of 5 requests' generations were kept from an earlier run" in out.with_suffix(".md").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["edits.json", "edits.md", "edits.samples.jsonl"]  # nothing kept

    sizes.clear()  # other settings: the kept generations are not theirs
    kept.write_text(json.dumps([{"diff": "from another run"}]) + "\n")
    kept.with_name(kept.name + ".json").write_text(json.dumps({"fingerprint": {"kind": "edits"}, "done": 1, "bytes": 31}))
    assert diffmodel(["eval", "edits", *flags, "--out", str(out)]) == 0
    assert "note: edits.generations.partial came from another run (other requests, model or settings): starting over" \
        in capsys.readouterr().err
    assert sizes == [2, 2, 1] and out.with_suffix(".samples.jsonl").read_text() == unbroken.with_suffix(".samples.jsonl").read_text()
    assert "resumed" not in json.loads(out.read_text())


def test_an_out_path_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code = diffmodel(["eval", "edits", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "none.jsonl"),
                      "--out", str(tmp_path / "file" / "edits.json")])
    err = capsys.readouterr().err
    assert code == 2 and f"--out {tmp_path / 'file' / 'edits.json'}: {tmp_path / 'file'} is a file, not a folder; choose another path" in err
    code = diffmodel(["eval", "loss", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "none.jsonl"),
                      "--out", str(tmp_path)])
    assert code == 2 and f"--out {tmp_path} is a folder; give the path of the report file (NAME.json) in it" in capsys.readouterr().err


def test_kept_generations_of_a_model_trained_again_in_the_same_folder_or_of_another_dtype_are_not_resumed(
        tmp_path_factory, tmp_path, capsys, monkeypatch):
    import os
    import shutil

    from diffmodel.infer import partial as pieces

    folder = tmp_path / "model"
    shutil.copytree(trained_edit_model(tmp_path_factory), folder)
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(row(k)) + "\n" for k in [*STRICT, "calc"]))  # 5 cases
    monkeypatch.setattr(pieces, "PIECE_BATCHES", 1)  # pieces of --batch_size requests
    out = tmp_path / "eval" / "edits.json"
    flags = ["eval", "edits", "--model", str(folder), "--data", str(data), "--batch_size", "2", "--no_progress", "--out", str(out)]
    weights = next(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    for change, extra in [(lambda: os.utime(weights, ns=(1, 1)), []),  # the folder's weights written again
                          (lambda: None, ["--dtype", "bf16"])]:
        count_calls(monkeypatch, dies_at=2)
        assert diffmodel(flags) == 130  # Ctrl-C
        assert "edits.generations.partial keeps the generations of 2 of 5 requests: the same command resumes after them" \
            in capsys.readouterr().err
        change()
        sizes = count_calls(monkeypatch)
        assert diffmodel([*flags, *extra]) == 0
        assert "note: edits.generations.partial came from another run" in capsys.readouterr().err
        assert sizes == [2, 2, 1]  # every request generated again
        assert sorted(p.name for p in out.parent.iterdir()) == ["edits.json", "edits.md", "edits.samples.jsonl"]


class TestResumableEditor:
    """:class:`~diffmodel.infer.partial.ResumableEditor` with a stand-in editor."""

    class Writer:
        """Writes each request's file back with characters that ``str.splitlines`` takes for line ends."""

        def __init__(self):
            self.calls = []

        def edit_many(self, requests, num_samples=1, **options):
            from diffmodel.infer.prompt import Edit, EditStatus, as_request

            self.calls.append(len(requests))
            return [[Edit("@@ -1 +1 @@\n-a\u2028b\n+a\x85b\u2029\n", as_request(r).code + "\u2028\x1c\x85", EditStatus.STRICT,
                          ["note\u2029"]) for _ in range(num_samples)] for r in requests]

    def _requests(self, n):
        from diffmodel.infer.prompt import EditRequest

        return [EditRequest(f"line {i}\u2028\n", "Fix", f"f{i}.py") for i in range(n)]

    def test_generations_with_unicode_line_separators_are_read_back_whole(self, tmp_path):
        from diffmodel.infer.partial import ResumableEditor

        writer, requests = self.Writer(), self._requests(5)
        made = ResumableEditor(writer, tmp_path / "edits.generations", {}, 2).edit_many(requests, num_samples=2)
        assert len(made) == 5 and made == writer.edit_many(requests, num_samples=2)
        again = ResumableEditor(writer, tmp_path / "edits.generations", {}, 2)  # a run that finds them all done
        assert again.edit_many(requests, num_samples=2) == made and writer.calls == [2, 2, 1, 5]

    def test_kept_generations_that_are_not_one_line_per_request_are_an_error_not_a_report(self, tmp_path):
        from diffmodel.errors import DiffModelError
        from diffmodel.infer.partial import ResumableEditor

        writer, requests = self.Writer(), self._requests(3)
        editor = ResumableEditor(writer, tmp_path / "edits.generations", {}, 2)
        editor.edit_many(requests)
        kept, record = editor.parts[0].lines, editor.parts[0].record
        first = kept.read_bytes().split(b"\n")[0] + b"\n"
        with open(kept, "ab") as handle:  # another run's line, recorded as if it were this run's
            handle.write(first)
        saved = json.loads(record.read_text())
        record.write_text(json.dumps({**saved, "bytes": kept.stat().st_size}))
        with pytest.raises(DiffModelError, match=r"edits\.generations\.partial does not hold the edits of the 3 requests, one line "
                                                 r"each .*delete it and edits\.generations\.partial\.json beside it"):
            ResumableEditor(writer, tmp_path / "edits.generations", {}, 2).edit_many(requests)


def test_an_out_path_ending_in_a_slash_names_a_folder_and_is_refused(tmp_path, capsys):
    out = f"{tmp_path / 'reports'}/"  # not there yet: the report would become a file named "reports"
    code = diffmodel(["eval", "loss", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "none.jsonl"), "-o", out])
    assert code == 2 and f"--out {out} is a folder; give the path of the report file (NAME.json) in it" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


def test_an_out_path_ending_in_md_is_refused_as_the_markdown_table_would_replace_the_json_report(tmp_path, capsys):
    data = tmp_path / "heldout.jsonl"
    data.write_text(json.dumps(row("calc")) + "\n")
    out = tmp_path / "edits.md"
    code = diffmodel(["eval", "edits", "--calibrate", "oracle", "--data", str(data), "--out", str(out), "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"--out {out}: the report is JSON and its Markdown table is written beside it as .md; "
            f"give NAME.json (e.g. {tmp_path / 'edits.json'})") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heldout.jsonl"]


def test_data_without_a_single_scorable_row_stops_before_the_model_loads_instead_of_scoring_zero(
        tmp_path_factory, tmp_path, capsys, monkeypatch):
    from diffmodel.commands import eval as eval_command

    folder = trained_edit_model(tmp_path_factory)
    loaded = []
    monkeypatch.setattr(eval_command, "load_model", lambda *a, **k: loaded.append(1))
    data = tmp_path / "heldout.jsonl"
    rows = [row("wrong"), row("calc", diff="")]  # the reference does not apply; no reference at all
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "edits.json"
    code = diffmodel(["eval", "edits", "--model", str(folder), "--data", str(data), "--out", str(out), "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and loaded == []
    assert (f"nothing to score: none of the 2 rows of {data} is a sample with a known edited file "
            "(1 skipped_empty_reference, 1 skipped_reference_does_not_apply); give rows with name, before, message and "
            "a diff that applies to before (or an after column)") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heldout.jsonl"]


def test_prompts_too_long_for_the_model_are_counted_in_a_warning_as_they_score_zero(tmp_path_factory, tmp_path, capsys):
    folder = trained_edit_model(tmp_path_factory)  # 256 positions
    calc = SAMPLES["calc"]
    long_calc = row("calc", before=calc["before"] + "# padding line\n" * 300)
    data = tmp_path / "heldout.jsonl"
    data.write_text(json.dumps(row("calc")) + "\n" + json.dumps(long_calc) + "\n")
    out = tmp_path / "edits.json"
    assert diffmodel(["eval", "edits", "--model", str(folder), "--data", str(data), "--out", str(out), "--no_progress"]) == 0
    warning = ("1 of the 2 generations are too_long: the prompt (file, name and message) does not fit the model's "
               "positions, so nothing was generated and they score 0 on every metric; give shorter samples (diffmodel "
               "mine --tokenizer_name TOKENIZER --max_tokens N) or a model with more positions")
    report = json.loads(out.read_text())
    assert report["statuses"] == {"strict": 1, "too_long": 1}
    assert report["metrics"]["exact"] == 0.5 and report["warning"] == warning
    assert report["data"] == str(data)  # the --data files are one set: no split named
    assert f"warning: {warning}\n" in capsys.readouterr().err
    assert f"\nwarning: {warning}  \n" in out.with_suffix(".md").read_text()
    data.write_text(json.dumps(row("calc")) + "\n")
    assert diffmodel(["eval", "edits", "--model", str(folder), "--data", str(data), "--out", str(out), "--no_progress"]) == 0
    assert "warning" not in json.loads(out.read_text()) and "warning" not in capsys.readouterr().err
