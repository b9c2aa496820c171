"""diffmodel's own cache folder: ``$DIFFMODEL_CACHE``, else ``~/.cache/diffmodel``.

The preprocessing cache (``preprocess``), the HumanEvalFix-style bug sets (``humanevalfix``) and torch.compile's
kernels (``compile``) live under it unless their flags say otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "DIFFMODEL_CACHE"


def cache_home() -> Path:
    return Path(os.environ.get(ENV, Path.home() / ".cache" / "diffmodel"))
