"""Mutation operators: each makes the one documented change, and only in the code it may touch."""

from __future__ import annotations

import ast

import pytest

from diffmodel.evaluate.mutations import OPERATORS, candidates, mutants, realize

SOURCE = '''def f(xs: list, n: int) -> int:
    """Count 1 < 2 things."""
    total = 0
    for i in range(n):
        if xs[i] > 0 and i != 3:
            total += xs[i] * 2
    return max(total, n) - 1
'''


def changed_lines(a: str, b: str) -> list[tuple[str, str]]:
    return [(x, y) for x, y in zip(a.splitlines(), b.splitlines()) if x != y]


def by_operator(source: str = SOURCE, first_line: int = 3) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {op: [] for op in OPERATORS}
    for m in mutants(source, first_line):
        (before, after), = changed_lines(source, m.source)
        out[m.operator].append(after.strip())
    return out


class TestEachOperatorMakesItsChange:
    def test_comparison(self):
        got = by_operator()["comparison"]
        assert "if xs[i] >= 0 and i != 3:" in got
        assert "if xs[i] < 0 and i != 3:" in got
        assert "if xs[i] > 0 and i == 3:" in got

    def test_arithmetic_in_expressions_and_augmented_assignments(self):
        got = by_operator()["arithmetic"]
        assert got == ["total -= xs[i] * 2", "total += xs[i] / 2", "return max(total, n) + 1"]

    def test_off_by_one_in_constants_ranges_and_indices(self):
        got = by_operator()["off_by_one"]
        for want in ("total = 1", "for i in range(n + 1):", "for i in range(n - 1):",
                     "if xs[i + 1] > 0 and i != 3:", "if xs[i - 1] > 0 and i != 3:", "if xs[i] > 0 and i != 4:",
                     "return max(total, n) - 2", "return max(total, n) - 0"):
            assert want in got

    def test_off_by_one_never_makes_a_negative_literal(self):
        assert all("-1" not in line for line in by_operator("def g():\n    return 0\n", 1)["off_by_one"])

    def test_wrong_variable_uses_a_name_bound_earlier_in_the_function(self):
        got = by_operator()["wrong_variable"]
        assert "for i in range(xs):" in got and "for i in range(total):" in got
        assert "return max(i, n) - 1" in got
        # 'i' is first bound on line 4: it never replaces a name used on line 3
        assert not any(line.startswith("total = i") for line in got)

    def test_negate_condition_adds_and_removes_not(self):
        got = by_operator()["negate_condition"]
        assert got == ["if not (xs[i] > 0 and i != 3):"]
        src = "def g(x):\n    return [y for y in x if not y]\n"
        assert by_operator(src, 1)["negate_condition"] == ["return [y for y in x if y]"]

    def test_drop_condition_removes_one_operand(self):
        got = by_operator()["drop_condition"]
        assert got == ["if i != 3:", "if xs[i] > 0:"]

    def test_wrong_constant(self):
        src = "def g(s):\n    flag = True\n    return s.strip('ab') if flag else 0.5\n"
        got = by_operator(src, 2)["wrong_constant"]
        assert got == ["flag = False", "return s.strip('b') if flag else 0.5", "return s.strip('ab') if flag else 0.0"]

    def test_swap_arguments_and_non_commutative_operands(self):
        got = by_operator()["swap_arguments"]
        assert got == ["return 1 - max(total, n)", "return max(n, total) - 1"]


class TestWhereMutationsGo:
    def test_nothing_before_first_line_is_touched(self):
        for m in mutants(SOURCE, first_line=3):
            assert m.line >= 3
            assert m.source.splitlines()[:2] == SOURCE.splitlines()[:2]

    def test_docstrings_annotations_and_fstrings_are_never_mutated(self):
        src = 'def g(x: int = 1) -> int:\n    """Return 1 < 2."""\n    return f"{x + 1}" + str(x + 2)\n'
        for m in mutants(src, 1):
            assert '"""Return 1 < 2."""' in m.source
            assert m.source.startswith("def g(x: int = ") and ") -> int:" in m.source
            assert "{x + 1}" in m.source

    def test_every_mutant_parses_and_differs_from_the_original(self):
        ms = mutants(SOURCE, 3)
        assert len(ms) > 20
        for m in ms:
            ast.parse(m.source)
            assert m.source != SOURCE
        assert len({m.source for m in ms}) == len(ms)

    def test_parentheses_are_added_where_precedence_needs_them(self):
        src = "def g(a, b, c):\n    return a[b if c else 0]\n"
        got = by_operator(src, 1)["off_by_one"]
        assert "return a[(b if c else 0) + 1]" in got

    def test_columns_are_counted_in_characters_not_utf8_bytes(self):
        src = "def g(x):\n    s = 'é' * 2; return x < 1\n"
        got = by_operator(src, 1)["comparison"]
        assert "s = 'é' * 2; return x <= 1" in got

    def test_the_list_is_deterministic(self):
        assert mutants(SOURCE, 3) == mutants(SOURCE, 3)
        assert candidates(SOURCE, 3) == candidates(SOURCE, 3)

    def test_realize_checks_each_candidate(self):
        for cand in candidates(SOURCE, 3):
            m = realize(SOURCE, 3, cand)
            assert m is None or (m.operator == cand.operator and m.line == cand.line)

    @pytest.mark.parametrize("bad", ["def g(:\n", ""])
    def test_unparsable_or_empty_source_gives_no_mutant(self, bad):
        assert mutants(bad) == []
