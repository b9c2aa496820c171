#!/usr/bin/env python3
"""Generate the quickstart sample set, ``src/diffmodel/samples/quickstart.jsonl``.

Every sample is a small original source file composed from the templates
below (Python mostly, some JavaScript, shell and Markdown), one realistic edit
of it (rename a variable, fix an off-by-one, add a docstring, add a parameter,
change a constant, add an import, delete a line, add a whole new file, ...),
and a commit message. The diff is computed with
:func:`diffmodel.diff.make.make_diff`, exactly as mined samples are.

Invariants:
- Deterministic: the same ``--seed`` and ``--n`` give byte-identical output
  (one ``random.Random``; nothing iterates over a set or a hash order).
- Each row has ``name``, ``before``, ``message``, ``diff``, ``language``;
  ``before == ""`` means a new file; ``diff`` is never empty.
- The rendered text of every row (``diffmodel.sample.render_row``) is between
  ``MIN_CHARS`` and ``MAX_CHARS`` characters, so tiny models train on the set
  on a CPU in minutes, and every row fits in 512 tokens of a 512-entry
  byte-level BPE (``diffmodel.tiny.train_tokenizer``) trained on the set; such
  a small vocabulary spends about 1.6 characters per token, so ``MAX_CHARS``
  is kept well under 1000.
- No two rows share the same rendered text.

Usage::

    python scripts/make_quickstart_samples.py            # rewrite the bundled file
    python scripts/make_quickstart_samples.py --n 50 --out /tmp/s.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from diffmodel.diff.make import make_diff
from diffmodel.sample import render_row

DEFAULT_SEED = 20240601
DEFAULT_N = 320
MIN_CHARS = 100
MAX_CHARS = 900
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "diffmodel" / "samples" / "quickstart.jsonl"

#: Share of samples per language (the rest of the weight picks Python).
LANGUAGE_WEIGHTS = (("python", 70), ("javascript", 12), ("shell", 9), ("markdown", 9))

# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------

NOUNS = (
    ("order", "orders"), ("user", "users"), ("item", "items"), ("record", "records"),
    ("reading", "readings"), ("task", "tasks"), ("invoice", "invoices"), ("score", "scores"),
    ("sample", "samples"), ("event", "events"), ("entry", "entries"), ("packet", "packets"),
    ("job", "jobs"), ("ticket", "tickets"), ("price", "prices"), ("metric", "metrics"),
    ("visit", "visits"), ("payment", "payments"), ("song", "songs"), ("route", "routes"),
)
PY_DIRS = ("", "", "src/", "lib/", "utils/", "app/", "tools/", "pkg/core/")
PY_SUFFIXES = ("utils", "stats", "io", "helpers", "report", "queue", "parser", "store", "tools", "ops")
JS_DIRS = ("src/", "lib/", "web/js/", "")
JS_SUFFIXES = ("Utils", "Helpers", "Store", "Format", "List", "Stats")


def an(noun: str) -> str:
    """``noun`` with its indefinite article ("an event", "a user")."""
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def camel(*words: str) -> str:
    first, *rest = words
    return first + "".join(w[:1].upper() + w[1:] for w in rest)


# --------------------------------------------------------------------------
# Functions (shared by Python and JavaScript)
# --------------------------------------------------------------------------


@dataclass
class Variant:
    """Two versions of one body line: the file is built with ``old``, an edit makes it ``new``."""

    old: str
    new: str
    messages: tuple[str, ...]


@dataclass
class Func:
    name: str
    params: list[str]
    body: list[str]  # indented lines of the body
    docs: tuple[str, ...] = ()  # docstrings this function could have
    doc: str | None = None
    renames: tuple[tuple[str, str], ...] = ()  # (old, new) local names that can be renamed
    new_params: tuple[tuple[str, str, str, str], ...] = ()  # (param, old line, new line, message)
    variants: tuple[Variant, ...] = ()  # applied in the file's first version when active
    active: tuple[int, ...] = ()  # indexes of variants present in the current text
    imports: tuple[str, ...] = ()
    constants: tuple[tuple[str, object], ...] = ()
    debug_var: str | None = None
    debug: bool = False  # a leftover debug print at the top of the body


def py_funcs(s: str, p: str) -> list[Func]:
    """Python function templates for the noun ``s`` (plural ``p``)."""
    S = s.capitalize()
    return [
        Func(
            f"total_{p}", [p],
            ["    result = 0", f"    for {s} in {p}:", f"        result += {s}", "    return result"],
            docs=(f"Return the sum of all {p}.", f"Add up {p} and return the total."),
            renames=(("result", "total"), (s, "value")),
            new_params=(("start=0", "    result = 0", "    result = start", f"Let total_{p} start from a given value"),),
            debug_var=p,
        ),
        Func(
            f"average_{s}", [p],
            [f"    if not {p}:", "        return 0.0", f"    return sum({p}) / len({p})"],
            docs=(f"Mean of {p}, or 0.0 when there are none.", f"Return the average {s}."),
            new_params=(("default=0.0", "        return 0.0", "        return default",
                         f"Make the empty-input result of average_{s} configurable"),),
            variants=(Variant(f"    return sum({p}) / (len({p}) - 1)", f"    return sum({p}) / len({p})",
                              (f"Fix off-by-one in average_{s} denominator", f"average_{s}: divide by len, not len - 1")),),
            debug_var=p,
        ),
        Func(
            "index_of_largest", [p],
            ["    best = 0", f"    for i in range(1, len({p})):", f"        if {p}[i] > {p}[best]:",
             "            best = i", "    return best"],
            docs=(f"Index of the largest of {p} (the first one on ties).", "Return the position of the maximum."),
            renames=(("best", "best_index"), ("i", "index")),
            variants=(Variant(f"    for i in range(1, len({p}) - 1):", f"    for i in range(1, len({p})):",
                              ("Fix off-by-one: index_of_largest skipped the last element",
                               "index_of_largest: look at the last item too")),),
            debug_var=p,
        ),
        Func(
            f"chunk_{p}", [p, "size"],
            ["    chunks = []", f"    for start in range(0, len({p}), size):",
             f"        chunks.append({p}[start:start + size])", "    return chunks"],
            docs=(f"Split {p} into lists of at most size elements.", f"Cut {p} into consecutive chunks."),
            renames=(("chunks", "batches"), ("size", "chunk_size"), ("start", "offset")),
            variants=(Variant(f"        chunks.append({p}[start:start + size - 1])",
                              f"        chunks.append({p}[start:start + size])",
                              (f"Fix chunk_{p} dropping the last element of each chunk", f"chunk_{p}: off-by-one in slice end")),),
            debug_var="size",
        ),
        Func(
            f"clamp_{s}", ["value", "low=LOW", "high=HIGH"],
            ["    if value < low:", "        return low", "    if value > high:", "        return high", "    return value"],
            docs=(f"Limit {an(s)} to the range [low, high].", "Clamp value between low and high."),
            renames=(("value", "x"), ("low", "lower"), ("high", "upper")),
            variants=(Variant("    if value >= high:", "    if value > high:",
                              (f"clamp_{s}: keep values equal to high unchanged", "Fix boundary check in clamp")),),
            constants=(("LOW", 0), ("HIGH", 100)),
            debug_var="value",
        ),
        Func(
            f"parse_{s}_line", ["line"],
            ['    key, _, value = line.partition("=")', "    return key.strip(), value.strip()"],
            docs=(f"Split a 'key=value' {s} line into its stripped parts.", "Parse one key=value line."),
            renames=(("key", "name"), ("line", "text")),
            new_params=(('sep="="', '    key, _, value = line.partition("=")', "    key, _, value = line.partition(sep)",
                         f"Allow a custom separator in parse_{s}_line"),),
            variants=(Variant("    return key, value", "    return key.strip(), value.strip()",
                              (f"Strip whitespace in parse_{s}_line", "Trim keys and values when parsing lines")),),
            debug_var="line",
        ),
        Func(
            f"load_{p}", ["path"],
            ['    with open(path, encoding="utf-8") as handle:', '        return [line.rstrip("\\n") for line in handle if line.strip()]'],
            docs=(f"Read {p} from a text file, one per line, skipping blank lines.", f"Load {p} from path."),
            renames=(("handle", "f"), ("path", "filename")),
            new_params=(('encoding="utf-8"', '    with open(path, encoding="utf-8") as handle:',
                         "    with open(path, encoding=encoding) as handle:", f"Add encoding parameter to load_{p}"),),
            variants=(Variant("    with open(path) as handle:", '    with open(path, encoding="utf-8") as handle:',
                              (f"Open {s} files as UTF-8", f"load_{p}: do not depend on the locale encoding")),),
            debug_var="path",
        ),
        Func(
            f"fetch_{s}", ["client", "key"],
            ["    for attempt in range(MAX_RETRIES):", "        try:", "            return client.get(key)",
             "        except TimeoutError:", "            time.sleep(BACKOFF_SECONDS * (attempt + 1))",
             f'    raise RuntimeError(f"could not fetch {s} {{key}}")'],
            docs=(f"Get one {s} from client, retrying on timeouts.", f"Fetch {an(s)} with retries."),
            renames=(("attempt", "tries"), ("client", "api")),
            variants=(Variant("            time.sleep(BACKOFF_SECONDS * attempt)", "            time.sleep(BACKOFF_SECONDS * (attempt + 1))",
                              (f"fetch_{s}: wait before the first retry too", "Fix zero backoff on first retry")),),
            imports=("import time",),
            constants=(("MAX_RETRIES", 3), ("BACKOFF_SECONDS", 0.5)),
            debug_var="key",
        ),
        Func(
            f"last_{p}", [p, "count"],
            [f"    return {p}[len({p}) - count:]"],
            docs=(f"The last count {p}.", f"Return the most recent {p}."),
            renames=(("count", "n"),),
            variants=(Variant(f"    return {p}[len({p}) - count - 1:]", f"    return {p}[len({p}) - count:]",
                              (f"Fix last_{p} returning one element too many", f"last_{p}: off-by-one in start index")),),
            debug_var="count",
        ),
        Func(
            f"group_{p}", [p, "key"],
            ["    groups = {}", f"    for {s} in {p}:", f"        groups.setdefault({s}[key], []).append({s})", "    return groups"],
            docs=(f"Group {p} by the value of one field.", f"Map each value of key to the {p} that have it."),
            renames=(("groups", "grouped"), ("key", "field")),
            debug_var="key",
        ),
        Func(
            f"format_{s}", ["name", "value", "width=WIDTH"],
            ["    label = name.ljust(width)", '    return f"{label} {value:>8.2f}"'],
            docs=(f"One aligned line of {an(s)} report.", "Format a name and a number as a table row."),
            renames=(("label", "padded"),),
            new_params=(("precision=2", '    return f"{label} {value:>8.2f}"', '    return f"{label} {value:>8.{precision}f}"',
                         f"Let format_{s} take the number of decimals"),),
            constants=(("WIDTH", 20),),
            debug_var="name",
        ),
        Func(
            f"{s}_path", ["root", "name"],
            [f'    return os.path.join(root, "{p}", name + ".json")'],
            docs=(f"Where the {s} called name is stored under root.", f"Path of {an(s)} file."),
            renames=(("root", "base_dir"),),
            new_params=(('suffix=".json"', f'    return os.path.join(root, "{p}", name + ".json")',
                         f'    return os.path.join(root, "{p}", name + suffix)', f"Add suffix parameter to {s}_path"),),
            imports=("import os",),
            debug_var="name",
        ),
        Func(
            f"pairwise_{p}", [p],
            ["    pairs = []", f"    for i in range(len({p}) - 1):", f"        pairs.append(({p}[i], {p}[i + 1]))", "    return pairs"],
            docs=(f"Consecutive pairs of {p}.", f"Return (previous, next) pairs of {p}."),
            renames=(("pairs", "windows"), ("i", "pos")),
            variants=(Variant(f"    for i in range(len({p})):", f"    for i in range(len({p}) - 1):",
                              (f"Fix IndexError in pairwise_{p}", f"pairwise_{p}: stop one before the end")),),
            debug_var=p,
        ),
        Func(
            f"count_{p}_below", [p, "limit"],
            [f"    return sum(1 for {s} in {p} if {s} < limit)"],
            docs=(f"How many {p} are strictly below limit.", f"Count {p} under a threshold."),
            renames=(("limit", "threshold"),),
            variants=(Variant(f"    return sum(1 for {s} in {p} if {s} <= limit)", f"    return sum(1 for {s} in {p} if {s} < limit)",
                              (f"count_{p}_below: do not count values equal to limit", "Fix off-by-one in below-limit count")),),
            debug_var="limit",
        ),
        Func(
            f"save_{p}", [p, "path"],
            ['    with open(path, "w", encoding="utf-8") as handle:', f"        json.dump({p}, handle, indent=INDENT)"],
            docs=(f"Write {p} to path as JSON.", f"Store {p} in a JSON file."),
            renames=(("handle", "out"),),
            new_params=(("indent=INDENT", f"        json.dump({p}, handle, indent=INDENT)",
                         f"        json.dump({p}, handle, indent=indent)", f"Make JSON indent of save_{p} configurable"),),
            imports=("import json",),
            constants=(("INDENT", 2),),
            debug_var="path",
        ),
        Func(
            f"unique_{p}", [p],
            ["    seen = set()", "    result = []", f"    for {s} in {p}:", f"        if {s} not in seen:",
             f"            seen.add({s})", f"            result.append({s})", "    return result"],
            docs=(f"{p.capitalize()} without duplicates, in first-seen order.", f"Drop repeated {p}."),
            renames=(("seen", "visited"), ("result", "ordered")),
            debug_var=p,
        ),
        Func(
            f"batch_{p}", [p],
            [f"    for start in range(0, len({p}), BATCH_SIZE):", f"        yield {p}[start:start + BATCH_SIZE]"],
            docs=(f"Yield {p} in batches of BATCH_SIZE.", f"Iterate over {p} batch by batch."),
            renames=(("start", "offset"),),
            new_params=(("size=BATCH_SIZE", f"    for start in range(0, len({p}), BATCH_SIZE):",
                         f"    for start in range(0, len({p}), size):", f"Allow a custom batch size in batch_{p}"),),
            constants=(("BATCH_SIZE", 64),),
            debug_var=p,
        ),
        Func(
            f"is_valid_{s}", [s],
            [f'    return isinstance({s}, dict) and "id" in {s} and {s}.get("count", 0) >= 0'],
            docs=(f"True if {s} has an id and a non-negative count.", f"Check the shape of {an(s)} record."),
            variants=(Variant(f'    return isinstance({s}, dict) and {s}.get("count", 0) >= 0',
                              f'    return isinstance({s}, dict) and "id" in {s} and {s}.get("count", 0) >= 0',
                              (f"Reject {p} without an id", f"is_valid_{s}: require an id field")),),
            debug_var=s,
        ),
        Func(
            f"newest_{s}", [p],
            [f"    if not {p}:", "        return None", f'    return max({p}, key=lambda {s}: {s}["created"])'],
            docs=(f"The most recently created {s}, or None.", f"Return the latest {s}."),
            variants=(Variant(f'    return min({p}, key=lambda {s}: {s}["created"])', f'    return max({p}, key=lambda {s}: {s}["created"])',
                              (f"Fix newest_{s} returning the oldest {s}", f"newest_{s}: use max, not min")),),
            debug_var=p,
        ),
        Func(
            f"{S.lower()}_summary", [p],
            [f"    lines = [f\"{p}: {{len({p})}}\"]", f"    for {s} in {p}[:PREVIEW]:", f'        lines.append(f"  - {{{s}}}")',
             '    return "\\n".join(lines)'],
            docs=(f"A short human-readable summary of {p}.", f"Describe {p} in a few lines."),
            renames=(("lines", "out"),),
            constants=(("PREVIEW", 5),),
            debug_var=p,
        ),
    ]


def js_funcs(s: str, p: str) -> list[Func]:
    """JavaScript function templates for the noun ``s`` (plural ``p``)."""
    S = s.capitalize()
    P = p.capitalize()
    return [
        Func(
            camel("sum", P), [p],
            ["  let total = 0;", f"  for (const {s} of {p}) {{", f"    total += {s};", "  }", "  return total;"],
            docs=(f"Sum of all {p}.",),
            renames=(("total", "acc"),),
            debug_var=p,
        ),
        Func(
            camel("last", S, "Index"), [p],
            [f"  for (let i = {p}.length - 1; i >= 0; i--) {{", f"    if ({p}[i] !== null) {{", "      return i;", "    }", "  }",
             "  return -1;"],
            docs=(f"Index of the last non-null {s}, or -1.",),
            renames=(("i", "idx"),),
            variants=(Variant(f"  for (let i = {p}.length; i >= 0; i--) {{", f"  for (let i = {p}.length - 1; i >= 0; i--) {{",
                              (f"Fix off-by-one in {camel('last', S, 'Index')}", "Start the backwards loop at length - 1")),),
            debug_var=p,
        ),
        Func(
            camel("format", S), ["name", "value"],
            ["  const label = name.padEnd(WIDTH);", "  return `${label} ${value.toFixed(2)}`;"],
            docs=(f"One aligned line of {an(s)} report.",),
            renames=(("label", "padded"),),
            new_params=(("digits = 2", "  return `${label} ${value.toFixed(2)}`;", "  return `${label} ${value.toFixed(digits)}`;",
                         f"Add digits option to {camel('format', S)}"),),
            variants=(Variant("  let label = name.padEnd(WIDTH);", "  const label = name.padEnd(WIDTH);",
                              ("Use const for label", f"{camel('format', S)}: label is never reassigned")),),
            constants=(("WIDTH", 20),),
            debug_var="name",
        ),
        Func(
            camel("chunk", P), [p, "size"],
            ["  const chunks = [];", f"  for (let i = 0; i < {p}.length; i += size) {{", f"    chunks.push({p}.slice(i, i + size));", "  }",
             "  return chunks;"],
            docs=(f"Split {p} into arrays of at most size elements.",),
            renames=(("chunks", "batches"), ("size", "chunkSize")),
            variants=(Variant(f"  for (let i = 0; i <= {p}.length; i += size) {{", f"  for (let i = 0; i < {p}.length; i += size) {{",
                              (f"Fix empty trailing chunk in {camel('chunk', P)}", "Use < instead of <= in chunk loop")),),
            debug_var="size",
        ),
        Func(
            camel("fetch", S), ["id"],
            [f"  const response = await fetch(`${{BASE_URL}}/{p}/${{id}}`);", "  if (!response.ok) {",
             f"    throw new Error(`cannot load {s} ${{id}}`);", "  }", "  return response.json();"],
            docs=(f"Load one {s} from the API.",),
            renames=(("response", "res"),),
            constants=(("BASE_URL", '"/api/v1"'),),
            debug_var="id",
        ),
        Func(
            camel("unique", P), [p],
            [f"  return [...new Set({p})];"],
            docs=(f"{P} without duplicates, in first-seen order.",),
            debug_var=p,
        ),
        Func(
            camel("clamp", S), ["value"],
            ["  return Math.min(MAX_VALUE, Math.max(MIN_VALUE, value));"],
            docs=(f"Limit {an(s)} to [MIN_VALUE, MAX_VALUE].",),
            renames=(("value", "x"),),
            constants=(("MIN_VALUE", 0), ("MAX_VALUE", 100)),
            debug_var="value",
        ),
    ]


# --------------------------------------------------------------------------
# Python and JavaScript files
# --------------------------------------------------------------------------

UNUSED_PY_IMPORTS = ("import sys", "import re", "import math", "import itertools")
LOGGER = "logging.getLogger(__name__)"


@dataclass
class CodeFile:
    language: str  # "python" or "javascript"
    path: str
    noun: tuple[str, str]
    doc: str | None
    imports: list[str]
    constants: list[tuple[str, object]]
    funcs: list[Func]
    extra_imports: list[str] = field(default_factory=list)  # unused imports


def _py_value(value: object) -> str:
    return repr(value) if not isinstance(value, str) else value


def render_func(f: Func, language: str) -> str:
    body = list(f.body)
    for k in f.active:
        v = f.variants[k]
        body = [v.old if line == v.new else line for line in body]
    if language == "python":
        lines = [f"def {f.name}({', '.join(f.params)}):"]
        if f.doc:
            lines.append(f'    """{f.doc}"""')
        if f.debug:
            lines.append(f'    print("debug:", {f.debug_var})')
        lines += body
    else:
        lines = []
        if f.doc:
            lines += ["/**", f" * {f.doc}", " */"]
        prefix = "async function" if any("await " in line for line in body) else "function"
        lines.append(f"{prefix} {f.name}({', '.join(f.params)}) {{")
        if f.debug:
            lines.append(f'  console.log("debug:", {f.debug_var});')
        lines += body + ["}"]
    return "\n".join(lines) + "\n"


def render_code(cf: CodeFile) -> str:
    parts = []
    if cf.language == "python":
        if cf.doc:
            parts.append(f'"""{cf.doc}"""\n')
        imports = sorted(set(cf.imports) | set(cf.extra_imports))
        if imports:
            parts.append("\n".join(imports) + "\n")
        if cf.constants:
            parts.append("\n".join(f"{n} = {_py_value(v)}" for n, v in cf.constants) + "\n")
        head = "\n".join(parts)
        funcs = "\n\n".join(render_func(f, "python") for f in cf.funcs)
        return head + ("\n\n" if head else "") + funcs
    if cf.doc:
        parts.append(f"// {cf.doc}\n")
    if cf.constants:
        parts.append("\n".join(f"const {n} = {_py_value(v)};" for n, v in cf.constants) + "\n")
    parts += [render_func(f, "javascript") for f in cf.funcs]
    parts.append(f"module.exports = {{ {', '.join(f.name for f in cf.funcs)} }};\n")
    return "\n".join(parts)


def _needed(funcs: list[Func]) -> tuple[list[str], list[tuple[str, object]]]:
    imports: list[str] = []
    constants: list[tuple[str, object]] = []
    for f in funcs:
        for imp in f.imports:
            if imp not in imports:
                imports.append(imp)
        for c in f.constants:
            if c[0] not in [n for n, _ in constants]:
                constants.append(c)
    return imports, constants


def new_code_file(rng: random.Random, language: str, n_funcs: int | None = None) -> CodeFile:
    s, p = rng.choice(NOUNS)
    pool = py_funcs(s, p) if language == "python" else js_funcs(s, p)
    n = n_funcs if n_funcs is not None else rng.choice((1, 2, 2, 3) if language == "python" else (1, 2))
    funcs = [replace(f) for f in rng.sample(pool, n)]
    for f in funcs:
        if f.docs and rng.random() < 0.5:
            f.doc = rng.choice(f.docs)
        f.active = tuple(k for k in range(len(f.variants)) if rng.random() < 0.5)
        f.debug = bool(f.debug_var) and rng.random() < 0.12
    imports, constants = _needed(funcs)
    if language == "python":
        path = f"{rng.choice(PY_DIRS)}{s}_{rng.choice(PY_SUFFIXES)}.py"
        doc = rng.choice((None, f"Helpers for {p}.", f"Small utilities to work with {p}.", f"{s.capitalize()} handling."))
        if rng.random() < 0.2:
            constants.append(rng.choice((("DEFAULT_TIMEOUT", 30), ("CACHE_SIZE", 128), ("VERSION", '"1.2.0"'))))
        cf = CodeFile("python", path, (s, p), doc, imports, constants, funcs)
        if rng.random() < 0.25:
            text = render_code(cf)
            unused = [m for m in UNUSED_PY_IMPORTS if m.split()[-1] + "." not in text]
            if unused:
                cf.extra_imports = [rng.choice(unused)]
        return cf
    path = f"{rng.choice(JS_DIRS)}{camel(s, rng.choice(JS_SUFFIXES))}.js"
    doc = rng.choice((None, f"Helpers for {p}.", f"Utilities for the {s} views."))
    return CodeFile("javascript", path, (s, p), doc, imports, constants, funcs)


def _copy(cf: CodeFile) -> CodeFile:
    return replace(cf, imports=list(cf.imports), constants=list(cf.constants), funcs=[replace(f) for f in cf.funcs],
                   extra_imports=list(cf.extra_imports))


def _said(language: str, name: str) -> str:
    return f"`{name}`" if language == "python" else name


# Each edit takes (rng, file) and returns (before, after, message) or None when it does not apply.


def edit_rename(rng, cf):
    options = []
    for i, f in enumerate(cf.funcs):
        text = render_func(f, cf.language)
        for old, new in f.renames:
            if re.search(rf"\b{re.escape(new)}\b", text) is None:
                options.append((i, old, new))
    if not options:
        return None
    i, old, new = rng.choice(options)
    after = _copy(cf)
    f = after.funcs[i]

    def sub(line: str) -> str:
        return re.sub(rf"\b{re.escape(old)}\b", new, line)

    f.params = [sub(x) for x in f.params]
    f.body = [sub(x) for x in f.body]
    f.variants = tuple(Variant(sub(v.old), sub(v.new), v.messages) for v in f.variants)
    f.new_params = tuple((sub(x), sub(y), sub(z), m) for x, y, z, m in f.new_params)
    f.doc = sub(f.doc) if f.doc else f.doc
    f.docs = tuple(sub(d) for d in f.docs)
    if f.debug_var == old:
        f.debug_var = new
    f.renames = ()
    msg = rng.choice((f"Rename {old} to {new} in {f.name}", f"{f.name}: rename {old} -> {new}",
                      f"Use a clearer name for {old} in {f.name}"))
    return render_code(cf), render_code(after), msg


def _with_debug(rng, cf):
    """``cf`` if some function has a debug print, else a copy with one added (or None)."""
    if any(f.debug for f in cf.funcs):
        return cf
    options = [i for i, f in enumerate(cf.funcs) if f.debug_var]
    if not options:
        return None
    cf = _copy(cf)
    cf.funcs[rng.choice(options)].debug = True
    return cf


def edit_fix_variant(rng, cf):
    options = [(i, k) for i, f in enumerate(cf.funcs) for k in f.active]
    if not options:  # plant the bug first, so that every file with a known bug can get the fix
        planted = [(i, k) for i, f in enumerate(cf.funcs) for k in range(len(f.variants))]
        if not planted:
            return None
        cf = _copy(cf)
        i, k = rng.choice(planted)
        cf.funcs[i].active = (k,)
        options = [(i, k)]
    i, k = rng.choice(options)
    after = _copy(cf)
    f = after.funcs[i]
    f.active = tuple(x for x in f.active if x != k)
    return render_code(cf), render_code(after), rng.choice(f.variants[k].messages)


def edit_add_docstring(rng, cf):
    options = [i for i, f in enumerate(cf.funcs) if f.doc is None and f.docs]
    if not options:
        return None
    i = rng.choice(options)
    after = _copy(cf)
    f = after.funcs[i]
    f.doc = rng.choice(f.docs)
    what = "docstring" if cf.language == "python" else "JSDoc comment"
    msg = rng.choice((f"Add {what} to {f.name}", f"Document {f.name}", f"{f.name}: add a {what}"))
    return render_code(cf), render_code(after), msg


def edit_add_parameter(rng, cf):
    options = [(i, j) for i, f in enumerate(cf.funcs) for j, np in enumerate(f.new_params) if np[1] in f.body]
    if not options:
        return None
    i, j = rng.choice(options)
    after = _copy(cf)
    f = after.funcs[i]
    param, old, new, msg = f.new_params[j]
    f.params = f.params + [param]
    f.body = [new if line == old else line for line in f.body]
    f.new_params = ()
    return render_code(cf), render_code(after), msg


def _new_value(rng, value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        choices = [v for v in (value * 2, value + 1, max(1, value // 2), value * 10, value + 5) if v != value and v > 0]
        return rng.choice(choices) if choices else None
    if isinstance(value, float):
        return rng.choice((value * 2, value / 2, value + 0.5, 1.0 if value != 1.0 else 2.0))
    if isinstance(value, str) and re.fullmatch(r'"\d+\.\d+\.\d+"', value):
        major, minor, patch = (int(x) for x in value.strip('"').split("."))
        return rng.choice((f'"{major}.{minor}.{patch + 1}"', f'"{major}.{minor + 1}.0"'))
    if isinstance(value, str) and value.startswith('"/api/v'):
        return value.replace("/v1", "/v2")
    return None


def edit_change_constant(rng, cf):
    options = [(k, n, v) for k, (n, v) in enumerate(cf.constants) if _new_value(random.Random(0), v) is not None]
    if not options:
        return None
    k, name, value = rng.choice(options)
    new = _new_value(rng, value)
    after = _copy(cf)
    after.constants[k] = (name, new)
    if isinstance(value, (int, float)):
        verb = "Raise" if new > value else "Lower"
        msg = rng.choice((f"{verb} {name} from {value} to {new}", f"{verb} {name} to {new}", f"Set {name} to {new}"))
    else:
        msg = rng.choice((f"Bump {name} to {new}", f"Update {name} to {new}"))
    return render_code(cf), render_code(after), msg


def edit_add_missing_import(rng, cf):
    if cf.language != "python" or not cf.imports:
        return None
    imp = rng.choice(cf.imports)
    before = _copy(cf)
    before.imports = [x for x in cf.imports if x != imp]
    module = imp.split()[-1]
    msg = rng.choice((f"Add missing import of {module}", f"Fix NameError: import {module}", f"Import {module} in {Path(cf.path).name}"))
    return render_code(before), render_code(cf), msg


def edit_use_logging(rng, cf):
    if cf.language != "python":
        return None
    cf = _with_debug(rng, cf)
    if cf is None:
        return None
    options = [i for i, f in enumerate(cf.funcs) if f.debug]
    if not options or "import logging" in cf.imports:
        return None
    i = rng.choice(options)
    after = _copy(cf)
    f = after.funcs[i]
    f.debug = False
    f.body = [f'    log.debug("{f.name}: %s", {f.debug_var})'] + f.body
    after.imports.append("import logging")
    after.constants.insert(0, ("log", LOGGER))
    msg = rng.choice((f"Log with logging instead of print in {f.name}", "Replace debug print with a logger"))
    return render_code(cf), render_code(after), msg


def edit_remove_debug(rng, cf):
    cf = _with_debug(rng, cf)
    if cf is None:
        return None
    options = [i for i, f in enumerate(cf.funcs) if f.debug]
    if not options:
        return None
    i = rng.choice(options)
    after = _copy(cf)
    after.funcs[i].debug = False
    name = after.funcs[i].name
    msg = rng.choice((f"Remove leftover debug print from {name}", f"{name}: drop debug output", "Remove debugging line"))
    return render_code(cf), render_code(after), msg


def edit_remove_unused_import(rng, cf):
    if cf.language != "python":
        return None
    if not cf.extra_imports:
        text = render_code(cf)
        unused = [m for m in UNUSED_PY_IMPORTS if m.split()[-1] + "." not in text]
        if not unused:
            return None
        cf = _copy(cf)
        cf.extra_imports = [rng.choice(unused)]
    after = _copy(cf)
    after.extra_imports = []
    module = cf.extra_imports[0].split()[-1]
    msg = rng.choice((f"Remove unused import {module}", f"Drop unused {module} import"))
    return render_code(cf), render_code(after), msg


def edit_add_function(rng, cf):
    s, p = cf.noun
    pool = py_funcs(s, p) if cf.language == "python" else js_funcs(s, p)
    have = [f.name for f in cf.funcs]
    pool = [f for f in pool if f.name not in have]
    if not pool or len(cf.funcs) >= (3 if cf.language == "python" else 2):
        return None
    new = replace(rng.choice(pool))
    if new.docs and rng.random() < 0.6:
        new.doc = rng.choice(new.docs)
    after = _copy(cf)
    after.funcs.append(new)
    for imp in new.imports:
        if imp not in after.imports:
            after.imports.append(imp)
    for c in new.constants:
        if c[0] not in [n for n, _ in after.constants]:
            after.constants.append(c)
    msg = rng.choice((f"Add {new.name}", f"Add {new.name} helper", f"New helper: {new.name}"))
    return render_code(cf), render_code(after), msg


def edit_remove_function(rng, cf):
    if len(cf.funcs) < 2:
        return None
    i = rng.randrange(len(cf.funcs))
    after = _copy(cf)
    gone = after.funcs.pop(i)
    imports, constants = _needed(after.funcs)
    after.imports = [x for x in after.imports if x in imports]
    after.constants = [c for c in after.constants if c in constants or c[0] not in [n for n, _ in _needed([gone])[1]]]
    msg = rng.choice((f"Remove unused {gone.name}", f"Delete {gone.name}, it has no callers"))
    return render_code(cf), render_code(after), msg


def edit_add_module_doc(rng, cf):
    if cf.doc:
        return None
    after = _copy(cf)
    s, p = cf.noun
    after.doc = rng.choice((f"Helpers for {p}.", f"Functions for loading and summarising {p}."))
    return render_code(cf), render_code(after), rng.choice(("Add module docstring", "Describe the module", "Add a header comment"))


def edit_new_code_file(rng, cf):
    small = _copy(cf)
    small.funcs = small.funcs[:2]
    small.imports, small.constants = _needed(small.funcs)
    for f in small.funcs:
        f.active, f.debug = (), False
    small.extra_imports = []
    after = render_code(small)
    names = " and ".join(f.name for f in small.funcs)
    msg = rng.choice((f"Add {Path(cf.path).name}", f"Add {names}", f"New module with {names}",
                      f"Start {Path(cf.path).stem} with {names}"))
    return "", after, msg


CODE_EDITS = {
    "rename": edit_rename,
    "fix": edit_fix_variant,
    "docstring": edit_add_docstring,
    "parameter": edit_add_parameter,
    "constant": edit_change_constant,
    "import": edit_add_missing_import,
    "logging": edit_use_logging,
    "delete_debug": edit_remove_debug,
    "delete_import": edit_remove_unused_import,
    "add_function": edit_add_function,
    "remove_function": edit_remove_function,
    "module_doc": edit_add_module_doc,
    "new_file": edit_new_code_file,
}
CODE_EDIT_WEIGHTS = {
    "rename": 14, "fix": 16, "docstring": 10, "parameter": 10, "constant": 9, "import": 7, "logging": 4,
    "delete_debug": 5, "delete_import": 3, "add_function": 6, "remove_function": 4, "module_doc": 3, "new_file": 9,
}

# --------------------------------------------------------------------------
# Shell scripts
# --------------------------------------------------------------------------

SHELL_SCRIPTS = (
    ("scripts/build.sh", "Build the release archive.",
     (("OUT_DIR", '"dist"'), ("JOBS", "4")),
     ('mkdir -p $OUT_DIR', 'echo "building with $JOBS jobs"', 'make -j "$JOBS" all',
      'tar -czf "$OUT_DIR/release.tar.gz" build/')),
    ("scripts/backup.sh", "Copy the data folder to the backup disk.",
     (("SRC", '"/srv/data"'), ("DEST", '"/mnt/backup"'), ("KEEP_DAYS", "7")),
     ('stamp=$(date +%Y%m%d)', 'echo "backing up $SRC"', 'cp -r $SRC "$DEST/data-$stamp"',
      'find "$DEST" -maxdepth 1 -name "data-*" -mtime +"$KEEP_DAYS" -exec rm -rf {} +')),
    ("deploy.sh", "Deploy the app to the staging host.",
     (("HOST", '"staging.internal"'), ("APP_DIR", '"/opt/app"'), ("PORT", "8080")),
     ('echo "deploying to $HOST"', 'rsync -az --delete build/ "$HOST:$APP_DIR"',
      'ssh "$HOST" "systemctl restart app"', 'curl -fsS "http://$HOST:$PORT/health"')),
    ("scripts/test.sh", "Run the test suite.",
     (("PYTHON", '"python3"'), ("WORKERS", "2")),
     ('echo "running tests"', '$PYTHON -m pytest -q -n "$WORKERS" tests/', '$PYTHON -m flake8 src/')),
    ("scripts/clean.sh", "Remove build outputs.",
     (("BUILD_DIR", '"build"'), ("CACHE_DIR", '".cache"')),
     ('echo "cleaning"', 'rm -rf $BUILD_DIR', 'rm -rf "$CACHE_DIR"', 'find . -name "*.pyc" -delete')),
    ("tools/fetch_data.sh", "Download the nightly data export.",
     (("URL", '"https://data.example.com/export.csv"'), ("OUT", '"data/export.csv"'), ("RETRIES", "3")),
     ('mkdir -p "$(dirname "$OUT")"', 'echo "fetching $URL"', 'curl -fsSL --retry "$RETRIES" -o $OUT "$URL"', 'wc -l "$OUT"')),
)


@dataclass
class ShellFile:
    path: str
    comment: str
    strict: bool
    variables: list[tuple[str, str]]
    commands: list[str]


def render_shell(sf: ShellFile) -> str:
    lines = ["#!/usr/bin/env bash", f"# {sf.comment}", "set -euo pipefail" if sf.strict else "set -e", ""]
    lines += [f"{n}={v}" for n, v in sf.variables] + [""] + sf.commands
    return "\n".join(lines) + "\n"


def new_shell_file(rng: random.Random) -> ShellFile:
    path, comment, variables, commands = rng.choice(SHELL_SCRIPTS)
    return ShellFile(path, comment, rng.random() < 0.4, list(variables), list(commands))


def _shell_copy(sf: ShellFile) -> ShellFile:
    return replace(sf, variables=list(sf.variables), commands=list(sf.commands))


def shell_strict(rng, sf):
    if sf.strict:
        return None
    after = _shell_copy(sf)
    after.strict = True
    return render_shell(sf), render_shell(after), rng.choice(
        ("Fail on unset variables and pipe errors", "Use set -euo pipefail", f"{Path(sf.path).name}: stricter error handling"))


def shell_quote(rng, sf):
    options = [i for i, c in enumerate(sf.commands) if re.search(r'(?<!")\$[A-Z_]+\b(?!")', c.replace('"$', '"#'))]
    if not options:
        return None
    i = rng.choice(options)
    after = _shell_copy(sf)
    after.commands[i] = re.sub(r'(?<![":/\w])\$([A-Z_]+)\b(?![\w"/])', r'"$\1"', sf.commands[i])
    if after.commands[i] == sf.commands[i]:
        return None
    return render_shell(sf), render_shell(after), rng.choice(("Quote variables", "Quote paths so spaces work", "Fix word splitting"))


def shell_change_var(rng, sf):
    options = [k for k, (_, v) in enumerate(sf.variables) if v.isdigit()]
    if not options:
        return None
    k = rng.choice(options)
    name, value = sf.variables[k]
    new = str(rng.choice([x for x in (int(value) * 2, int(value) + 1, max(1, int(value) - 1)) if x != int(value)]))
    after = _shell_copy(sf)
    after.variables[k] = (name, new)
    return render_shell(sf), render_shell(after), rng.choice((f"Set {name} to {new}", f"Change {name} from {value} to {new}"))


def shell_delete_echo(rng, sf):
    options = [i for i, c in enumerate(sf.commands) if c.startswith("echo ")]
    if not options:
        return None
    after = _shell_copy(sf)
    del after.commands[rng.choice(options)]
    return render_shell(sf), render_shell(after), rng.choice(("Remove noisy echo", "Drop progress message", "Quieter output"))


def shell_add_line(rng, sf):
    after = _shell_copy(sf)
    after.commands.append(rng.choice(('echo "done"', 'echo "finished at $(date)"', "exit 0")))
    return render_shell(sf), render_shell(after), rng.choice(("Print a message when finished", "Report completion"))


def shell_new_file(rng, sf):
    return "", render_shell(sf), rng.choice((f"Add {Path(sf.path).name}", f"Add script to {sf.comment[0].lower()}{sf.comment[1:-1]}"))


SHELL_EDITS = {"strict": shell_strict, "quote": shell_quote, "constant": shell_change_var, "delete_echo": shell_delete_echo,
               "add_line": shell_add_line, "new_file": shell_new_file}
SHELL_EDIT_WEIGHTS = {"strict": 3, "quote": 3, "constant": 3, "delete_echo": 2, "add_line": 2, "new_file": 2}

# --------------------------------------------------------------------------
# Markdown documents
# --------------------------------------------------------------------------

TYPOS = (("receive", "recieve"), ("separate", "seperate"), ("occurred", "occured"), ("the", "teh"),
         ("environment", "enviroment"), ("necessary", "neccessary"))


@dataclass
class Doc:
    path: str
    title: str
    sections: list[tuple[str, list[str]]]  # (heading, lines)


def new_doc(rng: random.Random) -> Doc:
    s, p = rng.choice(NOUNS)
    tool = f"{s}-{rng.choice(('tools', 'kit', 'sync', 'report'))}"
    intro = [f"{tool} helps you keep track of {p}.", rng.choice((
        f"It reads {p} from CSV files and writes a short report.",
        f"It reads the {p} you export and prints the totals.",
        f"Point it at a folder and it lists the {p} that need attention.",
    ))]
    install = ["```", f"pip install {tool}", "```"]
    usage = ["```", f"{tool} summary data/{p}.csv", f"{tool} export --format json data/{p}.csv", "```"]
    config = [f"- `{tool.upper().replace('-', '_')}_HOME`: where the {p} are stored", "- `LOG_LEVEL`: one of debug, info, warning"]
    notes = rng.sample([
        "Every command will receive the same environment.",
        "Keep the input files separate from the output.",
        f"A warning is printed when a {s} has occurred twice.",
        "Python 3.10 or newer is necessary.",
        "Set the environment variables before the first run.",
    ], 3)
    sections = [("", intro), ("Install", install), ("Usage", usage)]
    if rng.random() < 0.5:
        sections.append(("Configuration", config))
    if rng.random() < 0.6:
        sections.append(("Notes", notes))
    doc = Doc(rng.choice(("README.md", "docs/usage.md", f"docs/{s}.md")), tool, sections)
    if rng.random() < 0.6:  # introduce a typo somewhere
        _apply_typo(rng, doc, introduce=True)
    return doc


def render_doc(d: Doc) -> str:
    out = [f"# {d.title}", ""]
    for heading, lines in d.sections:
        if heading:
            out += [f"## {heading}", ""]
        out += lines + [""]
    return "\n".join(out)


def _doc_copy(d: Doc) -> Doc:
    return replace(d, sections=[(h, list(ls)) for h, ls in d.sections])


def _apply_typo(rng, doc: Doc, introduce: bool) -> str | None:
    pairs = [(a, b) if introduce else (b, a) for a, b in TYPOS]
    options = [(si, li, a, b) for si, (_, lines) in enumerate(doc.sections) for li, line in enumerate(lines)
               for a, b in pairs if re.search(rf"\b{a}\b", line) and not line.startswith(("```", "pip", "-"))]
    if not options:
        return None
    si, li, a, b = rng.choice(options)
    doc.sections[si][1][li] = re.sub(rf"\b{a}\b", b, doc.sections[si][1][li], count=1)
    return f"{a} -> {b}"


def doc_fix_typo(rng, d):
    if not any(re.search(rf"\b{typo}\b", render_doc(d)) for _, typo in TYPOS):
        d = _doc_copy(d)
        if _apply_typo(rng, d, introduce=True) is None:
            return None
    after = _doc_copy(d)
    change = _apply_typo(rng, after, introduce=False)
    if change is None:
        return None
    return render_doc(d), render_doc(after), rng.choice((f"Fix typo ({change})", "Fix typo in docs", "docs: spelling"))


def doc_add_section(rng, d):
    headings = [h for h, _ in d.sections]
    s = d.title.split("-")[0]
    extra = (("License", ["MIT, see LICENSE."]), ("Contributing", ["Open an issue before sending a large change.", "Run the tests with `pytest`."]),
             ("Troubleshooting", [f"If a {s} file fails to load, run with `LOG_LEVEL=debug`."]))
    options = [x for x in extra if x[0] not in headings]
    if not options:
        return None
    heading, lines = rng.choice(options)
    after = _doc_copy(d)
    after.sections.append((heading, list(lines)))
    return render_doc(d), render_doc(after), rng.choice((f"Add {heading} section", f"docs: add {heading.lower()} notes"))


def doc_remove_line(rng, d):
    options = [(si, li) for si, (h, lines) in enumerate(d.sections) if h in ("Notes", "Configuration") for li in range(len(lines))]
    if not options:
        return None
    si, li = rng.choice(options)
    after = _doc_copy(d)
    del after.sections[si][1][li]
    return render_doc(d), render_doc(after), rng.choice(("Remove outdated note", "docs: drop stale line"))


def doc_usage(rng, d):
    after = _doc_copy(d)
    for h, lines in after.sections:
        if h == "Usage":
            lines.insert(len(lines) - 1, f"{d.title} check --strict data/")
            return render_doc(d), render_doc(after), rng.choice(("Document the check command", "Add check example to usage"))
    return None


def doc_new_file(rng, d):
    small = _doc_copy(d)
    small.sections = small.sections[:3]
    return "", render_doc(small), rng.choice((f"Add {Path(d.path).name}", f"Add docs for {d.title}", "Write a README"))


DOC_EDITS = {"typo": doc_fix_typo, "section": doc_add_section, "delete_line": doc_remove_line, "usage": doc_usage,
             "new_file": doc_new_file}
DOC_EDIT_WEIGHTS = {"typo": 4, "section": 3, "delete_line": 2, "usage": 2, "new_file": 2}

# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def one_sample(rng: random.Random) -> dict | None:
    """One row, or None when the drawn edit does not apply to the drawn file."""
    langs = [lang for lang, _ in LANGUAGE_WEIGHTS]
    language = rng.choices(langs, weights=[w for _, w in LANGUAGE_WEIGHTS])[0]
    if language in ("python", "javascript"):
        kind = _pick(rng, CODE_EDIT_WEIGHTS)
        doc = new_code_file(rng, language)
        result = CODE_EDITS[kind](rng, doc)
    elif language == "shell":
        kind = _pick(rng, SHELL_EDIT_WEIGHTS)
        doc = new_shell_file(rng)
        result = SHELL_EDITS[kind](rng, doc)
    else:
        kind = _pick(rng, DOC_EDIT_WEIGHTS)
        doc = new_doc(rng)
        result = DOC_EDITS[kind](rng, doc)
    if result is None:
        return None
    before, after, message = result
    diff = make_diff(before, after)
    if not diff:
        return None
    return {"name": doc.path, "before": before, "message": message, "diff": diff, "language": language, "_edit": kind}


def generate(n: int = DEFAULT_N, seed: int = DEFAULT_SEED, with_edit_kind: bool = False) -> list[dict]:
    """``n`` distinct rows, the same for the same ``(n, seed)``."""
    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 200 * n:
            raise RuntimeError(f"could only make {len(rows)} distinct samples of {n}")
        row = one_sample(rng)
        if row is None:
            continue
        text = render_row(row)
        if not MIN_CHARS <= len(text) <= MAX_CHARS or text in seen:
            continue
        seen.add(text)
        if not with_edit_kind:
            row.pop("_edit")
        rows.append(row)
    return rows


def write_jsonl(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"number of samples (default {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output jsonl (default: the bundled quickstart set)")
    args = parser.parse_args(argv)
    rows = generate(args.n, args.seed, with_edit_kind=True)
    kinds = Counter(f"{r['language']}/{r.pop('_edit')}" for r in rows)
    write_jsonl(rows, args.out)
    lengths = sorted(len(render_row(r)) for r in rows)
    print(f"wrote {len(rows)} samples to {args.out}")
    print(f"rendered chars: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}")
    for kind, count in sorted(kinds.items()):
        print(f"  {kind:<28} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
