# lossext: every target sets itself up (venv, build) and is fast when nothing changed.
#   make demo   - set up, build, run the main job (python -m lossext demo: training on digits)
#   make test   - set up, build, Python tests + C++ consumer tests (ctest)
#   make wheel / make wheel-test / make bench / make plots / make gpu-check / make sync / make clean
#   make compat-test TORCH_COMPAT=2.11.0 - the CPU tests of this build under another torch
#   make sanitize - the CPU kernels under ASan + UBSan (build/sanitize/): the whole test suite and
#                   the long fuzzing profile; fails on any report (tools/sanitize.sh)
#   make fuzz     - the property-based fuzzer alone, long profile (normal build)
#   make docs     - the docs site (mkdocs.yml, docs/) built strict into site/ (tests/test_docs.py runs the same build)
SHELL := /bin/bash
# a failing build in `setup.py ... | filter` fails the recipe (the filter alone may match nothing)
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2
# The dev build's CUDA architectures (short, for CI time); `make wheel` builds WHEEL_CUDA_ARCH_LIST:
# `all` = sm_80 up to the newest this nvcc supports, plus PTX of the newest (see setup.py).
export TORCH_CUDA_ARCH_LIST ?= 9.0
WHEEL_CUDA_ARCH_LIST ?= all
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif

SOURCES := $(shell find csrc include -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh') setup.py cmake/lossextConfig.cmake.in
SO := lossext/_C.abi3.so
# the wheel reuses the dev build's objects when it builds the same architectures
ifeq ($(WHEEL_CUDA_ARCH_LIST),$(TORCH_CUDA_ARCH_LIST))
WHEEL_BUILD_BASE := build
else
WHEEL_BUILD_BASE := build/wheel
endif
SETUP_FILTER := { grep -v -E 'Deprecat|^\s*!!|^\s*\*+$$|setup.py install|pypa|^$$|No CUDA runtime is found' || true; }

.PHONY: all setup build sync demo test pytest compat-test cpp-test wheel wheel-test bench plots gpu-check compute-sanitizer sanitize fuzz docs clean
all: build

$(VENV)/.stamp: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip > $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	$(PY) -m pip install -q -r requirements-dev.txt >> $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	touch $@

# A real editable install: package metadata (importlib.metadata, pip show) and an import hook
# for `lossext` only. It builds nothing (LOSSEXT_NO_EXT=1); `build` compiles in place below.
$(VENV)/.editable: $(VENV)/.stamp setup.py pyproject.toml
	rm -f $$($(PY) -c 'import site; print(site.getsitepackages()[0])')/lossext-dev.pth
	LOSSEXT_NO_EXT=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e . > $(VENV)/pip-editable.log 2>&1 \
	  || (cat $(VENV)/pip-editable.log; exit 1)
	touch $@

setup: $(VENV)/.editable

$(SO): $(VENV)/.editable $(SOURCES)
	$(PY) setup.py -q build_ext --inplace 2>&1 | $(SETUP_FILTER)
	@test -f $(SO) -a -f lossext/lib/liblossext.so || (echo "build failed: $(SO) or lossext/lib/liblossext.so missing" && exit 1)
	@touch $(SO)

# Rewrites the README's loss table and include/lossext/lossext.h's family includes from
# lossext.FAMILIES (tests/test_layout.py fails, naming this target, while they are out of date).
sync: $(SO)
	$(PY) tools/sync_families.py

build: $(SO)

demo: build
	$(PY) -m lossext demo

pytest: build
	$(PY) -m pytest -q -p no:cacheprovider tests

# The package as built here under another torch (default the GPU machine's 2.11.0; the
# stable ABI promises torch >= 2.10): that torch and the test tools in .venv-compat-<version>,
# then the CPU tests through PYTHONPATH (COMPAT_ARGS: pytest arguments). Not in CI (a second
# torch download); run it before a GPU session: it found two torch 2.11 breaks on 2026-12-04.
TORCH_COMPAT ?= 2.11.0
COMPAT_ARGS ?= -k "not cuda" tests
compat-test: build
	test -x .venv-compat-$(TORCH_COMPAT)/bin/python || $(PYTHON) -m venv .venv-compat-$(TORCH_COMPAT)
	.venv-compat-$(TORCH_COMPAT)/bin/python -m pip install -q torch==$(TORCH_COMPAT) numpy pytest hypothesis expecttest
	PYTHONPATH=$(CURDIR) .venv-compat-$(TORCH_COMPAT)/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_ARGS)

cpp-test: build
	PYTHON=$(abspath $(PY)) bash examples/cpp/run_cpp_tests.sh

# The C++ consumer tests (CMake, six example programs to compile, then ctest) run beside the
# Python tests, their output kept in build/cpp-test.log and shown after them: on 2 cores the
# compiles fill the time pytest leaves a core idle (CI measured 1846 s with the two in a row).
test: build
	@mkdir -p build
	@PYTHON=$(abspath $(PY)) bash examples/cpp/run_cpp_tests.sh > build/cpp-test.log 2>&1 & cpp=$$!; \
	$(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	wait $$cpp; crc=$$?; cat build/cpp-test.log; \
	if [ $$crc -ne 0 ]; then echo "make test: the C++ consumer tests failed (build/cpp-test.log)"; fi; \
	exit $$(( rc != 0 || crc != 0 ))

wheel: build
	rm -rf dist
	TORCH_CUDA_ARCH_LIST="$(WHEEL_CUDA_ARCH_LIST)" LOSSEXT_BUILD_BASE=$(WHEEL_BUILD_BASE) \
	  $(PY) setup.py -q bdist_wheel -d dist 2>&1 | $(SETUP_FILTER)
	@ls dist/lossext-*-cp310-abi3-*.whl

# Installs the wheel into a fresh venv, runs the test suite against the installed package and
# builds and runs the C++ examples against the installed wheel's CMake package.
wheel-test: wheel
	bash tests/wheel_test.sh dist/lossext-*-cp310-abi3-*.whl

bench: build
	$(PY) benchmarks/run.py

# The docs' figures: docs/img/*.png (each family's lossext/<family>/plots.py and one benchmark
# chart per benchmarks/results_*.csv; tools/plots.py). Needs matplotlib (requirements-dev.txt).
plots: build
	$(PY) tools/plots.py

gpu-check: build
	bash benchmarks/gpu_check.sh

# NVIDIA's compute-sanitizer from its pip wheel (nvidia-cuda-sanitizer-api), unpacked into
# build/compute-sanitizer/ so that it can be carried to a GPU machine that lacks it (gpu_check.sh)
compute-sanitizer: $(VENV)/.stamp
	rm -rf build/compute-sanitizer build/cs-wheel
	$(PY) -m pip download -q --no-deps -d build/cs-wheel nvidia-cuda-sanitizer-api
	$(PY) -c "import zipfile, glob, os; z = zipfile.ZipFile(glob.glob('build/cs-wheel/*.whl')[0]); \
	  [z.extract(n, 'build/cs-wheel/x') for n in z.namelist() if '/compute-sanitizer/' in n and not any(d in n for d in ('/docs/', '/include/', '/x86/'))]"
	mv build/cs-wheel/x/nvidia/cu*/compute-sanitizer build/compute-sanitizer && rm -rf build/cs-wheel
	chmod +x build/compute-sanitizer/compute-sanitizer build/compute-sanitizer/TreeLauncher*
	@du -sh build/compute-sanitizer

# The sanitizer build lives in build/sanitize/ and is imported from build/sanitize/pkg only
# (tools/sanitize.sh); the in-place build is neither used nor touched.
# SANITIZE_ARGS: pytest arguments (default: the whole of tests/)
sanitize: $(VENV)/.editable
	PYTHON=$(abspath $(PY)) bash tools/sanitize.sh $(SANITIZE_ARGS)

fuzz: build
	LOSSEXT_FUZZ_PROFILE=long $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py

# The API reference imports lossext (mkdocstrings), hence the build; strict: any warning fails.
docs: build
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf site build dist *.egg-info $(SO) lossext/lib lossext/include lossext/share .venv-wheel
