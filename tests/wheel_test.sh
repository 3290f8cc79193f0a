#!/usr/bin/env bash
# Installs the given lossext wheel into a fresh venv and runs the test suite against the
# installed package (from outside the source tree, so that `import lossext` is the wheel).
set -euo pipefail
wheel=$(readlink -f "$1")
repo=$(cd "$(dirname "$0")/.." && pwd)
venv="$repo/.venv-wheel"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q torch==2.14.1 numpy pytest > "$venv/pip.log" 2>&1 || { cat "$venv/pip.log"; exit 1; }
"$venv/bin/python" -m pip install -q --no-deps "$wheel"
work=$(mktemp -d)
cp -r "$repo/tests" "$work/tests"
cp "$repo/pyproject.toml" "$work/"
cd "$work"
"$venv/bin/python" - <<'PY'
import lossext, os
assert "site-packages" in lossext.__file__, lossext.__file__
print("testing installed", lossext.__file__, lossext.build_info())
PY
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests
rm -rf "$work"
