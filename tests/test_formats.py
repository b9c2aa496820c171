"""The edit formats: exact texts and loss starts on hand-made samples, round trips on random files."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffmodel import formats
from diffmodel.diff import ApplyStatus
from diffmodel.errors import DiffModelError
from diffmodel.formats import carper, commit, linediff, search_replace
from test_diff_properties import edited, files

NAME = "src/stats.py"
BEFORE = "def mean(xs):\n    return sum(xs) / len(xs)\n"
AFTER = "def mean(xs):\n    if not xs:\n        return 0.0\n    return sum(xs) / len(xs)\n"
MESSAGE = "Handle an empty list\n"

EXPECTED = {
    "carper": (
        "<NME> src/stats.py\n<BEF> def mean(xs):\n    return sum(xs) / len(xs)\n<MSG> Handle an empty list\n"
        "<DFF> @@ -1,2 +1,4 @@\n def mean(xs):\n+    if not xs:\n+        return 0.0\n     return sum(xs) / len(xs)\n"
    ),
    "commit": (
        "<commit_before>def mean(xs):\n    return sum(xs) / len(xs)\n<commit_msg>Handle an empty list"
        "<commit_after>def mean(xs):\n    if not xs:\n        return 0.0\n    return sum(xs) / len(xs)\n"
    ),
    "linediff": (
        "<file_name>\nstats.py\n<commit_before>\n  1 def mean(xs):\n  2     return sum(xs) / len(xs)\n"
        "<commit_msg>\nHandle an empty list\n<commit_after>\n"
        "-  2     return sum(xs) / len(xs)\n+  2     if not xs:\n+  3         return 0.0\n+  4     return sum(xs) / len(xs)"
    ),
    "search_replace": (
        "<NME> src/stats.py\n<BEF> def mean(xs):\n    return sum(xs) / len(xs)\n<MSG> Handle an empty list\n<DFF>\n"
        "src/stats.py\n```\n<<<<<<< SEARCH\ndef mean(xs):\n    return sum(xs) / len(xs)\n=======\n"
        "def mean(xs):\n    if not xs:\n        return 0.0\n    return sum(xs) / len(xs)\n>>>>>>> REPLACE\n```\n"
    ),
}
#: where loss starts in each EXPECTED text: the marker after the message
LOSS_START = {"carper": 95, "commit": 90, "linediff": 122, "search_replace": 95}
#: where the message part starts in each EXPECTED text (``--loss_on message+diff``): the message marker
MESSAGE_START = {"carper": 68, "commit": 58, "linediff": 88, "search_replace": 68}
MESSAGE_MARKER = {"carper": "<MSG> ", "commit": "<commit_msg>H", "linediff": "<commit_msg>\n", "search_replace": "<MSG> "}


class TestRegistry:
    def test_the_four_formats_and_the_default(self):
        assert list(formats.FORMATS) == ["carper", "commit", "linediff", "search_replace"]
        assert formats.get(None) is carper and formats.get("linediff") is linediff

    def test_unknown_name_names_the_flag_and_the_choices(self):
        with pytest.raises(DiffModelError, match=r"--edit_format diff: unknown edit format; use one of carper, commit, linediff, search_replace"):
            formats.get("diff")

    def test_row_whose_diff_does_not_apply_names_the_row_and_the_fix(self):
        row = {"name": "a.py", "before": "x = 1\n", "message": "m", "diff": "@@ -1 +1 @@\n-y = 1\n+y = 2\n"}
        with pytest.raises(DiffModelError, match=r"row 'a.py': its diff does not apply.*--edit_format carper"):
            formats.render_row(row, "commit")
        assert formats.render_row(row, "carper") == "<NME> a.py\n<BEF> x = 1\n<MSG> m\n<DFF> @@ -1 +1 @@\n-y = 1\n+y = 2\n"

    def test_loss_marker_names_each_formats_two_markers_without_a_newline(self):
        assert {n: (formats.loss_marker(n), formats.loss_marker(n, "message+diff")) for n in formats.FORMATS} == {
            "carper": ("<DFF>", "<MSG>"),
            "commit": ("<commit_after>", "<commit_msg>"),
            "linediff": ("<commit_after>", "<commit_msg>"),
            "search_replace": ("<DFF>", "<MSG>"),
        }
        assert formats.loss_marker() == formats.loss_marker(None, "diff") == "<DFF>"
        assert formats.loss_marker(None, "message+diff") == "<MSG>"
        with pytest.raises(ValueError, match=r"loss_on 'message' is not one of diff, message\+diff"):
            formats.loss_marker("commit", "message")

    @pytest.mark.parametrize("name", list(EXPECTED))
    def test_render_row_applies_the_rows_diff(self, name):
        row = {"name": NAME, "before": BEFORE, "message": MESSAGE, "diff": carper.parse(EXPECTED["carper"]).to_text()}
        assert formats.render_row(row, name) == EXPECTED[name]


@pytest.mark.parametrize("name", list(EXPECTED))
class TestHandMadeSample:
    def test_exact_text(self, name):
        assert formats.get(name).render(NAME, BEFORE, MESSAGE, AFTER) == EXPECTED[name]

    def test_exact_loss_start_is_the_marker_that_ends_the_prompt(self, name):
        fmt = formats.get(name)
        text, prompt = EXPECTED[name], fmt.prompt(NAME, BEFORE, MESSAGE)
        assert fmt.loss_start(text) == LOSS_START[name]
        assert text.startswith(prompt) and prompt.endswith(fmt.MARKER)
        assert fmt.loss_start(prompt) == len(prompt) - len(fmt.MARKER) == LOSS_START[name]
        assert not fmt.is_empty(text, LOSS_START[name])

    def test_exact_message_start_is_the_message_marker(self, name):
        fmt, text = formats.get(name), EXPECTED[name]
        assert fmt.message_start(text) == MESSAGE_START[name]
        assert text[MESSAGE_START[name]:].startswith(MESSAGE_MARKER[name])
        assert fmt.message_start(fmt.prompt(NAME, BEFORE, MESSAGE)) == MESSAGE_START[name]

    def test_loss_on_chooses_between_the_formats_two_markers(self, name):
        text = EXPECTED[name]
        assert formats.loss_start(text, "diff", name) == LOSS_START[name]
        assert formats.loss_start(text, "message+diff", name) == MESSAGE_START[name]
        with pytest.raises(ValueError, match=r"loss_on 'message' is not one of diff, message\+diff"):
            formats.loss_start(text, "message", name)

    def test_loss_marker_is_the_text_where_loss_starts(self, name):
        text = EXPECTED[name]
        for loss_on in formats.LOSS_ON:
            assert text.startswith(formats.loss_marker(name, loss_on), formats.loss_start(text, loss_on, name))

    def test_no_target_means_no_message_start(self, name):
        text = EXPECTED[name][:LOSS_START[name]]
        assert formats.get(name).message_start(text) == -1 == formats.loss_start(text, "message+diff", name)

    def test_target_applies_to_the_file(self, name):
        fmt = formats.get(name)
        target = EXPECTED[name][len(fmt.prompt(NAME, BEFORE, MESSAGE)):]
        result = fmt.apply(BEFORE, fmt.parse(target))
        assert (result.text, result.status) == (AFTER, ApplyStatus.APPLIED)
        assert fmt.apply(BEFORE, target).text == AFTER

    def test_unchanged_file_has_nothing_to_train(self, name):
        fmt = formats.get(name)
        text = fmt.render(NAME, BEFORE, MESSAGE, BEFORE)
        assert fmt.is_empty(text, fmt.loss_start(text))

    def test_text_without_the_structure_has_no_loss_start(self, name):
        assert formats.get(name).loss_start("def f():\n    return 1\n") == -1


class TestCommit:
    def test_file_before_may_hold_either_marker_alone(self):
        before = "s = '<commit_after>'\n"
        text = commit.render("a.py", before, "m", "s = 1\n")
        assert text == "<commit_before>s = '<commit_after>'\n<commit_msg>m<commit_after>s = 1\n"
        assert commit.loss_start(text) == len("<commit_before>s = '<commit_after>'\n<commit_msg>m")

    def test_output_is_cut_at_a_next_sample(self):
        assert commit.apply("x\n", "y\n<commit_before>z").text == "y\n"

    def test_deleting_every_line_is_a_change(self):
        text = commit.render("a.py", "x\n", "remove", "")
        assert not commit.is_empty(text, commit.loss_start(text))


class TestLinediff:
    def test_line_without_newline_gets_the_marker_line(self):
        assert linediff.target("a\nb\n", "a\nc") == "-  2 b\n+  2 c\n\\ No newline at end of file"
        assert linediff.apply("a\nb\n", "-  2 b\n+  2 c\n\\ No newline at end of file").text == "a\nc"

    def test_an_inserted_line_renumbers_every_later_line(self):
        assert linediff.target("a\nb\n", "x\na\nb\n") == "-  1 a\n-  2 b\n+  1 x\n+  2 a\n+  3 b"

    def test_numbers_of_four_digits_and_empty_lines(self):
        before = "".join(f"{i}\n" for i in range(1000))
        after = before + "\n"
        assert linediff.target(before, after) == "+1001 "
        assert linediff.apply(before, "+1001").text == after  # the space after the number may be missing

    def test_new_file(self):
        text = linediff.render("d/new.py", "", "add", "x = 1\n")
        assert text == "<file_name>\nnew.py\n<commit_before>\n\n<commit_msg>\nadd\n<commit_after>\n+  1 x = 1"

    @pytest.mark.parametrize("output,why", [
        ("-  5 x", "- line 5: the file has 2 lines"),
        ("-  1 y", "- line 1 is not line 1 of the file ('a\\n')"),
        ("+  1 y", "+ line 1 replaces line 1 of the file, which no - line removed"),
        ("-  1 a\n+  3 y", "the new file has no line 1: the numbers must run from 1 without a gap"),
    ])
    def test_failures_say_why(self, output, why):
        result = linediff.apply("a\nb\n", output)
        assert (result.text, result.status, result.notes[-1]) == (None, ApplyStatus.FAILED, why)

    def test_skips_prose_and_stops_at_a_next_sample(self):
        parsed = linediff.parse("Sure:\n-  1 a\n+  1 z\n<file_name>\nother.py\n+  2 q")
        assert (parsed.removed, parsed.added) == ({1: "a\n"}, {1: "z\n"})
        assert parsed.notes == ["skipped a line that is not a numbered -/+ line: 'Sure:'",
                                "stopped at '<file_name>': text after it is not part of the diff"]


class TestSearchReplace:
    def test_block_grows_until_its_search_text_is_first_at_its_place(self):
        before = "p\nq\nr\ns\n" + "".join(f"{i}\n" for i in range(8)) + "p\nq\nr\ns\n"
        text = search_replace.render("f", before, "m", before[:-2])
        body = text[text.index("<DFF>\n") + 6:]
        assert body == "f\n```\n<<<<<<< SEARCH\n7\np\nq\nr\ns\n=======\n7\np\nq\nr\n>>>>>>> REPLACE\n```\n"
        assert search_replace.apply(before, body).text == before[:-2]

    def test_aider_style_output_with_prose_and_loose_whitespace(self):
        output = "Here is the fix.\n\nsrc/x.py\n```python\n<<<<<<< SEARCH\nb = 2   \n=======\nb = 3\n>>>>>>> REPLACE\n```\n"
        result = search_replace.apply("a = 1\nb = 2\n", output)
        assert (result.text, result.status) == ("a = 1\nb = 3\n", ApplyStatus.RELOCATED)

    def test_unfinished_block_is_dropped_and_missing_search_fails(self):
        parsed = search_replace.parse("<<<<<<< SEARCH\nx\n=======\ny\n")
        assert (parsed.blocks, parsed.notes) == ([], ["dropped an unfinished last block"])
        assert search_replace.apply("a\n", parsed).status is ApplyStatus.BAD_FORMAT
        failed = search_replace.apply("a\n", "<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n")
        assert (failed.text, failed.status, failed.notes) == (None, ApplyStatus.FAILED, ["block 1: its SEARCH lines were not found after line 0"])


# -- properties ----------------------------------------------------------------------------------

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MESSAGES = st.text(st.sampled_from("ab <>\n"), max_size=12).filter(lambda m: "<" not in m.strip()[:1] and "\n<" not in m)
NAMES = st.sampled_from(["a.py", "src/b.js", "x"])


@st.composite
def changes(draw):
    before = draw(files())
    after = draw(edited(before)) if draw(st.booleans()) else draw(files())
    return before, after


@SETTINGS
@given(st.sampled_from(list(EXPECTED)), NAMES, changes(), MESSAGES)
def test_round_trip_render_split_parse_apply(name, file_name, change, message):
    fmt = formats.get(name)
    before, after = change
    text, prompt = fmt.render(file_name, before, message, after), fmt.prompt(file_name, before, message)
    assert text.startswith(prompt)
    assert fmt.loss_start(text) == fmt.loss_start(prompt) == len(prompt) - len(fmt.MARKER)
    assert 0 <= fmt.message_start(text) == fmt.message_start(prompt) < fmt.loss_start(text)
    result = fmt.apply(before, fmt.parse(text[len(prompt):]))
    assert result.text == after
    assert fmt.is_empty(text, fmt.loss_start(text)) == (before == after)


@SETTINGS
@given(st.sampled_from(list(EXPECTED)), files(), st.text(max_size=200))
def test_parse_and_apply_never_raise_on_model_output(name, before, output):
    fmt = formats.get(name)
    result = fmt.apply(before, output)
    assert (result.text is None) == (result.status in (ApplyStatus.FAILED, ApplyStatus.BAD_FORMAT))
