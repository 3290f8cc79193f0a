"""The compiled library and what it holds.

All kernels and op registrations live once, in lossext/lib/liblossext.so: C++ programs link it
(find_package(lossext) with CMAKE_PREFIX_PATH=lossext.cmake_prefix_path), and the limited-API
module lossext._C links it too, so importing lossext loads that same file and a process that
uses lossext from Python and C++ registers each op once.
"""
import os

import torch

from .. import _C  # noqa: F401  (loads liblossext.so: the op registrations run)

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_PATH = os.path.join(PACKAGE_DIR, "lib", "liblossext.so")
# find_package(lossext) looks in <prefix>/lossext/lossextConfig.cmake, as torch's own
# torch.utils.cmake_prefix_path is <torch>/share/cmake (holding Torch/TorchConfig.cmake).
CMAKE_PREFIX_PATH = os.path.join(PACKAGE_DIR, "share", "cmake")

# The CPU loops' instruction sets, lowest first (csrc/common/cpu_isa.h): every x86-64 CPU runs
# "baseline"; the best one the CPU supports runs unless LOSSEXT_CPU_ISA or set_cpu_isa() says
# otherwise. The variants give bitwise-equal results (tests/test_cpu_isa.py).
CPU_ISAS = ("baseline", "avx2", "avx512")

_env_error = _C.cpu_isa_env_error()
if _env_error:  # a forced variant that cannot run is an error, not a silent fallback
    raise RuntimeError(f"lossext: {_env_error} (supported here: {', '.join(_C.cpu_isas())})")


def cpu_isa():
    """The instruction set lossext's CPU loops run now: "baseline", "avx2" or "avx512"."""
    return _C.cpu_isa()


def supported_cpu_isas():
    """The instruction sets this CPU can run, lowest first, e.g. ("baseline", "avx2")."""
    return tuple(_C.cpu_isas())


def set_cpu_isa(isa):
    """Run lossext's CPU loops with instruction set `isa` ("baseline", "avx2", "avx512", or
    "auto" for the best this CPU supports) from now on, in every thread; returns the previous
    one. The environment variable LOSSEXT_CPU_ISA sets it at start-up. Results do not change
    (the variants agree bitwise); speed does."""
    if not isinstance(isa, str):
        raise TypeError(f"set_cpu_isa(): isa must be a str, got {type(isa).__name__}")
    supported = supported_cpu_isas()
    name = supported[-1] if isa == "auto" else isa
    if name not in CPU_ISAS:
        raise ValueError(f"set_cpu_isa(): isa must be one of auto, {', '.join(CPU_ISAS)}; got {isa!r}")
    if name not in supported:
        raise ValueError(f"set_cpu_isa(): isa={isa!r} cannot run on this CPU (supported: {', '.join(supported)})")
    previous = cpu_isa()
    if not _C.set_cpu_isa(CPU_ISAS.index(name)):
        raise RuntimeError(f"set_cpu_isa(): the library refused isa={isa!r}")
    return previous


def cuda_archs():
    """The CUDA architectures compiled into the binary: [(major, minor, is_ptx)], e.g.
    '8.0;9.0+PTX' -> [(8, 0, False), (9, 0, False), (9, 0, True)]. Empty without CUDA."""
    out = []
    for item in _C.cuda_arch_list.replace(" ", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        ptx = item.endswith("+PTX")
        major, minor = item.removesuffix("+PTX").split(".")
        minor = "".join(ch for ch in minor if ch.isdigit())  # 9.0a -> 9.0
        out.append((int(major), int(minor), False))
        if ptx:
            out.append((int(major), int(minor), True))
    return out


def arch_supported(capability):
    """Whether the binary runs on a GPU of this compute capability (major, minor): SASS for the
    same major at a minor <= the GPU's, or PTX for an architecture <= the GPU's (JIT-compiled)."""
    major, minor = capability
    for a_major, a_minor, ptx in cuda_archs():
        if ptx and (a_major, a_minor) <= (major, minor):
            return True
        if not ptx and a_major == major and a_minor <= minor:
            return True
    return False


def build_info():
    """What the loaded binary was compiled with, and the GPU it sees (if any)."""
    info = {
        "version": _C.version,
        "torch": torch.__version__,
        "cuda_compiled": bool(_C.with_cuda),
        "cuda_arch_list": _C.cuda_arch_list,
        "cuda_available": torch.cuda.is_available(),
        "library": LIBRARY_PATH,
        "cpu_isa": cpu_isa(),
        "cpu_isas": supported_cpu_isas(),
    }
    if info["cuda_compiled"] and info["cuda_available"]:
        cap = torch.cuda.get_device_capability()
        info["gpu_capability"] = f"{cap[0]}.{cap[1]}"
        info["gpu_supported"] = arch_supported(cap)
    return info


def registered_ops():
    """{op name: [dispatch keys with a lossext kernel]} for every lossext op."""
    names = sorted({n.split("::", 1)[1].split(".", 1)[0]
                    for n in torch._C._dispatch_get_all_op_names() if n.startswith("lossext::")})
    return {n: [k for k in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key(f"lossext::{n}", k)]
            for n in names}
