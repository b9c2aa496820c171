"""Loss curves (and generation-eval curves) as PNG files.

``plot_loss`` draws the training loss (and the eval loss, when the log has
any) against the optimizer step, from a ``transformers`` ``log_history``: the
list of dicts a ``Trainer`` keeps in ``trainer.state.log_history`` and writes
to ``trainer_state.json``. ``plot_generation`` draws the ``eval_gen_*`` shares
that ``--generation_eval_samples`` logs (``generation.png``). ``plot_speed``
draws the logged training speed: tokens/s and loss-bearing tokens/s, and MFU
on a second axis when it was logged (``speed.png``).

Invariants:
- Headless: matplotlib's Agg backend through an explicit ``Figure`` (no
  pyplot, no display, no global state touched), safe in threads and on
  clusters.
- Atomic: the PNG is written to a temporary file in the target folder and
  renamed over ``out_png``, so a reader never sees a half-written image.
- Entries without a finite ``loss`` / ``eval_loss`` are skipped, so an empty
  or eval-only history still gives a valid (possibly empty) plot.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from diffmodel.atomic import write_bytes


def _series(log_history: list[dict], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for i, entry in enumerate(log_history):
        value = entry.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        steps.append(float(entry.get("step", i)))
        values.append(float(value))
    return steps, values


def plot_loss(log_history: list[dict], out_png: Path, title: str = "") -> Path:
    """Draw loss vs step from ``log_history`` into ``out_png``; returns its path."""
    out = Path(out_png)
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    train_steps, train_loss = _series(log_history, "loss")
    eval_steps, eval_loss = _series(log_history, "eval_loss")
    if train_loss:
        ax.plot(train_steps, train_loss, label="train loss", color="tab:blue", linewidth=1.2)
    if eval_loss:
        ax.plot(eval_steps, eval_loss, label="eval loss", color="tab:orange", marker="o", markersize=3, linewidth=1.2)
    if not train_loss and not eval_loss:
        ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=ax.transAxes, color="gray")
    else:
        ax.legend(loc="best")  # where it covers the fewest points of the curves
    ax.set_ylabel("loss")
    return _save(fig, ax, out, title)


#: the generation-eval metrics drawn by :func:`plot_generation`, as logged
GENERATION_SERIES = ("eval_gen_parses", "eval_gen_applies_strict", "eval_gen_applies", "eval_gen_exact", "eval_gen_line_similarity")
#: (line style, marker) of each of :data:`GENERATION_SERIES`: all different, since the shares often coincide
#: (every diff that parses also applies) and a series drawn alike under another would vanish
GENERATION_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1, 1, 1)), "v"))


def plot_generation(log_history: list[dict], out_png: Path, title: str = "") -> Path:
    """Draw the generation-eval shares (``eval_gen_*``, 0..1) vs step into ``out_png``, beside ``loss.png``."""
    out = Path(out_png)
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for key, (linestyle, marker) in zip(GENERATION_SERIES, GENERATION_STYLES):
        steps, values = _series(log_history, key)
        if values:
            ax.plot(steps, values, label=key[len("eval_gen_"):], marker=marker, markersize=5, linewidth=1.2,
                    linestyle=linestyle, markerfacecolor="none")
            drawn = True
    if drawn:  # beside the axes: the shares span 0..1, so any corner inside may hide a series
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.text(0.5, 0.5, "no generation eval logged yet", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share of held-out samples (line_similarity: mean)")
    return _save(fig, ax, out, title)


def plot_speed(log_history: list[dict], out_png: Path, title: str = "") -> Path:
    """Draw tokens/s, loss-bearing tokens/s and (right axis) MFU vs step into ``out_png``, beside ``loss.png``."""
    out = Path(out_png)
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lines = []
    for key, label, color in (("tokens_per_second", "tokens/s", "tab:blue"),
                              ("loss_tokens_per_second", "loss-bearing tokens/s", "tab:green")):
        steps, values = _series(log_history, key)
        if values:
            lines += ax.plot(steps, values, label=label, color=color, linewidth=1.2)
    steps, mfu = _series(log_history, "mfu")
    if mfu:
        right = ax.twinx()
        lines += right.plot(steps, [100 * v for v in mfu], label="MFU (%)", color="tab:red", linewidth=1.0, linestyle="--")
        right.set_ylabel("MFU (%)")
        right.set_ylim(bottom=0)
    if lines:
        ax.legend(lines, [line.get_label() for line in lines], loc="best")
        ax.set_ylim(bottom=0)
    else:
        ax.text(0.5, 0.5, "no speed logged yet", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_ylabel("tokens per second (all ranks)")
    return _save(fig, ax, out, title)


def _save(fig: Figure, ax, out: Path, title: str) -> Path:
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # optimizer steps are whole: no tick at step 1.5
    low, high = ax.get_xlim()
    if high - low < 2:  # one step only (an eval-only run): around it, whole steps (the locator keeps fractions below 1)
        middle = round((low + high) / 2)
        ax.set_xlim(middle - 1, middle + 1)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(out, buf.getvalue())
    return out
