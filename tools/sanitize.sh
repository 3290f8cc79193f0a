#!/usr/bin/env bash
# make sanitize: the CPU kernels built with AddressSanitizer and UndefinedBehaviorSanitizer in a
# build folder of their own (build/sanitize/, never mixed with the in-place build), then the
# test suite and the fuzzer run against that build. Any sanitizer report fails the run.
#
#   bash tools/sanitize.sh [pytest args...]      (default: the whole of tests/)
#
# Environment: PYTHON (the venv's python), LOSSEXT_FUZZ_PROFILE (default "long": the fuzzer's
# many-examples profile; CI passes "smoke"), SANITIZE_TIMEOUT_S (default 1500: the tests' time
# box), SANITIZE_TIMEBOX=1 (CI: a run stopped by its time box passes if what ran had no report
# and no failure; it says so; by default a stopped run fails), SANITIZE_BUILD_ONLY=1 (build, then
# stop: CI builds while the wheel test runs, and the later run finds nothing to rebuild).
#
# Why the preload: python itself is not built with ASan, so the ASan runtime must be the first
# library in the process (LD_PRELOAD=libasan.so), or it refuses to start ("ASan runtime does not
# come first"). libstdc++ is preloaded with it because ASan intercepts __cxa_throw and resolves
# the real one when it starts: if libstdc++ is only loaded later (by torch, after Python has
# started), the interceptor has nothing to call and the first C++ exception (any torch error
# raised in C++, e.g. a bad argument to an op) aborts the process.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SAN=build/sanitize
PKG=$SAN/pkg
start=$(date +%s)

echo "== sanitizer build (ASan + UBSan, CPU kernels) in $SAN/"
LOSSEXT_SANITIZE=1 LOSSEXT_CUDA=0 LOSSEXT_BUILD_BASE=$SAN MAX_JOBS=${MAX_JOBS:-2} \
  "$PY" setup.py -q build_ext 2>&1 | { grep -v -E 'Deprecat|^\s*!!|^\s*\*+$|setup.py install|pypa|^$|No CUDA runtime is found' || true; }
built=$(ls -d $SAN/lib.*/lossext)
test -f "$built/_C.abi3.so" -a -f "$built/lib/liblossext.so" || { echo "sanitize: the build left no _C.abi3.so / lib/liblossext.so in $built"; exit 1; }
if [ "${SANITIZE_BUILD_ONLY:-0}" = 1 ]; then
  echo "sanitize: built in $(( $(date +%s) - start )) s (SANITIZE_BUILD_ONLY)"
  exit 0
fi

# A package to import: the sources of lossext/ (links), the sanitized binaries (copies).
rm -rf "$PKG"
mkdir -p "$PKG/lossext"
for entry in lossext/*; do
  name=$(basename "$entry")
  case "$name" in _C.abi3.so|lib|include|share|__pycache__) continue ;; esac
  ln -s "$PWD/$entry" "$PKG/lossext/$name"
done
cp "$built/_C.abi3.so" "$PKG/lossext/"
cp -r "$built/lib" "$built/include" "$built/share" "$PKG/lossext/"

libasan=$(gcc -print-file-name=libasan.so)
libstdcxx=$(gcc -print-file-name=libstdc++.so)
test -f "$libasan" -a -f "$libstdcxx" || { echo "sanitize: gcc has no libasan.so / libstdc++.so"; exit 1; }
export LD_PRELOAD="$libasan $libstdcxx"
# detect_leaks=0: CPython and torch keep allocations alive until exit by design (not ours to report).
# malloc_fill_byte=255 over every allocation: an output element a kernel never writes reads as NaN
# (0xff.. is NaN in every float dtype), which the reference comparisons catch.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:malloc_fill_byte=255:max_malloc_fill_size=2147483647:detect_stack_use_after_return=0:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export LOSSEXT_SANITIZED=1 LOSSEXT_CUDA=0 CUDA_VISIBLE_DEVICES=""
export LOSSEXT_FUZZ_PROFILE=${LOSSEXT_FUZZ_PROFILE:-long}
export PYTHONPATH="$PWD/$PKG${PYTHONPATH:+:$PYTHONPATH}"
# `python -m` / `-c` put the working directory (here the source tree, whose lossext/ holds the
# normal build) first on sys.path; PYTHONSAFEPATH (Python >= 3.11) leaves it out, in this process
# and in the children the tests start, so every `import lossext` is the sanitized package.
export PYTHONSAFEPATH=1

"$PY" - <<'PY'
import lossext, os
assert "/build/sanitize/pkg/" in lossext.__file__, lossext.__file__
with open("/proc/self/maps") as f:
    maps = f.read()
assert "libasan" in maps and "build/sanitize/pkg/lossext/lib/liblossext.so" in maps, "not the sanitized library"
print("sanitize: testing", os.path.dirname(lossext.__file__), lossext.build_info()["cpu_isa"])
PY

log=$SAN/pytest.log
set +e
timeout --kill-after=10 "${SANITIZE_TIMEOUT_S:-1500}" "$PY" -m pytest -q -p no:cacheprovider "${@:-tests}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
reports=$(grep -c -E "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$log" || true)
echo "sanitize: pytest exit $rc, $reports sanitizer report line(s), $(( $(date +%s) - start )) s"
if [ "$reports" -ne 0 ]; then
  grep -n -E -A20 "ERROR: AddressSanitizer|runtime error:" "$log" | head -80
  exit 1
fi
if { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && [ "${SANITIZE_TIMEBOX:-0}" = 1 ]; then
  if grep -q -E "^(FAILED|ERROR) " "$log" || grep -q -E "[0-9]+ failed" "$log"; then exit 1; fi
  echo "sanitize: stopped by its time box (${SANITIZE_TIMEOUT_S:-1500} s): no report and no failure in the tests that ran;" \
       "the rest did not run (make sanitize runs everything)"
  exit 0
fi
exit "$rc"
