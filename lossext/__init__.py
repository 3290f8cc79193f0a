"""lossext: fused CPU and CUDA kernels for the losses of computer-vision training.

    import lossext.functional as LF
    loss = LF.wing_loss(pred, target)

Raw ops live under torch.ops.lossext.*; Modules under lossext.nn.
"""
from . import _ops
from ._ops import build_info, registered_ops
from . import functional, nn, reference

__version__ = _ops._C.version
__all__ = ["functional", "nn", "reference", "build_info", "registered_ops", "__version__"]
