#!/usr/bin/env bash
# The import contract of .importlinter, checked on the tree pip installs (scripts/installed_tree.py):
# exits non-zero, naming the import, when a layer is broken. `make layers`; CI runs it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python=${PYTHON:-$root/.venv/bin/python}
if [ ! -x "$(dirname "$python")/lint-imports" ]; then
  echo "import-linter is not installed in $(dirname "$(dirname "$python")"); run scripts/install.sh test (make test does) first." >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" "$root/scripts/installed_tree.py" "$work/site" >/dev/null
# from an empty folder, so that only the installed tree is on the path, not this checkout's emkit/
cd "$work" && PYTHONPATH="$work/site" "$(dirname "$python")/lint-imports" "$root/.importlinter" --no-cache
