"""DiffModel: generation, the <NME> stop, batching, parsing and applying (CPU, tiny real models)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmodel.errors import DiffModelError
from diffmodel.infer import (
    STOP_WINDOW,
    DiffModel,
    Edit,
    EditRequest,
    EditStatus,
    NameMarkerStop,
    as_request,
    cut_generation,
    finish_edit,
    tokens_with_gt,
)
from diffmodel.sample import render_prompt
from edit_model import SAMPLES, trained_edit_model, training_text


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> DiffModel:
    return DiffModel.from_pretrained(trained_edit_model(tmp_path_factory))


def _edit(model: DiffModel, key: str, **options) -> Edit:
    s = SAMPLES[key]
    return model.edit(s["before"], s["message"], s["name"], max_new_tokens=100, **options)


class TestGreedyOutputOfATrainedModel:
    """Constrained decoding by default; the lenient and failed outcomes need the unconstrained decoder."""

    @pytest.mark.parametrize("key", ["calc", "greet", "crlf"])
    def test_known_diff_applies_strictly_to_the_expected_file(self, trained, key):
        edit = _edit(trained, key)
        assert edit.diff == SAMPLES[key]["diff"]
        assert edit.status is EditStatus.STRICT and edit.ok
        assert edit.new_code == SAMPLES[key]["after"]
        assert edit.stop == "eos" and edit.apply_status == "applied" and edit.notes == []

    def test_wrong_line_numbers_fall_back_to_lenient(self, trained):
        edit = _edit(trained, "shift", constrained=False)
        assert edit.diff == SAMPLES["shift"]["diff"]
        assert edit.status is EditStatus.LENIENT and edit.ok
        assert edit.new_code == "x = 1\ny = 3\n"
        assert edit.apply_status == "relocated"

    def test_diff_that_matches_nothing_fails_without_raising(self, trained):
        edit = _edit(trained, "wrong", constrained=False)
        assert edit.diff == SAMPLES["wrong"]["diff"]
        assert edit.status is EditStatus.FAILED and not edit.ok
        assert edit.new_code is None
        assert edit.apply_status == "failed"
        assert any("not found" in note for note in edit.notes)

    def test_cpu_default_is_fp32(self, trained):
        assert trained.model.dtype == torch.float32 and trained.device.type == "cpu"


class TestGenerationStopsAtNameMarker:
    def test_stops_on_the_token_that_completes_the_marker(self, trained):
        s = SAMPLES["marker"]
        tok = trained.tokenizer
        prompt_ids = tok(render_prompt(s["name"], s["before"], s["message"]))["input_ids"]
        full_ids = tok(training_text("marker"))["input_ids"]
        assert full_ids[:len(prompt_ids)] == prompt_ids
        continuation = full_ids[len(prompt_ids):]
        wanted = len(" " + s["diff"] + "<NME>")
        expected = next(n for n in range(1, len(continuation) + 1) if len(tok.decode(continuation[:n])) >= wanted)

        edit = _edit(trained, "marker", constrained=False)
        assert edit.stop == "marker"
        assert edit.num_tokens == expected
        assert edit.diff == s["diff"]
        assert "<NME>" not in edit.diff
        assert edit.status is EditStatus.STRICT and edit.new_code == s["after"]

    def test_without_the_criterion_the_model_goes_on_into_the_next_sample(self, trained):
        s = SAMPLES["marker"]
        ids = trained.tokenizer(render_prompt(s["name"], s["before"], s["message"]), return_tensors="pt")
        out = trained.model.generate(**ids, max_new_tokens=_edit(trained, "marker", constrained=False).num_tokens + 6, do_sample=False,
                                     pad_token_id=trained.pad_id)
        text = trained.tokenizer.decode(out[0, ids["input_ids"].shape[1]:])
        assert "\n<NME> next" in text

    def test_length_stop_when_max_new_tokens_runs_out(self, trained):
        s = SAMPLES["calc"]
        edit = trained.edit(s["before"], s["message"], s["name"], max_new_tokens=5)
        assert edit.stop == "length" and edit.num_tokens == 5
        assert edit.status is EditStatus.FAILED and edit.new_code is None


class TestNameMarkerStopCriterion:
    """Feed growing token sequences to the criterion and check the exact step it fires."""

    @staticmethod
    def _first_line_marker_step(tok, gen_ids, marker_at):
        """Smallest n whose decoded text reaches past the <NME> at character ``marker_at``."""
        return next(n for n in range(1, len(gen_ids) + 1) if len(tok.decode(gen_ids[:n])) >= marker_at + len("<NME>"))

    @pytest.fixture(params=["decode every step", "decode after '>' only"])
    def prefilter(self, request):
        return request.param != "decode every step"

    def _run(self, tok, prompts, gens, prefilter):
        width = max(len(p) for p in prompts)
        steps = max(len(g) for g in gens)
        crit = NameMarkerStop(tok, width, may_end=tokens_with_gt(tok) if prefilter else None)
        fired = {}
        for n in range(1, steps + 1):
            rows = []
            for p, g in zip(prompts, gens):
                tail = (g + [tok.eos_token_id] * steps)[:n]
                rows.append([tok.eos_token_id] * (width - len(p)) + p + tail)
            done = crit(torch.tensor(rows), None)
            for r, flag in enumerate(done.tolist()):
                if flag:
                    fired.setdefault(r, n)
                else:
                    assert r not in fired, "a stopped row must stay stopped"
        return crit, fired

    def test_fires_exactly_when_a_line_starts_with_the_marker(self, tiny_tokenizer, prefilter):
        tok = tiny_tokenizer
        prompt = tok(render_prompt("a.py", "x = 1\n", "Quote x"))["input_ids"]
        text = ' @@ -1 +1 @@\n-x = 1\n+x = "<NME>"\n<NME> b.py\n<BEF> y\n'
        gen = tok(text)["input_ids"]
        crit, fired = self._run(tok, [prompt], [gen], prefilter)
        expected = self._first_line_marker_step(tok, gen, text.index("\n<NME>") + 1)
        assert fired == {0: expected}
        assert crit.stopped_at == {0: expected}

    def test_rows_stop_independently_and_prompt_marker_is_ignored(self, tiny_tokenizer, prefilter):
        tok = tiny_tokenizer
        short = tok(render_prompt("a.py", "", "Add a"))["input_ids"]
        long_ = tok(render_prompt("src/long_name.py", "def f():\n    return 1\n" * 3, "Change f"))["input_ids"]
        stop_text = " @@ -0,0 +1 @@\n+a = 1\n<NME> c.py\n"
        go_text = " @@ -1,2 +1,2 @@\n def f():\n-    return 1\n+    return 2\n"
        gens = [tok(stop_text)["input_ids"], tok(go_text)["input_ids"]]
        crit, fired = self._run(tok, [short, long_], gens, prefilter)
        assert fired == {0: self._first_line_marker_step(tok, gens[0], stop_text.index("<NME>"))}

    def test_marker_at_the_very_start_and_after_a_long_diff(self, tiny_tokenizer, prefilter):
        tok = tiny_tokenizer
        prompt = tok(render_prompt("a.py", "x\n", "m"))["input_ids"]
        first = " <NME> b.py\n"
        long_text = " @@ -1 +1,40 @@\n" + "+total = total + 1\n" * 40 + "<NME> b.py\n"
        gens = [tok(first)["input_ids"], tok(long_text)["input_ids"]]
        assert len(gens[1]) > 4 * STOP_WINDOW
        _, fired = self._run(tok, [prompt, prompt], gens, prefilter)
        assert fired == {
            0: self._first_line_marker_step(tok, gens[0], first.index("<NME>")),
            1: self._first_line_marker_step(tok, gens[1], long_text.index("<NME>")),
        }


    def test_gt_table_marks_exactly_the_tokens_holding_gt(self, tiny_tokenizer):
        table = tokens_with_gt(tiny_tokenizer)
        assert table.shape == (len(tiny_tokenizer),)
        for i in range(len(tiny_tokenizer)):
            assert bool(table[i]) == (">" in tiny_tokenizer.decode([i])), i


class TestBatchingGivesTheSameEditsAsOneByOne:
    def test_trained_model_every_batch_size(self, trained):
        requests = [EditRequest(s["before"], s["message"], s["name"]) for s in SAMPLES.values()]
        alone = [trained.edit(r.code, r.message, r.name, max_new_tokens=100) for r in requests]
        for batch_size in (4, len(requests)):
            batched = trained.edit_many(requests, max_new_tokens=100, batch_size=batch_size)
            assert [group[0] for group in batched] == alone

    @pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
    def test_untrained_models_left_padding_and_positions(self, request, fixture):
        model = DiffModel.from_pretrained(request.getfixturevalue(fixture))
        requests = [
            ("x = 1\n", "Bump x", "a.py"),
            ("def total(items):\n    result = 0\n    for item in items:\n        result += item\n    return result\n", "Add docstring to total", "src/total.py"),
            ("", "Add a readme", "README.md"),
            ("const LIMIT = 10;\n", "Raise LIMIT to 20", "web/first.js"),
        ]
        alone = [model.edit(*r, max_new_tokens=12) for r in requests]
        batched = [g[0] for g in model.edit_many(requests, max_new_tokens=12, batch_size=4)]
        assert [(e.diff, e.num_tokens, e.stop) for e in batched] == [(e.diff, e.num_tokens, e.stop) for e in alone]
        lengths = {len(ids) for ids in model.encode([as_request(r) for r in requests])}
        assert len(lengths) == len(requests), "prompts of different lengths, so the batch is padded"

    def test_pad_falls_back_to_eos_and_padding_is_on_the_left(self, trained):
        assert trained.tokenizer.pad_token_id is None
        assert trained.pad_id == trained.tokenizer.eos_token_id
        assert trained.tokenizer.padding_side == "left"


class TestSamplingAndOptions:
    def test_num_samples_per_request_and_seed_reproducible(self, tiny_gpt2_dir):
        model = DiffModel.from_pretrained(tiny_gpt2_dir)
        requests = [("x = 1\n", "Bump x", "a.py"), ("", "Add b", "b.py")]
        options = dict(num_samples=3, temperature=1.0, max_new_tokens=10, seed=123, constrained=False)
        first = model.edit_many(requests, **options)
        again = model.edit_many(requests, **options)
        assert [len(g) for g in first] == [3, 3]
        assert first == again
        assert len({e.diff for e in first[0]}) > 1

    def test_greedy_with_several_samples_is_refused(self, trained):
        with pytest.raises(DiffModelError, match="temperature > 0"):
            trained.edit_many([("x\n", "m", "a.py")], num_samples=2)
        with pytest.raises(DiffModelError, match="edit_many"):
            trained.edit("x\n", "m", "a.py", num_samples=2)

    def test_bad_options_reported_together(self, trained):
        with pytest.raises(DiffModelError) as err:
            trained.edit_many([("x\n", "m", "a.py")], batch_size=0, max_new_tokens=0, top_p=2.0)
        text = str(err.value)
        assert "batch_size" in text and "max_new_tokens" in text and "top_p" in text

    def test_progress_callable_counts_every_request(self, trained):
        seen = []
        trained.edit_many([("x = 1\n", "m", "a.py")] * 3, max_new_tokens=3, batch_size=2, progress=seen.append)
        assert sum(seen) == 3

    def test_empty_request_list(self, trained):
        assert trained.edit_many([]) == []


class TestPromptsThatDoNotFit:
    def test_too_long_prompt_is_reported_and_others_still_run(self, trained):
        huge = "".join(f"value_{i} = {i}\n" for i in range(200))
        calc = SAMPLES["calc"]
        results = trained.edit_many([(huge, "m", "big.py"), (calc["before"], calc["message"], calc["name"])], max_new_tokens=100)
        assert results[0][0].status is EditStatus.TOO_LONG and results[0][0].new_code is None
        assert "at most 256 positions" in results[0][0].notes[0]
        assert results[1][0].diff == calc["diff"]

    def test_generation_is_capped_by_the_positions_left(self, trained):
        for lines in range(10, 60):
            code = "".join(f"v{i} = {i}\n" for i in range(lines))
            prompt_len = len(trained.encode([EditRequest(code, "m", "a.py")])[0])
            if prompt_len > 230:
                break
        assert 230 < prompt_len < 256
        edit = trained.edit(code, "m", "a.py", max_new_tokens=200)
        assert edit.num_tokens <= 256 - prompt_len


class TestRequests:
    def test_forms_of_a_request(self):
        want = EditRequest("x\n", "m", "a.py")
        assert as_request(want) is want
        assert as_request(("x\n", "m", "a.py")) == want
        assert as_request({"name": "a.py", "before": "x\n", "message": "m"}) == want
        assert as_request({"path": "a.py", "code": "x\n", "message": "m", "extra": 1}) == want

    def test_missing_fields(self):
        with pytest.raises(DiffModelError, match="message"):
            as_request({"name": "a.py", "before": ""})
        with pytest.raises(DiffModelError, match="EditRequest"):
            as_request(42)


class TestFinishEdit:
    def test_cut_at_marker_line_only(self):
        assert cut_generation(' @@ -1 +1 @@\n-a\n+b\n<NME> x.py\n<BEF>') == ("@@ -1 +1 @@\n-a\n+b\n", True)
        assert cut_generation(' @@ -1 +1 @@\n-a\n+"<NME>"\n') == ('@@ -1 +1 @@\n-a\n+"<NME>"\n', False)
        assert cut_generation("\n<NME> x") == ("\n", True)

    def test_strict_lenient_failed_empty(self):
        assert finish_edit("a\n", " @@ -1 +1 @@\n-a\n+b\n", "eos", 9).status is EditStatus.STRICT
        lenient = finish_edit("a\n", " @@ -3 +3 @@\n-a\n+b\n")
        assert (lenient.status, lenient.new_code) == (EditStatus.LENIENT, "b\n")
        empty = finish_edit("a\n", " ")
        assert (empty.status, empty.new_code, empty.apply_status) == (EditStatus.FAILED, None, "empty")
        assert "the model wrote an empty diff" in empty.notes
        garbage = finish_edit("a\n", " hello there")
        assert (garbage.status, garbage.apply_status) == (EditStatus.FAILED, "bad_format")

    def test_header_without_new_range_is_never_strict(self):
        code = "".join(f"line {i}\n" for i in range(1, 11))
        junk = finish_edit(code, " @@ -1,7 @@\n" + "".join(f"+junk {i}\n" for i in range(1, 10)))
        assert (junk.status, junk.new_code, junk.apply_status) == (EditStatus.FAILED, None, "failed")
        found = finish_edit(code, " @@ -1,7 @@\n line 1\n-line 2\n+two\n line 3\n")
        assert (found.status, found.new_code, found.apply_status) == (
            EditStatus.LENIENT, code.replace("line 2\n", "two\n"), "relocated")

    def test_crlf_diff_of_a_crlf_file_is_strict(self):
        edit = finish_edit("a\r\nb\r\n", " @@ -1,2 +1,2 @@\r\n a\r\n-b\r\n+B\r\n")
        assert (edit.status, edit.new_code, edit.notes) == (EditStatus.STRICT, "a\r\nB\r\n", [])
        lf = finish_edit("a\nb\n", " @@ -1,2 +1,2 @@\r\n a\r\n-b\r\n+B\r\n")
        assert (lf.status, lf.new_code, lf.notes) == (EditStatus.STRICT, "a\nB\n", ["diff had CRLF line endings"])


        edit = finish_edit("a\n", " @@ -1 +1 @@\n-a\n+b\n<NME> c", "length", 20)
        assert (edit.stop, edit.status, edit.diff) == ("marker", EditStatus.STRICT, "@@ -1 +1 @@\n-a\n+b\n")

    @settings(max_examples=300, deadline=None)
    @given(code=st.text(max_size=60), generated=st.text(max_size=200))
    def test_never_raises_and_new_code_only_when_applied(self, code, generated):
        edit = finish_edit(code, generated)
        assert edit.status in (EditStatus.STRICT, EditStatus.LENIENT, EditStatus.FAILED)
        assert (edit.new_code is not None) == edit.ok

    @settings(max_examples=200, deadline=None)
    @given(code=st.text(alphabet="ab \n", max_size=40), body=st.lists(st.sampled_from(["@@ -1 +1 @@\n", "-a\n", "+b\n", " a\n", "\n", "<NME>", "\\ No newline at end of file\n"]), max_size=12))
    def test_never_raises_on_diff_like_text(self, code, body):
        edit = finish_edit(code, " " + "".join(body))
        assert (edit.new_code is not None) == edit.ok


class TestLoading:
    def test_missing_folder(self, tmp_path):
        with pytest.raises(DiffModelError, match="does not exist"):
            DiffModel.from_pretrained(tmp_path / "nope")

    def test_a_missing_run_folder_under_a_local_folder_is_not_looked_up_on_the_hub(self, tmp_path, monkeypatch):
        from diffmodel.checkpoint import check_model_folder, check_tokenizer_source

        monkeypatch.chdir(tmp_path)
        (tmp_path / "runs").mkdir()
        with pytest.raises(DiffModelError) as err:
            DiffModel.from_pretrained("runs/diff")  # would wait on huggingface.co before failing
        assert str(err.value) == "model folder 'runs/diff' does not exist"
        with pytest.raises(DiffModelError, match="does not exist|no such folder"):
            check_tokenizer_source("runs/tok", "--tokenizer_name")
        assert check_model_folder("owner/model") == "owner/model"  # no folder 'owner' here: a Hub id, maybe cached
        assert check_model_folder("gpt2") == "gpt2"

    def test_a_model_folder_without_a_tokenizer(self, tiny_gpt2_dir, tmp_path):
        import shutil

        folder = tmp_path / "model"
        folder.mkdir()
        for f in tiny_gpt2_dir.iterdir():
            if f.name in ("config.json", "model.safetensors", "generation_config.json"):
                shutil.copy(f, folder / f.name)
        with pytest.raises(DiffModelError) as err:
            DiffModel.from_pretrained(folder)
        assert str(err.value) == (f"model folder {str(folder)!r} holds no tokenizer (tokenizer.json / tokenizer_config.json); "
                                  "save the tokenizer next to the model (tokenizer.save_pretrained(folder)), as diffmodel train does")

    def test_a_lora_adapter_folder_names_the_merged_model(self, tmp_path):
        (tmp_path / "adapter_config.json").write_text("{}")
        with pytest.raises(DiffModelError) as err:
            DiffModel.from_pretrained(tmp_path)
        assert str(err.value).startswith(f"model folder {str(tmp_path)!r} holds a LoRA adapter, not a whole model: train with "
                                         "--lora_merge to write the merged model to OUTPUT_DIR/merged")
        (tmp_path / "merged").mkdir()
        (tmp_path / "merged" / "config.json").write_text("{}")
        with pytest.raises(DiffModelError) as err:
            DiffModel.from_pretrained(tmp_path)
        assert str(err.value) == (f"model folder {str(tmp_path)!r} holds a LoRA adapter, not a whole model: the merged model "
                                  f"of that run is {str(tmp_path / 'merged')!r}")

    def test_folder_without_config(self, tmp_path):
        with pytest.raises(DiffModelError, match="no config.json"):
            DiffModel.from_pretrained(tmp_path)

    def test_a_file_is_not_a_model_folder(self, tmp_path):
        (tmp_path / "model.bin").write_bytes(b"")
        with pytest.raises(DiffModelError, match="is a file"):
            DiffModel.from_pretrained(tmp_path / "model.bin")

    def test_dtype_and_device_options(self, tiny_gpt2_dir):
        model = DiffModel.from_pretrained(tiny_gpt2_dir, device="cpu", dtype="bf16")
        assert model.model.dtype == torch.bfloat16
        assert isinstance(model.edit("x = 1\n", "m", "a.py", max_new_tokens=3), Edit)
        with pytest.raises(DiffModelError, match="unknown dtype"):
            DiffModel.from_pretrained(tiny_gpt2_dir, dtype="int3")


class TestStopTokens:
    def test_an_ordinary_token_named_eos_by_the_generation_config_is_not_a_stop(self, tiny_llama_dir, caplog):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from diffmodel.infer import DiffModel

        tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        ordinary = tok.convert_tokens_to_ids("a")
        model.generation_config.eos_token_id = [tok.eos_token_id, ordinary]
        with caplog.at_level("WARNING", logger="diffmodel"):
            assert DiffModel(model, tok).eos_ids == [tok.eos_token_id]
        assert f"generation config names token {ordinary} ('a') as EOS, but it is an ordinary token" in caplog.text


class TestDecodingLeavesCudnnAttentionOut:
    @pytest.mark.parametrize("constrained", [True, False])
    def test_every_forward_pass_runs_without_cudnn_and_the_setting_is_put_back(self, trained, constrained):
        seen = []
        hook = trained.model.register_forward_pre_hook(
            lambda *_: seen.append((torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
                                    torch.backends.cuda.math_sdp_enabled())))
        before = torch.backends.cuda.cudnn_sdp_enabled()
        try:
            _edit(trained, "shift", constrained=constrained)
        finally:
            hook.remove()
        assert seen and set(seen) == {(False, True, True)}
        assert torch.backends.cuda.cudnn_sdp_enabled() == before


class TestDecodingPausesTheCyclicGarbageCollector:
    @pytest.mark.parametrize("constrained", [True, False])
    @pytest.mark.parametrize("enabled_before", [True, False])
    def test_no_collection_during_forward_passes_and_the_setting_is_put_back(self, trained, constrained, enabled_before):
        import gc

        seen = []
        hook = trained.model.register_forward_pre_hook(lambda *_: seen.append(gc.isenabled()))
        was = gc.isenabled()
        (gc.enable if enabled_before else gc.disable)()
        try:
            _edit(trained, "shift", constrained=constrained)
            after = gc.isenabled()
        finally:
            hook.remove()
            (gc.enable if was else gc.disable)()
        assert seen and set(seen) == {False}
        assert after is enabled_before

    def test_put_back_when_decoding_fails(self):
        import gc

        from diffmodel.infer.model import paused_gc

        assert gc.isenabled()
        with pytest.raises(RuntimeError), paused_gc():
            assert not gc.isenabled()
            raise RuntimeError("boom")
        assert gc.isenabled()
