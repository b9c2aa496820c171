"""eval humanevalfix --problems FILE on published-schema HumanEvalFix rows (three problems written here)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from diffmodel.cli import main as diffmodel
from diffmodel.errors import DiffModelError
from diffmodel.evaluate import humanevalfix as hef
from diffmodel.evaluate.edits import EmptyEditor, ReferenceEditor

WORKERS = 4


def _row(n, entry, declaration, canonical, buggy, test, bug_type, symptoms):
    return {
        "task_id": f"Python/{n}", "prompt": declaration + '    """Docs."""\n', "declaration": declaration,
        "canonical_solution": canonical, "buggy_solution": buggy, "bug_type": bug_type, "failure_symptoms": symptoms,
        "entry_point": entry, "import": "", "test_setup": "", "test": test + f"\ncheck({entry})\n", "example_test": "",
        "signature": declaration.strip().removeprefix("def ").rstrip(":"), "docstring": "Docs.",
        "instruction": f"Write a Python function `{entry}` to solve the following problem:\nDocs.",
    }


ROWS = [
    _row(0, "add_one", "def add_one(x: int) -> int:\n", "    return x + 1\n", "    return x - 1\n",
         "\n\ndef check(add_one):\n    assert add_one(1) == 2\n    assert add_one(-1) == 0\n", "operator misuse", "incorrect output"),
    _row(1, "longest", "from typing import List\n\n\ndef longest(strings: List[str]) -> int:\n",
         "    best = 0\n    for s in strings:\n        if len(s) > best:\n            best = len(s)\n    return best\n",
         "    best = 0\n    for s in strings:\n        if len(s) > best:\n            best = len(strings)\n    return best\n",
         "\n\ndef check(longest):\n    assert longest([]) == 0\n    assert longest(['ab', 'abcd', 'a']) == 4\n", "variable misuse", "incorrect output"),
    _row(2, "is_sorted", "def is_sorted(xs: list) -> bool:\n", "    return all(a <= b for a, b in zip(xs, xs[1:]))\n",
         "    return all(a <= b for a, b in zip(xs, xs[2:]))\n",
         "\n\ndef check(is_sorted):\n    assert is_sorted([1, 2, 3])\n    assert not is_sorted([2, 1])\n", "value misuse", ""),
]


def _write(path, rows):
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def jsonl(tmp_path):
    return _write(tmp_path / "humanevalfix.jsonl", ROWS)


class TestLoading:
    @pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
    def test_rows_become_problems_and_published_bugs(self, tmp_path, suffix):
        path = _write(tmp_path / f"hef{suffix}", ROWS)
        assert hef.is_pack_file(path)
        problems, bugs = hef.load_pack(path)
        assert [p.task_id for p in problems] == ["Python/0", "Python/1", "Python/2"]
        first = bugs.bugs[0]
        assert (first.buggy, first.fixed) == ("def add_one(x: int) -> int:\n    return x - 1\n", "def add_one(x: int) -> int:\n    return x + 1\n")
        assert (first.name, first.message, first.operator, first.line) == ("add_one.py", "Fix bugs in add_one.", "operator misuse", 2)
        assert bugs.bugs[1].line == 8 and bugs.bugs[2].description == "value misuse"
        assert problems[1].solution_file == ROWS[1]["declaration"] + ROWS[1]["canonical_solution"]
        assert bugs.settings["source"] == "humanevalpack" and bugs.settings["problems"] == 3

    def test_a_humaneval_file_is_not_a_pack_file(self, tmp_path):
        path = tmp_path / "he.jsonl"
        path.write_text(json.dumps({k: ROWS[0][k] for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}) + "\n")
        assert not hef.is_pack_file(path)

    @pytest.mark.parametrize("field", hef.PACK_REQUIRED)
    def test_a_missing_field_names_the_field_the_line_and_the_file(self, tmp_path, field):
        rows = [dict(r) for r in ROWS]
        del rows[1][field]
        path = _write(tmp_path / "bad.jsonl", rows)
        with pytest.raises(DiffModelError, match=rf"{path}:2: the row has no field '{field}'; .* add it"):
            hef.load_pack(path)

    def test_a_missing_field_in_parquet_names_the_row(self, tmp_path):
        rows = [dict(r, entry_point=None) if i == 2 else r for i, r in enumerate(ROWS)]
        path = _write(tmp_path / "bad.parquet", rows)
        with pytest.raises(DiffModelError, match=rf"{path}: row 3: the row has a non-string field 'entry_point'"):
            hef.load_pack(path)

    def test_another_language_is_refused(self, tmp_path):
        path = _write(tmp_path / "js.jsonl", [dict(ROWS[0], task_id="JavaScript/0")])
        with pytest.raises(DiffModelError, match=rf"{path}:1: task 'JavaScript/0' is not Python; .*python split"):
            hef.load_pack(path)


class TestScoring:
    def test_canonical_solutions_pass_and_buggy_ones_fail(self, jsonl):
        problems, bugs = hef.load_pack(jsonl)
        assert hef.check_pack(problems, bugs, workers=WORKERS) == {"canonical_fails": {}, "buggy_passes": []}

    def test_the_checks_see_a_wrong_canonical_solution_and_a_passing_bug(self, tmp_path):
        rows = [dict(ROWS[0], canonical_solution="    return x\n"), dict(ROWS[2], buggy_solution=ROWS[2]["canonical_solution"])]
        problems, bugs = hef.load_pack(_write(tmp_path / "odd.jsonl", rows))
        checks = hef.check_pack(problems, bugs, workers=WORKERS)
        assert list(checks["canonical_fails"]) == ["Python/0"] and checks["buggy_passes"] == ["Python/2"]

    def test_the_fixing_diff_scores_one_and_an_empty_answer_zero(self, jsonl):
        problems, bugs = hef.load_pack(jsonl)
        seen = []

        def fix(request):
            seen.append((request.name, request.message, request.code))
            return hef.oracle(bugs)(request)

        summary, rows = hef.run_benchmark(problems, lambda b: ReferenceEditor(fix), num_samples=3, ks=(1, 2), workers=WORKERS, bugs=bugs)
        assert summary["metrics"]["pass@1"] == 1.0 and summary["metrics"]["pass@2"] == 1.0
        assert summary["metrics"]["problems_with_bug"] == 3 and summary["outcomes"]["passed"] == 9
        assert seen[0] == ("add_one.py", "Fix bugs in add_one.", "def add_one(x: int) -> int:\n    return x - 1\n")
        assert set(summary["by_operator"]) == {"operator misuse", "variable misuse", "value misuse"}
        assert {op: v["pass@1"] for op, v in summary["by_operator"].items()} == dict.fromkeys(summary["by_operator"], 1.0)
        only_k2, _ = hef.run_benchmark(problems, lambda b: ReferenceEditor(fix), num_samples=3, ks=(2,), workers=WORKERS, bugs=bugs)
        assert "pass@1" not in only_k2["metrics"]  # the per-operator pass@1 does not need k=1 among --k
        assert {v["pass@1"] for v in only_k2["by_operator"].values()} == {1.0}
        assert [r["generations"][0]["diff"] for r in rows][0] == "@@ -1,2 +1,2 @@\n def add_one(x: int) -> int:\n-    return x - 1\n+    return x + 1\n"

        summary, _ = hef.run_benchmark(problems, lambda b: EmptyEditor(), num_samples=3, ks=(1, 2), workers=WORKERS, bugs=bugs)
        assert summary["metrics"]["pass@1"] == 0.0 and summary["outcomes"]["did_not_apply"] == 9


class TestCommand:
    def test_progress_bars_cover_checking_and_running_the_tests(self, jsonl, tmp_path, capsys):
        out = tmp_path / "hef.json"
        assert diffmodel(["eval", "humanevalfix", "--calibrate", "oracle", "--problems", str(jsonl), "--num_samples", "2",
                          "--k", "1", "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert "checking the problems: 100%" in err and "6/6" in err  # 3 canonical and 3 buggy files
        assert "running tests: 100%" in err

    def test_published_rows_score_with_octopack_defaults_and_record_their_source(self, jsonl, tmp_path, capsys):
        out = tmp_path / "a" / "hef.json"
        assert diffmodel(["eval", "humanevalfix", "--calibrate", "oracle", "--problems", str(jsonl), "--no_progress", "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["settings"]["num_samples"] == 20 and report["settings"]["temperature"] == 0.2
        assert report["settings"]["cuda_graphs"] is torch.cuda.is_available()  # no graphs to replay on a CPU
        assert "bug_seed" not in report["settings"]
        assert report["metrics"]["pass@1"] == 1.0 and report["metrics"]["pass@10"] == 1.0 and report["metrics"]["problems"] == 3
        assert report["problems_source"]["source"] == "humanevalpack" and report["problems_source"]["file"] == str(jsonl)
        assert report["problem_checks"] == {"canonical_fails": {}, "buggy_passes": []}
        assert report["data"] == f"HumanEvalFix (published rows): {jsonl}"
        assert "canonical solutions failing: 0, buggy solutions passing: 0" in capsys.readouterr().err

        out = tmp_path / "b" / "hef.json"
        args = ["eval", "humanevalfix", "--calibrate", "empty", "--problems", str(jsonl), "--num_samples", "2", "--k", "1", "--limit", "2"]
        assert diffmodel([*args, "--no_progress", "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["metrics"]["pass@1"] == 0.0 and report["metrics"]["problems_with_bug"] == 2

    def test_a_missing_field_is_a_usage_error(self, tmp_path, capsys):
        rows = [dict(r) for r in ROWS]
        del rows[2]["test"]
        path = _write(tmp_path / "bad.jsonl", rows)
        assert diffmodel(["eval", "humanevalfix", "--calibrate", "oracle", "--problems", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{path}:3: the row has no field 'test'" in err and "Traceback" not in err
