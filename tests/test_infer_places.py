"""Fixed places for diff-aware decoding's KV cache (diffmodel.infer.places), on the CPU (eager passes).

CUDA graphs replay the same passes; benchmarks/constrained_decoding.py runs them on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from diffmodel.infer import DiffModel
from diffmodel.infer.constrained import ConstrainedDecoder
from diffmodel.infer.places import SPAN_STEP, WIDTHS, PlaceCache
from handmade import HARD_FILES


@pytest.fixture(scope="module")
def llama(tiny_llama_dir) -> DiffModel:
    model = DiffModel.from_pretrained(tiny_llama_dir)
    model.model.float()
    return model


def _decoder(model: DiffModel) -> ConstrainedDecoder:
    return ConstrainedDecoder(model.model, model.tokenizer, model.eos_ids, model.pad_id)


def _prefill(decoder: ConstrainedDecoder, prompts: list[list[int]]):
    ids, positions, mask = decoder._step_inputs(prompts, [0] * len(prompts), "cpu")
    cache, logits = decoder._forward(ids, mask, positions, None)
    return cache, mask, logits


def _alone(model: DiffModel, tokens: list[int], last: int) -> torch.Tensor:
    """The logits of the last ``last`` positions of ``tokens`` fed alone, without a cache."""
    with torch.inference_mode():
        return model.model(input_ids=torch.tensor([tokens])).logits[0, -last:]


class TestPasses:
    """Every pass gives the logits the row's own tokens give alone, after rejected proposals and in a reused place."""

    def test_logits_equal_each_row_fed_alone(self, llama):
        decoder = _decoder(llama)
        p0, p1, p2 = [5, 9, 14, 3, 27, 8, 11], [40, 2, 6, 13], [7, 21, 30]
        with torch.inference_mode():
            cache, mask, _ = _prefill(decoder, [p0, p1])
            places = PlaceCache(cache, 3, 32, decoder._pass, llama.pad_id, keep=3)
            assert places.admit(cache, mask) == [0, 1] and places.free == [2]
            # row 0: its token 17 and two proposals (18, 19); row 1: one token
            logits = places.step([[17, 18, 19], [23]], [7, 4], [0, 1], keep=3)
            torch.testing.assert_close(logits[0], _alone(llama, p0 + [17, 18, 19], 3))
            torch.testing.assert_close(logits[1, -1], _alone(llama, p1 + [23], 1)[0])
            # row 0's proposals were rejected: its length moves by its token only; the next token takes their place
            logits = places.step([[25], [26, 28]], [8, 5], [0, 1], keep=2)
            torch.testing.assert_close(logits[0, -1], _alone(llama, p0 + [17, 25], 1)[0])
            torch.testing.assert_close(logits[1], _alone(llama, p1 + [23, 26, 28], 2))
            # row 0 finishes; a shorter prompt takes its place over the columns row 0 left behind
            places.release([0])
            cache2, mask2, _ = _prefill(decoder, [p2])
            assert places.admit(cache2, mask2) == [0]
            logits = places.step([[31], [33]], [3, 7], [0, 1], keep=1)
            torch.testing.assert_close(logits[0, -1], _alone(llama, p2 + [31], 1)[0])
            torch.testing.assert_close(logits[1, -1], _alone(llama, p1 + [23, 26, 28, 33], 1)[0])
        assert places.passes == 3 and places.replays == places.captures == 0  # eager on the CPU

    def test_a_pass_that_cannot_be_captured_runs_eagerly(self, llama, caplog):
        decoder = _decoder(llama)
        with torch.inference_mode():
            cache, mask, _ = _prefill(decoder, [[5, 9, 14, 3]])
            places = PlaceCache(cache, 2, 16, decoder._pass, llama.pad_id, keep=1)
            places.admit(cache, mask)
            places.graphs = True  # on the CPU no graph can be captured
            logits = places.step([[17, 18]], [4], [0], keep=1)
        torch.testing.assert_close(logits[0, -1], _alone(llama, [5, 9, 14, 3, 17, 18], 1)[0])
        assert not places.graphs and places.captures == places.replays == 0 and places.passes == 1
        assert "could not be captured as a CUDA graph" in caplog.text and "running every pass eagerly" in caplog.text

    def test_inputs_of_a_pass(self, llama):
        decoder = _decoder(llama)
        with torch.inference_mode():
            cache, mask, _ = _prefill(decoder, [[5, 9, 14], [40, 2]])
            places = PlaceCache(cache, 3, 20, decoder._pass, llama.pad_id, keep=2)
        pad, trash = llama.pad_id, places.trash
        assert places.length == SPAN_STEP + 1 and trash == SPAN_STEP
        # eager (the CPU): the chunks' own width, the row's tokens on the right; place 1 idle; pads go to the trash
        inputs, span = places.inputs([[7, 8, 9], [4]], [3, 10], [2, 0])
        assert span == 11  # row 2's tokens reach column 10
        assert inputs.tolist() == [
            [[pad, pad, 4], [pad] * 3, [7, 8, 9]],
            [[0, 0, 10], [0] * 3, [3, 4, 5]],
            [[trash, trash, 10], [trash] * 3, [3, 4, 5]],
        ]
        # replayed from graphs: widths padded to WIDTHS, attention reads a multiple of SPAN_STEP columns
        places.graphs = True
        inputs, span = places.inputs([[7, 8, 9], [4]], [3, 10], [2, 0])
        assert span == SPAN_STEP
        assert inputs.tolist() == [
            [[pad, pad, pad, 4], [pad] * 4, [pad, 7, 8, 9]],
            [[0, 0, 0, 10], [0] * 4, [0, 3, 4, 5]],
            [[trash, trash, trash, 10], [trash] * 4, [trash, 3, 4, 5]],
        ]
        wide = WIDTHS[-1] + 3  # wider than the widest graph: its own width
        assert places.inputs([list(range(wide))], [0], [1])[0].shape == (3, 3, wide)
        with pytest.raises(RuntimeError, match="past the 256 positions its place holds"):
            places.inputs([[1, 2]], [SPAN_STEP - 1], [0])

    def test_what_cannot_be_held_in_places(self, llama):
        decoder = _decoder(llama)
        with torch.inference_mode():
            cache, mask, _ = _prefill(decoder, [[5, 9, 14]])
        assert PlaceCache.fits(llama.model, cache, 4, 64)
        was = llama.model.config._attn_implementation
        try:
            llama.model.config._attn_implementation = "flex_attention"  # takes no 4D additive mask
            assert not PlaceCache.fits(llama.model, cache, 4, 64)
        finally:
            llama.model.config._attn_implementation = was
        assert not PlaceCache.fits(llama.model, object(), 4, 64)
        PlaceCache(cache, 2, 16, decoder._pass, llama.pad_id, keep=1)
        assert not PlaceCache.fits(llama.model, cache, 4, 64)  # its layers are place layers now
        with pytest.raises(ValueError, match="only plain key/value caches"):
            PlaceCache(cache, 2, 16, decoder._pass, llama.pad_id, keep=1)


class TestDecodingInPlaces:
    """The decoder with fixed places writes the same tokens as with its growing cache."""

    @pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
    @pytest.mark.parametrize("options", [
        dict(batch_size=2, max_new_tokens=40),  # greedy with speculation; rows join as others finish
        dict(batch_size=2, max_new_tokens=40, speculate=False),
        dict(batch_size=2, max_new_tokens=30, num_samples=3, temperature=1.0, seed=5),
    ], ids=["greedy", "no-speculation", "sampled"])
    def test_same_tokens_as_the_growing_cache(self, request, fixture, options):
        model = DiffModel.from_pretrained(request.getfixturevalue(fixture))
        requests = [(code, "m", f"{i}.py") for i, code in enumerate(HARD_FILES.values())] + [("", "Add", "n.py")]
        runs = []
        for fixed in (False, True):
            model.decoder.fixed_places = fixed
            edits = model.edit_many(requests, **options)
            runs.append((edits, [list(i) for i in model.decoder.last_ids]))
            assert (model.decoder.places is not None) == fixed
            assert model.decoder.admissions > 0
        assert runs[0] == runs[1]
        assert model.decoder.places.passes == model.decoder.forward_calls - 1 - model.decoder.admissions
        assert model.decoder.places.free == list(range(model.decoder.places.places))  # every place given back

    def test_the_growing_cache_on_the_cpu_by_default_and_where_places_do_not_fit(self, tiny_gpt2_dir, monkeypatch):
        from diffmodel.infer import places

        model = DiffModel.from_pretrained(tiny_gpt2_dir)
        model.edit("x = 1\n", "m", "a.py", max_new_tokens=8)
        assert model.decoder.fixed_places is None and model.decoder.places is None
        model.decoder.fixed_places = True
        model.edit("x = 1\n", "m", "a.py", max_new_tokens=8)
        assert model.decoder.places is not None and not model.decoder.places.graphs  # eager on the CPU
        assert model.decoder.places.passes == model.decoder.forward_calls - 1
        monkeypatch.setattr(places, "_available_memory", lambda: 1024)  # a host with 1 KiB left
        model.edit("x = 1\n", "m", "a.py", max_new_tokens=8)
        assert model.decoder.places is None and model.decoder.forward_calls > 1
