"""parse_diff / parse_patch: well-formed diffs and each defect models produce."""

from __future__ import annotations

from diffmodel.diff.make import make_diff
from diffmodel.diff.parse import Hunk, Status, parse_diff, parse_patch
from diffmodel.sample import render

BEFORE = "a\nb\nc\nd\n"
AFTER = "a\nB\nc\nd\ne\n"
DIFF = make_diff(BEFORE, AFTER)  # "@@ -1,4 +1,5 @@\n a\n-b\n+B\n c\n d\n+e\n"


class TestWellFormed:
    def test_valid_body(self):
        parsed = parse_diff(DIFF)
        assert parsed.status is Status.VALID
        assert parsed.notes == []
        assert parsed.hunks == [Hunk(1, 4, 1, 5, [" a\n", "-b\n", "+B\n", " c\n", " d\n", "+e\n"])]
        assert parsed.to_text() == DIFF

    def test_old_and_new_lines(self):
        hunk = parse_diff(DIFF).hunks[0]
        assert hunk.old_lines() == ["a\n", "b\n", "c\n", "d\n"]
        assert hunk.new_lines() == ["a\n", "B\n", "c\n", "d\n", "e\n"]

    def test_no_newline_markers_fold_into_lines(self):
        hunk = parse_diff(make_diff("a\nb", "a\nc")).hunks[0]
        assert hunk.old_lines() == ["a\n", "b"]
        assert hunk.new_lines() == ["a\n", "c"]
        hunk = parse_diff(make_diff("a\nb", "x\nb")).hunks[0]
        assert hunk.old_lines() == ["a\n", "b"]
        assert hunk.new_lines() == ["x\n", "b"]

    def test_empty_ranges_store_the_line_after(self):
        assert parse_diff("@@ -0,0 +1,2 @@\n+x\n+y\n").hunks[0].old_start == 1
        hunk = parse_diff(make_diff("a\nb\n", "a\nb\nc\n", context=0)).hunks[0]  # @@ -2,0 +3 @@
        assert (hunk.old_start, hunk.old_len, hunk.new_start, hunk.new_len) == (3, 0, 3, 1)

    def test_crlf_file_diff_keeps_crlf_content(self):
        diff = make_diff("a\r\nb\r\n", "a\r\nc\r\n")
        parsed = parse_diff(diff)
        assert parsed.status is Status.VALID
        assert parsed.hunks[0].new_lines() == ["a\r\n", "c\r\n"]

    def test_crlf_diff_is_read_both_ways(self):
        parsed = parse_diff("@@ -1,2 +1,2 @@\r\n a\r\n-b\r\n+c\r\n")
        assert (parsed.status, parsed.notes) == (Status.REPAIRED, ["diff had CRLF line endings"])
        assert parsed.hunks == [Hunk(1, 2, 1, 2, [" a\n", "-b\n", "+c\n"])]
        assert (parsed.verbatim.status, parsed.verbatim.notes) == (Status.VALID, [])
        assert parsed.verbatim.hunks == [Hunk(1, 2, 1, 2, [" a\r\n", "-b\r\n", "+c\r\n"])]
        assert parse_diff(DIFF).verbatim is None
        two = parse_patch("--- a/x\r\n+++ b/x\r\n@@ -1 +1 @@\r\n-a\r\n+b\r\n--- a/y\r\n+++ b/y\r\n@@ -1 +1 @@\r\n-c\r\n+d\r\n")
        assert [(s.new_path, s.verbatim.new_path, s.verbatim.hunks[0].lines) for s in two] == [
            ("x", "x", ["-a\r\n", "+b\r\n"]), ("y", "y", ["-c\r\n", "+d\r\n"])]

    def test_function_context_after_header_is_kept(self):
        parsed = parse_diff("@@ -1 +1 @@ def f():\n-a\n+b\n")
        assert parsed.status is Status.VALID
        assert parsed.hunks[0].section == " def f():"
        assert parsed.to_text() == "@@ -1 +1 @@ def f():\n-a\n+b\n"

    def test_git_patch_headers(self):
        patch = "diff --git a/src/x.py b/src/x.py\nindex 123..456 100644\n--- a/src/x.py\n+++ b/src/x.py\n" + DIFF
        parsed = parse_diff(patch)
        assert parsed.status is Status.VALID
        assert (parsed.old_path, parsed.new_path) == ("src/x.py", "src/x.py")

    def test_new_file_patch_headers(self):
        parsed = parse_diff("--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+x\n")
        assert (parsed.old_path, parsed.new_path) == ("/dev/null", "new.txt")

    def test_timestamps_after_names_are_dropped(self):
        parsed = parse_diff("--- x.txt\t2024-01-01 00:00:00\n+++ x.txt\t2024-01-02 00:00:00\n" + DIFF)
        assert (parsed.old_path, parsed.new_path) == ("x.txt", "x.txt")

    def test_multi_file_patch(self):
        patch = "--- a/one\n+++ b/one\n" + DIFF + "--- a/two\n+++ b/two\n@@ -1 +1 @@\n-x\n+y\n"
        sections = parse_patch(patch)
        assert [s.new_path for s in sections] == ["one", "two"]
        assert all(s.status is Status.VALID for s in sections)
        first = parse_diff(patch)
        assert first.status is Status.REPAIRED
        assert "ignored 1 further file(s) in the patch" in first.notes

    def test_removed_line_that_looks_like_a_file_header_is_body(self):
        # "-- comment" removed and "++ x" added look like "--- "/"+++ " headers.
        diff = "@@ -1,2 +1,2 @@\n--- comment\n+++ x\n same\n"
        parsed = parse_diff(diff)
        assert parsed.status is Status.VALID
        assert parsed.hunks[0].old_lines() == ["-- comment\n", "same\n"]


class TestModelDefects:
    def test_leading_space_after_dff(self):
        parsed = parse_diff(" " + DIFF)
        assert parsed.status is Status.VALID
        assert parsed.to_text() == DIFF

    def test_whole_rendered_sample(self):
        parsed = parse_diff(render("x.txt", BEFORE, "change b", DIFF))
        assert parsed.status is Status.VALID
        assert parsed.to_text() == DIFF

    def test_wrong_counts_are_recounted(self):
        parsed = parse_diff(DIFF.replace("@@ -1,4 +1,5 @@", "@@ -1,3 +1,9 @@"))
        assert parsed.status is Status.REPAIRED
        assert (parsed.hunks[0].old_len, parsed.hunks[0].new_len) == (4, 5)
        assert parsed.notes == ["hunk 1: header counts -3 +9 recounted from the body as -4 +5"]
        assert parsed.to_text() == DIFF

    def test_missing_counts(self):
        parsed = parse_diff(DIFF.replace("@@ -1,4 +1,5 @@", "@@ -1 +1 @@"))
        assert parsed.status is Status.REPAIRED
        assert parsed.to_text() == DIFF

    def test_missing_line_numbers(self):
        parsed = parse_diff(DIFF.replace("@@ -1,4 +1,5 @@", "@@ @@"))
        assert parsed.status is Status.REPAIRED
        assert (parsed.hunks[0].old_start, parsed.hunks[0].new_start) == (None, None)
        assert "hunk 1: header has no line numbers" in parsed.notes

    def test_header_with_one_range_says_which_is_missing(self):
        parsed = parse_diff("@@ -1,7 @@\n a\n-b\n+B\n")
        assert parsed.status is Status.REPAIRED
        hunk = parsed.hunks[0]
        assert (hunk.old_start, hunk.new_start, hunk.missing_range()) == (1, None, "no +NEW range")
        assert parsed.notes == ["hunk 1: malformed header '@@ -1,7 @@'", "hunk 1: header has no +NEW range"]
        assert parse_diff("@@ +2 @@\n-b\n+B\n").hunks[0].missing_range() == "no -OLD range"
        assert parse_diff(DIFF).hunks[0].missing_range() == ""

    def test_header_without_closing_at_signs(self):
        parsed = parse_diff(DIFF.replace("@@ -1,4 +1,5 @@", "@@ -1,4 +1,5"))
        assert parsed.status is Status.REPAIRED
        assert parsed.hunks[0].old_start == 1
        assert parsed.to_text() == DIFF

    def test_trailing_text(self):
        parsed = parse_diff(DIFF + "\nThis renames b to B and appends e.\n")
        assert parsed.status is Status.REPAIRED
        assert parsed.notes == ["ignored text after the last hunk"]
        assert parsed.to_text() == DIFF

    def test_trailing_blank_lines_are_fine(self):
        assert parse_diff(DIFF + "\n\n").status is Status.VALID

    def test_following_sample_block_is_cut(self):
        more = render("other.py", "x\n", "msg", "@@ -1 +1 @@\n-x\n+y\n")
        parsed = parse_diff(" " + DIFF + more)
        assert parsed.status is Status.REPAIRED
        assert parsed.notes == ["stopped at '<NME>': text after it is not part of the diff"]
        assert parsed.to_text() == DIFF

    def test_crlf_diff_text(self):
        parsed = parse_diff(DIFF.replace("\n", "\r\n"))
        assert parsed.status is Status.REPAIRED
        assert parsed.notes == ["diff had CRLF line endings"]
        assert parsed.to_text() == DIFF

    def test_missing_final_newline(self):
        parsed = parse_diff(DIFF.rstrip("\n"))
        assert parsed.status is Status.VALID
        assert parsed.to_text() == DIFF

    def test_empty_context_line_without_its_space(self):
        diff = make_diff("a\n\nb\n", "a\n\nB\n")  # " a\n \n-b\n+B\n"
        parsed = parse_diff(diff.replace("\n \n", "\n\n"))
        assert parsed.status is Status.REPAIRED
        assert parsed.to_text() == diff

    def test_text_between_hunks(self):
        first, second = "@@ -1 +1 @@\n-a\n+b\n", "@@ -10 +10 @@\n-x\n+y\n"
        parsed = parse_diff(first + "and then:\n" + second)
        assert parsed.status is Status.REPAIRED
        assert len(parsed.hunks) == 2
        assert parsed.notes == ["ignored text before hunk 2"]

    def test_markdown_fence(self):
        parsed = parse_diff("```diff\n" + DIFF + "```\n")
        assert parsed.status is Status.REPAIRED
        assert parsed.notes == ["ignored text before the first hunk", "ignored text after the last hunk"]
        assert parsed.to_text() == DIFF

    def test_text_before_first_hunk(self):
        parsed = parse_diff("Here is the diff:\n" + DIFF)
        assert parsed.status is Status.REPAIRED
        assert parsed.to_text() == DIFF

    def test_stray_no_newline_marker(self):
        parsed = parse_diff("@@ -1 +1 @@\n\\ No newline at end of file\n-a\n+b\n")
        assert parsed.status is Status.REPAIRED
        assert parsed.hunks[0].old_lines() == ["a\n"]

    def test_misplaced_no_newline_marker(self):
        parsed = parse_diff("@@ -1,2 +1,2 @@\n-a\n\\ No newline at end of file\n-b\n+c\n+d\n")
        assert parsed.status is Status.REPAIRED
        assert parsed.hunks[0].old_lines() == ["a\n", "b\n"]

    def test_header_only_hunk_is_dropped(self):
        parsed = parse_diff("@@ -1 +1 @@\n" + DIFF)
        assert parsed.status is Status.REPAIRED
        assert len(parsed.hunks) == 1


class TestNothingToRead:
    def test_empty(self):
        for text in ("", "   ", "\n\n", " \n"):
            assert parse_diff(text).status is Status.EMPTY

    def test_prose(self):
        parsed = parse_diff("I cannot make this change.\n")
        assert parsed.status is Status.BAD_FORMAT
        assert parsed.hunks == []
        assert "no @@ hunk found" in parsed.notes

    def test_binary_patch(self):
        parsed = parse_diff("diff --git a/x.png b/x.png\nBinary files a/x.png and b/x.png differ\n")
        assert parsed.status is Status.BAD_FORMAT
        assert "binary patches are not supported" in parsed.notes

    def test_bytes(self):
        assert parse_diff(DIFF.encode()).to_text() == DIFF
        assert parse_diff(b"\xff\xfe\x00@@").status is Status.BAD_FORMAT
