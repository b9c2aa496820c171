"""Make buggy versions of a correct Python file by small AST mutations.

``mutants(source, first_line)`` lists every single-point mutation of the code
that starts at line ``first_line`` or later (in HumanEvalFix: the canonical
solution, not the prompt's signature, docstring or helper functions), in
source order. Each :class:`Mutant` is the whole mutated file, with only the
mutated expression's text changed, so the fix is a one-hunk diff.

The operators (names as in :data:`OPERATORS`), modelled on the bug kinds that
HumanEvalFix wrote by hand:

``comparison``
    A comparison operator replaced: ``<`` by ``<=`` or ``>``, ``<=`` by ``<`` or
    ``>=`` (and the mirror images), ``==`` by ``!=``, ``in`` by ``not in``,
    ``is`` by ``is not``, and back.
``arithmetic``
    A binary or augmented-assignment operator replaced: ``+``/``-`` swapped,
    ``*`` by ``/``, ``/`` by ``*``, ``//`` by ``/``, ``%`` by ``//``, ``**`` by
    ``*``, ``<<``/``>>`` swapped, ``&``/``|`` swapped, ``^`` by ``|``.
``off_by_one``
    An integer constant ``k`` made ``k + 1`` or ``k - 1``; a non-constant
    index, slice bound or ``range()`` argument ``e`` made ``e + 1`` or ``e - 1``.
``wrong_variable``
    A use of a local variable or parameter replaced by another one of the same
    function that is bound on an earlier line (the one bound just before it
    and the one just after it, in order of first binding).
``negate_condition``
    The test of an ``if``, ``elif``, conditional expression or comprehension
    ``if`` negated (``c`` -> ``not c``, ``not c`` -> ``c``): a condition
    added where none belongs, or the right one turned into a wrong one.
``drop_condition``
    One operand of an ``and``/``or`` removed: a missing condition.
``wrong_constant``
    ``True``/``False`` flipped; a non-empty string constant loses its first
    character, an empty one becomes ``" "``; a non-zero float becomes ``0.0``
    and ``0.0`` becomes ``1.0``.
``swap_arguments``
    Two neighbouring positional arguments of a call swapped, or the operands
    of a non-commutative operator (``-``, ``/``, ``//``, ``%``, ``**``, ``<<``,
    ``>>``) swapped.

Invariants:
- Deterministic: the same source gives the same list in the same order.
- Every mutant parses, and its AST is exactly the original AST with the one
  described change (checked by comparing ``ast.dump``); candidates whose text
  edit would mean something else are dropped, as are mutants equal to the
  original text.
- Docstrings, f-string parts, annotations and code before ``first_line`` are
  never mutated.
"""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

OPERATORS = (
    "comparison", "arithmetic", "off_by_one", "wrong_variable",
    "negate_condition", "drop_condition", "wrong_constant", "swap_arguments",
)


@dataclass(frozen=True)
class Mutant:
    operator: str
    #: 1-based line of the mutated expression
    line: int
    #: what changed, e.g. ``'<' -> '<='`` or ``'i' -> 'j'``
    description: str
    #: the whole mutated file
    source: str


# -- positions ---------------------------------------------------------------------------------


class _Text:
    """The source with AST positions (UTF-8 byte columns) turned into string indices."""

    def __init__(self, source: str):
        self.source = source
        self.starts = [0]
        for line in source.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))
        self.lines = source.splitlines(keepends=True)

    def index(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1] if lineno - 1 < len(self.lines) else ""
        chars = len(line.encode("utf-8")[:col].decode("utf-8", errors="ignore"))
        return self.starts[lineno - 1] + chars

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.index(node.lineno, node.col_offset), self.index(node.end_lineno, node.end_col_offset)

    def text(self, node: ast.AST) -> str:
        a, b = self.span(node)
        return self.source[a:b]

    def replace(self, start: int, end: int, new: str) -> str:
        return self.source[:start] + new + self.source[end:]


# -- which nodes may be mutated ------------------------------------------------------------------


def _frozen_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings, f-string internals, annotations."""
    frozen: set[int] = set()

    def freeze(node: ast.AST | None) -> None:
        if node is not None:
            frozen.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                freeze(body[0])
        if isinstance(node, ast.JoinedStr):
            freeze(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            freeze(node.returns)
            for a in node.args.args + node.args.posonlyargs + node.args.kwonlyargs:
                freeze(a.annotation)
        if isinstance(node, ast.AnnAssign):
            freeze(node.annotation)
    return frozen


def _ordered_nodes(tree: ast.AST, first_line: int) -> list[ast.AST]:
    frozen = _frozen_nodes(tree)
    nodes = [n for n in ast.walk(tree) if hasattr(n, "lineno") and n.lineno >= first_line and id(n) not in frozen]
    return sorted(nodes, key=lambda n: (n.lineno, n.col_offset, -n.end_lineno, -n.end_col_offset, type(n).__name__))


# -- the operators: each yields (description, make_tree_change, make_text) -------------------------
#
# A candidate is found on one parse of the source; it is then re-found (by its
# position in the ordered node list) on a fresh parse, changed there, and the
# text edit is checked to give exactly that tree.

_CMP_SYMBOL = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not",
}
_CMP_SWAPS = {
    ast.Lt: (ast.LtE, ast.Gt), ast.LtE: (ast.Lt, ast.GtE), ast.Gt: (ast.GtE, ast.Lt), ast.GtE: (ast.Gt, ast.LtE),
    ast.Eq: (ast.NotEq,), ast.NotEq: (ast.Eq,), ast.In: (ast.NotIn,), ast.NotIn: (ast.In,),
    ast.Is: (ast.IsNot,), ast.IsNot: (ast.Is,),
}
_CMP_TOKEN = re.compile(r"<=|>=|==|!=|<|>|not\s+in\b|\bin\b|\bis\s+not\b|\bis\b")

_BIN_SYMBOL = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
    ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.MatMult: "@",
}
_BIN_SWAPS = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
    ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr,
}
_BIN_TOKEN = re.compile(r"\*\*|//|<<|>>|[-+*/%&|^@]")
_NON_COMMUTATIVE = (ast.Sub, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift)


def _token_edit(text: _Text, left: ast.AST, right: ast.AST, pattern: re.Pattern, new_symbol: str) -> str | None:
    """Replace the operator token between the end of ``left`` and the start of ``right``."""
    a = text.index(left.end_lineno, left.end_col_offset)
    b = text.index(right.lineno, right.col_offset)
    gap = text.source[a:b]
    m = pattern.search(gap)
    if m is None:
        return None
    return text.replace(a + m.start(), a + m.end(), new_symbol)


def _local_names(func: ast.AST) -> list[tuple[str, int]]:
    """(name, first line bound) of a function's parameters and assigned names, in binding order."""
    seen: dict[str, int] = {}
    args = func.args
    for a in args.posonlyargs + args.args + ([args.vararg] if args.vararg else []) + args.kwonlyargs + ([args.kwarg] if args.kwarg else []):
        seen.setdefault(a.arg, func.lineno)
    stores = [n for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    for n in sorted(stores, key=lambda n: (n.lineno, n.col_offset)):
        seen.setdefault(n.id, n.lineno)
    return sorted(seen.items(), key=lambda kv: kv[1])


def _enclosing_functions(tree: ast.AST) -> dict[int, ast.AST]:
    """id(node) -> innermost enclosing (async) function definition."""
    owner: dict[int, ast.AST] = {}

    def visit(node: ast.AST, func: ast.AST | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if func is not None:
                owner[id(child)] = func
            visit(child, inner)

    visit(tree, None)
    return owner


def _is_int(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _plus_minus(node: ast.AST, delta: int) -> ast.AST:
    op = ast.Add() if delta > 0 else ast.Sub()
    return ast.BinOp(left=node, op=op, right=ast.Constant(abs(delta)))


def _parent_map(tree: ast.AST) -> dict[int, tuple[ast.AST, str, int | None]]:
    """id(child) -> (parent, field, index in the field's list or None)."""
    parents: dict[int, tuple[ast.AST, str, int | None]] = {}
    for node in ast.walk(tree):
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        parents[id(item)] = (node, name, i)
            elif isinstance(value, ast.AST):
                parents[id(value)] = (node, name, None)
    return parents


def _swap_in_parent(parents, node: ast.AST, new: ast.AST) -> None:
    parent, name, i = parents[id(node)]
    if i is None:
        setattr(parent, name, new)
    else:
        getattr(parent, name)[i] = new


#: Expressions that bind more loosely than ``and``/``or`` operands (need parentheses there).
_LOOSER_THAN_BOOL = (ast.BoolOp, ast.IfExp, ast.Lambda, ast.NamedExpr)


def _edits(node: ast.AST, tree: ast.AST, text: _Text, owners: dict[int, ast.AST], parents) -> Iterator[tuple[str, str, Callable[[], None], list[str]]]:
    """(operator, description, change the tree in place, candidate texts) for one node."""
    if isinstance(node, ast.Compare):
        for k, op in enumerate(node.ops):
            left = node.left if k == 0 else node.comparators[k - 1]
            for new in _CMP_SWAPS.get(type(op), ()):
                def change(node=node, k=k, new=new):
                    node.ops[k] = new()
                edited = _token_edit(text, left, node.comparators[k], _CMP_TOKEN, _CMP_SYMBOL[new])
                if edited is not None:
                    yield "comparison", f"{_CMP_SYMBOL[type(op)]!r} -> {_CMP_SYMBOL[new]!r}", change, [edited]
    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BIN_SWAPS:
        new = _BIN_SWAPS[type(node.op)]
        left, right = (node.left, node.right) if isinstance(node, ast.BinOp) else (node.target, node.value)

        def change(node=node, new=new):
            node.op = new()
        edited = _token_edit(text, left, right, _BIN_TOKEN, _BIN_SYMBOL[new])
        if edited is not None:
            yield "arithmetic", f"{_BIN_SYMBOL[type(node.op)]!r} -> {_BIN_SYMBOL[new]!r}", change, [edited]
    if isinstance(node, ast.BinOp) and isinstance(node.op, _NON_COMMUTATIVE):
        lt, rt = text.text(node.left), text.text(node.right)
        if lt != rt:
            def change(node=node):
                node.left, node.right = node.right, node.left
            (la, lb), (ra, rb) = text.span(node.left), text.span(node.right)
            mid = text.source[lb:ra]
            edited = text.source[:la] + rt + mid + lt + text.source[rb:]
            paren = text.source[:la] + f"({rt})" + mid + f"({lt})" + text.source[rb:]
            yield "swap_arguments", f"operands of {_BIN_SYMBOL[type(node.op)]!r} swapped", change, [edited, paren]
    if isinstance(node, ast.Call) and len(node.args) >= 2 and not any(isinstance(a, ast.Starred) for a in node.args):
        for k in range(len(node.args) - 1):
            a, b = node.args[k], node.args[k + 1]
            at, bt = text.text(a), text.text(b)
            if at == bt:
                continue

            def change(node=node, k=k):
                node.args[k], node.args[k + 1] = node.args[k + 1], node.args[k]
            (aa, ab), (ba, bb) = text.span(a), text.span(b)
            edited = text.source[:aa] + bt + text.source[ab:ba] + at + text.source[bb:]
            yield "swap_arguments", f"arguments {k + 1} and {k + 2} of the call swapped", change, [edited]
    if _is_int(node):
        for delta in (1, -1):
            value = node.value + delta
            if value < 0:
                continue

            def change(node=node, value=value):
                node.value = value
            a, b = text.span(node)
            yield "off_by_one", f"{node.value} -> {value}", change, [text.replace(a, b, repr(value))]
    for target, where in _index_like(node):
        if _is_int(target) or (isinstance(target, ast.UnaryOp) and _is_int(target.operand)):
            continue  # constants are covered above
        t = text.text(target)
        a, b = text.span(target)
        for delta in (1, -1):
            sign = "+" if delta > 0 else "-"

            def change(target=target, delta=delta):
                _swap_in_parent(parents, target, _plus_minus(target, delta))
            yield "off_by_one", f"{where} {t!r} -> {t} {sign} 1", change, [
                text.replace(a, b, f"{t} {sign} 1"), text.replace(a, b, f"({t}) {sign} 1")]
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and id(node) in owners:
        names = _local_names(owners[id(node)])
        order = [n for n, _ in names]
        if node.id in order:
            pos = order.index(node.id)
            others = []
            for j in (pos - 1, pos + 1):
                if 0 <= j < len(names) and names[j][1] <= node.lineno and names[j][0] != node.id:
                    others.append(names[j][0])
            for other in others:
                def change(node=node, other=other):
                    node.id = other
                a, b = text.span(node)
                yield "wrong_variable", f"{node.id!r} -> {other!r}", change, [text.replace(a, b, other)]
    for test in _tests(node):
        t = text.text(test)
        a, b = text.span(test)
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = test.operand
            it = text.text(inner)

            def change(test=test, inner=inner):
                _swap_in_parent(parents, test, inner)
            yield "negate_condition", f"'not' removed from {t!r}", change, [text.replace(a, b, it), text.replace(a, b, f"({it})")]
        else:
            def change(test=test):
                _swap_in_parent(parents, test, ast.UnaryOp(op=ast.Not(), operand=test))
            yield "negate_condition", f"{t!r} negated", change, [text.replace(a, b, f"not {t}"), text.replace(a, b, f"not ({t})")]
    if isinstance(node, ast.BoolOp) and len(node.values) >= 2:
        word = " and " if isinstance(node.op, ast.And) else " or "
        for k in range(len(node.values)):
            rest = [v for j, v in enumerate(node.values) if j != k]
            loose = word.join(f"({text.text(v)})" if isinstance(v, _LOOSER_THAN_BOOL) else text.text(v) for v in rest)
            tight = word.join(f"({text.text(v)})" for v in rest)

            def change(node=node, k=k):
                kept = [v for j, v in enumerate(node.values) if j != k]
                if len(kept) == 1:
                    _swap_in_parent(parents, node, kept[0])
                else:
                    node.values = kept
            a, b = text.span(node)
            yield "drop_condition", f"{text.text(node.values[k])!r} dropped from {word.strip()!r}", change, [
                text.replace(a, b, loose), text.replace(a, b, f"({loose})"), text.replace(a, b, tight)]
    if isinstance(node, ast.Constant) and not _is_int(node):
        value = node.value
        new: object = _MISSING
        if isinstance(value, bool):
            new = not value
        elif isinstance(value, str):
            new = value[1:] if value else " "
        elif isinstance(value, float):
            new = 0.0 if value != 0 else 1.0
        if new is not _MISSING:
            def change(node=node, new=new):
                node.value = new
            a, b = text.span(node)
            yield "wrong_constant", f"{value!r} -> {new!r}", change, [text.replace(a, b, repr(new))]


_MISSING = object()


def _index_like(node: ast.AST) -> Iterator[tuple[ast.AST, str]]:
    """Expressions of ``node`` that index, bound a slice, or bound a ``range``."""
    if isinstance(node, ast.Subscript) and not isinstance(node.slice, (ast.Slice, ast.Tuple)):
        yield node.slice, "index"
    if isinstance(node, ast.Slice):
        for bound in (node.lower, node.upper):
            if bound is not None:
                yield bound, "slice bound"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" and len(node.args) <= 3:
        for arg in node.args[:2]:
            if not isinstance(arg, ast.Starred):
                yield arg, "range bound"


def _tests(node: ast.AST) -> Iterator[ast.AST]:
    if isinstance(node, (ast.If, ast.IfExp)):
        yield node.test
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
        for gen in node.generators:
            yield from gen.ifs


def _dump(tree: ast.AST) -> str:
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


@dataclass(frozen=True)
class Candidate:
    """A mutation found in the source, not yet checked (see :func:`realize`)."""

    operator: str
    line: int
    description: str
    #: position of the mutated node among the mutable nodes, and which of its edits
    node: int
    edit: int
    #: the candidate texts, tried in order (the second adds parentheses)
    texts: tuple[str, ...]


#: Python 3.11 builds AST objects with state shared by all threads, and ``ast.parse`` from several threads at once can
#: fail with "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905); bugs are found in threads.
_AST_LOCK = threading.Lock()


def parse(source: str) -> ast.Module:
    """``ast.parse``, one thread at a time (see :data:`_AST_LOCK`)."""
    with _AST_LOCK:
        return ast.parse(source)


def candidates(source: str, first_line: int = 1) -> list[Candidate]:
    """Every mutation of the code at or after ``first_line``, unchecked, in source order."""
    try:
        tree = parse(source)
    except SyntaxError:
        return []
    text = _Text(source)
    owners, parents = _enclosing_functions(tree), _parent_map(tree)
    out = []
    for i, node in enumerate(_ordered_nodes(tree, first_line)):
        for k, (operator, description, _change, texts) in enumerate(_edits(node, tree, text, owners, parents)):
            out.append(Candidate(operator, node.lineno, description, i, k, tuple(texts)))
    return out


def realize(source: str, first_line: int, candidate: Candidate) -> Mutant | None:
    """The checked mutant of ``candidate``, or None when no text edit gives exactly the mutated AST."""
    fresh = parse(source)
    node = _ordered_nodes(fresh, first_line)[candidate.node]
    edits = list(_edits(node, fresh, _Text(source), _enclosing_functions(fresh), _parent_map(fresh)))
    operator, description, change, texts = edits[candidate.edit]
    change()
    want = _dump(fresh)
    for text in texts:
        if text == source:
            continue
        try:
            got = _dump(parse(text))
        except SyntaxError:
            continue
        if got == want:
            return Mutant(operator, candidate.line, description, text)
    return None


def mutants(source: str, first_line: int = 1) -> list[Mutant]:
    """Every checked single-point mutant of the code at or after ``first_line``, in source order, no text twice."""
    out: list[Mutant] = []
    seen = {source}
    for cand in candidates(source, first_line):
        m = realize(source, first_line, cand)
        if m is not None and m.source not in seen:
            seen.add(m.source)
            out.append(m)
    return out


__all__ = ["Candidate", "Mutant", "OPERATORS", "candidates", "mutants", "realize"]
