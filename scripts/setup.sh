#!/usr/bin/env bash
# Install diffmodel and what its tests need into the current Python.
# torch is pinned to a CPU build first so that pip does not pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0"
python3 -m pip install -q --disable-pip-version-check -e ".[test]"
