"""The fingerprinted stage cache of the preprocessing pipeline.

A stage's result is saved with ``save_to_disk`` under
``<cache_root>/<stage>-<fingerprint>``, where the fingerprint hashes the
input's fingerprint, the tokenizer and every option the stage reads
(:func:`fingerprint`, :func:`tokenizer_fingerprint`). A stage whose folder
exists is loaded instead of recomputed (:func:`cached_stage`).

Invariants: a cache folder is written under a temporary name and renamed when
complete (:func:`diffmodel.atomic.save_atomically`), so an interrupted run
never leaves a stage that looks finished; the same inputs always give the
same fingerprint (parts are hashed as sorted JSON).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import datasets

from diffmodel.atomic import META_FILE, save_atomically
from diffmodel.cache_home import cache_home

logger = logging.getLogger(__name__)


def fingerprint(*parts) -> str:
    """A stable hash of JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def tokenizer_fingerprint(tokenizer) -> str:
    if getattr(tokenizer, "is_fast", False):
        body = tokenizer.backend_tokenizer.to_str()
    else:
        body = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return fingerprint(type(tokenizer).__name__, body, tokenizer.eos_token_id, tokenizer.pad_token_id)


def default_cache_root(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir) / "diffmodel_preprocess"
    return cache_home() / "preprocess"


def cached_stage(root: Path, stage: str, fp: str, build: Callable[[], tuple[datasets.Dataset, dict]], overwrite: bool) -> tuple[datasets.Dataset, dict]:
    """Load ``<root>/<stage>-<fp>`` if complete, else ``build()`` it and save it; returns (dataset, meta)."""
    path = root / f"{stage}-{fp}"
    if path.exists() and not overwrite:
        logger.info("stage %s: reusing cached result %s", stage, path)
        meta_path = path / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return datasets.load_from_disk(str(path)), {**meta, "cached": True}
    ds, meta = build()
    save_atomically(ds, path, meta)
    return datasets.load_from_disk(str(path)), {**meta, "cached": False}
