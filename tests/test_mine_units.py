"""Pure parts of mining: filters, languages, licences, split, shards, names, CommitPack conversion."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import zstandard

from diffmodel.errors import DiffModelError
from diffmodel.mine import filters as F
from diffmodel.mine.convert import convert_row, convert_rows
from diffmodel.mine.languages import LANGUAGES, language_of, unknown_languages
from diffmodel.mine.repos import repository_names
from diffmodel.mine.samples import ChunkResult, SampleOptions
from diffmodel.mine.shards import ShardWriter, complete_shards, read_shard, remove_tmp_files, write_json_atomic
from diffmodel.mine.split import assign_split, check_fractions, resolve_split_by, unit_interval
from diffmodel.sample import render_row


class TestNoiseMessages:
    @pytest.mark.parametrize("message, kind", [
        ("Merge branch 'main' into feature", "merge"),
        ("Merge pull request #12 from someone/branch\n\nAdd the parser", "merge"),
        ("Merge remote-tracking branch 'origin/main'", "merge"),
        ("Update README.md", "web_editor"),
        ("Add files via upload", "web_editor"),
        ("wip", "work_in_progress"),
        ("WIP: half of the parser", "work_in_progress"),
        ("fix", "work_in_progress"),
        ("update", "work_in_progress"),
        ("...", "work_in_progress"),
        ("Initial commit", "initial_commit"),
        ("v1.2.3", "version_bump"),
        ("1.0", "version_bump"),
        ("Bump version to 2.0.1", "version_bump"),
        ("Release 0.3.0rc1", "version_bump"),
        ("Bump version: 1.2.2 → 1.2.3", "version_bump"),
        ("Bump lodash from 4.17.15 to 4.17.21", "bot"),
        ("chore(deps): update dependency react to v18", "bot"),
        ("[pre-commit.ci] auto fixes from pre-commit hooks", "bot"),
    ])
    def test_noise(self, message, kind):
        assert F.noise_kind(message) == kind

    @pytest.mark.parametrize("message", [
        "Merge sort: handle empty lists",
        "Update the parser to accept tabs",
        "Fix crash in the 1.2.3 config loader",
        "Add support for CRLF files",
        'Revert "Add the cache"',
    ])
    def test_real_messages_are_kept(self, message):
        assert F.noise_kind(message) is None

    def test_reverts_only_when_asked(self):
        assert F.noise_kind('Revert "Add the cache"\n\nThis reverts commit abc.', drop_reverts=True) == "revert"

    def test_bot_authors(self):
        assert F.is_bot_author("dependabot[bot]") and F.is_bot_author("renovate-bot")
        assert not F.is_bot_author("Ada Lovelace")


class TestMessageBounds:
    def test_defaults(self):
        o = F.FilterOptions()
        assert F.message_drop_reason("Fix the overflow in parse()", "Ada", o) is None
        assert F.message_drop_reason("Fix typo", "Ada", o) == F.DROP_MESSAGE_LENGTH  # 8 < 10 characters
        assert F.message_drop_reason("Refactoring", "Ada", o) == F.DROP_MESSAGE_WORDS  # one word
        assert F.message_drop_reason("x " * 3000, "Ada", o) == F.DROP_MESSAGE_LENGTH
        assert F.message_drop_reason("Make it faster", "dependabot[bot]", o) == F.DROP_BOT_AUTHOR
        assert F.message_drop_reason("wip", "Ada", o) == F.DROP_NOISE_MESSAGE

    def test_switches(self):
        o = F.FilterOptions(noise_messages=False, bot_authors=False, min_message_chars=0, min_message_words=1)
        assert F.message_drop_reason("wip", "dependabot[bot]", o) is None

    def test_bounds_are_inclusive(self):
        assert F.message_length_ok("a" * 10, 10, 10) and not F.message_length_ok("a" * 11, 10, 10)
        assert F.message_words_ok("a b", 2, 2) and not F.message_words_ok("a b c", 2, 2)


class TestContentFilters:
    def test_binary_is_a_nul_in_the_first_8000_bytes(self):
        assert F.is_binary(b"ab\0c")
        assert not F.is_binary(b"a" * 8000 + b"\0")

    def test_utf8(self):
        assert F.decode_utf8("café".encode()) == "café"
        assert F.decode_utf8(b"caf\xe9") is None
        assert F.decode_utf8(b"\xef\xbb\xbfx") == "\ufeffx"  # a BOM is kept

    def test_languages(self):
        default = F.FilterOptions()
        assert F.language_ok("Python", default) and not F.language_ok("", default)
        only = F.FilterOptions(languages=("python", "Rust"))
        assert F.language_ok("Python", only) and F.language_ok("Rust", only) and not F.language_ok("Go", only)
        assert F.language_ok("", F.FilterOptions(languages=("all",)))

    def test_sizes_and_tokens(self):
        assert F.before_size_ok("x" * 5, 5) and not F.before_size_ok("x" * 6, 5)
        assert F.diff_size_ok("x" * 5, 5) and not F.diff_size_ok("x" * 6, 5)
        assert F.token_count_ok(10**9, None) and not F.token_count_ok(11, 10)

    def test_dedup_key(self):
        assert F.dedup_key("a", "b") == F.dedup_key("a", "b")
        assert F.dedup_key("ab", "") != F.dedup_key("a", "b")


@pytest.mark.parametrize("path, language", [
    ("src/main.py", "Python"), ("a/b/Makefile", "Makefile"), ("Dockerfile", "Dockerfile"), ("x.TSX", "TypeScript"),
    ("lib.rs", "Rust"), ("README.md", "Markdown"), ("logo.png", ""), (".gitignore", ""), ("noext", ""),
    ("CMakeLists.txt", "CMake"), ("archive.tar.gz", ""),
])
def test_language_of(path, language):
    assert language_of(path) == language


def test_every_language_name_in_any_case_is_known_and_listed_in_the_docs():
    assert unknown_languages([*LANGUAGES, *(n.lower() for n in LANGUAGES), *(n.upper() for n in LANGUAGES), "All"]) == []
    docs = (Path(__file__).parents[1] / "docs" / "mine.md").read_text()
    listed = docs.split("`--languages` takes these names")[1].split("\n\n")[1]
    assert sorted(re.findall(r"`([^`]+)`", listed)) == sorted(LANGUAGES)
    assert unknown_languages(["Golang", "objc"]) == [
        "--languages Golang: not a known language (did you mean Erlang, Lean?); the names are listed in docs/mine.md",
        "--languages objc: not a known language; the names are listed in docs/mine.md"]


class TestLicences:
    MIT = ("MIT License\n\nCopyright (c) 2024 Someone\n\nPermission is hereby granted, free of charge, to any person "
           "obtaining a copy\nof this software ...")
    APACHE = "                                 Apache License\n                           Version 2.0, January 2004\n"
    GPL3 = "                    GNU GENERAL PUBLIC LICENSE\n                       Version 3, 29 June 2007\n"
    BSD3 = ("Redistribution and use in source and binary forms, with or without modification, are permitted ...\n"
            "3. Neither the name of the copyright holder nor the names of its contributors may be used")

    def test_detect(self):
        assert F.detect_license(self.MIT) == "MIT"
        assert F.detect_license(self.APACHE) == "Apache-2.0"
        assert F.detect_license(self.GPL3) == "GPL-3.0"
        assert F.detect_license(self.BSD3) == "BSD-3-Clause"
        assert F.detect_license("SPDX-License-Identifier: GPL-2.0-only\n") == "GPL-2.0"
        assert F.detect_license("All rights reserved.") == ""

    def test_allowlist(self):
        assert F.license_ok("", None)
        assert F.license_ok("MIT", ("permissive",))
        assert not F.license_ok("GPL-3.0", ("permissive",))
        assert F.license_ok("GPL-3.0", ("gpl-3.0",))
        assert not F.license_ok("", ("MIT",))


class TestSplit:
    def test_deterministic_and_proportional(self):
        keys = [f"repo-{i}" for i in range(4000)]
        splits = [assign_split(k, 0.1, 0.2) for k in keys]
        assert splits == [assign_split(k, 0.1, 0.2) for k in keys]
        share = {s: splits.count(s) / len(keys) for s in ("train", "validation", "test")}
        assert abs(share["validation"] - 0.1) < 0.02 and abs(share["test"] - 0.2) < 0.02

    def test_fixed_values(self):
        # Pinned so that a change of the hash (which would move repositories between splits) is noticed.
        assert unit_interval("diffmodel") == pytest.approx(int.from_bytes(
            __import__("hashlib").sha256(b"diffmodel").digest()[:8], "big") / 2**64)
        assert assign_split("k", 0.0, 0.0) == "train"

    def test_resolve_and_check(self):
        assert resolve_split_by("auto", 1) == "commit"
        assert resolve_split_by("auto", 3) == "repository"
        assert resolve_split_by("commit", 3) == "commit"
        with pytest.raises(DiffModelError, match="nothing would be left"):
            check_fractions(0.5, 0.5)
        with pytest.raises(DiffModelError, match="--test_fraction"):
            check_fractions(0.1, -0.1)


class TestShards:
    def test_size_bound_and_read_back(self, tmp_path):
        lines = [json.dumps({"i": i, "pad": "x" * 50}).encode() for i in range(20)]
        closed = []
        with ShardWriter(tmp_path, "train", max_bytes=200, on_close=closed.append) as w:
            for i, line in enumerate(lines):
                w.write(line, tag=f"t{i // 7}")
        shards = complete_shards(tmp_path, "train")
        assert [p.name for p in shards] == [f"train-{i:05d}.jsonl.zst" for i in range(len(shards))]
        assert len(shards) == 7  # 3 lines of ~70 bytes pass 200
        rows = [row for p in shards for row in read_shard(p)]
        assert [r["i"] for r in rows] == list(range(20))
        assert sum(info.lines for info in closed) == 20
        assert closed[2].runs == [["t0", 1], ["t1", 2]]

    def test_open_shard_is_invisible_until_closed(self, tmp_path):
        w = ShardWriter(tmp_path, "test", max_bytes=10**6)
        w.write(b'{"a": 1}')
        assert complete_shards(tmp_path, "test") == []
        assert [p.name for p in tmp_path.iterdir()] == ["test-00000.jsonl.zst.tmp"]
        w.close()
        assert [p.name for p in complete_shards(tmp_path, "test")] == ["test-00000.jsonl.zst"]
        assert list(read_shard(tmp_path / "test-00000.jsonl.zst")) == [{"a": 1}]

    def test_abandon_and_cleanup(self, tmp_path):
        w = ShardWriter(tmp_path, "train", first_index=3)
        w.write(b'{"a": 1}')
        w.abandon()
        assert list(tmp_path.iterdir()) == []
        (tmp_path / "train-00009.jsonl.zst.tmp").write_bytes(b"partial")
        assert complete_shards(tmp_path, "train") == []
        assert [p.name for p in remove_tmp_files(tmp_path)] == ["train-00009.jsonl.zst.tmp"]

    def test_shards_are_plain_zstd_jsonl(self, tmp_path):
        with ShardWriter(tmp_path, "train") as w:
            w.write(b'{"a": "\xc3\xa9"}\n')
        raw = zstandard.ZstdDecompressor().stream_reader(open(tmp_path / "train-00000.jsonl.zst", "rb")).read()
        assert raw == '{"a": "é"}\n'.encode()

    def test_write_json_atomic(self, tmp_path):
        write_json_atomic(tmp_path / "m.json", {"x": [1]})
        assert json.loads((tmp_path / "m.json").read_text()) == {"x": [1]}
        assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_repository_names_are_short_and_unique():
    paths = [Path("/data/a/repo"), Path("/data/b/repo"), Path("/data/c/tool.git")]
    assert repository_names(paths) == ["a/repo", "b/repo", "tool"]


class TestConvert:
    ROW = {
        "commit": "c0ffee", "old_file": "src/util.py", "new_file": "src/util.py",
        "old_contents": "def f():\n    return 1\n", "new_contents": "def f():\n    return 2\n",
        "subject": "Return 2 from f", "message": "Return 2 from f\n", "lang": "Python", "license": "mit",
        "repos": "someone/proj,mirror/proj",
    }

    def test_exact_sample(self):
        result = ChunkResult()
        row = convert_row(dict(self.ROW), SampleOptions(), result)
        expected = {
            "repository": "someone/proj", "commit": "c0ffee", "parent": "", "date": "", "name": "src/util.py",
            "old_name": "", "language": "Python", "message": "Return 2 from f",
            "before": "def f():\n    return 1\n", "diff": "@@ -1,2 +1,2 @@\n def f():\n-    return 1\n+    return 2\n",
        }
        expected["text"] = render_row(expected)
        assert row == expected
        assert json.loads(result.samples[0].line) == expected

    def test_rename_new_file_and_drops(self):
        rows = [
            self.ROW | {"old_file": "old.py"},
            self.ROW | {"old_file": "", "old_contents": ""},
            self.ROW | {"new_contents": self.ROW["old_contents"]},
            self.ROW | {"message": "wip", "subject": "wip"},
            self.ROW | {"new_file": "", "new_contents": ""},
            {"old_file": "x.py"},
            self.ROW | {"new_file": "image.bin", "old_file": "image.bin", "lang": None},
        ]
        result = convert_rows(rows, SampleOptions())
        samples = [json.loads(s.line) for s in result.samples]
        assert [s["old_name"] for s in samples] == ["old.py", ""]
        assert samples[1]["text"].startswith("<NME> src/util.py\n<BEF> ADDFILE\n")
        assert {k: v for k, v in result.counts.items() if k not in ("changed_files", "samples", "rows")} == {
            F.DROP_NO_CHANGE: 1, F.DROP_NOISE_MESSAGE: 1, F.DROP_DELETED: 1, "bad_row": 1, F.DROP_LANGUAGE: 1}
