"""Where torch.compile keeps its compiled kernels between runs: ``--compile_cache``.

A compiled run's first step compiles the model: on an H100 a ~110M-wide Llama's took 47 s with the cache empty and
7 s with the kernels an earlier run compiled in inductor's on-disk cache (the whole run 139 s and 40 s;
benchmarks/compile_cache.py). inductor keeps that cache in ``/tmp/torchinductor_<user>``, which goes with the machine: on a cluster
every job on a new node compiles everything again. ``--compile_cache auto`` keeps it beside the preprocessing cache
instead, ``<--cache_dir>/diffmodel_compile``, else ``$DIFFMODEL_CACHE/compile`` (``~/.cache/diffmodel/compile``), so a
run on any machine that sees that folder starts from what earlier runs compiled (inductor keys each entry by the code,
the torch and Triton versions and the GPU, so a different machine or release compiles its own); a
``TORCHINDUCTOR_CACHE_DIR`` set in the environment is kept. ``off``: inductor's own place. A folder: that folder.

The setting is applied as an environment variable (``TORCHINDUCTOR_CACHE_DIR``, which inductor reads each time it
looks in its cache) before anything compiles; :func:`diffmodel.train.run.run` puts the variable back as it was when it
returns.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from diffmodel.cache_home import cache_home

logger = logging.getLogger("diffmodel.train")

ENV = "TORCHINDUCTOR_CACHE_DIR"
#: what ``--compile_cache auto`` saved on an H100 (benchmarks/RESULTS.md), for the log
MEASURED = "on an H100 a ~110M-wide Llama's first step took 47 s with the folder empty, 7 s with an earlier run's kernels"


def inductor_default() -> str:
    """inductor's own folder (``/tmp/torchinductor_<user>``), which it also writes into the environment once used."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return os.path.abspath(default_cache_dir())


def choose(setting: str, cache_dir: str | None, compiled: bool, env=None) -> tuple[Path | None, str]:
    """(the folder, or None for inductor's own; the reason). ``cache_dir``: ``--cache_dir``; ``compiled``: whether
    the run compiles; ``env``: the environment (default the process's)."""
    env = os.environ if env is None else env
    if not compiled:
        return None, "not compiled"
    if setting == "off":
        return None, "set by --compile_cache off: inductor's own folder, lost with the machine"
    if setting != "auto":
        return Path(setting).expanduser(), "set by --compile_cache"
    given = env.get(ENV)
    if given and os.path.abspath(given) != inductor_default():  # inductor writes its default there itself once used
        return Path(given), f"set by {ENV}"
    folder = Path(cache_dir) / "diffmodel_compile" if cache_dir else cache_home() / "compile"
    where = "--cache_dir" if cache_dir else "the preprocessing cache"
    return folder, (f"kept beside {where}, so later runs on any machine that sees it reuse the kernels ({MEASURED}); "
                    "--compile_cache off leaves it in /tmp")


def apply(folder: Path | None, asked_for: bool = True) -> None:
    """Point inductor's cache at ``folder`` (made if missing; nothing changes for None). ``asked_for``: the folder
    was given (``--compile_cache DIR``): one that cannot be made stops the run; one ``auto`` chose is given up with a
    warning instead (a read-only home, say), the environment left as it was."""
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if not asked_for:
            logger.warning("torch.compile cache: cannot make %s (%s), so the kernels are not kept there; "
                           "--compile_cache DIR names another folder", folder, err.strerror)
            return
        from diffmodel.errors import DiffModelError

        raise DiffModelError(f"--compile_cache: cannot make the folder {folder} ({err.strerror}); give a folder you can "
                             "write to, or --compile_cache off") from None
    os.environ[ENV] = str(folder.resolve())
