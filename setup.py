"""Build of lossext: one shared library with every kernel and op registration, used by Python
and C++ alike, and a tiny cp310-abi3 Python module that links it.

  lossext/lib/liblossext.so     the kernels (LibTorch stable ABI) and the `lossext::*` op
                                registrations; no Python in it
  lossext/_C.abi3.so            the limited-API module: links liblossext.so (rpath $ORIGIN/lib),
                                so `import lossext` loads the same file a C++ program links
  lossext/include/lossext/      the public C++ headers (include/lossext/, copied into the wheel;
                                a symlink to ../include in an in-place build)
  lossext/share/cmake/lossext/  lossextConfig.cmake: find_package(lossext) with
                                CMAKE_PREFIX_PATH=lossext.cmake_prefix_path

CUDA kernels are compiled whenever nvcc and a CUDA build of torch are present (no GPU needed);
set LOSSEXT_CUDA=0 to build the CPU kernels only. TORCH_CUDA_ARCH_LIST picks the architectures
(default 9.0); TORCH_CUDA_ARCH_LIST=all means every architecture from sm_80 up to the newest
that this nvcc supports, plus PTX of the newest (what `make wheel` builds).
LOSSEXT_NO_EXT=1 builds nothing (the Makefile's editable install, which only records the
package's metadata; `setup.py build_ext --inplace` then builds in the source tree).
"""
import glob
import os
import re
import shutil
import subprocess

VERSION = "0.1.0"
TORCH_TARGET_VERSION = "0x020a000000000000"  # stable-ABI surface of torch 2.10
ROOT = os.path.dirname(os.path.abspath(__file__))
LIB_EXT = "lossext.lib.liblossext"  # built as lossext/lib/liblossext.so (see Build.get_ext_filename)
LIB_FILE = "liblossext.so"


def _find_cuda_home():
    # The nvcc first on PATH may be a wrapper script outside the toolkit; torch would then guess
    # CUDA_HOME as the wrapper's parent and fail to find libcudart (seen on the CI machines).
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    for root in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(root, "bin", "nvcc")):
            return root
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def all_cuda_archs(nvcc):
    """sm_80 .. the newest real architecture that both this nvcc and torch's build helpers know
    (no a/f variants), +PTX of the newest."""
    from torch.utils import cpp_extension

    out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    items = []
    for a in sorted({int(m) for m in re.findall(r"^compute_(\d+)$", out, re.M) if int(m) >= 80}):
        item = f"{a // 10}.{a % 10}"
        os.environ["TORCH_CUDA_ARCH_LIST"] = item
        try:
            cpp_extension._get_cuda_arch_flags()  # raises for an architecture torch does not know
        except ValueError:
            continue
        items.append(item)
    if not items:
        raise SystemExit(f"lossext: {nvcc} --list-gpu-arch lists no architecture >= 8.0 that torch knows")
    return ";".join(items[:-1] + [items[-1] + "+PTX"])


_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")

import torch  # noqa: E402
from setuptools import Extension, find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

if os.environ["TORCH_CUDA_ARCH_LIST"].strip().lower() == "all":
    if _cuda_home and torch.version.cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = all_cuda_archs(os.path.join(_cuda_home, "bin", "nvcc"))
        print(f"lossext: TORCH_CUDA_ARCH_LIST=all is {os.environ['TORCH_CUDA_ARCH_LIST']}")
    else:
        os.environ["TORCH_CUDA_ARCH_LIST"] = ""

# LOSSEXT_SANITIZE=1: the AddressSanitizer + UndefinedBehaviorSanitizer build of `make sanitize`
# (tools/sanitize.sh): CPU kernels only, in its own build folder (LOSSEXT_BUILD_BASE), never in
# place, so it is never mixed with the normal build. -O1 (as ASan's documentation advises): at -O3
# GCC took over 5 minutes on margin_cpu.cpp with both sanitizers; the accesses checked are the
# same (vectorized loops never read past what the scalar loop reads).
sanitize = os.environ.get("LOSSEXT_SANITIZE") == "1"
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
if sanitize and not os.environ.get("LOSSEXT_BUILD_BASE"):
    raise SystemExit("lossext: LOSSEXT_SANITIZE=1 needs a build folder of its own (LOSSEXT_BUILD_BASE); see `make sanitize`")
want_cuda = os.environ.get("LOSSEXT_CUDA", "1") != "0" and not sanitize
with_cuda = bool(want_cuda and _cuda_home and torch.version.cuda is not None)
if want_cuda and not with_cuda:
    print(f"lossext: building CPU kernels only (nvcc at {_cuda_home!r}, torch CUDA {torch.version.cuda!r})")

arch_list = os.environ["TORCH_CUDA_ARCH_LIST"] if with_cuda else ""
sources = sorted(s for s in glob.glob("csrc/**/*.cpp", recursive=True) if s != "csrc/python_module.cpp")
if with_cuda:
    sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))

macros = [
    ("TORCH_TARGET_VERSION", TORCH_TARGET_VERSION),
    ("LOSSEXT_VERSION", f'"{VERSION}"'),
    ("LOSSEXT_CUDA_ARCH_LIST", f'"{arch_list}"'),
]
if with_cuda:
    macros += [("LOSSEXT_WITH_CUDA", "1"), ("USE_CUDA", "1")]
defines = [f"-D{k}={v}" for k, v in macros]

Kernels = CUDAExtension if with_cuda else CppExtension
# py_limited_api: torch then links no libtorch_python, so the library has no Python in it.
lib = Kernels(
    name=LIB_EXT,
    sources=sources,
    include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "include")],
    extra_compile_args={
        "cxx": ["-O1" if sanitize else "-O3", "-g1" if sanitize else "-g0", "-fvisibility=hidden", "-fno-trapping-math", "-ffp-contract=off",
                "-fopenmp-simd", *(SANITIZE_FLAGS if sanitize else []), *defines],
        "nvcc": ["-O3", "--expt-relaxed-constexpr", *defines],
    },
    # libtorch beside us in site-packages (a wheel install); Build adds torch's own lib dir too
    extra_link_args=[f"-Wl,-soname,{LIB_FILE}", "-Wl,-rpath,$ORIGIN/../../torch/lib", *(SANITIZE_FLAGS if sanitize else [])],
    py_limited_api=True,
)
pymod = Extension(
    name="lossext._C",
    sources=["csrc/python_module.cpp"],
    include_dirs=[os.path.join(ROOT, "include")],
    define_macros=[("Py_LIMITED_API", "0x030A0000")],
    libraries=["lossext"],
    extra_link_args=["-Wl,-rpath,$ORIGIN/lib"],
    py_limited_api=True,
)

CONFIG_TEMPLATE = os.path.join(ROOT, "cmake", "lossextConfig.cmake.in")


class Build(BuildExtension):
    """torch's BuildExtension, plus: the library gets a plain name (liblossext.so), _C links it,
    and the headers and the CMake package are put beside them."""

    def get_ext_filename(self, fullname):
        # distutils asks with the last name component (and joins the package path itself),
        # setuptools' in-place copy with the full dotted name
        if fullname == LIB_EXT:
            return os.path.join(*LIB_EXT.split(".")[:-1], LIB_FILE)
        if fullname == LIB_EXT.split(".")[-1]:
            return LIB_FILE
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name == LIB_EXT:
            if self._in_place:
                # an in-place (dev) build finds torch where it is, wherever the venv is
                ext.extra_link_args = ext.extra_link_args + [
                    f"-Wl,-rpath,{os.path.join(os.path.dirname(torch.__file__), 'lib')}"]
            # In-place and wheel builds share build/lib (same architectures) but link the library
            # differently (that rpath): always link it again (ninja keeps the objects).
            out = self.get_ext_fullpath(ext.name)
            if os.path.exists(out):
                os.remove(out)
        if ext.name == "lossext._C":
            ext.library_dirs = [os.path.dirname(self.get_ext_fullpath(LIB_EXT))]
        super().build_extension(ext)

    _in_place = False

    def run(self):
        # setuptools clears self.inplace while it builds (then copies into the source tree)
        self._in_place = bool(self.inplace)
        if sanitize and self._in_place:
            raise SystemExit("lossext: the sanitizer build is never built in place (see `make sanitize`)")
        if self._in_place:
            os.makedirs(os.path.join(ROOT, "lossext", "lib"), exist_ok=True)
        super().run()
        self._stage_cpp_package(os.path.join(ROOT, "lossext") if self._in_place
                                else os.path.join(self.build_lib, "lossext"))

    def _stage_cpp_package(self, pkg):
        inc = os.path.join(pkg, "include")
        if self._in_place:
            if not os.path.islink(inc):
                if os.path.exists(inc):
                    shutil.rmtree(inc)
                os.symlink(os.path.join("..", "include"), inc)
        else:
            if os.path.exists(inc):
                shutil.rmtree(inc)
            shutil.copytree(os.path.join(ROOT, "include"), inc, ignore=shutil.ignore_patterns("*.in"))
        cmake_dir = os.path.join(pkg, "share", "cmake", "lossext")
        os.makedirs(cmake_dir, exist_ok=True)
        subst = {"VERSION": VERSION, "WITH_CUDA": "ON" if with_cuda else "OFF", "CUDA_ARCH_LIST": arch_list,
                 "TORCH_VERSION": torch.__version__.split("+")[0]}
        text = open(CONFIG_TEMPLATE).read()
        for k, v in subst.items():
            text = text.replace(f"@{k}@", v)
        _write_if_changed(os.path.join(cmake_dir, "lossextConfig.cmake"), text)
        _write_if_changed(os.path.join(cmake_dir, "lossextConfigVersion.cmake"), _version_file(VERSION))


def _write_if_changed(path, text):
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def _version_file(version):
    # CMake's SameMinorVersion rule on lossext's version (the torch version check is the warning in
    # lossextConfig.cmake)
    major, minor = version.split(".")[:2]
    return f'''set(PACKAGE_VERSION "{version}")
if(PACKAGE_FIND_VERSION_MAJOR STREQUAL "{major}" AND PACKAGE_FIND_VERSION_MINOR STREQUAL "{minor}"
   AND NOT PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
elseif(NOT PACKAGE_FIND_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
else()
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
endif()
'''


setup(
    name="lossext",
    version=VERSION,
    packages=find_packages(include=["lossext", "lossext.*"]),
    ext_modules=[] if os.environ.get("LOSSEXT_NO_EXT") == "1" else [lib, pymod],
    cmdclass={"build_ext": Build.with_options(use_ninja=True)},
    # LOSSEXT_BUILD_BASE: a build folder of its own (make wheel, for other architectures than the
    # dev build's); not `setup.py build --build-base X bdist_wheel`, which runs build_ext twice and
    # torch's BuildExtension then appends its flags twice (every object is compiled again)
    options={"bdist_wheel": {"py_limited_api": "cp310"},
             **({"build": {"build_base": os.environ["LOSSEXT_BUILD_BASE"]}} if os.environ.get("LOSSEXT_BUILD_BASE") else {})},
    zip_safe=False,
)
