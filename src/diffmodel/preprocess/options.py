"""The options of loading and preprocessing, and the one place they are built from ``DataArguments``.

:class:`PreprocessOptions` is what the preprocessing stages read (layout,
labels, cache); :class:`~diffmodel.data.load.LoadOptions` is what loading
reads. :func:`options_from` builds both from the parsed data flags, so no
caller copies ``DataArguments`` field by field, and logs each decision the
flags imply (a forced ``--concatenate_texts``, long samples dropped by
``--packing``).

Invariants: building options never raises for a flag combination; every
problem of the flags (e.g. ``--packing`` with ``--concatenate_texts``) is
reported earlier, with all the others, by
:func:`diffmodel.train.args.data_problems`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from diffmodel.data.load import LoadOptions

logger = logging.getLogger("diffmodel.train")


@dataclass
class PreprocessOptions:
    block_size: int
    train_diff_model: bool = False
    loss_on: str = "diff"
    ignore_long_samples: bool = False
    concatenate_texts: bool = False
    packing: bool = False
    skip_concat: bool = False
    force_label: bool = False
    num_proc: int | None = None
    text_column: str = "text"
    edit_format: str = "carper"
    overwrite_cache: bool = False
    cache_dir: str | None = None
    report_examples: int = 2

    @property
    def layout(self) -> str:
        """``pack``, ``concat`` or ``pad``; without packing, long samples force ``concat`` (the caller logs it)."""
        if self.packing:
            return "pack"
        return "concat" if (self.concatenate_texts or not self.ignore_long_samples) else "pad"

    @property
    def drops_long_samples(self) -> bool:
        """Packing never splits a sample, so it drops long ones like --ignore_long_samples."""
        return self.ignore_long_samples or self.packing


def _from_same_names(cls, data_args, **others):
    """A ``cls`` from the fields ``data_args`` has under the same name, and ``others`` (renamed or derived values)."""
    same = {f.name: getattr(data_args, f.name) for f in fields(cls) if f.init and hasattr(data_args, f.name)}
    return cls(**{**same, **others})


def options_from(data_args, block_size: int, cache_dir: str | None = None, seed: int = 42) -> tuple[LoadOptions, PreprocessOptions]:
    """The load and preprocessing options that ``data_args`` (a ``DataArguments``) names; logs forced decisions.

    A field of either options class takes the data flag of the same name
    (``--packing``, ``--text_column`` ...); the others are given here
    (``--train_file`` is ``train_files``, ``--preprocessing_num_workers`` is
    ``num_proc``, the resolved ``block_size``, an absent ``--text_column`` is ``text``).

    ``cache_dir``: the ``datasets`` cache (and ``CACHE/diffmodel_preprocess``);
    ``seed``: the seed of the train/validation cut.
    """
    if data_args.packing:
        if not data_args.ignore_long_samples:
            logger.warning("--packing: samples of --block_size tokens or more are dropped (packing never splits a sample), as with --ignore_long_samples")
    elif not data_args.ignore_long_samples and not data_args.concatenate_texts and not data_args.skip_concat:
        logger.warning("--ignore_long_samples not given: forcing --concatenate_texts, since left-padding cannot hold samples longer than --block_size")
    load_opts = _from_same_names(
        LoadOptions, data_args,
        train_files=data_args.train_file, validation_files=data_args.validation_file, cache_dir=cache_dir, seed=seed,
    )
    preprocess_opts = _from_same_names(
        PreprocessOptions, data_args,
        block_size=block_size, num_proc=data_args.preprocessing_num_workers, text_column=data_args.text_column or "text", cache_dir=cache_dir,
    )
    return load_opts, preprocess_opts
