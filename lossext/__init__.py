"""lossext: fused CPU and CUDA kernels for the losses of computer-vision training.

    import lossext.functional as LF     # every loss as a function, in the torch.nn.functional style
    import lossext.nn as LN             # the Modules, in the torch.nn style

Raw ops live under torch.ops.lossext.*; Modules under lossext.nn; the pure-PyTorch references
under lossext.reference. Each loss family is a subpackage lossext.<family> (the list:
lossext.FAMILIES); the flat namespaces above collect their names.
C++: find_package(lossext) with CMAKE_PREFIX_PATH=lossext.cmake_prefix_path.
CPU loops run the best instruction set of the CPU (lossext.cpu_isa()); LOSSEXT_CPU_ISA=baseline|
avx2|avx512 or lossext.set_cpu_isa() forces one (the results are bitwise the same).
"""
from ._core.library import build_info, registered_ops, CMAKE_PREFIX_PATH as cmake_prefix_path
from ._core.library import cpu_isa, set_cpu_isa, supported_cpu_isas
from ._core.families import FAMILIES
from . import functional, nn, reference
from ._core import library as _library

__version__ = _library._C.version
__all__ = ["functional", "nn", "reference", "build_info", "registered_ops", "cmake_prefix_path", "FAMILIES",
           "cpu_isa", "set_cpu_isa", "supported_cpu_isas", "__version__"]
