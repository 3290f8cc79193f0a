"""Detection loss Modules. Their reduction defaults to 'mean', as torch.nn's losses (and mmdet's
FocalLoss); the functions keep torchvision's 'none' where they follow torchvision."""
from typing import Optional

import torch
from torch import Tensor, nn

from .._core import validation as V
from . import functional as F

__all__ = ["SigmoidFocalLoss", "SoftmaxFocalLoss", "BoxIoULoss"]


class SigmoidFocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., ICCV 2017). See :func:`lossext.functional.sigmoid_focal_loss`."""

    def __init__(self, alpha=0.25, gamma=2.0, reduction="mean"):
        super().__init__()
        n = "SigmoidFocalLoss"
        self.alpha = F._check_alpha(n, V.number(n, "alpha", alpha))
        self.gamma = F._check_gamma(n, V.number(n, "gamma", gamma))
        self.reduction = V.reduction(n, reduction)

    def forward(self, inputs: Tensor, targets: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.sigmoid_focal_loss(inputs, targets, self.alpha, self.gamma, self.reduction, weight)

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


class SoftmaxFocalLoss(nn.Module):
    """Softmax focal loss. See :func:`lossext.functional.softmax_focal_loss`. A tensor ``alpha``
    and ``weight`` are buffers (they follow ``.to()`` and the state dict, as
    nn.CrossEntropyLoss's weight)."""

    alpha_value: Optional[float]

    def __init__(self, gamma=2.0, alpha=None, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__()
        n = "SoftmaxFocalLoss"
        self.gamma = F._check_gamma(n, V.number(n, "gamma", gamma))
        self.alpha_value = None
        if isinstance(alpha, torch.Tensor):
            if not alpha.is_floating_point() or alpha.dim() != 1:
                raise ValueError(f"{n}: alpha must be a float, None or a floating [C] tensor, got {alpha.dtype} "
                                 f"of shape {list(alpha.shape)}")
            self.register_buffer("alpha", alpha.detach().clone())
        else:
            self.register_buffer("alpha", None)
            if alpha is not None:
                a = V.number(n, "alpha", alpha)
                if not (0.0 <= a < float("inf")):
                    raise ValueError(f"{n}: alpha must be finite and >= 0, got {a}")
                self.alpha_value = a
        if weight is not None:
            weight = V.tensor(n, "weight", weight)
            if not weight.is_floating_point() or weight.dim() != 1:
                raise ValueError(f"{n}: weight must be a floating [C] tensor, got {weight.dtype} of shape "
                                 f"{list(weight.shape)}")
            weight = weight.detach().clone()
        self.register_buffer("weight", weight)
        self.ignore_index = V.integer(n, "ignore_index", ignore_index)
        self.reduction = V.reduction(n, reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        alpha = self.alpha
        if alpha is None:
            return F.softmax_focal_loss(logits, target, self.gamma, self.alpha_value, self.weight, self.ignore_index,
                                        self.reduction)
        return F.softmax_focal_loss(logits, target, self.gamma, alpha, self.weight, self.ignore_index,
                                    self.reduction)

    def extra_repr(self):
        alpha = "tensor" if self.alpha is not None else self.alpha_value
        return (f"gamma={self.gamma}, alpha={alpha}, weight={'tensor' if self.weight is not None else None}, "
                f"ignore_index={self.ignore_index}, reduction={self.reduction!r}")


class BoxIoULoss(nn.Module):
    """IoU-family box loss. See :func:`lossext.functional.box_iou_loss`."""

    def __init__(self, mode="giou", eps=1e-7, reduction="mean"):
        super().__init__()
        n = "BoxIoULoss"
        F.check_mode_type(n, mode)
        F._mode_enum(n, mode)
        self.mode = mode
        self.eps = V.check_positive(n, "eps", V.number(n, "eps", eps))
        self.reduction = V.reduction(n, reduction)

    def forward(self, boxes1: Tensor, boxes2: Tensor) -> Tensor:
        return F.box_iou_loss(boxes1, boxes2, self.mode, self.eps, self.reduction)

    def extra_repr(self):
        return f"mode={self.mode!r}, eps={self.eps}, reduction={self.reduction!r}"
