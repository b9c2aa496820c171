"""benchmarks/constrained_decoding.py --profile: the forward passes it counts and times are the decoders' own."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from diffmodel.infer import DiffModel

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "constrained_decoding.py"


def _bench():
    spec = importlib.util.spec_from_file_location("constrained_decoding", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_forward_clock_counts_each_decoders_forward_passes(tiny_gpt2_dir):
    bench = _bench()
    model = DiffModel.from_pretrained(tiny_gpt2_dir)
    requests = [("x = 1\ny = 2\n", "m", "a.py"), ("def f():\n    return 1\n", "m", "b.py")]
    clock = bench._ForwardClock(model.model, model.device)
    try:
        model.edit_many(requests, max_new_tokens=12, batch_size=2)
        assert clock.calls == model._decoder.forward_calls > 0 and clock.seconds > 0
        prefills, _, steps, _, rows, width, new = clock.split()  # one prefill of both prompts, then steps of <= 2 rows
        assert prefills == 1 and steps == clock.calls - 1 and rows <= 2 and new >= 1 and width > new
        clock.reset()
        assert (clock.calls, clock.seconds, clock.split()[:4]) == (0, 0.0, (0, 0.0, 0, 0.0))
        edits = model.edit_many(requests, max_new_tokens=12, batch_size=2, constrained=False)
        # generate(): one forward per new token of the longest row but the last
        assert clock.calls == max(e[0].num_tokens for e in edits)
        prefills, _, steps, _, rows, width, new = clock.split()
        assert (prefills, steps, rows, new) == (1, clock.calls - 1, 2, 1)
    finally:
        clock.remove()
    clock.reset()
    model.edit_many(requests, max_new_tokens=4, batch_size=2)
    assert clock.calls == 0  # the hooks are gone


def test_forward_clock_times_the_passes_of_fixed_places(tiny_gpt2_dir):
    bench = _bench()
    from diffmodel.infer.places import PlaceCache

    step = PlaceCache.step
    model = DiffModel.from_pretrained(tiny_gpt2_dir)
    model.decoder.fixed_places = True
    requests = [("x = 1\ny = 2\n", "m", "a.py"), ("def f():\n    return 1\n", "m", "b.py")]
    clock = bench._ForwardClock(model.model, model.device)
    try:
        model.edit_many(requests, max_new_tokens=12, batch_size=2)
        places = model.decoder.places
        assert places is not None and places.passes > 0
        # the prefill through the model's hooks, each pass of the places once around its step (its model call not twice)
        assert clock.calls == model.decoder.forward_calls == places.passes + 1
        prefills, _, steps, _, rows, width, new = clock.split()
        assert (prefills, steps) == (1, places.passes) and rows <= 2 and width > new >= 1
    finally:
        clock.remove()
    assert PlaceCache.step is step


def test_decoding_places_benchmark_compares_the_caches_on_the_same_requests(capsys):
    spec = importlib.util.spec_from_file_location("decoding_places", SCRIPT.parent / "decoding_places.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--tiny", "--device", "cpu", "--max_samples", "6", "--batch_size", "3", "--max_new_tokens", "32",
                        "--rounds", "1"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith(("| growing", "| places"))]
    assert [r[0].strip() for r in rows] == ["growing", "places"]  # no graphs arm on the CPU
    assert rows[0][3].strip() == "1.00x" and all(r[6].strip() == "6/6" for r in rows)  # the same tokens in fp32
    assert rows[0][4] == rows[1][4]  # the same forward passes


def test_decoding_places_benchmark_on_an_untrained_model_of_a_named_shape(tiny_gpt2_dir, capsys):
    spec = importlib.util.spec_from_file_location("decoding_places", SCRIPT.parent / "decoding_places.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    quickstart = Path(__file__).resolve().parents[1] / "src" / "diffmodel" / "samples" / "quickstart.jsonl"
    assert module.main(["--random", "tiny", "--tokenizer", str(tiny_gpt2_dir), "--data", str(quickstart), "--device", "cpu",
                        "--max_samples", "4", "--batch_size", "2", "--max_new_tokens", "16", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "- model: untrained tiny Llama; device cpu" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith(("| growing", "| places"))]
    assert len(rows) == 2 and all(r[6].strip() == "4/4" for r in rows)


def test_no_speculation_runs_the_constrained_arm_without_it_and_the_edits_stay_the_same(capsys):
    bench = _bench()
    tables = {}
    for flags in ([], ["--no_speculation"]):
        assert bench.main(["--tiny", "--device", "cpu", "--max_samples", "4", "--batch_size", "4", "--max_new_tokens", "48",
                           "--rounds", "1", "--profile", *flags]) == 0
        out = capsys.readouterr().out
        assert f"speculation {'off' if flags else 'on'} in the constrained arm" in out
        tables[bool(flags)] = out
    quality = [[line for line in tables[f].splitlines() if line.startswith(("| applies", "| exact", "| line_similarity",
                                                                          "| forced_share", "| parses"))]
               for f in (False, True)]
    assert quality[0] == quality[1] and len(quality[0]) == 6  # parses, applies_strict, applies, exact, ...
    passes = [int(next(line for line in tables[f].splitlines() if line.startswith("| constrained |")).split("|")[2])
              for f in (False, True)]
    assert passes[0] < passes[1]  # a random model repeats itself: its own tokens are proposed, and accepted


def test_decoding_attention_benchmark_runs_each_decoder_in_both_arms_and_puts_the_context_back(capsys):
    spec = importlib.util.spec_from_file_location("decoding_attention", SCRIPT.parent / "decoding_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from diffmodel.infer import model as model_module

    ours = model_module.decoding_attention
    assert module.main(["--tiny", "--device", "cpu", "--max_samples", "4", "--batch_size", "2", "--max_new_tokens", "8",
                        "--rounds", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| diff-aware") or line.startswith("| plain")]
    assert len(rows) == 2 and all(float(r.split("|")[3]) > 0 and r.rstrip(" |").endswith("x") for r in rows)
    assert model_module.decoding_attention is ours


def _parser(bench):
    import argparse

    p = argparse.ArgumentParser()
    bench.model_arguments(p, max_samples=400, batch_size=32, max_new_tokens=512)
    return p


def test_tiny_is_a_short_run_unless_the_command_line_says_otherwise():
    bench = _bench()

    def picked(argv):
        args = bench.checked(_parser(bench), argv)
        return args.max_samples, args.batch_size, args.max_new_tokens, args.rounds

    assert picked(["--tiny"]) == (32, 32, 128, 1)
    assert picked(["--tiny", "--max_samples", "50", "--max_new_tokens", "256", "--rounds", "2"]) == (50, 32, 256, 2)
    assert picked(["--model", "m", "--data", "d.jsonl"]) == (400, 32, 512, 2)
