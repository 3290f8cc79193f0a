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
