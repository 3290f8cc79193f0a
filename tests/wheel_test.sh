#!/usr/bin/env bash
# Installs the given lossext wheel into a fresh venv, runs the test suite against the installed
# package (from outside the source tree, so that `import lossext` is the wheel), then builds the
# C++ starter and face-embedding examples against the wheel's CMake package
# (lossext.cmake_prefix_path inside that venv, not the source tree) and runs them.
set -euo pipefail
wheel=$(readlink -f "$1")
repo=$(cd "$(dirname "$0")/.." && pwd)
venv="$repo/.venv-wheel"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q torch==2.14.1 numpy pytest hypothesis > "$venv/pip.log" 2>&1 || { cat "$venv/pip.log"; exit 1; }
"$venv/bin/python" -m pip install -q --no-deps "$wheel"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$repo/tests" "$work/tests"
cp "$repo/pyproject.toml" "$work/"
cd "$work"
"$venv/bin/python" - <<'PY'
import os
import lossext
assert "site-packages" in lossext.__file__, lossext.__file__
pkg = os.path.dirname(lossext.__file__)
for rel in ("lib/liblossext.so", "include/lossext/lossext.h", "include/lossext/detail",
            "share/cmake/lossext/lossextConfig.cmake", "share/cmake/lossext/lossextConfigVersion.cmake"):
    assert os.path.exists(os.path.join(pkg, rel)), f"the wheel lacks lossext/{rel}"
print("testing installed", lossext.__file__, lossext.build_info())
PY
# The suite against the installed wheel, less the tests of the same Python and kernel code that
# `make test` already ran and that do not depend on how lossext is installed (CI time: issue 16)
LOSSEXT_TEST_CPU_ISAS=best LOSSEXT_FUZZ_PROFILE=smoke "$venv/bin/python" -m pytest -q -p no:cacheprovider tests \
  --ignore=tests/test_fuzz.py --ignore=tests/test_cpu_isa.py --ignore=tests/test_outputs_written.py \
  --ignore=tests/test_main.py --ignore=tests/test_demo.py
PYTHON="$venv/bin/python" LOSSEXT_EXPECT_PREFIX="$venv" LOSSEXT_EXAMPLES="starter;train_face_embedding" \
  LOSSEXT_EXAMPLES_BUILD_DIR="$work/cpp-examples" bash "$repo/examples/cpp/run_cpp_tests.sh"
