"""apply_diff: strict and lenient application, with exact per-hunk outcomes."""

from __future__ import annotations

import pytest

from diffmodel.diff.apply import ApplyStatus, HunkStatus, apply_diff
from diffmodel.diff.make import make_diff
from diffmodel.diff.parse import Status, parse_diff


def numbered(*numbers: int) -> str:
    return "".join(f"line {i}\n" for i in numbers)


BEFORE = numbered(*range(1, 21))
AFTER = BEFORE.replace("line 5\n", "five\n").replace("line 15\n", "fifteen\n")
DIFF = make_diff(BEFORE, AFTER)  # two hunks: -2,7 and -12,7


class TestStrict:
    def test_applies_exactly(self):
        result = apply_diff(BEFORE, DIFF)
        assert result.text == AFTER
        assert result.status is ApplyStatus.APPLIED
        assert [(h.status, h.line, h.offset) for h in result.hunks] == [
            (HunkStatus.APPLIED, 2, 0), (HunkStatus.APPLIED, 12, 0)]
        assert result.ok

    def test_shifted_file_fails(self):
        result = apply_diff("new first line\n" + BEFORE, DIFF)
        assert result.text is None
        assert result.status is ApplyStatus.FAILED
        assert [h.status for h in result.hunks] == [HunkStatus.FAILED, HunkStatus.FAILED]
        assert result.hunks[0].message == "lines do not match at line 2"

    def test_one_failing_hunk_fails_all_but_reports_each(self):
        result = apply_diff(BEFORE.replace("line 16\n", "changed\n"), DIFF)
        assert result.text is None
        assert [h.status for h in result.hunks] == [HunkStatus.APPLIED, HunkStatus.FAILED]

    def test_missing_line_numbers_fail(self):
        result = apply_diff("a\n", "@@ @@\n-a\n+b\n")
        assert result.hunks[0].status is HunkStatus.FAILED
        assert result.parse_status is Status.REPAIRED

    def test_overlapping_hunks_fail(self):
        diff = "@@ -1,2 +1,2 @@\n-a\n+x\n b\n@@ -2 +2 @@\n-b\n+y\n"
        result = apply_diff("a\nb\n", diff)
        assert [h.status for h in result.hunks] == [HunkStatus.APPLIED, HunkStatus.FAILED]

    def test_line_numbers_before_the_file_fail(self):
        parsed = parse_diff("@@ -1 +1 @@\n-a\n+b\n")
        parsed.hunks[0].old_start = -1
        assert apply_diff("a\n", parsed).hunks[0].status is HunkStatus.FAILED

    def test_wrong_counts_still_apply(self):
        result = apply_diff(BEFORE, DIFF.replace("@@ -2,7 +2,7 @@", "@@ -2,3 +2,99 @@"))
        assert result.text == AFTER
        assert result.parse_status is Status.REPAIRED

    def test_missing_no_newline_marker_fails(self):
        diff = make_diff("a\nb", "a\nc").replace("\\ No newline at end of file\n", "")
        assert apply_diff("a\nb", diff).text is None

    def test_crlf_byte_exact(self):
        before, after = "a\r\nb\r\nc\r\n", "a\r\nB\r\nc\r\n"
        assert apply_diff(before, make_diff(before, after)).text == after

    def test_crlf_diff_of_a_crlf_file_applies_byte_for_byte(self):
        # Every line of the diff ends in CRLF, its @@ line too: read as it is, as git apply does.
        before, after = "a\r\nb\r\nc\r\n", "a\r\nB\r\nc\r\n"
        diff = make_diff(before, after).replace("@@\n", "@@\r\n")
        assert diff == "@@ -1,3 +1,3 @@\r\n a\r\n-b\r\n+B\r\n c\r\n"
        for mode in ("strict", "lenient"):
            result = apply_diff(before, diff, mode)
            assert (result.text, result.status, result.notes) == (after, ApplyStatus.APPLIED, []), mode
            assert [(h.status, h.match) for h in result.hunks] == [(HunkStatus.APPLIED, "exact")]

    def test_crlf_diff_of_a_crlf_file_still_fails_where_it_does_not_match(self):
        result = apply_diff("a\r\nx\r\nc\r\n", "@@ -1,3 +1,3 @@\r\n a\r\n-b\r\n+B\r\n c\r\n")
        assert (result.text, result.status) == (None, ApplyStatus.FAILED)
        assert result.hunks[0].message == "lines do not match at line 1"

    def test_unknown_mode_is_a_programming_error(self):
        with pytest.raises(ValueError):
            apply_diff("a\n", "@@ -1 +1 @@\n-a\n+b\n", mode="fuzzy")


class TestNewFile:
    def test_empty_before(self):
        assert apply_diff("", "@@ -0,0 +1,2 @@\n+x\n+y\n").text == "x\ny\n"

    @pytest.mark.parametrize("before", ["ADDFILE", "ADDFILE\n"])
    def test_addfile_placeholder(self, before):
        for mode in ("strict", "lenient"):
            assert apply_diff(before, "@@ -0,0 +1 @@\n+x\n", mode).text == "x\n"

    def test_delete_everything(self):
        assert apply_diff("x\ny\n", make_diff("x\ny\n", "")).text == ""


class TestNothingToApply:
    def test_empty_diff_leaves_the_file(self):
        result = apply_diff(BEFORE, " ")
        assert (result.text, result.status, result.ok) == (BEFORE, ApplyStatus.EMPTY, False)

    def test_prose_is_bad_format(self):
        result = apply_diff(BEFORE, "Sorry, I can't.")
        assert (result.text, result.status, result.parse_status) == (None, ApplyStatus.BAD_FORMAT, Status.BAD_FORMAT)


class TestLenient:
    def test_offset_is_reported(self):
        result = apply_diff("x\ny\n" + BEFORE, DIFF, mode="lenient")
        assert result.text == "x\ny\n" + AFTER
        assert result.status is ApplyStatus.RELOCATED
        assert [(h.status, h.line, h.offset) for h in result.hunks] == [
            (HunkStatus.OFFSET, 4, 2), (HunkStatus.OFFSET, 14, 2)]

    def test_hunk_numbers_wrong_in_the_diff(self):
        shifted = DIFF.replace("@@ -2,7 +2,7 @@", "@@ -40,7 +40,7 @@").replace("@@ -12,7 +12,7 @@", "@@ -50,7 +50,7 @@")
        assert apply_diff(BEFORE, shifted, mode="strict").text is None
        result = apply_diff(BEFORE, shifted, mode="lenient")
        assert result.text == AFTER
        # the second hunk is expected where the first one's offset says
        assert [h.offset for h in result.hunks] == [-38, -38]

    def test_missing_line_numbers(self):
        result = apply_diff(BEFORE, DIFF.replace("@@ -2,7 +2,7 @@", "@@ @@"), mode="lenient")
        assert result.text == AFTER
        assert result.hunks[0].status is HunkStatus.OFFSET

    def test_nearest_of_several_matches(self):
        before = "x\na\nx\n" * 5  # x-a-x starts at lines 1, 4, 7, 10, 13
        diff = "@@ -11,3 +11,3 @@\n x\n-a\n+b\n x\n"  # line 11: 10 is nearer than 13
        result = apply_diff(before, diff, mode="lenient")
        assert (result.hunks[0].line, result.hunks[0].offset) == (10, -1)
        lines = result.text.splitlines()
        assert lines.count("b") == 1 and lines.index("b") == 10

    def test_line_endings_differ(self):
        before = "a\r\nb\r\nc\r\n"
        result = apply_diff(before, "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n", mode="lenient")
        assert result.text == "a\r\nB\r\nc\r\n"
        assert (result.hunks[0].status, result.hunks[0].match) == (HunkStatus.FUZZY, "line-endings")

    def test_crlf_diff_text_applies_to_lf_file(self):
        diff = make_diff("a\nb\nc\n", "a\nB\nc\n").replace("\n", "\r\n")
        assert apply_diff("a\nb\nc\n", diff, mode="strict").text == "a\nB\nc\n"

    def test_whitespace_differs(self):
        before = "def f():\n    x = 1\n    return x\n"
        diff = "@@ -1,3 +1,3 @@\n def f():\n-  x  = 1\n+  x = 2\n   return x\n"
        result = apply_diff(before, diff, mode="lenient")
        assert result.text == "def f():\n  x = 2\n    return x\n"
        assert result.hunks[0].match == "whitespace"

    def test_wrong_context_line_at_the_edge_is_fuzzed(self):
        diff = "@@ -4,3 +4,3 @@\n not in the file\n-line 5\n+five\n line 6\n"
        result = apply_diff(BEFORE, diff, mode="lenient")
        assert result.text == BEFORE.replace("line 5\n", "five\n")
        assert (result.hunks[0].match, result.hunks[0].line) == ("fuzz1", 4)

    def test_missing_no_newline_marker(self):
        diff = "@@ -1,2 +1,3 @@\n a\n b\n+c\n"
        assert apply_diff("a\nb", diff, mode="lenient").text == "a\nb\nc\n"

    def test_hunks_out_of_order(self):
        first, second = DIFF.split("@@ -12")
        result = apply_diff(BEFORE, "@@ -12" + second + first, mode="lenient")
        assert result.text == AFTER

    def test_not_found(self):
        result = apply_diff(BEFORE, "@@ -3,3 +3,3 @@\n nope\n-nothing\n+x\n here\n", mode="lenient")
        assert result.text is None
        assert result.hunks[0].status is HunkStatus.FAILED
        assert "not found" in result.hunks[0].message

    def test_repeated_hunk_cannot_apply_twice(self):
        hunk = "@@ -5 +5 @@\n-line 5\n+five\n"
        result = apply_diff(BEFORE, hunk + hunk, mode="lenient")
        assert [h.status for h in result.hunks] == [HunkStatus.APPLIED, HunkStatus.FAILED]


TEN = numbered(*range(1, 11))
#: A model's header with only the old range: its body is nine added lines and no context.
HALF_HEADER_NO_CONTEXT = "@@ -1,7 @@\n" + "".join(f"+junk {i}\n" for i in range(1, 10))
#: The same kind of header over a body whose context is lines 1 to 4 of TEN.
HALF_HEADER = "@@ -1,7 @@\n line 1\n line 2\n-line 3\n+three\n line 4\n"


class TestHeaderWithoutBothRanges:
    """A header such as ``@@ -1,7 @@`` does not say where the new lines go: never strict."""

    def test_added_lines_without_context_never_apply(self):
        for mode in ("strict", "lenient"):
            result = apply_diff(TEN, HALF_HEADER_NO_CONTEXT, mode)
            assert (result.text, result.status) == (None, ApplyStatus.FAILED), mode
            assert result.hunks[0].status is HunkStatus.FAILED
        assert apply_diff(TEN, HALF_HEADER_NO_CONTEXT, "strict").hunks[0].message == (
            "the hunk header has no +NEW range; only a lenient apply may place it by its context")
        assert apply_diff(TEN, HALF_HEADER_NO_CONTEXT, "lenient").hunks[0].message == (
            "the hunk header has no +NEW range and the hunk has no context or removed lines to find it by")

    def test_strict_refuses_even_when_the_context_matches(self):
        result = apply_diff(TEN, HALF_HEADER, "strict")
        assert (result.text, result.status) == (None, ApplyStatus.FAILED)
        assert result.hunks[0].message == "the hunk header has no +NEW range; only a lenient apply may place it by its context"

    def test_lenient_applies_by_matching_context_and_says_so(self):
        result = apply_diff(TEN, HALF_HEADER, "lenient")
        assert result.text == TEN.replace("line 3\n", "three\n")
        assert result.status is ApplyStatus.RELOCATED
        outcome = result.hunks[0]
        assert (outcome.status, outcome.line, outcome.offset, outcome.match) == (HunkStatus.OFFSET, 1, 0, "exact")
        assert outcome.describe() == "offset at line 1 (the hunk header has no +NEW range)"

    def test_lenient_fails_when_the_context_does_not_match(self):
        result = apply_diff(TEN.replace("line 1\n", "first\n"), HALF_HEADER, "lenient")
        assert (result.text, result.status) == (None, ApplyStatus.FAILED)
        assert result.hunks[0].message == "context and removed lines not found near line 1"

    def test_lenient_does_not_drop_context_to_place_it(self):
        # With a full header one wrong context line at the edge is fuzzed away; here it is not.
        fuzzed = HALF_HEADER.replace("@@ -1,7 @@", "@@ -1,4 +1,4 @@")
        other = TEN.replace("line 1\n", "first\n")
        assert apply_diff(other, fuzzed, "lenient").hunks[0].match == "fuzz1"
        assert apply_diff(other, HALF_HEADER, "lenient").text is None

    def test_old_range_missing(self):
        diff = HALF_HEADER.replace("@@ -1,7 @@", "@@ +1,4 @@")
        assert apply_diff(TEN, diff, "strict").hunks[0].message == (
            "the hunk header has no -OLD range; only a lenient apply may place it by its context")
        assert apply_diff(TEN, diff, "lenient").text == TEN.replace("line 3\n", "three\n")

    def test_new_file_from_a_header_without_ranges(self):
        result = apply_diff("", "@@ +1,2 @@\n+x\n+y\n", "lenient")
        assert (result.text, result.status) == ("x\ny\n", ApplyStatus.RELOCATED)
        assert apply_diff("", "@@ +1,2 @@\n+x\n+y\n", "strict").text is None


def test_parsed_diff_is_accepted():
    assert apply_diff(BEFORE, parse_diff(DIFF)).text == AFTER


def test_describe():
    result = apply_diff("x\n" + BEFORE, DIFF, mode="lenient")
    assert result.hunks[0].describe() == "offset at line 3 (offset +1 line)"
    failed = apply_diff("", "@@ -1 +1 @@\n-a\n+b\n").hunks[0]
    assert failed.describe() == "FAILED: lines do not match at line 1"
