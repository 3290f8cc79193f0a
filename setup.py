"""Build of lossext's `_C` extension: one cp310-abi3 module on the LibTorch stable ABI.

CUDA kernels are compiled whenever nvcc and a CUDA build of torch are present (no GPU needed);
set LOSSEXT_CUDA=0 to build the CPU kernels only. TORCH_CUDA_ARCH_LIST defaults to 9.0.
"""
import glob
import os
import shutil

VERSION = "0.1.0"
TORCH_TARGET_VERSION = "0x020a000000000000"  # stable-ABI surface of torch 2.10
ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    # The nvcc first on PATH may be a wrapper script outside the toolkit; torch would then guess
    # CUDA_HOME as the wrapper's parent and fail to find libcudart (see BUILD_NOTES).
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    for root in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(root, "bin", "nvcc")):
            return root
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

want_cuda = os.environ.get("LOSSEXT_CUDA", "1") != "0"
with_cuda = bool(want_cuda and _cuda_home and torch.version.cuda is not None)
if want_cuda and not with_cuda:
    print(f"lossext: building CPU kernels only (nvcc at {_cuda_home!r}, torch CUDA {torch.version.cuda!r})")

arch_list = os.environ["TORCH_CUDA_ARCH_LIST"] if with_cuda else ""
sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
if with_cuda:
    sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))

macros = [
    ("TORCH_TARGET_VERSION", TORCH_TARGET_VERSION),  # (Py_LIMITED_API: added by py_limited_api)
    ("LOSSEXT_VERSION", f'"{VERSION}"'),
    ("LOSSEXT_CUDA_ARCH_LIST", f'"{arch_list}"'),
]
if with_cuda:
    macros += [("LOSSEXT_WITH_CUDA", "1"), ("USE_CUDA", "1")]
defines = [f"-D{k}={v}" for k, v in macros]

Extension = CUDAExtension if with_cuda else CppExtension
ext = Extension(
    name="lossext._C",
    sources=sources,
    include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "include")],
    extra_compile_args={
        "cxx": ["-O3", "-g0", "-fvisibility=hidden", "-fno-trapping-math", "-fopenmp-simd", *defines],
        "nvcc": ["-O3", "--expt-relaxed-constexpr", *defines],
    },
    py_limited_api=True,
)

setup(
    name="lossext",
    version=VERSION,
    packages=find_packages(include=["lossext", "lossext.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
