#!/usr/bin/env bash
# Move the tested set forward: install the newest releases pyproject.toml admits into a fresh
# virtual environment, run the whole test suite there, and only if it passes write what was
# installed to constraints.txt. Commit constraints.txt (and any code the new releases needed)
# together. Usage: bash scripts/update_constraints.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$(mktemp -d)/venv}
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
DIFFMODEL_UNPINNED=1 bash scripts/setup.sh
python3 -m pytest -q -p no:cacheprovider tests
{
  sed -n '1,3p' constraints.txt
  python3 -m pip freeze --exclude-editable | sed -E 's/^(torch==[0-9.]+)\+cpu$/\1/'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt updated from $venv; review 'git diff constraints.txt' and commit it"
