"""DiffGrammar: what may follow each point of a diff over a known file, and the final diff."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_diff_properties import CONTEXT, before_after, files

from diffmodel.diff.apply import apply_diff
from diffmodel.diff.grammar import MARKER_LINE, MAX_DIGITS, DiffGrammar, DiffRejected, Next
from diffmodel.diff.make import make_diff, split_lines
from diffmodel.diff.parse import Status, parse_diff

DIGITS_AND_SPACE = "0123456789 "
NUMBERED = "".join(f"line {i}\n" for i in range(1, 11))  # "line 1\n" .. "line 10\n"


def state_after(before: str, text: str):
    return DiffGrammar(before).start().feed(text)


def line_start(chars: str, end: bool) -> Next:
    return Next("line", chars=frozenset(chars), end=end)


def applied(before: str, diff: str) -> str | None:
    return apply_diff(before, diff, mode="strict").text


class TestForcedContextIsTheFileByteForByte:
    def test_crlf_file(self):
        before = "a\r\nb\r\nc\r\n"
        s = state_after(before, "@@ -1,3 +1,3 @@\n ")
        assert s.allowed_next() == Next("forced", forced="a\r\n")
        s = s.feed("a\r\n-")
        assert s.allowed_next() == Next("forced", forced="b\r\n")
        s = s.feed("b\r\n+B\r\n")
        assert s.finish() == "@@ -1,2 +1,2 @@\n a\r\n-b\r\n+B\r\n"
        assert applied(before, s.finish()) == "a\r\nB\r\nc\r\n"

    def test_no_newline_at_end_of_file(self):
        before = "a\nb"
        s = state_after(before, "@@ -1,2 +1,2 @@\n")
        assert s.allowed_next() == line_start(" -+", end=False)
        s = s.feed(" a\n")
        # the last line has no newline: no context on it before a change, no hunk after it
        assert s.allowed_next() == line_start("-+", end=False)
        s = s.feed("-")
        assert s.allowed_next() == Next("forced", forced="b\n\\ No newline at end of file\n")
        s = s.feed("b\n\\ No newline at end of file\n")
        assert s.allowed_next() == line_start("+", end=True)
        s = s.feed("+c\n")
        assert s.allowed_next() == line_start("+\\", end=True)
        s = s.feed("\\")
        assert s.allowed_next() == Next("forced", forced=" No newline at end of file\n")
        s = s.feed(" No newline at end of file\n")
        assert s.allowed_next() == line_start("", end=True)
        assert s.finish() == make_diff("a\nb", "a\nc")
        assert applied(before, s.finish()) == "a\nc"

    def test_context_on_a_last_line_without_newline_ends_the_diff(self):
        s = state_after("a\nb", "@@ -1,2 +1,2 @@\n-a\n+A\n ")
        assert s.allowed_next() == Next("forced", forced="b\n" + MARKER_LINE)
        s = s.feed("b\n" + MARKER_LINE)
        assert s.allowed_next() == line_start("", end=True)  # a '+' would need b's missing newline
        assert s.accepted_prefix("+x\n") == 0
        assert applied("a\nb", s.finish()) == "A\nb"

    def test_tabs(self):
        before = "def f():\n\tif x:\n\t\treturn 1\n"
        s = state_after(before, "@@ -2,2 +2,2 @@\n ")
        assert s.allowed_next() == Next("forced", forced="\tif x:\n")
        s = s.feed("\tif x:\n-")
        assert s.allowed_next() == Next("forced", forced="\t\treturn 1\n")
        s = s.feed("\t\treturn 1\n+\t\treturn 2\n")
        assert applied(before, s.finish()) == "def f():\n\tif x:\n\t\treturn 2\n"

    def test_unicode(self):
        before = "héllo → wörld ✓\n日本語\n"
        s = state_after(before, "@@ -1,2 +1,2 @@\n ")
        assert s.allowed_next() == Next("forced", forced="héllo → wörld ✓\n")
        s = s.feed("héllo → wörld ✓\n-")
        assert s.allowed_next() == Next("forced", forced="日本語\n")
        s = s.feed("日本語\n+中文 ✓\n")
        assert s.finish() == "@@ -1,2 +1,2 @@\n héllo → wörld ✓\n-日本語\n+中文 ✓\n"
        assert applied(before, s.finish()) == "héllo → wörld ✓\n中文 ✓\n"

    def test_empty_file_takes_only_added_lines(self):
        s = DiffGrammar("").start()
        assert s.allowed_next() == Next("forced", forced="@@ -")
        s = s.feed("@@ -")
        assert s.allowed_next() == Next("old_start", chars=frozenset("01"))
        s = s.feed("0")
        assert s.allowed_next() == Next("forced", forced=",0 +")  # "-0" names the line before line 1
        s = s.feed(",0 +1,2 @@\n")
        assert s.allowed_next() == Next("forced", forced="+")
        assert s.accepted_prefix(" ") == 0 and s.accepted_prefix("-") == 0
        s = s.feed("+x\n+y\n")
        assert s.finish() == "@@ -0,0 +1,2 @@\n+x\n+y\n"
        assert applied("", s.finish()) == "x\ny\n"

    def test_empty_file_header_written_with_start_one_is_rewritten(self):
        s = state_after("", "@@ -1,7 +1,7 @@\n+x\n")
        assert s.finish() == "@@ -0,0 +1 @@\n+x\n"

    def test_new_hunk_after_a_previous_one(self):
        s = state_after(NUMBERED, "@@ -2 +2 @@\n-line 2\n+two\n+2\n@@ -")
        assert s.allowed_next() == Next("old_start", chars=frozenset("123456789"))  # 2..11: not before line 3
        s = s.feed("6,2 +6,2 @@\n ")
        assert s.allowed_next() == Next("forced", forced="line 6\n")
        s = s.feed("line 6\n+new\n line 7\n")
        assert s.finish() == "@@ -2 +2,2 @@\n-line 2\n+two\n+2\n@@ -6,2 +7,3 @@\n line 6\n+new\n line 7\n"
        expected = NUMBERED.replace("line 2\n", "two\n2\n").replace("line 6\n", "line 6\nnew\n")
        assert applied(NUMBERED, s.finish()) == expected

    def test_repeated_lines_are_forced_by_position(self):
        before = "x\nx\nx\ny\nx\n"
        s = state_after(before, "@@ -2,4 +2,2 @@\n ")
        assert s.allowed_next() == Next("forced", forced="x\n")
        s = s.feed("x\n-")
        assert s.allowed_next() == Next("forced", forced="x\n")
        s = s.feed("x\n ")
        assert s.allowed_next() == Next("forced", forced="y\n")
        s = s.feed("y\n-x\n")
        assert s.next_line == 5
        assert s.finish() == "@@ -2,4 +2,2 @@\n x\n-x\n y\n-x\n"
        assert applied(before, s.finish()) == "x\nx\ny\n"


class TestRejections:
    def test_context_line_that_differs_from_the_file(self):
        s = state_after("a\nb\n", "@@ -1,2 +1,2 @@\n")
        assert s.accepted_prefix(" b\n") == 1
        with pytest.raises(DiffRejected) as err:
            s.feed(" b\n")
        assert err.value.offset == 1
        assert err.value.reason == "expected 'a\\n', got 'b' (the rest of line 1 of the file)"

    def test_a_context_line_without_its_crlf(self):
        s = state_after("a\r\n", "@@ -1 +1 @@\n")
        assert s.accepted_prefix(" a\n") == 2

    def test_removal_past_the_end_of_the_file(self):
        s = state_after("a\n", "@@ -1 +1 @@\n-a\n")
        assert s.allowed_next() == line_start("+@", end=True)
        assert s.accepted_prefix("-") == 0
        assert s.accepted_prefix(" ") == 0
        with pytest.raises(DiffRejected) as err:
            s.feed("-a\n")
        assert err.value.reason == (
            "a line cannot start with '-' here (1 of the file's 1 lines are used); allowed: '+', '@' or the end"
        )

    def test_hunk_starting_before_the_previous_hunk_ends(self):
        s = state_after("a\nb\nc\nd\ne\n", "@@ -3 +3 @@\n-c\n@@ -")  # the first hunk ends at line 3 (0-based)
        assert s.allowed_next() == Next("old_start", chars=frozenset("3456"))
        assert s.accepted_prefix("1") == 0
        assert s.accepted_prefix("2") == 0
        assert s.accepted_prefix("3 ") == 1  # "-3" is line 3 (0-based 2): inside the previous hunk
        assert s.accepted_prefix("3,1") == 2
        assert s.accepted_prefix("3,0 ") == 4  # "-3,0": after line 3, where the previous hunk ended
        assert s.accepted_prefix("4 +4 @@\n d\n") == 11
        with pytest.raises(DiffRejected) as err:
            s.feed("2")
        assert err.value.reason == (
            "'2' is not allowed in the hunk header's old_start (this hunk may start at old line 4..6, 1-based); "
            "allowed: '3', '4', '5', '6'"
        )

    def test_hunk_start_past_the_end(self):
        s = DiffGrammar("a\nb\nc\n").start().feed("@@ -")
        assert s.allowed_next() == Next("old_start", chars=frozenset("01234"))
        assert s.accepted_prefix("5") == 0
        assert s.accepted_prefix("4,0 ") == 2  # after line 4: past the end
        assert s.accepted_prefix("4,1 ") == 4  # "-4,1": line 4 (0-based 3), the end: append
        assert s.accepted_prefix("3,0 +4 @@\n+d\n") == 13

    def test_no_hunk_at_the_end_of_a_file_without_final_newline(self):
        s = DiffGrammar("a\nb").start().feed("@@ -")
        assert s.accepted_prefix("2,0") == 2  # after line 2 = appending to "b", which has no newline
        assert s.accepted_prefix("2,1 ") == 4

    @pytest.mark.parametrize(("text", "allowed"), [
        ("@@ +1 +1 @@\n", 3),
        ("@ -1 +1 @@\n", 1),
        ("@@ -01 +1 @@\n", 5),
        ("@@ -x +1 @@\n", 4),
        ("@@ -1,x +1 @@\n", 6),
        ("@@ -1, +1 @@\n", 6),
        ("@@ -1 +1,2,3 @@\n", 10),
        ("@@ -1 +1  @@\n", 9),
        ("@@ -1 +1 @@ def f():\n", 11),
        ("@@ -1 +1 @@\r\n", 11),
        ("@@ -1 +1 @\n", 10),
        ("@@ -1 +1\n", 8),
        ("@@ -9 +9 @@\n", 4),
        ("@@ -1 +0" + "1" * 3, 8),
        ("@@ -1 +" + "1" * (MAX_DIGITS + 1), 7 + MAX_DIGITS),
        ("@@ -1," + "1" * (MAX_DIGITS + 1), 6 + MAX_DIGITS),
    ])
    def test_malformed_header(self, text, allowed):
        assert DiffGrammar("a\nb\nc\n").start().accepted_prefix(text) == allowed

    def test_a_diff_must_open_with_a_header(self):
        s = DiffGrammar("a\n").start()
        assert s.accepted_prefix(" a\n") == 0
        assert s.accepted_prefix("+a\n") == 0


class TestTokenStringsAcrossBoundaries:
    def setup_method(self):
        self.state = state_after("x = 1\ny = 2\n", "@@ -1,2 +1,2 @@\n ")

    def test_forced_rest_then_the_next_choice(self):
        assert self.state.accepts("x = 1\n+y")
        assert self.state.accepts("x = 1\n-y")  # "-y = 2\n" goes on
        assert self.state.accepts("x = 1\n y = 2\n+")
        assert self.state.accepts("x = ")  # a token may stop mid-line
        assert not self.state.accepts("x = 1\n-z")
        assert self.state.accepted_prefix("x = 1\n-z") == 7
        assert not self.state.accepts("x = 2\n")
        assert self.state.accepted_prefix("x = 2\n") == 4

    def test_a_new_hunk_or_the_end_needs_a_change(self):
        assert not self.state.accepts("x = 1\n@")
        assert self.state.accepts("x = 1\n+z\n@@ -")
        assert not self.state.feed("x = 1\n").can_end
        assert self.state.feed("x = 1\n+z\n").can_end

    def test_checking_does_not_change_the_state(self):
        before = self.state.allowed_next()
        self.state.accepts("x = 1\n+y\n@@ -2")
        self.state.accepted_prefix("x = 1\n-z")
        assert self.state.allowed_next() == before == Next("forced", forced="x = 1\n")
        branch_a = self.state.feed("x = 1\n+a\n")
        branch_b = self.state.feed("x = 1\n-")
        assert branch_a.finish() == "@@ -1 +1,2 @@\n x = 1\n+a\n"
        assert branch_b.allowed_next() == Next("forced", forced="y = 2\n")

    def test_try_feed_is_feed_or_none(self):
        good = self.state.try_feed("x = 1\n+a\n")
        assert good.text == self.state.feed("x = 1\n+a\n").text == "@@ -1,2 +1,2 @@\n x = 1\n+a\n"
        assert good.signature == self.state.feed("x = 1\n+a\n").signature
        assert self.state.try_feed("x = 2\n") is None
        assert self.state.try_feed("") is self.state
        assert self.state.text == "@@ -1,2 +1,2 @@\n "  # unchanged by either

    def test_added_text_is_free_until_the_newline(self):
        s = self.state.feed("x = 1\n+")
        assert s.allowed_next() == Next("added")
        assert s.accepts("@@ -1 +1 @@ \\ No newline ✓\t\r")
        assert s.accepts("z\n-y = 2\n")
        assert s.accepted_prefix("z\n-q") == 3

    def test_forced_header_parts_inside_a_token(self):
        s = DiffGrammar("x = 1\ny = 2\n").start()
        assert s.accepts("@@ -1,2 +1,2 @@\n x")
        assert s.accepted_prefix("@@ -1,2 +1,2 @@\n x = 2") == 21
        assert s.feed("@@ -1").allowed_next() == Next("old_start", chars=frozenset(", "))
        assert s.feed("@@ -1,2").allowed_next() == Next("old_count", chars=frozenset(DIGITS_AND_SPACE))
        assert s.feed("@@ -1,2 +1,2").allowed_next() == Next("new_count", chars=frozenset(DIGITS_AND_SPACE))

    def test_a_count_that_must_be_zero_is_forced(self):
        s = state_after("a\nb\n", "@@ -1 +1 @@\n-a\n@@ -1")  # "-1" after line 1: only as "-1,0"
        assert s.allowed_next() == Next("forced", forced=",0 +")


class TestHeaderPolicy:
    def test_counts_and_new_start_are_rewritten_from_the_body(self):
        s = state_after("a\nb\n", "@@ -1,99 +7,42 @@\n-a\n+b\n+c\n")
        assert s.finish() == "@@ -1 +1,2 @@\n-a\n+b\n+c\n"

    def test_a_zero_count_starts_the_hunk_after_the_line_named(self):
        before = "a\nb\nc\n"
        after_line_1 = state_after(before, "@@ -1,0 +2 @@\n+x\n").finish()
        assert after_line_1 == "@@ -1,0 +2 @@\n+x\n"
        assert applied(before, after_line_1) == "a\nx\nb\nc\n"
        at_line_1 = state_after(before, "@@ -1 +1 @@\n+x\n").finish()
        assert at_line_1 == "@@ -0,0 +1 @@\n+x\n"
        assert applied(before, at_line_1) == "x\na\nb\nc\n"

    def test_a_zero_count_claim_with_context_lines(self):
        s = state_after("a\nb\nc\n", "@@ -1,0 +2,0 @@\n b\n-c\n")
        assert s.finish() == "@@ -2,2 +2 @@\n b\n-c\n"

    def test_new_start_follows_the_previous_hunks(self):
        s = state_after(NUMBERED, "@@ -1 +1 @@\n-line 1\n@@ -4 +1 @@\n-line 4\n@@ -8,0 +1 @@\n+after 8\n")
        assert s.finish() == "@@ -1 +0,0 @@\n-line 1\n@@ -4 +2,0 @@\n-line 4\n@@ -8,0 +7 @@\n+after 8\n"
        assert applied(NUMBERED, s.finish()) == NUMBERED.replace("line 1\n", "").replace("line 4\n", "").replace(
            "line 8\n", "line 8\nafter 8\n")

    def test_finish_parses_as_valid(self):
        s = state_after(NUMBERED, "@@ -3,5 +3,5 @@\n line 3\n-line 4\n+four\n")
        parsed = parse_diff(s.finish())
        assert parsed.status is Status.VALID and parsed.notes == []


class TestEnd:
    def test_not_before_a_change(self):
        s = state_after("a\nb\n", "@@ -1,2 +1,2 @@\n a\n b\n")
        assert s.allowed_next() == Next("forced", forced="+")  # the one way on: an added line
        assert not s.can_end
        with pytest.raises(ValueError, match="cannot end here"):
            s.finish()

    def test_not_mid_line(self):
        s = state_after("a\n", "@@ -1 +1 @@\n-a\n+b")
        assert not s.can_end
        assert s.feed("\n").can_end

    def test_partial_finish_drops_the_unfinished_line(self):
        s = state_after("a\nb\nc\n", "@@ -1,3 +1,3 @@\n-a\n+A\n b")
        assert s.finish(partial=True) == "@@ -1 +1 @@\n-a\n+A\n"
        s = state_after("a\n", "@@ -1 +1 @@\n-a\n+x\n\\ No new")
        assert s.finish(partial=True) == "@@ -1 +1 @@\n-a\n+x\n"

    def test_partial_finish_drops_a_hunk_without_change(self):
        s = state_after(NUMBERED, "@@ -1 +1 @@\n-line 1\n@@ -5,3 +4,3 @@\n line 5\n line")
        assert s.finish(partial=True) == "@@ -1 +0,0 @@\n-line 1\n"
        s = state_after(NUMBERED, "@@ -1 +1 @@\n-line 1\n@@ -5,3 +4")
        assert s.finish(partial=True) == "@@ -1 +0,0 @@\n-line 1\n"
        assert state_after(NUMBERED, "@@ -1 +1 @@\n line 1\n").finish(partial=True) == ""
        assert DiffGrammar(NUMBERED).start().finish(partial=True) == ""

    def test_text_is_what_was_fed(self):
        s = state_after("a\n", "@@ -1,5 +1,5 @@\n")
        assert s.feed("-a\n").text == "@@ -1,5 +1,5 @@\n-a\n"
        assert s.feed("").text == "@@ -1,5 +1,5 @@\n"


# -- properties ------------------------------------------------------------------------------

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Repeated lines, CRLF, a lone CR, tabs and unicode; files() may drop the final newline.
FILE_LINE = st.sampled_from(["a\n", "b\n", "a\n", "a\r\n", "\tx = 1\n", "\n", "é ✓\n", "a\rb\n", "}\n"])
ADDED_TEXT = st.text(alphabet=st.sampled_from(list("ab \t\r@+-\\é✓")), max_size=6)
HEADER = re.compile(r"@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@\n\Z")


def expected_file(before: str, raw: str) -> str:
    """The file the raw diff's choices describe, read on their own terms.

    A header ``-S,C`` puts its hunk at 0-based line S when C is 0, else at
    S - 1 (the grammar's policy); body lines copy, skip or add lines.
    """
    old = split_lines(before)
    new: list[str] = []
    at, last = 0, ""
    for line in split_lines(raw):
        tag = line[0]
        if tag == "@":
            start, count = HEADER.match(line).groups()
            index = int(start) if count == "0" else int(start) - 1
            new += old[at:index]
            at = index
        elif tag == " ":
            new.append(old[at])
            at += 1
        elif tag == "-":
            at += 1
        elif tag == "+":
            new.append(line[1:])
        elif last == "+":  # "\ No newline at end of file" after an added line
            new[-1] = new[-1][:-1]
        last = tag
    return "".join(new + old[at:])


def random_walk(data, before: str, max_lines: int = 25) -> str:
    """Write a diff by drawing every choice from allowed_next(); return the raw text."""
    state = DiffGrammar(before).start()
    lines = 0
    while True:
        nxt = state.allowed_next()
        if nxt.field == "forced":
            assert nxt.forced and nxt.chars is None and not nxt.end
            text = nxt.forced
        elif nxt.field == "added":
            text = data.draw(ADDED_TEXT) + "\n"
        else:
            options = sorted(nxt.chars) + (["END"] if nxt.end else [])
            assert options, "a dead end"
            if nxt.field == "line":
                lines += 1
                if lines > max_lines:  # wind down: end, or make the change that allows it
                    options = ["END"] if nxt.end else [c for c in options if c in "-+"]
            text = data.draw(st.sampled_from(options))
            if text == "END":
                assert state.can_end
                return state.text
        assert state.accepts(text)
        state = state.feed(text)


@SETTINGS
@given(files(lines=FILE_LINE), st.data())
def test_random_choices_give_a_diff_that_applies_strictly(before, data):
    raw = random_walk(data, before)
    state = DiffGrammar(before).start()
    assert state.accepted_prefix(raw) == len(raw)
    # the same text in random pieces (tokens spanning forced text and choices)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(raw)), max_size=12))))
    for a, b in zip([0, *cuts], [*cuts, len(raw)]):
        state = state.feed(raw[a:b])
    finished = state.finish()
    parsed = parse_diff(finished)
    assert parsed.status is Status.VALID, (finished, parsed.notes)
    result = apply_diff(before, finished, mode="strict")
    assert result.text == expected_file(before, raw), (raw, finished)


@SETTINGS
@given(before_after(), CONTEXT)
def test_make_diff_is_accepted_char_by_char_and_finishes_unchanged(pair, context):
    before, after = pair
    diff = make_diff(before, after, context)
    state = DiffGrammar(before).start()
    for k, char in enumerate(diff):
        assert state.accepts(char), (diff, k)
        state = state.feed(char)
    if before == after:
        assert diff == "" and not state.can_end
    else:
        assert state.can_end
        assert state.finish() == diff


class TestSignature:
    def test_states_that_accept_the_same_continuations_share_a_signature(self):
        from diffmodel.diff.grammar import DiffGrammar

        start = DiffGrammar("a\nb\n").start()
        one = start.feed("@@ -1,2 +1,2 @@\n+x\n")
        two = start.feed("@@ -1 +1,9 @@\n+longer line\n+y\n")  # other counts and text, same place
        assert one.signature == two.signature and one.text != two.text
        assert start.feed("@@ -1,2 +1,2 @@\n+x").signature == start.feed("@@ -1 +1 @@\n+yy").signature  # inside '+' text
        assert one.feed(" ").signature != one.feed("-").signature
        assert one.signature != DiffGrammar("a\nb\n").start().feed("@@ -1,2 +1,2 @@\n+x\n").signature  # another grammar
