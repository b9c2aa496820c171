"""The progress bars that libraries draw, turned off for a while (``--no_progress``).

transformers draws bars while it loads and saves weights (and huggingface_hub
while it downloads), datasets while it generates, maps, filters and saves a
data set. :func:`bars_off` turns them off for the length of a ``with`` block.

Invariants:
- What was on before is turned back on afterwards, so a command run in the
  same process as another (``quickstart`` runs ``train``; tests run commands)
  leaves the switches as it found them; blocks nest.
- datasets is imported only when its bars are asked about (``datasets=True``):
  loading a model for ``edit`` or ``eval`` does not import it.
- The bars diffmodel draws itself (tqdm in ``mine``, ``edit``, ``eval``) take a
  ``progress`` argument instead; the Trainer's follow ``--disable_tqdm``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def bars_off(off: bool = True, datasets: bool = True) -> Iterator[None]:
    """No transformers (and, with ``datasets``, no datasets) progress bar inside the block; nothing changes when not ``off``."""
    if not off:
        yield
        return
    from transformers.utils import logging as hf_logging

    switches = [(hf_logging.is_progress_bar_enabled, hf_logging.disable_progress_bar, hf_logging.enable_progress_bar)]
    if datasets:
        import datasets as ds

        switches.append((ds.is_progress_bar_enabled, ds.disable_progress_bars, ds.enable_progress_bars))
    were_on = [is_on() for is_on, _, _ in switches]
    for _, disable, _ in switches:
        disable()
    try:
        yield
    finally:
        for (_, _, enable), was_on in zip(switches, were_on):
            if was_on:
                enable()


__all__ = ["bars_off"]
