# lossext: every target sets itself up (venv, build) and is fast when nothing changed.
#   make demo   - set up, build, run the main job (python -m lossext)
#   make test   - set up, build, Python tests + C++ consumer tests (ctest)
#   make wheel / make wheel-test / make bench / make gpu-check / make clean
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2
export TORCH_CUDA_ARCH_LIST ?= 9.0
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif

SOURCES := $(shell find csrc include -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh') setup.py
SO := lossext/_C.abi3.so

.PHONY: all setup build demo test pytest cpp-test wheel wheel-test bench gpu-check clean
all: build

$(VENV)/.stamp: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip > $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	$(PY) -m pip install -q -r requirements-dev.txt >> $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	@# the source tree is the package in this venv (the wheel test installs the real wheel elsewhere)
	$(PY) -c 'import site, os; open(os.path.join(site.getsitepackages()[0], "lossext-dev.pth"), "w").write(os.getcwd() + "\n")'
	touch $@

setup: $(VENV)/.stamp

$(SO): $(VENV)/.stamp $(SOURCES)
	$(PY) setup.py -q build_ext --inplace 2>&1 | grep -v -E 'SetuptoolsDeprecationWarning|^\s*!!|^\s*\*+$$|setup.py install|pypa|^$$' || true
	@test -f $(SO) || (echo "build failed: $(SO) missing" && exit 1)
	@touch $(SO)

build: $(SO)

demo: build
	$(PY) -m lossext

pytest: build
	$(PY) -m pytest -q -p no:cacheprovider tests

cpp-test: build
	PYTHON=$(abspath $(PY)) bash examples/cpp/run_cpp_tests.sh

test: pytest cpp-test

wheel: build
	rm -rf dist
	$(PY) setup.py -q bdist_wheel -d dist 2>&1 | grep -v -E 'Deprecat|^\s*!!|^\s*\*+$$|pypa|^$$' || true
	@ls dist/lossext-*-cp310-abi3-*.whl

# Installs the wheel into a fresh venv and runs the test suite against the installed package.
wheel-test: wheel
	bash tests/wheel_test.sh dist/lossext-*-cp310-abi3-*.whl

bench: build
	$(PY) benchmarks/run.py
	$(PY) benchmarks/margin_softmax.py

gpu-check: build
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build dist *.egg-info $(SO) .venv-wheel
