"""The per-family layout and the packaging: one list of families drives the public namespaces,
the OpInfo table, the README's loss table and the C++ umbrella header; the shared files hold
no family's code; the package is a real install whose C++ library is the one Python loads."""
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys

import pytest
import torch

import lossext
import lossext.functional as LF
import lossext.nn as LN
import lossext.reference as R
from lossext._core import library
from lossext._core.families import FAMILIES, family_module
from lossext.testing import OP_DB

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_REPO = os.path.exists(os.path.join(REPO, "tools", "sync_families.py"))  # not in the wheel test's copy
needs_repo = pytest.mark.skipif(not IN_REPO, reason="runs from the source tree only")


def test_namespaces_collect_every_family():
    for sub, ns in (("functional", LF), ("modules", LN), ("reference", R)):
        expected = [n for fam in FAMILIES for n in getattr(family_module(fam, sub, optional=True), "__all__", [])]
        assert ns.__all__ == expected, sub
        for fam in FAMILIES:
            mod = family_module(fam, sub, optional=True)
            for n in getattr(mod, "__all__", []):
                assert getattr(ns, n) is getattr(mod, n), (sub, n)
    assert [o.name for o in OP_DB] == [o.name for fam in FAMILIES for o in family_module(fam, "opinfo").OP_ROWS]
    assert {o.family for o in OP_DB} == set(FAMILIES)


def _installed():
    try:
        importlib.metadata.distribution("lossext")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _installed(), reason="lossext is on PYTHONPATH, not installed (gpu_check.sh)")
def test_package_metadata_and_only_lossext_importable(tmp_path):
    """A real install: metadata works, and the source tree's other folders are not importable."""
    assert importlib.metadata.version("lossext") == lossext.__version__
    code = ("import importlib.util, lossext\n"
            "print([m for m in ('tests', 'benchmarks', 'setup', 'tools', 'examples', 'conftest') "
            "if importlib.util.find_spec(m) is not None])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_python_and_cpp_share_one_library():
    """lossext._C links lossext/lib/liblossext.so: the file a C++ program links. Loading it again
    (as a C++ program embedding Python, or torch.ops.load_library) registers nothing twice."""
    def mapped():
        with open("/proc/self/maps") as f:
            return {line.split()[-1] for line in f if line.rstrip().endswith("liblossext.so")}
    assert mapped() == {os.path.realpath(library.LIBRARY_PATH)}
    ops_before = lossext.registered_ops()
    torch.ops.load_library(library.LIBRARY_PATH)  # would raise on a second registration of the ops
    assert mapped() == {os.path.realpath(library.LIBRARY_PATH)}
    assert lossext.registered_ops() == ops_before


def test_cmake_package_is_in_the_package():
    cfg = os.path.join(lossext.cmake_prefix_path, "lossext", "lossextConfig.cmake")
    assert os.path.isfile(cfg), cfg
    text = open(cfg).read()
    assert f'lossext_CUDA_ARCH_LIST "{library._C.cuda_arch_list}"' in text
    pkg = os.path.dirname(lossext.__file__)
    for fam in FAMILIES:
        assert os.path.isfile(os.path.join(pkg, "include", "lossext", f"{fam}.h")), fam
    assert os.path.isfile(os.path.join(pkg, "include", "lossext", "lossext.h"))


def test_cuda_arch_support_rules(monkeypatch):
    monkeypatch.setattr(library._C, "cuda_arch_list", "8.0;9.0;12.0+PTX")
    assert library.arch_supported((8, 6))        # sm_80 SASS runs on 8.6
    assert library.arch_supported((9, 0))
    assert not library.arch_supported((7, 5))
    assert not library.arch_supported((10, 0))   # no sm_100 code, and the PTX is 12.0's
    assert library.arch_supported((12, 1))       # 12.0 SASS, and PTX JIT
    assert library.arch_supported((13, 0))       # PTX only
    monkeypatch.setattr(library._C, "cuda_arch_list", "")
    assert not library.arch_supported((9, 0))


@needs_repo
def test_readme_table_and_umbrella_header_in_sync():
    out = subprocess.run([sys.executable, os.path.join(REPO, "tools", "sync_families.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# Names that only a family may spell: its functions, Modules, raw ops.
def _family_names():
    names = set()
    for fam in FAMILIES:
        for sub in ("functional", "modules"):
            names |= set(getattr(family_module(fam, sub, optional=True), "__all__", []))
        for o in family_module(fam, "opinfo").OP_ROWS:
            names |= set(o.raw_ops)
    return names


SHARED_FILES = ["lossext/__init__.py", "lossext/functional.py", "lossext/nn.py", "lossext/reference.py",
                "lossext/__main__.py", "lossext/testing/__init__.py", "lossext/testing/opinfo.py",
                "lossext/testing/benchmark.py", "lossext/testing/pointwise.py", "lossext/testing/fuzz.py", "benchmarks/run.py",
                "benchmarks/gpu_check.sh", "Makefile", "setup.py", "tools/sync_families.py",
                "include/lossext/lossext.h", "include/lossext/detail/common.h", "include/lossext/detail/pointwise.h",
                "include/lossext/detail/rowwise.h", "examples/cpp/CMakeLists.txt", "examples/cpp/run_cpp_tests.sh"]


@needs_repo
def test_shared_files_hold_no_family_code():
    names = _family_names() | set(FAMILIES)
    pat = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")\b")
    core = [os.path.join("lossext/_core", f) for f in os.listdir(os.path.join(REPO, "lossext/_core")) if f.endswith(".py")]
    found = {}
    for rel in SHARED_FILES + core:
        path = os.path.join(REPO, rel)
        if not os.path.exists(path):
            continue
        text = open(path).read()
        if rel == "lossext/_core/families.py":  # the list itself
            text = re.sub(r"FAMILIES = \(.*?\n\)", "", text, flags=re.S)
        if rel == "include/lossext/lossext.h":  # its generated includes
            text = re.sub(r"// BEGIN FAMILY HEADERS.*?// END FAMILY HEADERS", "", text, flags=re.S)
        hits = sorted(set(pat.findall(text)))
        if hits:
            found[rel] = hits
    assert not found, f"family-specific names in shared files: {found}"


@needs_repo
def test_cpp_one_pass_choices_match_python():
    """An element-wise loss's C++ descriptor (include/lossext/<family>.h) repeats the one-pass
    choice that its family's ops.py registers (lossext/_core/pointwise.ONE_PASS)."""
    from lossext._core import pointwise

    pat = re.compile(r"static constexpr bool one_pass = (true|false);.*?PointwiseOps<\d+> \w+\(\"lossext::(\w+)\"", re.S)
    cpp = {}
    for fam in FAMILIES:
        text = open(os.path.join(REPO, "include", "lossext", f"{fam}.h")).read()
        cpp.update({name: flag == "true" for flag, name in pat.findall(text)})
    assert cpp == pointwise.ONE_PASS
