"""Diff-aware decoding (infer/constrained.py): allowed tokens, forced chunks, strict diffs, batching."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffmodel.diff import apply_diff
from diffmodel.diff.grammar import DiffGrammar
from diffmodel.infer import DiffModel, EditStatus, finish_edit
from diffmodel.infer.prompt import as_request
from diffmodel.infer.constrained import TokenTable, _utf8_split
from diffmodel.sample import render_prompt
from edit_model import SAMPLES, trained_edit_model
from handmade import CHARS, HARD_FILES, char_tokenizer, ids


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> DiffModel:
    return DiffModel.from_pretrained(trained_edit_model(tmp_path_factory))


def _after(code: str, text: str):
    return DiffGrammar(code).start().feed(text)


@pytest.fixture(scope="module")
def table():
    return TokenTable(char_tokenizer(merges=[("b", "\n"), ("\n", "-")]))


class TestAllowedTokensOfAHandMadeVocabulary:
    """Char tokenizer ('\\n' 96, ' ' 94) with merges 'b\\n' (100) and '\\n-' (101): exact id sets."""

    def test_vocabulary_bytes(self, table):
        assert table.bytes[:100] == [c.encode() for c in CHARS]
        assert table.bytes[100:] == [b"b\n", b"\n-", None]  # the EOS is no text

    def test_line_start_before_any_change(self, table):
        allowed, everything = table.allowed(_after("ab\ncd\n", "@@ -1,2 +1,2 @@\n"), b"")
        assert sorted(allowed) == sorted(ids(" -+")) and not everything

    def test_line_start_after_a_change_may_open_a_hunk(self, table):
        allowed, everything = table.allowed(_after("ab\ncd\n", "@@ -1,2 +1,2 @@\n-ab\n"), b"")
        assert sorted(allowed) == sorted(ids(" -+@")) and not everything

    def test_forced_line_only_its_own_text_and_merges_over_its_end(self, table):
        state = _after("ab\ncd\n", "@@ -1,2 +1,2 @@\n a")
        assert sorted(table.allowed(state, b"")[0]) == [ids("b")[0], 100]
        state = state.feed("b")  # forced "\n", then a line start where '-' may come: the '\n-' merge fits
        assert sorted(table.allowed(state, b"")[0]) == [96, 101]

    def test_added_text_every_newline_free_token_and_what_fits_after_a_newline(self, table):
        allowed, everything = table.allowed(_after("ab\ncd\n", "@@ -1,2 +1,2 @@\n+x"), b"")
        assert everything
        assert sorted(allowed) == [96, 100, 101]  # '\n', 'b\n' and '\n-' (the next line may be a removal)
        assert bool(table.newline_free[ids("x")[0]]) and not bool(table.newline_free[96])

    def test_a_line_starting_with_lt_ends_the_diff(self):
        table = TokenTable(char_tokenizer())  # default merges: '\n<' is 100
        state = _after("ab\n", "@@ -1 +1 @@\n-ab\n+x")
        assert table.ends(state, b"") == [(100, "\n")]  # '\n<' ends the '+' line and the diff; '<' alone is text
        assert table.ends(state.feed("\n"), b"") == [(ids("<")[0], "")]
        assert table.ends(_after("ab\n", "@@ -1 +1 @@\n "), b"") == []  # forced text: no end

    def test_forced_text_as_tokens(self, table):
        tok = char_tokenizer(merges=[("b", "\n"), ("\n", "-")])
        assert table.encode_forced(tok, "ab\n") == [ids("a")[0], 100]
        assert table.encode_forced(tok, "ab\n", skip=1) == [100]
        assert table.greedy(b"xb\n-") == [ids("x")[0], 100, ids("-")[0]]
        assert table.encode_forced(tok, "\u00e9\n") == []  # no token spells the byte: the decoder cuts the row, with a note


class TestAllowedEqualsEveryTokenTheGrammarAccepts:
    """The narrowed search gives exactly the tokens a check of the whole vocabulary gives, at every point of a diff."""

    @pytest.mark.parametrize("name", list(HARD_FILES))
    def test_at_every_character_of_a_real_diff(self, tiny_tokenizer, name):
        from diffmodel.diff.make import make_diff

        table = TokenTable(tiny_tokenizer)
        code = HARD_FILES[name]
        lines = code.splitlines(keepends=True)
        after = "".join(lines[:1]) + "new = 1\n" + "".join(lines[2:])  # change the second line
        diff = make_diff(code, after)
        start = DiffGrammar(code).start()
        free = set(table.newline_free.nonzero().flatten().tolist())
        for k in range(len(diff) + 1):
            state = start.feed(diff[:k])
            allowed, everything = table.allowed(state, b"")
            got = set(allowed) | (free if everything else set())
            want = {i for i, data in enumerate(table.bytes) if data and table.step(state, b"", data) is not None}
            assert got == want, (name, diff[:k])
            assert len(allowed) == len(set(allowed))
            char = diff[k:k + 1].encode()
            for cut in range(1, len(char)):  # in the middle of a multi-byte character
                allowed, everything = table.allowed(state, char[:cut])
                want = {i for i, data in enumerate(table.bytes) if data and table.step(state, char[:cut], data) is not None}
                assert not everything and set(allowed) == want and want, (name, diff[:k], cut)


def _number_merges() -> list[tuple[str, str]]:
    """Merges giving every two-digit number, some longer ones (leading zeros too), and tokens that run
    from digits into a header number's end or start with it."""
    digits = "0123456789"
    merges = [(a, b) for a in digits for b in digits]
    merges += [("10", "0"), ("12", "0"), ("12", "3"), ("00", "7"), ("99", "9"), ("100", "0"), ("05", "0")]
    merges += [("1", ","), ("12", ","), ("3", " "), ("10", " "), (" ", "+"), (" +", "1"), (" +1", "2"),
               (",", "1"), (",1", "2"), ("@", "@"), (" ", "@@"), ("@@", "\n"), ("0", "\n")]
    return merges


@pytest.fixture(scope="module")
def number_table():
    return TokenTable(char_tokenizer(merges=_number_merges()))


class TestAllowedInHunkHeadersEqualsEveryTokenTheGrammarAccepts:
    """Header numbers are searched apart from other text (tokens of digits checked at once): still exactly
    the tokens a check of the whole vocabulary gives, with numbers of several digits and tokens that
    cross a number's end."""

    @pytest.mark.parametrize("changes", [(3,), (118,), (9, 99, 140), (0, 149)])
    def test_at_every_character_of_diffs_with_large_line_numbers(self, changes):
        from diffmodel.diff.make import make_diff

        table = TokenTable(char_tokenizer(merges=_number_merges()))
        assert len(table.digit_runs) == 10 + 100 + 7 and {t for _, t in table.digits_then_end} == {"1,", "12,", "3 ", "10 "}
        lines = [f"line {k}\n" for k in range(150)]
        code = "".join(lines)
        after = list(lines)
        for k in changes:
            after[k] = f"changed {k}\n"
        diff = make_diff(code, "".join(after))
        assert diff.count("@@ -") == len(changes)
        start = DiffGrammar(code).start()
        checked = 0
        for k in range(len(diff) + 1):
            state = start.feed(diff[:k])
            if table.next_of(state).field not in ("old_start", "old_count", "new_start", "new_count"):
                continue
            allowed, everything = table.allowed(state, b"")
            want = {i for i, data in enumerate(table.bytes) if data and table.step(state, b"", data) is not None}
            assert not everything and set(allowed) == want and len(allowed) == len(set(allowed)), diff[:k]
            checked += 1
        assert checked >= 8 * len(changes)

    def test_numbers_the_file_has_no_room_for_and_leading_zeros(self):
        table = TokenTable(char_tokenizer(merges=_number_merges()))

        def allowed(code: str, text: str) -> set[str]:
            return {table.bytes[i].decode() for i in table.allowed(_after(code, text), b"")[0]}

        twelve = "".join(f"{k}\n" for k in range(12))  # a hunk starts at old line 0 (before line 1) .. 13
        assert allowed(twelve, "@@ -") == {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13",
                                           "1,", "12,", "10 ", "3 "}
        assert allowed(twelve, "@@ -0") == {","}  # "-0,0": an insertion before line 1, nothing else
        assert allowed("a\nb\n", "@@ -1,2 +0") == {",", ",1", ",12", " ", " @@"}  # no digit after a leading zero

    def test_every_header_of_one_file_asked_of_one_table(self, number_table):
        """States whose numbers differ but share a cache entry must accept the same tokens."""
        start = DiffGrammar("".join(f"line {k}\n" for k in range(150))).start()
        texts = set()
        for old in list(range(0, 152)) + [1000]:
            for count in ("", ",0", ",1", ",12", ",100"):
                for new in ("", " +", " +0", " +1", " +17", " +150,", " +150,0", " +150,12", " +9999999999"):
                    header = f"@@ -{old}{count}{new}"
                    texts.update(header[:k] for k in range(4, len(header) + 1))
        checked = 0
        for text in sorted(texts):
            state = start.try_feed(text)
            if state is None or number_table.next_of(state).field not in ("old_start", "old_count", "new_start", "new_count"):
                continue
            want = {i for i, data in enumerate(number_table.bytes) if data and number_table.step(state, b"", data) is not None}
            assert set(number_table.allowed(state, b"")[0]) == want, text
            checked += 1
        assert checked > 1000


class TestPartialUtf8Tokens:
    def test_split_and_incomplete_tails(self):
        assert _utf8_split("é".encode()) == ("é", b"")
        assert _utf8_split(b"a\xc3") == ("a", b"\xc3")
        assert _utf8_split(b"\xe4\xb8") == ("", b"\xe4\xb8")
        assert _utf8_split(b"\xa9") is None  # a continuation byte with no lead
        assert _utf8_split(b"\xc0") is None  # never completed to a valid character

    def test_a_character_fed_byte_by_byte(self, tiny_tokenizer):
        table = TokenTable(tiny_tokenizer)
        state = _after("é = 1\n", "@@ -1 +1 @@\n-")
        lead = next(i for i, data in enumerate(table.bytes) if data == b"\xc3")
        good = next(i for i, data in enumerate(table.bytes) if data == b"\xa9")
        wrong = next(i for i, data in enumerate(table.bytes) if data == b"\xa8")
        assert lead in table.allowed(state, b"")[0]
        state2, pending = table.step(state, b"", b"\xc3")
        assert pending == b"\xc3" and state2.text == state.text
        assert good in table.allowed(state2, pending)[0] and wrong not in table.allowed(state2, pending)[0]
        state3, pending = table.step(state2, pending, b"\xa9")
        assert pending == b"" and state3.text.endswith("-é")
        assert table.step(state2, b"\xc3", b"\xa8") is None

    def test_table_bytes_spell_every_tiny_text(self, tiny_tokenizer, tiny_texts):
        table = TokenTable(tiny_tokenizer)
        for text in tiny_texts:
            assert b"".join(table.bytes[i] for i in tiny_tokenizer(text)["input_ids"]) == text.encode()


def _sentencepiece_tokenizer():
    """A hand-made Llama-2-style tokenizer: '▁' for spaces, a prepended '▁', <0xNN> byte fallback."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{i:02X}>": 3 + i for i in range(256)})
    for c in string.printable.replace(" ", "\u2581"):
        vocab.setdefault(c, len(vocab))
    merges = [("\u2581", "r"), ("e", "t"), ("\u2581r", "et")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", bos_token="<s>"), vocab


class TestSentencePieceVocabulary:
    def test_pieces_and_byte_fallback_spell_the_text_and_forced_text_drops_the_prepended_space(self):
        tok, vocab = _sentencepiece_tokenizer()
        table = TokenTable(tok)
        text = "x = é\n ret\n"
        assert b"".join(table.bytes[i] for i in tok(text, add_special_tokens=False)["input_ids"]) == (" " + text).encode()
        assert table.bytes[vocab["<0xC3>"]] == b"\xc3" and table.bytes[vocab["\u2581ret"]] == b" ret"
        assert table.bytes[:3] == [None, None, None]
        # the tokenizer prepends a space to text alone: the forced tokens are spelt from the vocabulary instead
        want = ["x", "\u2581", "=", "\u2581", "<0xC3>", "<0xA9>", "\n", "\u2581ret", "\n"]
        assert table.encode_forced(tok, text) == [vocab[p] for p in want]


class TestTrainedModelUnderConstraints:
    @pytest.mark.parametrize("key", ["calc", "greet", "crlf"])
    def test_known_diffs_unchanged(self, trained, key):
        s = SAMPLES[key]
        edit = trained.edit(s["before"], s["message"], s["name"], max_new_tokens=100)
        assert (edit.diff, edit.status, edit.new_code, edit.stop) == (s["diff"], EditStatus.STRICT, s["after"], "eos")
        assert 0 < edit.forced_tokens < edit.num_tokens

    def test_what_failed_or_needed_relocation_now_applies_strictly(self, trained):
        for key in ("shift", "wrong", "half"):
            s = SAMPLES[key]
            free = trained.edit(s["before"], s["message"], s["name"], max_new_tokens=100, constrained=False)
            edit = trained.edit(s["before"], s["message"], s["name"], max_new_tokens=100)
            assert free.status is not EditStatus.STRICT
            assert edit.status is EditStatus.STRICT and edit.stop == "eos", key
        shift = trained.edit(SAMPLES["shift"]["before"], "Bump y", "shift.py", max_new_tokens=100)
        assert (shift.diff, shift.new_code) == ("@@ -1,2 +1,2 @@\n x = 1\n-y = 2\n+y = 3\n", "x = 1\ny = 3\n")

    def test_the_next_samples_name_marker_ends_the_diff(self, trained):
        s = SAMPLES["marker"]
        edit = trained.edit(s["before"], s["message"], s["name"], max_new_tokens=100)
        assert (edit.diff, edit.status, edit.stop) == (s["diff"], EditStatus.STRICT, "marker")

    def test_forced_tokens_are_fed_in_chunks(self, trained):
        calls = []
        hook = trained.model.register_forward_hook(lambda *a: calls.append(1))
        try:
            s = SAMPLES["calc"]
            edit = trained.edit(s["before"], s["message"], s["name"], max_new_tokens=100)
        finally:
            hook.remove()
        # one prefill, then one forward per decoded token but the EOS; forced tokens ride along, and so do
        # proposals of speculation that greedy decoding accepts
        accepted = trained._decoder.accepted
        assert len(calls) == trained._decoder.forward_calls == edit.num_tokens - edit.forced_tokens - accepted
        assert len(calls) < edit.num_tokens and edit.forced_tokens > 0

    def test_cut_at_max_new_tokens_is_reported_and_still_applies(self, trained):
        s = SAMPLES["calc"]
        full = trained.edit(s["before"], s["message"], s["name"], max_new_tokens=100)
        ids_full = list(trained._decoder.last_ids[0])
        assert _fed_text(trained, 0).decode()[1:] == full.diff

        def cut(n):  # what the first n tokens of the full generation leave
            text = b"".join(trained._decoder.table.bytes[i] for i in ids_full[:n]).decode()
            return DiffGrammar(s["before"]).start().feed(text[1:]).finish(partial=True)

        n = next(n for n in range(1, full.num_tokens) if cut(n))  # the first cut that keeps a change
        edit = trained.edit(s["before"], s["message"], s["name"], max_new_tokens=n)
        assert trained._decoder.last_ids[0] == ids_full[:n]
        assert edit.stop == "length" and edit.num_tokens == n
        assert edit.notes[0].startswith(f"generation stopped after {n} tokens")
        assert edit.diff == "@@ -1,2 +1 @@\n def add(a, b):\n-    return a - b\n"
        assert edit.status is EditStatus.STRICT and edit.new_code == "def add(a, b):\n"


def _fed_text(model: DiffModel, row: int) -> bytes:
    table = model._decoder.table
    return b"".join(table.bytes[i] or b"" for i in model._decoder.last_ids[row] if i not in model.eos_ids)


class TestRandomModelsWriteOnlyStrictDiffs:
    def test_hard_files_sampled_every_diff_strict_or_reported_cut(self, tiny_gpt2_dir):
        model = DiffModel.from_pretrained(tiny_gpt2_dir)
        files = list(HARD_FILES.values())
        merged = model.tokenizer("    result = 0\n    return result\n")["input_ids"]
        assert any(b"\n " in model.tokenizer.convert_tokens_to_string([t]).encode()
                   for t in model.tokenizer.convert_ids_to_tokens(merged)), "the tokenizer merges a newline with an indent"
        written = 0
        for code in files:
            group = model.edit_many([(code, "m", "a.py")], num_samples=8, temperature=1.0, max_new_tokens=64, seed=0)[0]
            for k, edit in enumerate(group):
                fed = _fed_text(model, k)
                text, _ = _utf8_split(fed)
                assert text.startswith(" @@ -")
                if edit.stop == "marker":  # the last token starts a line with '<': the diff ended before it
                    text = text[:text.rindex("<")]
                state = DiffGrammar(code).start().feed(text[1:])  # the bytes fed to the model are grammar text
                if edit.stop in ("eos", "marker"):
                    assert edit.diff == state.finish() and edit.status is EditStatus.STRICT
                else:
                    assert edit.stop == "length" and edit.notes[0].startswith("generation stopped after 64 tokens")
                    assert edit.diff == state.finish(partial=True)
                if edit.diff:
                    written += 1
                    assert edit.status is EditStatus.STRICT
                    assert apply_diff(code, edit.diff, "strict").text == edit.new_code
                    assert edit.new_code != code
        assert written >= 5

    @pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
    def test_greedy_batched_equals_one_by_one(self, request, fixture):
        model = DiffModel.from_pretrained(request.getfixturevalue(fixture))
        requests = [(code, "m", f"{i}.py") for i, code in enumerate(HARD_FILES.values())] + [("", "Add", "n.py")]
        alone = [model.edit(*r, max_new_tokens=40) for r in requests]
        batched = [g[0] for g in model.edit_many(requests, max_new_tokens=40, batch_size=len(requests))]
        assert batched == alone

    @pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
    @pytest.mark.parametrize("speculate", [False, True])
    def test_continuous_batching_equals_one_by_one(self, request, fixture, speculate):
        model = DiffModel.from_pretrained(request.getfixturevalue(fixture))
        requests = [(code, "m", f"{i}.py") for i, code in enumerate(HARD_FILES.values())] + [("", "Add", "n.py")]
        budgets = [12, 40]  # short rows finish early: their places go to waiting requests
        alone = [[model.edit(*r, max_new_tokens=b) for r in requests] for b in budgets]
        done, admissions = [], 0
        for b, expected in zip(budgets, alone):
            got = model.edit_many(requests, max_new_tokens=b, batch_size=2, speculate=speculate, progress=done.append)
            assert [g[0] for g in got] == expected
            admissions += model._decoder.admissions
        assert admissions > 0  # requests joined while others were decoding
        assert sum(done) == 2 * len(requests)

    def test_the_last_prompts_join_as_soon_as_they_fit(self, tiny_gpt2_dir, monkeypatch):
        """Prompts are admitted once ADMIT_SHARE of the places are free, or fewer when fewer prompts are left."""
        from diffmodel.infer.constrained import ADMIT_SHARE, ConstrainedDecoder, DecodeOptions

        model = DiffModel.from_pretrained(tiny_gpt2_dir)
        decoder = ConstrainedDecoder(model.model, model.tokenizer, model.eos_ids, model.pad_id)
        capacity = 16
        assert math.ceil(ADMIT_SHARE * capacity) >= 2  # one free place is not enough while more prompts wait
        codes = [f"x{k} = {k}\n" for k in range(capacity + 1)]
        prompts = model.encode([as_request((code, "m", "a.py")) for code in codes])
        budgets = [4] + [40] * capacity  # the first row finishes early, the others run on (no end before 40 tokens)
        admitted = []
        new_rows = ConstrainedDecoder._new_rows

        def spy(self, *args):
            admitted.append(self.forward_calls)
            return new_rows(self, *args)

        monkeypatch.setattr(ConstrainedDecoder, "_new_rows", spy)
        decoder.generate(prompts, codes, 1, budgets, DecodeOptions(min_new_tokens=40), capacity=capacity)
        assert admitted[:capacity] == [0] * capacity and len(admitted) == capacity + 1
        assert admitted[-1] <= 5  # right after the first row's 4 tokens, not once the others are done (40 passes)
        assert decoder.admissions == 1

    def test_continuous_batching_of_sampled_groups_gives_strict_diffs(self, tiny_gpt2_dir):
        model = DiffModel.from_pretrained(tiny_gpt2_dir)
        requests = [(code, "m", f"{i}.py") for i, code in enumerate(HARD_FILES.values())]
        groups = model.edit_many(requests, num_samples=3, temperature=1.0, max_new_tokens=30, seed=5, batch_size=2)
        assert model._decoder.admissions > 0
        assert [len(g) for g in groups] == [3] * len(requests)
        written = 0
        for (code, _, _), group in zip(requests, groups):
            for edit in group:
                if edit.diff:
                    written += 1
                    assert edit.status is EditStatus.STRICT
                    assert apply_diff(code, edit.diff, "strict").text == edit.new_code
        assert written > 0

    def test_sampling_seeded_and_top_k_one_is_greedy(self, tiny_gpt2_dir):
        model = DiffModel.from_pretrained(tiny_gpt2_dir)
        requests = [(HARD_FILES["tabs"], "m", "a.py"), (HARD_FILES["crlf"], "m", "b.ini")]
        first = model.edit_many(requests, num_samples=3, temperature=1.0, max_new_tokens=40, seed=7)
        assert first == model.edit_many(requests, num_samples=3, temperature=1.0, max_new_tokens=40, seed=7)
        assert [len(g) for g in first] == [3, 3]
        assert len({(e.diff, e.num_tokens) for g in first for e in g}) > 1
        greedy = model.edit_many(requests, max_new_tokens=40)
        top1 = model.edit_many(requests, temperature=0.7, top_k=1, max_new_tokens=40, seed=1)
        assert top1 == greedy


class TestUnconstrainedOutputUnchanged:
    @pytest.mark.parametrize("key", ["shift", "marker", "wrong"])
    def test_same_as_plain_generate(self, trained, key):
        s = SAMPLES[key]
        tok = trained.tokenizer
        prompt = tok(render_prompt(s["name"], s["before"], s["message"]), return_tensors="pt")
        out = trained.model.generate(**prompt, max_new_tokens=100, do_sample=False, pad_token_id=trained.pad_id,
                                     eos_token_id=trained.eos_ids)
        new = out[0, prompt["input_ids"].shape[1]:].tolist()
        edit = trained.edit(s["before"], s["message"], s["name"], max_new_tokens=100, constrained=False)
        assert edit.forced_tokens == 0
        if key == "marker":  # generate() runs on into the next sample; the <NME> stop cuts it
            assert edit.diff == finish_edit(s["before"], tok.decode(new)).diff == s["diff"]
        else:
            assert new[-1] in trained.eos_ids and edit.num_tokens == len(new)
            assert edit == finish_edit(s["before"], tok.decode(new[:-1]), "eos", len(new))


@st.composite
def _files(draw):
    lines = draw(st.lists(st.sampled_from(["x = 1", "    return x", "\té", "", "def f():", "世界"]), min_size=0, max_size=6))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    text = "".join(line + ending for line in lines)
    return text[:-len(ending)] if lines and draw(st.booleans()) else text


class TestAnyChoicesGiveAStrictDiff:
    """Random allowed tokens, chosen without a model, with forced chunks as the decoder feeds them."""

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(code=_files(), data=st.data())
    def test_random_choices_apply_strictly(self, tiny_tokenizer, code, data):
        table = TokenTable(tiny_tokenizer)
        eos = tiny_tokenizer.eos_token_id
        state, pending = DiffGrammar(code).start(), b""
        state = state.feed(state.allowed_next().forced)
        ended = False
        for _ in range(40):
            allowed, everything = table.allowed(state, pending)
            choices = sorted(set(allowed) | (set(table.newline_free.nonzero().flatten().tolist()) if everything else set()))
            if not pending and state.can_end:
                choices.append(eos)
            token = data.draw(st.sampled_from(choices))
            if token == eos:
                ended = True
                break
            state, pending = table.step(state, pending, table.bytes[token])
            nxt = state.allowed_next()
            if nxt.field == "forced":
                for i in table.encode_forced(tiny_tokenizer, nxt.forced, len(pending))[:-1]:
                    state, pending = table.step(state, pending, table.bytes[i])
        diff = state.finish() if ended else state.finish(partial=True)
        if diff:
            result = apply_diff(code, diff, "strict")
            assert result.ok, diff
            assert finish_edit(code, diff).status is EditStatus.STRICT
        else:
            assert not ended



def test_a_stop_where_the_diff_cannot_end_keeps_the_finished_part_and_never_raises():
    from diffmodel.diff.grammar import DiffGrammar
    from diffmodel.infer.constrained import ConstrainedDecoder, _Row
    from diffmodel.infer.prompt import STOP_EOS

    code = "a\nb\n"
    state = DiffGrammar(code).start().feed("@@ -1,2 +1,2 @@\n-a\n+A\n+half a li")
    row = _Row(code, state, budget=100, stop=STOP_EOS, tokens=9)
    edit = ConstrainedDecoder._finish(row)
    assert edit.diff == "@@ -1 +1 @@\n-a\n+A\n"
    assert edit.new_code == "A\nb\n"
    assert "the model stopped where the diff cannot end" in " ".join(edit.notes)


class TestTheLoopSpendsLittlePerStep:
    """What the decoding loop does per step: no forward pass for a token the grammar leaves alone, a compact cache."""

    def test_a_token_that_is_the_only_one_allowed_costs_no_forward_pass(self):
        from diffmodel.infer.constrained import ConstrainedDecoder, DecodeOptions
        from diffmodel.tiny import build_model

        tok = char_tokenizer(merges=[])  # one token per character: a forced span's held-back token is the only choice
        eos = tok.eos_token_id
        decoder = ConstrainedDecoder(build_model("gpt2", tok, seed=0), tok, [eos], eos)
        code = "ab\ncd\nef\n"
        prompt = tok(render_prompt("a.py", code, "m"), add_special_tokens=False)["input_ids"]
        held_back = 0
        for seed in range(6):
            torch.manual_seed(seed)
            [[edit]] = decoder.generate([prompt], [code], 1, [40], DecodeOptions(temperature=1.0))
            generated = decoder.last_ids[0]
            # replay the characters through the grammar: the model picks where it offers more than one continuation
            text = "".join(CHARS[i] for i in generated if i != eos)
            assert text.startswith(" @@ -")
            if edit.stop == "marker":  # the last token, '<', started the next sample
                text = text[:-1]
            state, picks = DiffGrammar(code).start(), 0
            for c in text[1:]:
                nxt = state.allowed_next()
                options = 1 if nxt.field == "forced" else 2 if nxt.chars is None else len(nxt.chars) + 2 * nxt.end
                picks += options > 1
                state = state.feed(c)
            picks += edit.stop in ("eos", "marker")  # the end is picked among the line kinds
            assert decoder.forward_calls == max(picks, 1), (seed, text)
            assert edit.forced_tokens == edit.num_tokens - picks
            held_back += len(re.findall(r"\n[ -]", text))  # a context or removal line: its held-back token was taken
        assert held_back >= 3

    @pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
    def test_padding_is_dropped_from_the_cache_and_the_edits_stay_the_same(self, request, monkeypatch, fixture):
        from diffmodel.infer import constrained

        model = DiffModel.from_pretrained(request.getfixturevalue(fixture))
        model.decoder.fixed_places = False  # the growing cache: what is compacted
        requests = [(code, "m", f"{i}.py") for i, code in enumerate(HARD_FILES.values())]
        widths, share = [], constrained.COMPACT_SHARE

        def record(module, args, kwargs):
            mask, step = kwargs["attention_mask"], kwargs["input_ids"].shape[1]
            past = mask[:, :mask.shape[1] - step]
            widths.append((past.shape[1], int(past.sum(dim=1).max())))

        hook = model.model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            compact = model.edit_many(requests, num_samples=3, temperature=1.0, max_new_tokens=40, seed=0,
                                      batch_size=len(requests))
            assert model._decoder.compactions > 0
            assert all(width <= longest * (1 + share) for width, longest in widths[1:]), widths
            monkeypatch.setattr(constrained, "COMPACT_SHARE", float("inf"))
            widths.clear()
            padded = model.edit_many(requests, num_samples=3, temperature=1.0, max_new_tokens=40, seed=0,
                                     batch_size=len(requests))
        finally:
            hook.remove()
        assert model._decoder.compactions == 0
        assert max(w for w, _ in widths) > max(longest for _, longest in widths) * (1 + share)  # without: it grows
        assert compact == padded


def _edit_described(code: str, text: str, complete: bool) -> str:
    """The file a diff (as fed, headers as written) describes, read line by line without the diff modules.

    A header ``@@ -S[,C] ...`` puts the hunk at 0-based line S when C is 0, else
    S - 1 (git's convention). Unless ``complete`` (the diff was cut), an
    unfinished last line is dropped, and a context or removal line of a last
    line without newline counts only with the marker line after it.
    """
    old = re.findall(r"[^\n]*\n|[^\n]+\Z", code)
    lines = re.findall(r"[^\n]*\n|[^\n]+\Z", text)
    if not complete and lines and not lines[-1].endswith("\n"):
        lines.pop()
    out: list[str] = []
    at = i = 0
    while i < len(lines):
        line = lines[i]
        if line[0] == "@":
            m = re.match(r"@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@\n\Z", line)
            start = int(m[1]) if m[2] == "0" else int(m[1]) - 1
            out += old[at:start]
            at = start
        elif line[0] in " -":
            assert line[1:] == old[at] + ("" if old[at].endswith("\n") else "\n")  # the file's next line
            if not old[at].endswith("\n"):
                if i + 1 == len(lines):  # its marker line was cut: the line is not in the diff
                    break
                i += 1
                assert lines[i] == "\\ No newline at end of file\n"
            if line[0] == " ":
                out.append(old[at])
            at += 1
        elif line[0] == "+":
            out.append(line[1:])
        else:  # the marker after the last added line: the new file ends without newline
            assert line == "\\ No newline at end of file\n" and lines[i - 1][0] == "+"
            out[-1] = out[-1][:-1]
        i += 1
    return "".join(out + old[at:])


@pytest.fixture(scope="module")
def random_gpt2(tiny_gpt2_dir) -> DiffModel:
    return DiffModel.from_pretrained(tiny_gpt2_dir)


class TestSampledDiffsDescribeTheEditTheyMake:
    """Random files, a random model sampling: each diff applies strictly and gives the file its lines describe."""

    def test_the_reading_of_a_diff_by_hand(self):
        code = "a\nb\nc"
        assert _edit_described(code, "@@ -1,2 +1,2 @@\n a\n-b\n+B\n", True) == "a\nB\nc"
        assert _edit_described(code, "@@ -2,0 +3 @@\n+x\n", True) == "a\nb\nx\nc"
        assert _edit_described(code, "@@ -3 +3 @@\n-c\n\\ No newline at end of file\n+C\n\\ No newline at end of file\n",
                               True) == "a\nb\nC"
        assert _edit_described(code, "@@ -3 +3 @@\n-c\n\\ No newline at", False) == code
        assert _edit_described(code, "@@ -1 +1 @@\n-a\n+A\n+hal", False) == "A\nb\nc"

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(codes=st.lists(_files(), min_size=1, max_size=3), seed=st.integers(0, 2**16),
           temperature=st.sampled_from([0.5, 1.0, 2.0]), budget=st.integers(8, 64))
    def test_random_sampling(self, random_gpt2, codes, seed, temperature, budget):
        model = random_gpt2
        groups = model.edit_many([(code, "m", "a.py") for code in codes], num_samples=2, temperature=temperature,
                                 max_new_tokens=budget, seed=seed, batch_size=len(codes))
        table = model._decoder.table
        lengths = [len(p) for p in model.encode([as_request((code, "m", "a.py")) for code in codes])]
        order = sorted(range(len(codes)), key=lambda i: -lengths[i])  # edit_many's order: longest prompt first
        for i, group in enumerate(groups):
            code = codes[i]
            for k, edit in enumerate(group):
                generated = model._decoder.last_ids[order.index(i) * 2 + k]
                _check_described(code, edit, b"".join(table.bytes[t] for t in generated if t not in model.eos_ids))


class _RandomLogits(torch.nn.Module):
    """A stand-in causal LM: seeded random logits, tokens holding a newline and EOS favoured so lines and diffs end."""

    def __init__(self, table: TokenTable, eos: int, seed: int):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(vocab_size=table.size)
        self.bias = torch.tensor([2.0 if data and b"\n" in data else 0.0 for data in table.bytes])
        self.bias[eos] = 4.0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=True, past_key_values=None):
        from types import SimpleNamespace

        assert attention_mask.shape[1] == (past_key_values.width if past_key_values else 0) + input_ids.shape[1]
        cache = past_key_values or _Width()
        cache.width = attention_mask.shape[1]
        logits = torch.randn(input_ids.shape[0], 1, len(self.bias), generator=self.generator) * 2 + self.bias
        return SimpleNamespace(logits=logits, past_key_values=cache)


class _Width:
    """The cache of :class:`_RandomLogits`: only its width (nothing to compact)."""

    width = 0

    def batch_select_indices(self, index):
        pass


class TestRandomChoicesDescribeTheEditTheyMake:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(codes=st.lists(_files(), min_size=1, max_size=3), seed=st.integers(0, 2**16), budget=st.integers(8, 80),
           samples=st.integers(1, 3), one_at_a_time=st.booleans())
    def test_random_logits(self, tiny_tokenizer, codes, seed, budget, samples, one_at_a_time):
        from diffmodel.infer.constrained import ConstrainedDecoder, DecodeOptions

        eos = tiny_tokenizer.eos_token_id
        table = TokenTable(tiny_tokenizer)
        decoder = ConstrainedDecoder(_RandomLogits(table, eos, seed), tiny_tokenizer, [eos], eos)
        torch.manual_seed(seed)
        # this stand-in's cache cannot be merged: with room for one prompt, prompts are decoded one after another
        groups = decoder.generate([[eos]] * len(codes), codes, samples, [budget] * len(codes), DecodeOptions(1.0),
                                  capacity=samples if one_at_a_time else None)
        assert decoder.admissions == 0
        for p, (code, group) in enumerate(zip(codes, groups)):
            for k, edit in enumerate(group):
                generated = decoder.last_ids[p * samples + k]
                _check_described(code, edit, b"".join(table.bytes[t] for t in generated if t != eos))


def _check_described(code: str, edit, fed: bytes) -> None:
    """``edit`` applies strictly and gives the file that the text fed for it describes."""
    text = fed.decode("utf-8", "ignore")  # an incomplete last character is not in the diff
    assert text.startswith(" ")
    text = text[1:]
    if edit.stop == "marker":  # the last token starts a line with '<': the diff ends before it
        text = text[:text.rindex("<")]
    want = _edit_described(code, text, complete=edit.stop in ("eos", "marker"))
    if edit.diff:
        assert edit.status is EditStatus.STRICT and edit.new_code == want
        assert apply_diff(code, edit.diff, "strict").text == want
    else:
        assert want == code and edit.stop == "length"


class TestPromptLookup:
    """What speculation proposes: hand-made token ids, exact answers."""

    def test_latest_occurrence_in_the_generated_tokens_then_the_prompt(self):
        from diffmodel.infer.constrained import PromptLookup

        lookup = PromptLookup([1, 2, 3, 4, 5, 2, 3, 6], longest=3)
        # [7, 2, 3] is nowhere; [2, 3] ends at 3 and at 7 in the prompt: the first at or after the hint
        assert lookup.follow([9, 7, 2, 3], 3, hint=0) == ([4, 5, 2], 3)
        assert lookup.follow([9, 7, 2, 3], 3, hint=4) == ([6], 7)
        assert lookup.follow([9, 7, 2, 3], 3, hint=8) == ([4, 5, 2], 3)  # none after the hint: the first
        # the generated tokens first: [8, 2] occurred there, followed by 11 12
        assert lookup.follow([8, 2, 11, 12, 8, 2], 5, hint=0) == ([11, 12, 8, 2], 0)
        assert lookup.follow([8, 2, 11, 2, 5, 8, 2], 5, hint=0) == ([11, 2, 5, 8, 2], 0)
        assert lookup.follow([20, 21], 4, hint=0) == ([], 0)
        # 256 then 0 hold the bytes of 1 across a token boundary: not an occurrence of 1
        assert PromptLookup([1, 7, 8]).follow([256, 0, 5, 1], 2, hint=0) == ([7, 8], 1)
        assert PromptLookup([1, 7, 8]).follow([1, 3, 256, 0, 5, 1], 2, hint=0) == ([3, 256], 0)

    def test_a_copy_resumes_past_the_token_the_model_replaced(self):
        from diffmodel.infer.constrained import PromptLookup

        lookup = PromptLookup([1, 2, 3], longest=3)
        source = [10, 11, 12, 13]
        # no 3- or 2-gram of [5, 6, 30] occurs: the copy resumes before single tokens are looked up
        assert lookup.follow([5, 6, 30], 3, hint=0, resume=(source, 2)) == ([12, 13], 0)
        assert lookup.follow([5, 6, 3], 3, hint=0, resume=(source, 4)) == ([], 0)  # nothing left: 3 is last in the prompt
        assert lookup.follow([1, 2, 30], 3, hint=0, resume=(source, 2)) == ([12, 13], 0)
        assert lookup.follow([5, 1, 2], 3, hint=0, resume=(source, 2)) == ([3], 2)  # a 2-gram comes first


def _edits_and_ids(model: DiffModel, requests, **options):
    edits = model.edit_many(requests, max_new_tokens=options.pop("max_new_tokens", 100), **options)
    return edits, [list(i) for i in model._decoder.last_ids]


#: A long line rewritten with one token changed: the '+' line copies the '-' line it replaces.
COPY_BEFORE = "def area(width, height):\n    return width * height * scale_factor + border_width * 2\n"
COPY_AFTER = COPY_BEFORE.replace("* 2\n", "* 4\n")


@pytest.fixture(scope="module")
def copy_model(tmp_path_factory) -> DiffModel:
    from diffmodel.diff.make import make_diff
    from diffmodel.sample import render
    from edit_model import train_texts

    text = render("area.py", COPY_BEFORE, "Double the border", make_diff(COPY_BEFORE, COPY_AFTER))
    return DiffModel.from_pretrained(train_texts([text], tmp_path_factory.mktemp("copy_model")))


@st.composite
def _copy_files(draw):
    """Files of lines the trained model knows (copies of them are likely) and a few of any kind."""
    known = [line for s in SAMPLES.values() for line in s["before"].splitlines(keepends=True)]
    lines = draw(st.lists(st.sampled_from(known + ["x = 1\n", "    return x\n", "\té\n"]), min_size=0, max_size=6))
    return "".join(lines)


class TestSpeculationGivesTheSameGreedyEdits:
    """Prompt-lookup speculation (greedy): identical edits and token ids with it and without, fewer forward passes."""

    def test_trained_samples_alone_and_batched(self, trained):
        requests = [(s["before"], s["message"], s["name"]) for s in SAMPLES.values()]
        accepted = 0
        for r in requests:
            off, off_ids = _edits_and_ids(trained, [r], speculate=False)
            passes = trained._decoder.forward_calls
            assert trained._decoder.proposed == 0
            on, on_ids = _edits_and_ids(trained, [r])
            assert (on, on_ids) == (off, off_ids)
            [[edit]] = on
            # every proposal accepted is a token picked without a forward pass of its own
            assert passes == edit.num_tokens - edit.forced_tokens
            assert trained._decoder.forward_calls == passes - trained._decoder.accepted
            accepted += trained._decoder.accepted
        assert accepted > 0
        alone = [g[0] for g in trained.edit_many(requests, max_new_tokens=100, batch_size=1, speculate=False)]
        assert [g[0] for g in trained.edit_many(requests, max_new_tokens=100, batch_size=len(requests))] == alone
        assert [g[0] for g in trained.edit_many(requests, max_new_tokens=100, batch_size=2)] == alone  # rows join mid-way

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(codes=st.lists(_copy_files(), min_size=1, max_size=3), keys=st.lists(st.sampled_from(list(SAMPLES)), min_size=3,
                                                                              max_size=3),
           budget=st.integers(4, 60), min_new=st.sampled_from([0, 30]))
    def test_random_files_batched_and_one_by_one(self, trained, codes, keys, budget, min_new):
        requests = [(code, SAMPLES[k]["message"], SAMPLES[k]["name"]) for code, k in zip(codes, keys)]
        options = dict(max_new_tokens=budget, min_new_tokens=min_new)
        off = [g[0] for g in trained.edit_many(requests, batch_size=1, speculate=False, **options)]
        assert [g[0] for g in trained.edit_many(requests, batch_size=len(requests), **options)] == off
        assert [trained.edit(*r, **options) for r in requests] == off

    @pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
    def test_random_models_whose_proposals_are_mostly_rejected(self, request, fixture):
        model = DiffModel.from_pretrained(request.getfixturevalue(fixture))
        requests = [(code, "m", f"{i}.py") for i, code in enumerate(HARD_FILES.values())] + [("", "Add", "n.py")]
        off = _edits_and_ids(model, requests, max_new_tokens=60, batch_size=len(requests), speculate=False)
        on = _edits_and_ids(model, requests, max_new_tokens=60, batch_size=len(requests))
        assert model._decoder.proposed > model._decoder.accepted  # rejected proposals left pads in the cache
        assert on == off

    def test_proposals_in_added_text_without_a_grammar_step_are_those_with_it(self, trained, monkeypatch):
        """Newline-free whole tokens in '+' text skip the grammar: same proposals, passes and edits as without the shortcut."""
        requests = [(s["before"], s["message"], s["name"]) for s in SAMPLES.values()] + [(COPY_BEFORE, "Double the border", "a.py")]
        runs = []
        for shortcut in (True, False):
            trained.edit_many(requests[:1], max_new_tokens=8)  # the decoder and its table exist
            table = trained._decoder.table
            if not shortcut:
                monkeypatch.setattr(table, "plain", bytes(len(table.plain)))  # every proposal takes the grammar step
            edits, ids = _edits_and_ids(trained, requests, batch_size=len(requests))
            d = trained._decoder
            runs.append((edits, ids, d.forward_calls, d.proposed, d.accepted))
            monkeypatch.undo()
        assert runs[0] == runs[1] and runs[0][3] > runs[0][4] > 0

    def test_a_cut_at_every_budget(self, copy_model):
        request = [(COPY_BEFORE, "Double the border", "area.py")]
        for budget in range(1, 60, 3):
            off = _edits_and_ids(copy_model, request, max_new_tokens=budget, speculate=False)
            assert _edits_and_ids(copy_model, request, max_new_tokens=budget) == off, budget

    def test_sampling_never_speculates(self, trained):
        s = SAMPLES["calc"]
        options = dict(num_samples=3, temperature=1.0, max_new_tokens=60, seed=3)
        on = trained.edit_many([(s["before"], s["message"], s["name"])], **options)
        assert trained._decoder.proposed == 0
        assert trained.edit_many([(s["before"], s["message"], s["name"])], speculate=False, **options) == on

    def test_a_rewritten_long_line_costs_fewer_forward_passes_exactly(self, copy_model):
        from diffmodel.diff.make import make_diff
        from diffmodel.infer.constrained import SPECULATE_TOKENS

        request = (COPY_BEFORE, "Double the border", "area.py")
        [[off]], [ids_off] = _edits_and_ids(copy_model, [request], speculate=False)
        passes_off = copy_model._decoder.forward_calls
        [[on]], [ids_on] = _edits_and_ids(copy_model, [request])
        assert (on, ids_on) == (off, ids_off) and on.diff == make_diff(COPY_BEFORE, COPY_AFTER)
        assert passes_off == off.num_tokens - off.forced_tokens
        # the '-' and '+' lines are tokenized alike but for the changed token; both start with an indent token
        text = [copy_model.tokenizer.decode([i]) for i in ids_on]
        minus, plus = text.index("-") + 1, text.index("+") + 1
        removed, added = text[minus:text.index("\n", minus) + 1], text[plus:text.index("\n", plus) + 1]
        changed = [k for k, (a, b) in enumerate(zip(removed, added)) if a != b]
        assert len(removed) == len(added) and len(changed) == 1 and changed[0] > SPECULATE_TOKENS + 2
        # '+' and the indent are picked (nothing to copy yet); then the tokens after the indent are proposed from
        # the '-' line: K accepted, the model's pick after them, the rest accepted up to the changed token, which
        # the model picks; the copy resumes past it: the newline accepted, '+' rejected, the model picks EOS.
        # Every token of the '+' line after its indent is accepted but two.
        accepted = len(added) - 1 - 2
        assert copy_model._decoder.accepted == accepted
        assert copy_model._decoder.forward_calls == passes_off - accepted


class TestMergingKVCaches:
    def test_rows_appended_with_the_narrower_padded_on_the_left(self):
        from transformers import DynamicCache

        from diffmodel.infer.constrained import ConstrainedDecoder

        def cache(rows: int, width: int, start: float) -> DynamicCache:
            c = DynamicCache()
            for layer in range(2):
                keys = start + layer + torch.arange(rows * width, dtype=torch.float).reshape(rows, 1, width, 1)
                c.update(keys, -keys, layer)
            return c

        old, new = cache(2, 3, 0.0), cache(1, 5, 100.0)
        mask = ConstrainedDecoder._merge(old, torch.tensor([[1, 1, 1], [0, 1, 1]]), new, torch.tensor([[0, 1, 1, 1, 1]]))
        assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [0, 1, 1, 1, 1]]
        assert old.layers[1].keys[:, 0, :, 0].tolist() == [[0, 0, 1, 2, 3], [0, 0, 4, 5, 6], [101, 102, 103, 104, 105]]
        assert torch.equal(old.layers[1].values, -old.layers[1].keys)
        assert old.layers[0].keys.shape == (3, 1, 5, 1)

    def test_a_cache_it_cannot_rewrite_is_refused(self):
        from diffmodel.infer.constrained import ConstrainedDecoder

        with pytest.raises(RuntimeError, match="plain key/value caches"):
            ConstrainedDecoder._merge(_Width(), torch.ones(1, 2), _Width(), torch.ones(1, 2))


class TestGrowingCacheLayer:
    def test_appends_in_place_and_holds_what_concatenation_holds(self):
        from transformers.cache_utils import DynamicLayer

        from diffmodel.infer.constrained import GROW_MIN, GrowingLayer

        torch.manual_seed(0)
        plain, growing = DynamicLayer(), DynamicLayer()
        chunks = [torch.randn(3, 2, n, 4) for n in (5, 1, 3, 1, 8)]
        for layer in (plain, growing):
            layer.update(chunks[0], -chunks[0])
        growing.__class__ = GrowingLayer
        buffers = set()
        for chunk in chunks[1:]:
            for layer in (plain, growing):
                keys, values = layer.update(chunk, -chunk)
                assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)
            assert torch.equal(growing.keys, plain.keys) and torch.equal(growing.values, plain.values)
            buffers.add(growing.keys.data_ptr())
        assert len(buffers) == 1 and growing._room[0].shape[-2] == 5 + 1 + GROW_MIN  # one buffer, made at the first append
        index = torch.tensor([2, 0])
        for layer in (plain, growing):  # rows selected: new tensors, so the next append makes a new buffer
            layer.batch_select_indices(index)
            layer.update(chunks[1][:2], -chunks[1][:2])
        assert torch.equal(growing.keys, plain.keys) and torch.equal(growing.values, plain.values)
        assert growing.keys.data_ptr() not in buffers

    def test_the_decoder_appends_through_it(self, trained, monkeypatch):
        from diffmodel.infer import constrained

        calls = []
        original = constrained.GrowingLayer.update
        monkeypatch.setattr(constrained.GrowingLayer, "update", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
        s = SAMPLES["calc"]
        monkeypatch.setattr(trained.decoder, "fixed_places", False)
        edit = trained.edit(s["before"], s["message"], s["name"], max_new_tokens=60)
        layers = trained.model.config.num_hidden_layers
        assert edit.status is EditStatus.STRICT and len(calls) == layers * (trained._decoder.forward_calls - 1)
