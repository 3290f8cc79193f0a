#!/usr/bin/env bash
# Builds the libtorch programs in examples/cpp against the lossext package that PYTHON imports
# (a real find_package(lossext) through lossext.cmake_prefix_path: the source tree's in-place
# build for `make test`, an installed wheel for tests/wheel_test.sh) and runs them with ctest.
# The library is not built again: the programs link the same liblossext.so that Python loads.
#
#   bash examples/cpp/run_cpp_tests.sh                 # from anywhere; paths are the repo's
#
# Environment:
#   PYTHON                the python whose torch and lossext are used (default: <repo>/.venv/bin/python)
#   CUDA_HOME             the CUDA toolkit root (default /usr/local/cuda; not the parent of a
#                         wrapper `nvcc` found on PATH)
#   TORCH_CUDA_ARCH_LIST  read by find_package(Torch) on a CUDA torch (default 9.0)
#   JOBS                  parallel build jobs (default 2)
#   LOSSEXT_EXAMPLES      the examples to build and test (default: all, see CMakeLists.txt)
#   LOSSEXT_EXPECT_PREFIX fail unless the lossext package found lies under this directory
#   LOSSEXT_EXAMPLES_BUILD_DIR   default build/cmake-examples
# Re-running reuses the build directory: CMake is re-configured only when its arguments change
# (ninja re-runs it by itself when a CMakeLists.txt changes), so a run with nothing changed
# costs about the test's own run time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
case "$PYTHON" in  # absolute: it runs from / below
  /*) ;;
  */*) PYTHON="$OLDPWD/$PYTHON" ;;
  *) PYTHON="$(command -v "$PYTHON" || echo "$PYTHON")" ;;
esac
JOBS="${JOBS:-2}"
EXBUILD="${LOSSEXT_EXAMPLES_BUILD_DIR:-$ROOT/build/cmake-examples}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"

step() { printf '\n== %s\n' "$*"; }

[ -x "$PYTHON" ] || { echo "run_cpp_tests.sh: no python at '$PYTHON' (set PYTHON)" >&2; exit 1; }
command -v cmake >/dev/null || { echo "run_cpp_tests.sh: cmake not found" >&2; exit 1; }
command -v ninja >/dev/null || { echo "run_cpp_tests.sh: ninja not found" >&2; exit 1; }

# torch's CMake prefix, whether it is a CUDA build, and the nvrtc it ships (find_package(Torch)
# on a CUDA build wants CUDA_nvrtc_LIBRARY; the minimal toolkit here has no nvrtc).
# (from / : in the repo root, `import lossext` would find the source tree whatever PYTHON is)
TORCH_INFO_TEXT="$(cd / && "$PYTHON" - <<'EOF'
import glob, os
import torch
site = os.path.dirname(os.path.dirname(torch.__file__))
nvrtc = sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libnvrtc.so.*"))
               + glob.glob(os.path.join(site, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.*")))
nvrtc = [p for p in nvrtc if "builtins" not in os.path.basename(p)]
print(torch.utils.cmake_prefix_path)
print(torch.version.cuda or "")
print(nvrtc[0] if nvrtc else "")
print(torch.__version__)
import lossext
print(lossext.cmake_prefix_path)
EOF
)"
mapfile -t TORCH_INFO <<<"$TORCH_INFO_TEXT"
TORCH_PREFIX="${TORCH_INFO[0]}"
TORCH_CUDA_VERSION="${TORCH_INFO[1]}"
NVRTC="${TORCH_INFO[2]}"
LOSSEXT_PREFIX="${TORCH_INFO[4]}"
echo "torch ${TORCH_INFO[3]} (CUDA build: ${TORCH_CUDA_VERSION:-no}) from $PYTHON; lossext package: $LOSSEXT_PREFIX"
[ -f "$LOSSEXT_PREFIX/lossext/lossextConfig.cmake" ] || { echo "run_cpp_tests.sh: no $LOSSEXT_PREFIX/lossext/lossextConfig.cmake (build lossext first)" >&2; exit 1; }
if [ -n "${LOSSEXT_EXPECT_PREFIX:-}" ]; then
  case "$(readlink -f "$LOSSEXT_PREFIX")" in
    "$(readlink -f "$LOSSEXT_EXPECT_PREFIX")"/*) ;;
    *) echo "run_cpp_tests.sh: lossext found at $LOSSEXT_PREFIX, not under $LOSSEXT_EXPECT_PREFIX" >&2; exit 1 ;;
  esac
fi

# lossext_DIR explicitly: a reused build folder's cache would otherwise keep a package found before
COMMON_ARGS=(-G Ninja -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=$TORCH_PREFIX;$LOSSEXT_PREFIX"
             "-Dlossext_DIR=$LOSSEXT_PREFIX/lossext")
if [ -n "${LOSSEXT_EXAMPLES:-}" ]; then
  COMMON_ARGS+=("-DLOSSEXT_EXAMPLES=$LOSSEXT_EXAMPLES")
fi
if [ -n "$TORCH_CUDA_VERSION" ]; then
  # A CUDA build of torch needs a CUDA toolkit in find_package(Torch), even for CPU-only
  # consumers. Use the toolkit's own nvcc, not a wrapper script that may come first on PATH.
  export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
  NVCC="$CUDA_HOME/bin/nvcc"
  [ -x "$NVCC" ] || { echo "run_cpp_tests.sh: torch is a CUDA build but there is no $NVCC (set CUDA_HOME)" >&2; exit 1; }
  [ -n "$NVRTC" ] || { echo "run_cpp_tests.sh: no libnvrtc.so.* next to torch (nvidia/*/lib)" >&2; exit 1; }
  export PATH="$CUDA_HOME/bin:$PATH"
  COMMON_ARGS+=("-DCMAKE_CUDA_COMPILER=$NVCC" "-DCUDAToolkit_ROOT=$CUDA_HOME"
                "-DCUDA_TOOLKIT_ROOT_DIR=$CUDA_HOME" "-DCUDA_nvrtc_LIBRARY=$NVRTC")
fi

# cmake configure, skipped when the directory was configured with the same arguments and
# environment before (a failed configure leaves no stamp).
configure() {
  local src="$1" dir="$2"; shift 2
  local stamp="$dir/.run_cpp_tests.args"
  local args
  args="$(printf '%s\n' "$src" "$@" "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST" "CUDA_HOME=${CUDA_HOME:-}")"
  if [ -f "$dir/CMakeCache.txt" ] && [ -f "$dir/build.ninja" ] && [ -f "$stamp" ] \
     && [ "$(cat "$stamp")" = "$args" ]; then
    echo "(configured before with the same arguments: $dir)"
    return 0
  fi
  rm -f "$stamp"
  cmake -S "$src" -B "$dir" "$@"
  printf '%s' "$args" > "$stamp"
}

step "configure examples/cpp against the lossext package in $LOSSEXT_PREFIX ($EXBUILD)"
configure "$ROOT/examples/cpp" "$EXBUILD" "${COMMON_ARGS[@]}"

step "build examples/cpp"
cmake --build "$EXBUILD" -j "$JOBS"

step "ctest"
ctest --test-dir "$EXBUILD" --output-on-failure
