"""diffmodel.plot: loss curves are valid PNG files, written atomically."""

from __future__ import annotations


import pytest

from diffmodel.plot import plot_generation, plot_loss

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

HISTORY = [{"loss": 5.0 - 0.1 * i, "learning_rate": 1e-3, "epoch": i / 10, "step": 10 * i} for i in range(1, 21)] + [
    {"eval_loss": 4.2, "epoch": 1.0, "step": 100},
    {"eval_loss": 3.6, "epoch": 2.0, "step": 200},
    {"train_runtime": 12.5, "train_loss": 4.0, "step": 200},
]


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > len(PNG_SIGNATURE)
    assert data.startswith(PNG_SIGNATURE)


class TestPlotLoss:
    def test_writes_a_png_with_train_and_eval_loss(self, tmp_path):
        out = plot_loss(HISTORY, tmp_path / "loss.png", title="tiny gpt2")
        assert out == tmp_path / "loss.png"
        assert_png(out)

    @pytest.mark.parametrize("history", [[], [{"train_runtime": 1.0}], [{"loss": float("nan"), "step": 1}],
                                         [{"eval_loss": 2.0, "step": 5}]])
    def test_degenerate_histories_still_give_a_png(self, tmp_path, history):
        assert_png(plot_loss(history, tmp_path / "loss.png"))

    def test_creates_missing_folders_and_leaves_no_temp_files(self, tmp_path):
        out = plot_loss(HISTORY, tmp_path / "a" / "b" / "loss.png")
        assert_png(out)
        assert sorted(p.name for p in out.parent.iterdir()) == ["loss.png"]

    def test_replaces_an_existing_file(self, tmp_path):
        out = tmp_path / "loss.png"
        out.write_bytes(b"old")
        plot_loss(HISTORY, out)
        assert_png(out)


class TestPlotGeneration:
    def test_writes_a_png_of_the_generation_eval_shares_and_of_an_empty_log(self, tmp_path):
        history = HISTORY + [{"eval_gen_exact": 0.1 * i, "eval_gen_applies_strict": 0.5, "step": 100 * i} for i in (1, 2)]
        assert_png(plot_generation(history, tmp_path / "generation.png", title="tiny gpt2"))
        assert_png(plot_generation([], tmp_path / "empty.png"))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.png", "generation.png"]


class TestPlotSpeed:
    def test_writes_a_png_of_the_speed_with_and_without_mfu(self, tmp_path):
        from diffmodel.plot import plot_speed

        logged = [{"loss": 2.0, "tokens_per_second": 1000.0 + i, "loss_tokens_per_second": 300.0, "step": i} for i in range(1, 6)]
        assert_png(plot_speed(logged, tmp_path / "cpu.png"))
        with_mfu = [dict(h, mfu=0.3) for h in logged]
        assert_png(plot_speed(with_mfu, tmp_path / "gpu.png", title="tiny"))
        assert_png(plot_speed(HISTORY, tmp_path / "none.png"))  # a log without speed: a PNG that says so
        sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
        assert sorted(sizes) == ["cpu.png", "gpu.png", "none.png"]
        assert len(set(sizes.values())) == 3  # three different drawings


def _drawn(monkeypatch, plot, history, tmp_path):
    """The axes ``plot`` draws, as saved (laid out), caught at the save."""
    import diffmodel.plot as plot_module

    caught = {}
    real_save = plot_module._save

    def save(fig, ax, out, title):
        path = real_save(fig, ax, out, title)
        fig.canvas.draw()
        caught.update(fig=fig, ax=ax)
        return path

    monkeypatch.setattr(plot_module, "_save", save)
    assert_png(plot(history, tmp_path / "plot.png"))
    return caught["fig"], caught["ax"]


STEPS_1_TO_4 = [{"loss": 3.0 - 0.1 * s, "eval_loss": 3.0, "tokens_per_second": 100.0 * s, "loss_tokens_per_second": 40.0,
                 "eval_gen_parses": 0.5, "step": s} for s in range(1, 5)]


@pytest.mark.parametrize("name", ["plot_loss", "plot_speed", "plot_generation"])
def test_steps_are_whole_numbers_on_the_x_axis(monkeypatch, tmp_path, name):
    import diffmodel.plot as plot_module

    _, ax = _drawn(monkeypatch, getattr(plot_module, name), STEPS_1_TO_4, tmp_path)
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks == [1.0, 2.0, 3.0, 4.0]
    _, ax = _drawn(monkeypatch, getattr(plot_module, name), STEPS_1_TO_4[:1], tmp_path)  # one log only
    low, high = ax.get_xlim()
    assert [t for t in ax.get_xticks() if low <= t <= high] == [0.0, 1.0, 2.0]


def test_generation_series_that_coincide_stay_distinguishable_and_the_legend_covers_none(monkeypatch, tmp_path):
    # every diff that parses applies, strictly too: three series with the same values, as in a real run
    history = [{"eval_gen_parses": v, "eval_gen_applies_strict": v, "eval_gen_applies": v, "eval_gen_exact": 0.0,
                "eval_gen_line_similarity": v * 0.8, "step": s} for s, v in ((2, 0.0), (4, 0.5), (6, 0.5))]
    from diffmodel.plot import plot_generation

    fig, ax = _drawn(monkeypatch, plot_generation, history, tmp_path)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["parses", "applies_strict", "applies", "exact", "line_similarity"]
    assert len({(str(line.get_linestyle()), line.get_marker()) for line in lines}) == 5
    renderer = fig.canvas.get_renderer()
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= axes.x1  # beside the axes, not over the curves
    assert legend.x1 <= fig.bbox.x1 and legend.y0 >= fig.bbox.y0  # and inside the image
