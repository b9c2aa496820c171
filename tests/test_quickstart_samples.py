"""The bundled quickstart sample set: well-formed, sized for CPU training, and reproducible."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from diffmodel.diff.apply import apply_diff
from diffmodel.diff.make import make_diff, split_lines
from diffmodel.diff.parse import Status, parse_diff
from diffmodel.sample import NEW_FILE, render_row, split
from diffmodel.samples import load_quickstart, quickstart_path
from diffmodel.tiny import train_tokenizer

GENERATOR = Path(__file__).resolve().parents[1] / "scripts" / "make_quickstart_samples.py"
LANGUAGES = {"python", "javascript", "shell", "markdown"}


def load_generator():
    spec = importlib.util.spec_from_file_location("make_quickstart_samples", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows():
    return load_quickstart()


class TestQuickstartSetShape:
    def test_path_is_packaged_file(self):
        path = quickstart_path()
        assert path.name == "quickstart.jsonl" and path.is_file()

    def test_size_and_fields(self, rows):
        assert 200 <= len(rows) <= 400
        for row in rows:
            assert set(row) == {"name", "before", "message", "diff", "language"}
            assert all(isinstance(v, str) for v in row.values())
            assert row["name"] and row["message"].strip()
            assert row["language"] in LANGUAGES

    def test_every_language_and_new_files_present(self, rows):
        counts = {lang: sum(r["language"] == lang for r in rows) for lang in LANGUAGES}
        assert counts["python"] > len(rows) / 2
        assert all(counts.values())
        assert sum(r["before"] == "" for r in rows) >= 10

    def test_rendered_length_in_range_and_texts_distinct(self, rows):
        texts = [render_row(r) for r in rows]
        assert all(100 <= len(t) <= 1000 for t in texts), sorted(map(len, texts))[::50]
        assert len(set(texts)) == len(texts)

    def test_every_row_fits_512_tokens_of_a_tiny_tokenizer(self, rows):
        texts = [render_row(r) for r in rows]
        tok = train_tokenizer(texts, vocab_size=512, model_max_length=512)
        longest = max(len(ids) for ids in tok(texts)["input_ids"])
        assert longest <= 512

    def test_render_split_round_trip(self, rows):
        for row in rows:
            s = split(render_row(row))
            assert (s.name, s.before, s.message, s.diff) == (row["name"], row["before"], row["message"], row["diff"])


class TestQuickstartDiffs:
    def test_every_diff_is_non_empty_and_valid(self, rows):
        for row in rows:
            assert row["diff"].startswith("@@ ")
            parsed = parse_diff(row["diff"])
            assert parsed.status is Status.VALID, (row["name"], row["message"], parsed.notes)

    def test_hunks_match_the_file_before(self, rows):
        for row in rows:
            before = split_lines(row["before"])
            for hunk in parse_diff(row["diff"]).hunks:
                start = hunk.old_start - 1
                assert before[start:start + hunk.old_len] == hunk.old_lines(), (row["name"], row["message"])

    def test_every_diff_applies_and_make_diff_gives_it_back(self, rows):
        for row in rows:
            result = apply_diff(row["before"], row["diff"], mode="strict")
            assert result.text is not None, (row["name"], row["message"], result)
            assert result.text != row["before"]
            assert make_diff(row["before"], result.text) == row["diff"], (row["name"], row["message"])

    def test_new_files_are_all_additions(self, rows):
        for row in (r for r in rows if r["before"] == ""):
            assert row["diff"].startswith("@@ -0,0 +1")
            assert NEW_FILE in render_row(row)
            hunks = parse_diff(row["diff"]).hunks
            assert len(hunks) == 1 and all(tag == "+" for tag, _ in hunks[0].ops())


class TestQuickstartReproducible:
    def test_file_equals_a_fresh_run_of_the_generator(self, rows):
        gen = load_generator()
        fresh = gen.generate(n=len(rows), seed=gen.DEFAULT_SEED)
        assert fresh == rows, "quickstart.jsonl is stale: rerun python scripts/make_quickstart_samples.py"

    def test_generator_is_seeded(self):
        gen = load_generator()
        assert gen.generate(n=20, seed=1) == gen.generate(n=20, seed=1)
        assert gen.generate(n=20, seed=1) != gen.generate(n=20, seed=2)
