"""Dense-prediction Modules: JointsMSELoss, MaskRCNNLoss.

Every Module checks all its arguments at construction, shows them all in its repr and is
scriptable (torch.jit.script)."""
from typing import Optional

from torch import Tensor, nn

from .._core import validation as V
from . import functional as F

__all__ = ["JointsMSELoss", "MaskRCNNLoss"]


class JointsMSELoss(nn.Module):
    """HRNet's ``JointsMSELoss(use_target_weight)`` and, with ``ohkm_topk`` (HRNet's default
    is 8), ``JointsOHKMMSELoss(use_target_weight, topk)``, as
    :func:`lossext.functional.joints_mse_loss`: ``forward(output, target, target_weight)``
    with heatmaps [B, K, H, W] and visibility [B, K] or [B, K, 1]. With
    ``use_target_weight=False`` the weight is not used (it may be omitted)."""

    def __init__(self, use_target_weight=True, ohkm_topk=None, reduction="mean"):
        super().__init__()
        n = type(self).__name__
        self.use_target_weight = V.flag(n, "use_target_weight", use_target_weight)
        if ohkm_topk is not None:
            ohkm_topk = V.integer(n, "ohkm_topk", ohkm_topk)
            if ohkm_topk < 1:
                raise ValueError(f"{n}: ohkm_topk must be None or >= 1, got {ohkm_topk}")
        self.ohkm_topk: Optional[int] = ohkm_topk
        self.reduction = V.reduction(n, reduction)

    def forward(self, output: Tensor, target: Tensor, target_weight: Optional[Tensor] = None) -> Tensor:
        if self.use_target_weight:
            if target_weight is None:
                raise ValueError("JointsMSELoss: use_target_weight=True needs target_weight [B, K] or [B, K, 1]")
            return F.joints_mse_loss(output, target, target_weight, self.ohkm_topk, self.reduction)
        return F.joints_mse_loss(output, target, None, self.ohkm_topk, self.reduction)

    def extra_repr(self):
        return f"use_target_weight={self.use_target_weight!r}, ohkm_topk={self.ohkm_topk!r}, reduction={self.reduction!r}"


class MaskRCNNLoss(nn.Module):
    """The Mask R-CNN mask loss, as :func:`lossext.functional.mask_rcnn_loss`:
    ``forward(mask_logits [R, C, M, M], labels [R], mask_targets [R, M, M])``."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = V.reduction(type(self).__name__, reduction)

    def forward(self, mask_logits: Tensor, labels: Tensor, mask_targets: Tensor) -> Tensor:
        return F.mask_rcnn_loss(mask_logits, labels, mask_targets, self.reduction)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"
