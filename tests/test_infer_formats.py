"""Inference in every ``--edit_format``: a tiny model trained on each format writes edits that apply.

Per format, one tiny GPT-2 learns :data:`CHANGES` by heart, rendered by the
format's own ``render`` (the ``next`` change trained without EOS and followed
by the start of a next sample, so its generation must be stopped by the
format's next-sample marker). ``DiffModel.edit(..., edit_format=F)`` must then
write each change: status ``strict``, ``new_code`` the file after, ``diff``
the unified diff of the two files.
"""

from __future__ import annotations

import json

import pytest

from edit_model import train_texts

from diffmodel import formats
from diffmodel.cli import main as cli_main
from diffmodel.diff import make_diff
from diffmodel.infer import STOP_EOS, STOP_LENGTH, STOP_MARKER, DiffModel, EditStatus, cut_generation, decoding, finish_edit

#: name, before, message, after
CHANGES = {
    "fix": ("calc.py", "def add(a, b):\n    return a - b\n", "Fix add", "def add(a, b):\n    return a + b\n"),
    "grow": ("mean.py", "def mean(xs):\n    return sum(xs) / len(xs)\n", "Guard empty",
             "def mean(xs):\n    if not xs:\n        return 0\n    return sum(xs) / len(xs)\n"),
    "next": ("one.py", "def f():\n    pass\n", "Return one", "def f():\n    return 1\n"),
}

#: The start of a next sample, in each format (what follows the ``next`` change in its training text).
NEXT_SAMPLE = ("new.py", "x = 1\n", "Set x", "x = 2\n")

FORMAT_NAMES = tuple(formats.FORMATS)


def training_texts(name: str) -> tuple[list[str], list[bool]]:
    fmt = formats.get(name)
    texts = [fmt.render(*change) for change in CHANGES.values()]
    following = fmt.prompt(*NEXT_SAMPLE[:3])
    texts[list(CHANGES).index("next")] += following
    return texts, [key != "next" for key in CHANGES]


@pytest.fixture(scope="module", params=FORMAT_NAMES)
def trained(request, tmp_path_factory):
    texts, eos = training_texts(request.param)
    folder = train_texts(texts, tmp_path_factory.mktemp(f"format_{request.param}"), eos, steps=150)
    return request.param, DiffModel.from_pretrained(folder, device="cpu", quiet=True)


def test_the_next_sample_follows_the_change_in_the_training_text():
    """The stop test is real: each ``next`` text holds its format's next-sample marker right after the change."""
    for name in FORMAT_NAMES:
        texts, eos = training_texts(name)
        text = texts[list(CHANGES).index("next")]
        fmt = formats.get(name)
        target = text[len(fmt.prompt(*CHANGES["next"][:3])):]
        at = formats.next_sample(target, name)
        assert at == len(formats.target(*CHANGES["next"], edit_format=name)), name
        assert eos == [True, True, False]


def test_a_tiny_model_trained_on_each_format_writes_edits_that_apply(trained):
    name, model = trained
    requests = [(before, message, file) for file, before, message, _ in CHANGES.values()]
    results = model.edit_many(requests, edit_format=name, max_new_tokens=120, batch_size=3)
    for key, (edits,) in zip(CHANGES, results):
        file, before, _, after = CHANGES[key]
        edit = edits
        assert edit.status is EditStatus.STRICT, (name, key, edit)
        assert edit.new_code == after, (name, key)
        assert edit.diff == make_diff(before, after) if name != "carper" else edit.diff == formats.target(
            file, before, "", after, "carper").removeprefix(" "), (name, key, edit.diff)
        assert edit.edit_format == name
        assert edit.forced_tokens == 0 or name == "carper"
        assert edit.stop == (STOP_MARKER if key == "next" else STOP_EOS), (name, key, edit.stop)
    one = model.edit(CHANGES["fix"][1], CHANGES["fix"][2], CHANGES["fix"][0], edit_format=name)
    assert one.new_code == CHANGES["fix"][3]


def test_cut_at_each_formats_next_sample():
    assert cut_generation("a = 2\n<commit_before>x", "commit") == ("a = 2\n", True)
    assert cut_generation("a = 2<commit_before>x", "commit") == ("a = 2", True)
    assert cut_generation("-  1 a\n+  1 b\n<file_name>\nx.py", "linediff") == ("-  1 a\n+  1 b\n", True)
    assert cut_generation("-  1 a\n+  1 b<file_name>\nx.py", "linediff") == ("-  1 a\n+  1 b", True)
    assert cut_generation("\nx.py\n```\n<NME> y.py", "search_replace") == ("\nx.py\n```\n", True)
    assert cut_generation("\n<<<<<<< SEARCH\na <NME>\n", "search_replace") == ("\n<<<<<<< SEARCH\na <NME>\n", False)
    assert cut_generation(" @@ -1 +1 @@\n-a\n+b\n") == ("@@ -1 +1 @@\n-a\n+b\n", False)


def test_an_output_cut_by_the_token_limit_is_not_applied_in_the_other_formats():
    before, after = "a = 1\nb = 2\nc = 3\n", "a = 1\nb = 3\nc = 3\n"
    for name in FORMAT_NAMES:
        if name == "carper":
            continue
        target = formats.target("x.py", before, "Bump b", after, name)
        cut = target[: len(target) // 2]
        edit = finish_edit(before, cut, stop=STOP_LENGTH, edit_format=name)
        assert (edit.status, edit.new_code, edit.apply_status) == (EditStatus.FAILED, None, "failed"), name
        assert edit.notes[0].startswith(f"generation hit the token limit before the {name} output ended"), name
        assert edit.output == cut
        whole = finish_edit(before, target, stop=STOP_EOS, edit_format=name)
        assert (whole.status, whole.new_code) == (EditStatus.STRICT, after), name
    # the case that lost data: half of a commit output is a shorter file that applies cleanly
    half = formats.target("x.py", before, "Bump b", after, "commit")[:8]
    assert finish_edit(before, half, stop=STOP_EOS, edit_format="commit").status is EditStatus.STRICT


def test_finish_edit_in_each_format_maps_the_appliers_outcome():
    before, after = "a = 1\nb = 2\n", "a = 1\nb = 3\n"
    for name in FORMAT_NAMES:
        target = formats.target("x.py", before, "Bump b", after, name)
        edit = finish_edit(before, target, edit_format=name)
        assert (edit.status, edit.new_code, edit.diff) == (EditStatus.STRICT, after, make_diff(before, after)), name
        assert edit.output == ("" if name == "carper" else target)
    # no change: failed, and says so
    unchanged = finish_edit(before, before, edit_format="commit")
    assert (unchanged.status, unchanged.new_code, unchanged.diff, unchanged.apply_status) == (EditStatus.FAILED, None, "", "empty")
    assert unchanged.notes == ["the new file equals the old one", "the model wrote no change"]
    # a SEARCH found only when trailing whitespace is ignored: lenient
    loose = "\nx.py\n```\n<<<<<<< SEARCH\nb = 2  \n=======\nb = 3\n>>>>>>> REPLACE\n```\n"
    edit = finish_edit(before, loose, edit_format="search_replace")
    assert (edit.status, edit.new_code, edit.apply_status) == (EditStatus.LENIENT, after, "relocated")
    # a - line the file does not have: failed with the applier's reason
    bad = finish_edit(before, "-  2 c = 2\n+  2 c = 3", edit_format="linediff")
    assert (bad.status, bad.new_code, bad.diff) == (EditStatus.FAILED, None, "")
    assert bad.notes == ["- line 2 is not line 2 of the file ('b = 2\\n')"]


def test_diff_aware_decoding_is_for_carper_only():
    assert decoding(None) == (True, None)
    assert decoding("carper", False) == (False, None)
    assert decoding("commit", False) == (False, None)
    off, note = decoding("linediff")
    assert not off
    assert note == ("diff-aware decoding follows the unified-diff grammar of --edit_format carper; "
                    "--edit_format linediff is decoded unconstrained")


# -- the commands ----------------------------------------------------------------------------------

UNCONSTRAINED_NOTE = ("diff-aware decoding follows the unified-diff grammar of --edit_format carper; "
                      "--edit_format {} is decoded unconstrained")


def _rows_file(path):
    rows = [{"name": file, "before": before, "message": message, "diff": make_diff(before, after)}
            for file, before, message, after in CHANGES.values()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_edit_command_in_each_format(trained, tmp_path, monkeypatch, capsys):
    name, model = trained
    file, before, message, after = CHANGES["grow"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / file).write_text(before)
    code = cli_main(["edit", "--model", str(model.model.name_or_path), file, "-m", message, "--edit_format", name,
                     "--apply", "--device", "cpu", "--max_new_tokens", "120"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == make_diff(before, after)
    assert (tmp_path / file).read_text() == after
    note = f"note: {UNCONSTRAINED_NOTE.format(name)}\n"
    assert err.startswith(note) if name != "carper" else note not in err
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"name": file, "before": before, "message": message}) + "\n")
    code = cli_main(["edit", "--model", str(model.model.name_or_path), "--jsonl", str(requests), str(tmp_path / "out.jsonl"),
                     "--edit_format", name, "--device", "cpu", "--no_progress", "--max_new_tokens", "120"])
    capsys.readouterr()
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert (code, row["status"], row["new_code"], row["diff"]) == (0, "strict", after, make_diff(before, after))
    if name != "carper":
        assert (row["edit_format"], row["output"]) == (name, formats.target(file, before, message, after, name))
    else:
        assert "output" not in row and "edit_format" not in row


def test_eval_edits_in_each_format_records_the_format_and_decoding(trained, tmp_path, capsys):
    name, model = trained
    data = _rows_file(tmp_path / "heldout.jsonl")
    out = tmp_path / "edits.json"
    assert cli_main(["eval", "edits", "--model", str(model.model.name_or_path), "--data", str(data), "--edit_format", name,
                     "--device", "cpu", "--out", str(out), "--no_progress", "--max_new_tokens", "120"]) == 0
    capsys.readouterr()
    report = json.loads(out.read_text())
    assert report["settings"]["edit_format"] == name
    assert report["settings"]["constrained"] is (name == "carper")
    assert report["settings"].get("constrained_note") == (None if name == "carper" else UNCONSTRAINED_NOTE.format(name))
    m = report["metrics"]
    assert (m["samples"], m["parses"], m["applies_strict"], m["exact"]) == (3, 1.0, 1.0, 1.0)


def test_eval_loss_in_each_format_starts_the_loss_where_training_does(trained, tmp_path, capsys):
    name, model = trained
    data = _rows_file(tmp_path / "heldout.jsonl")
    tok = model.tokenizer
    counts = {}
    for loss_on in formats.LOSS_ON:
        out = tmp_path / f"loss_{loss_on.replace('+', '_')}.json"
        assert cli_main(["eval", "loss", "--model", str(model.model.name_or_path), "--data", str(data), "--edit_format", name,
                         "--loss_on", loss_on, "--device", "cpu", "--out", str(out), "--no_progress"]) == 0
        capsys.readouterr()
        report = json.loads(out.read_text())
        assert (report["settings"]["edit_format"], report["settings"]["loss_on"]) == (name, loss_on)
        counts[loss_on] = report["metrics"]["loss_tokens"]
    # by hand: from the token holding the format's marker (or its message marker) to EOS
    texts = [formats.get(name).render(*change) for change in CHANGES.values()]
    markers = {"commit": ("<commit_after>", "<commit_msg>"), "linediff": ("<commit_after>", "<commit_msg>")}
    target, message = markers.get(name, ("<DFF>", "<MSG>"))
    for loss_on, marker in (("diff", target), ("message+diff", message)):
        expected = 0
        for text in texts:
            enc = tok(text)
            first = enc.char_to_token(text.rindex(marker) if name != "commit" else text.index(marker))
            expected += len(enc["input_ids"]) + 1 - first
        assert counts[loss_on] == expected, loss_on
    assert counts["message+diff"] > counts["diff"]


def test_calibration_editors_write_in_each_format(tmp_path, capsys):
    data = _rows_file(tmp_path / "heldout.jsonl")
    for name in FORMAT_NAMES:
        for calibrate, exact in (("oracle", 1.0), ("empty", 0.0)):
            out = tmp_path / f"{name}_{calibrate}.json"
            assert cli_main(["eval", "edits", "--calibrate", calibrate, "--data", str(data), "--edit_format", name,
                             "--out", str(out), "--no_progress"]) == 0
            capsys.readouterr()
            report = json.loads(out.read_text())
            assert (report["metrics"]["exact"], report["metrics"]["applies"]) == (exact, exact), (name, calibrate)
            assert report["statuses"] == {"strict" if exact else "failed": 3}
            rows = [json.loads(line) for line in out.with_suffix(".samples.jsonl").read_text().splitlines()]
            generation = rows[0]["generations"][0]
            assert generation.get("output") == (None if name == "carper" else
                                                formats.target(*CHANGES["fix"][:3], CHANGES["fix"][3 if exact else 1], name))


def test_text_rows_in_another_format_are_skipped_and_counted(tmp_path, capsys):
    file, before, message, after = CHANGES["fix"]
    data = tmp_path / "text.jsonl"
    data.write_text(json.dumps({"text": formats.get("commit").render(file, before, message, after)}) + "\n")
    out = tmp_path / "edits.json"
    assert cli_main(["eval", "edits", "--calibrate", "oracle", "--data", str(data), "--edit_format", "commit",
                     "--out", str(out), "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert f"nothing to score: none of the 1 rows of {data}" in err and "(1 skipped_text_not_carper)" in err
    assert not out.exists()


def test_unknown_edit_format_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["eval", "loss", "--calibrate", "oracle", "--edit_format", "udiff"])
    assert exit_info.value.code == 2
    assert "--edit_format/--edit-format: invalid choice: 'udiff'" in capsys.readouterr().err


def test_generation_eval_during_training_writes_in_the_trained_format(trained):
    from diffmodel.evaluate.edits import make_cases
    from diffmodel.train.generation_eval import GenerationEvalCallback

    name, model = trained
    rows = [{"name": file, "before": before, "message": message, "diff": make_diff(before, after)}
            for file, before, message, after in CHANGES.values()]
    cases, skipped = make_cases(rows, edit_format=name)
    assert (len(cases), skipped) == (3, {})
    logs = GenerationEvalCallback(None, cases, 120, 3, edit_format=name).scores(model.model, model.tokenizer)
    assert (logs["eval_gen_applies_strict"], logs["eval_gen_exact"]) == (1.0, 1.0)


@pytest.mark.parametrize("edit_format, text, starts", [
    ("commit", "<commit_before>a\n<commit_msg>m<commit_after>b\n", {"diff": 30, "message+diff": 17}),
    ("linediff", "<file_name>\nx.py\n<commit_before>\n  1 a\n<commit_msg>\nm\n<commit_after>\n-  1 a\n+  1 b",
     {"diff": 54, "message+diff": 39}),
    ("carper", "<NME> x.py\n<BEF> a\n<MSG> m\n<DFF> @@ -1 +1 @@\n-a\n+b\n", {"diff": 27, "message+diff": 19}),
])
def test_eval_loss_labels_per_format_and_loss_on(edit_format, text, starts):
    """One token per character: the loss starts at the hand-counted character, for text and tokenized rows."""
    from handmade import char_tokenizer, ids

    from diffmodel.evaluate.loss import encode_rows
    from diffmodel.preprocess.labels import IGNORE_INDEX

    tok = char_tokenizer(merges=[])
    eos = tok.eos_token_id
    for loss_on, k in starts.items():
        marker = {"diff": ("<commit_after>" if edit_format != "carper" else "<DFF>"),
                  "message+diff": ("<commit_msg>" if edit_format != "carper" else "<MSG>")}[loss_on]
        assert text[k:].startswith(marker)
        expected = [IGNORE_INDEX] * k + ids(text)[k:] + [eos]
        for row in ({"text": text}, {"input_ids": ids(text)}):
            samples, skipped = encode_rows([row], tok, loss_on=loss_on, edit_format=edit_format)
            assert skipped == {} and samples[0].labels == expected, (loss_on, row.keys())
            assert samples[0].input_ids == ids(text) + [eos]
