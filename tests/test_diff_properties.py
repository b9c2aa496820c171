"""Properties of make/parse/apply over random files and random model output."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffmodel.diff.apply import apply_diff
from diffmodel.diff.make import make_diff, split_lines
from diffmodel.diff.parse import Status, parse_diff, parse_patch

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A small alphabet makes repeated lines (ambiguous matches) common.
LINE = st.sampled_from(["a\n", "b\n", "c\n", "a\r\n", "  a\n", "\n", "x = 1\n", "}\n", "a\rb\n", "é\n"])


@st.composite
def files(draw, lines=LINE):
    text = "".join(draw(st.lists(lines, max_size=25)))
    if text and draw(st.booleans()):
        text = text.rstrip("\n")  # no newline at end of file
    return text


@st.composite
def edited(draw, before: str, new_lines=LINE):
    """``before`` with a few lines inserted, deleted or replaced."""
    lines = split_lines(before)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    for _ in range(draw(st.integers(0, 5))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert" or not lines:
            lines.insert(draw(st.integers(0, len(lines))), draw(new_lines))
        elif op == "delete":
            del lines[draw(st.integers(0, len(lines) - 1))]
        else:
            lines[draw(st.integers(0, len(lines) - 1))] = draw(new_lines)
    text = "".join(lines)
    return text.rstrip("\n") if draw(st.booleans()) else text


@st.composite
def before_after(draw):
    before = draw(files())
    after = draw(edited(before)) if draw(st.booleans()) else draw(files())
    return before, after


CONTEXT = st.integers(0, 4)


@SETTINGS
@given(before_after(), CONTEXT)
def test_apply_make_round_trips_strictly(pair, context):
    before, after = pair
    result = apply_diff(before, make_diff(before, after, context), mode="strict")
    assert result.text == after


@SETTINGS
@given(before_after(), CONTEXT)
def test_apply_make_round_trips_leniently(pair, context):
    before, after = pair
    result = apply_diff(before, make_diff(before, after, context), mode="lenient")
    assert result.text == after


@SETTINGS
@given(before_after(), CONTEXT)
def test_make_output_parses_as_valid_and_prints_back(pair, context):
    before, after = pair
    diff = make_diff(before, after, context)
    parsed = parse_diff(diff)
    if before == after:
        assert parsed.status is Status.EMPTY
    else:
        assert parsed.status is Status.VALID, parsed.notes
        assert parsed.to_text() == diff


UNIQUE = st.lists(st.integers(0, 60), unique=True, max_size=30).map(lambda ns: "".join(f"line {n}\n" for n in ns))
NEW = st.sampled_from(["new\n", "new\n", "other\n", "\n"])


@st.composite
def unique_before_after(draw):
    before = draw(UNIQUE)
    return before, draw(edited(before, NEW))


@SETTINGS
@given(unique_before_after(), st.integers(1, 4), st.integers(-30, 30))
def test_lenient_survives_shifted_line_numbers(pair, context, shift):
    # Every line of before is distinct, so each hunk's old lines occur once.
    before, after = pair
    parsed = parse_diff(make_diff(before, after, context))
    for hunk in parsed.hunks:
        hunk.old_start += shift
        hunk.new_start += shift
    result = apply_diff(before, parsed, mode="lenient")
    assert result.text == after


DIFF_PIECES = st.sampled_from([
    "@@ -1,2 +1,2 @@\n", "@@ -0,0 +1 @@\n", "@@ @@\n", "@@ -3 +3\n", "@@ -1,0 +0,0 @@\n",
    " a\n", "-a\n", "+b\n", " \n", "-\n", "+\n", "\n", "\r\n", "\\ No newline at end of file\n",
    "--- a/x\n", "+++ b/x\n", "--- /dev/null\n", "+++ /dev/null\n", "diff --git a/x b/x\n",
    "<NME> y\n", "<DFF> ", "prose\n", "Binary files a/x and b/x differ\n", "-a", "+b",
])
DIFFISH = st.lists(DIFF_PIECES, max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary(), DIFFISH))
def test_parse_never_raises(text):
    parsed = parse_diff(text)
    assert isinstance(parsed.status, Status)
    assert (parsed.status in (Status.VALID, Status.REPAIRED)) == bool(parsed.hunks)
    parse_patch(text)
    parsed.to_text()


@settings(max_examples=300, deadline=None)
@given(files(st.sampled_from(["a\n", "b\n", "\n", "x\r\n"])), st.one_of(st.text(), DIFFISH), st.sampled_from(["strict", "lenient"]))
def test_apply_never_raises_on_model_output(before, diff, mode):
    result = apply_diff(before, diff, mode)
    assert (result.text is None) or isinstance(result.text, str)
    if result.ok:
        assert result.text is not None
