#!/usr/bin/env bash
# Install diffmodel and what its tests need into the current Python, at the tested versions.
#
# torch is installed first, at the tested version, so that no other package pulls a newer one. From PyPI on
# Linux that is a CUDA build (several GB); DIFFMODEL_TORCH_INDEX=https://download.pytorch.org/whl/cpu takes
# the CPU build from PyTorch's own index instead (pip's find-links, where set, are read either way). Every other
# package is pinned by constraints.txt, the set the test suite last passed with (docs/dependencies.md
# says how to move it forward; it is for Python 3.11, other Pythons get the ranges of pyproject.toml). DIFFMODEL_UNPINNED=1 installs the newest releases the ranges in
# pyproject.toml admit instead, as scripts/update_constraints.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
pin=(-c constraints.txt)
if [ "${DIFFMODEL_UNPINNED:-0}" = 1 ]; then
  pin=()
elif ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "note: constraints.txt is the set tested on Python 3.11; installing the newest releases pyproject.toml admits for $(python3 -V)" >&2
  pin=()
fi
torch_index=()
if [ -n "${DIFFMODEL_TORCH_INDEX:-}" ]; then
  torch_index=(--index-url "$DIFFMODEL_TORCH_INDEX")
fi
python3 -m pip install -q --disable-pip-version-check "${pin[@]}" "${torch_index[@]}" "torch==2.13.0"
python3 -m pip install -q --disable-pip-version-check "${pin[@]}" -e ".[test]"
# bubblewrap, the strongest layer of the eval sandbox (docs/eval.md); its tests need it. Never fails the setup.
if command -v bwrap >/dev/null 2>&1; then
  :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
    || echo "note: could not install bubblewrap (apt-get install bubblewrap); the eval sandbox will warn and fall back to unshare + guard" >&2
else
  echo "note: bubblewrap (bwrap) is not installed and this is not root with apt-get; install it (apt-get install bubblewrap) for the strongest eval sandbox" >&2
fi
