#!/usr/bin/env bash
# GPU check for a lent H200 (torch 2.11 + CUDA 13, Python 3.12 there): the CUDA tests, then the CUDA kernels under compute-sanitizer (memcheck, initcheck, and racecheck for
# the block reductions; benchmarks/cuda_sanitize.py writes the "CUDA SANITIZER" section of
# benchmarks/RESULTS.md), then the generic CUDA benchmarks, which rewrite the CUDA section of
# benchmarks/RESULTS.md and benchmarks/results_cuda.csv, then every family's own suite
# (`benchmarks/run.py --device cuda --suites families`: the "<FAMILY> CUDA" sections and
# results_<family>_cuda.csv). Finishes in under 9 minutes (hard timeouts below).
#
# compute-sanitizer: $COMPUTE_SANITIZER, else the first found on PATH, in $CUDA_HOME/bin,
# /usr/local/cuda/bin, build/compute-sanitizer/ (`make compute-sanitizer` unpacks it there from
# NVIDIA's pip wheel, to be carried to a machine that has none), or an installed
# nvidia-cuda-sanitizer-api wheel. Without one, the section says "not run".
#
# Through the device tool, from the repo root (the build outputs are git-ignored, so carry them;
# they must have been built with CUDA, see `python -m lossext`):
#     run(command="bash benchmarks/gpu_check.sh", carry=["lossext/_C.abi3.so", "lossext/lib", "lossext/share", "lossext/include", "build/compute-sanitizer"], timeout_s=590)
# Everything it writes is also copied to $OUT (env.txt, pytest.log, bench*.log, RESULTS.md,
# results_*cuda.csv). Back here, put the CSVs into benchmarks/ and run (it renders every section
# from its CSV)
#     python benchmarks/run.py --render-only
# to rebuild RESULTS.md with this machine's CPU section and the new CUDA section (or copy the
# returned RESULTS.md over, if the CPU section has not changed since).
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (default 540: total seconds),
# GPU_CHECK_TEST_S (default 260: at most this long for the tests), GPU_CHECK_SANITIZE_S (default
# 150: the three compute-sanitizer tools together), GPU_CHECK_PHASES (default
# tests,sanitize,bench: which parts run; the environment check always does).
#
# Measured on the first GPU run (2026-12-04, H200, 16 cores): the machine started in about 35 s;
# the CUDA tests (-k cuda, 12 workers wanted) need more than 170 s (8 workers reached 80 %);
# memcheck needs more than 70 s for the sanitizer workload (it reached 16 of 21 ops), initcheck 28 s,
# racecheck more than 40 s; the generic --quick benchmarks 22 s; the families' suites about 300 s
# together (the longest about 100 s). A 15-minute lease therefore takes two calls, the
# second at once while the machine is warm:
#     GPU_CHECK_PHASES=tests,sanitize GPU_CHECK_BUDGET_S=450 bash benchmarks/gpu_check.sh
#     GPU_CHECK_PHASES=bench GPU_CHECK_BUDGET_S=400 bash benchmarks/gpu_check.sh
# failures.txt (tests/conftest.py, LOSSEXT_FAILURE_LOG) lists each failing test as it fails, so a
# run cut at its limit still says what failed.
set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
TEST_S=${GPU_CHECK_TEST_S:-260}
SANITIZE_S=${GPU_CHECK_SANITIZE_S:-150}
LOG_DIR=${OUT:-/tmp/lossext_gpu_check}
mkdir -p "$LOG_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# a private inductor/triton cache: the machine starts bare anyway, and this keeps it out of $HOME
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/lossext_inductor_cache}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
PHASES=${GPU_CHECK_PHASES:-tests,sanitize,bench}
phase() { [[ ",$PHASES," == *",$1,"* ]]; }

echo "== environment" | tee "$LOG_DIR/env.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  "$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuda available:", torch.cuda.is_available())
if not torch.cuda.is_available():
    sys.exit("FAIL: torch sees no GPU")
print("GPU:", torch.cuda.get_device_name(), "| capability", torch.cuda.get_device_capability())
try:
    import lossext
except Exception as e:  # noqa: BLE001
    sys.exit(f"FAIL: import lossext: {type(e).__name__}: {e}\n(was lossext/_C.abi3.so carried, and "
             "built for this torch / CUDA major version?)")
info = lossext.build_info()
print("lossext build:", info)
print("kernels:", lossext.registered_ops())
if not info["cuda_compiled"]:
    sys.exit("FAIL: this lossext build has no CUDA kernels")
from lossext.testing import OP_DB
for op in OP_DB:
    s = op.bench_input(4096, "cuda", torch.float32)
    out = op.op(*s.args, **s.kwargs)
    out = out[0] if isinstance(out, (tuple, list)) else out  # a loss with parts returns them too
    print(f"smoke: {op.name} on cuda =", out.float().sum().item())
EOF
} 2>&1 | tee -a "$LOG_DIR/env.txt"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
  echo "gpu_check: environment check failed after $(elapsed) s; nothing else run"
  exit 2
fi

test_rc=0; sanitize_rc=0; bench_rc=0
if phase tests; then
  # The tests whose id names CUDA (`-k cuda`: every OP_DB case on the cuda device and each family's
  # CUDA-vs-CPU tests); the CPU tests run in CI. In parallel (pytest-xdist) where it is installed,
  # each test at most 120 s where pytest-timeout is. GPU_CHECK_PYTEST_ARGS replaces the selection.
  PYTEST_SEL=${GPU_CHECK_PYTEST_ARGS:--k cuda}
  PYTEST_PAR=""
  "$PY" -c "import xdist" 2>/dev/null && PYTEST_PAR="-n ${GPU_CHECK_WORKERS:-12}"
  "$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_PAR="$PYTEST_PAR --timeout 120"
  echo "== tests: pytest $PYTEST_SEL $PYTEST_PAR (at most ${TEST_S} s)"
  rm -f "$LOG_DIR/failures.txt"
  LOSSEXT_FAILURE_LOG="$LOG_DIR/failures.txt" timeout --kill-after=10 "$TEST_S" "$PY" -m pytest -q -rfE -p no:cacheprovider $PYTEST_SEL $PYTEST_PAR tests 2>&1 | tee "$LOG_DIR/pytest.log"
  test_rc=${PIPESTATUS[0]}
  echo "tests: exit $test_rc after $(elapsed) s; $(grep -c '^=== ' "$LOG_DIR/failures.txt" 2>/dev/null || echo 0) failures in failures.txt"

fi

if phase sanitize; then
  echo "== compute-sanitizer (at most ${SANITIZE_S} s)"
  CS=${COMPUTE_SANITIZER:-}
  if [ -z "$CS" ]; then
    for c in "$(command -v compute-sanitizer || true)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
             /usr/local/cuda/bin/compute-sanitizer build/compute-sanitizer/compute-sanitizer \
             "$("$PY" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "compute-sanitizer", "compute-sanitizer"))' 2>/dev/null)"; do
      if [ -n "$c" ] && [ -x "$c" ]; then CS=$c; break; fi
    done
  fi
  if [ -n "$CS" ]; then
    echo "compute-sanitizer: $CS ($("$CS" --version 2>&1 | tail -1))"
    for spec in "memcheck 80 " "initcheck 30 " "racecheck 40 --small"; do
      set -- $spec
      tool=$1; share=$2; extra=${3:-}
      limit=$(( SANITIZE_S * share / 150 ))
      t0=$(date +%s)
      timeout --kill-after=10 "$limit" "$CS" --tool "$tool" --print-limit 20 --error-exitcode 3 \
        $( [ "$tool" = racecheck ] && echo "--racecheck-report all" ) \
        "$PY" benchmarks/cuda_sanitize.py workload $extra > "$LOG_DIR/cs_$tool.log" 2>&1
      rc=$?
      echo "tool time: $(( $(date +%s) - t0 )) s, exit $rc" >> "$LOG_DIR/cs_$tool.log"
      echo "compute-sanitizer $tool: exit $rc after $(( $(date +%s) - t0 )) s; $(grep -E 'ERROR SUMMARY' "$LOG_DIR/cs_$tool.log" | tail -1)"
    done
  else
    echo "compute-sanitizer: not found (see the header of this script); not run"
  fi
  "$PY" benchmarks/cuda_sanitize.py report "$LOG_DIR" > "$LOG_DIR/sanitizer_section.md" 2>&1 || echo "sanitizer report failed: $(tail -3 "$LOG_DIR/sanitizer_section.md")"
  sanitize_rc=0
  grep -q -E '\*\*errors\*\*' "$LOG_DIR/sanitizer_section.md" && sanitize_rc=1
  echo "compute-sanitizer: done after $(elapsed) s"

fi

if phase bench; then
  FAMILIES_S=${GPU_CHECK_FAMILIES_S:-300}  # kept for the families' own suites at the end (about 300 s on an H200)
  left=$(( BUDGET - FAMILIES_S - $(elapsed) ))
  quick=""
  if [ "$left" -lt 180 ]; then quick="--quick"; fi
  if [ "$left" -lt 60 ]; then left=60; fi
  echo "== benchmarks (at most ${left} s) ${quick}"
  timeout --kill-after=10 "$left" "$PY" benchmarks/run.py --device cuda --suites generic $quick 2>&1 | tee "$LOG_DIR/bench.log"
  bench_rc=${PIPESTATUS[0]}
  echo "benchmarks: exit $bench_rc after $(elapsed) s"

  left=$(( BUDGET - $(elapsed) ))
  if [ "$left" -ge 60 ]; then
    echo "== the families' benchmark suites (at most ${left} s)"
    timeout --kill-after=10 "$left" "$PY" benchmarks/run.py --device cuda --suites families 2>&1 | tee "$LOG_DIR/bench_families.log"
    echo "family benchmarks: exit ${PIPESTATUS[0]} after $(elapsed) s"
    cp benchmarks/results_*_cuda.csv "$LOG_DIR/" 2>/dev/null || true
  fi

fi

for f in benchmarks/RESULTS.md benchmarks/results_cuda.csv; do
  [ -f "$f" ] && cp "$f" "$LOG_DIR/"
done
echo "gpu_check: tests exit $test_rc, sanitizer findings $sanitize_rc, benchmarks exit $bench_rc, $(elapsed) s in all; logs in $LOG_DIR"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$sanitize_rc" -eq 0 ]
