"""Sample sets that ship with the package.

``quickstart.jsonl`` holds a few hundred small structured rows (``name``,
``before``, ``message``, ``diff``, ``language``) for ``diffmodel quickstart``
and the tests: tiny models train on it on a CPU in minutes. It is made by
``scripts/make_quickstart_samples.py`` (original template files, realistic
edits, diffs from :func:`diffmodel.diff.make.make_diff`); rerun that script to
rebuild it instead of editing it by hand.

The ``.jsonl`` files are package data (``[tool.setuptools.package-data]`` in
``pyproject.toml``), so they are installed with the package and found through
:mod:`importlib.resources`, in a checkout, a wheel or an editable install.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

QUICKSTART = "quickstart.jsonl"


def quickstart_path() -> Path:
    """Filesystem path of the bundled quickstart sample set."""
    return Path(str(resources.files(__name__).joinpath(QUICKSTART)))


def load_quickstart() -> list[dict]:
    """The quickstart rows, in file order."""
    with open(quickstart_path(), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
