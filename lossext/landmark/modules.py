"""Landmark loss Modules."""
from typing import Optional

from torch import Tensor, nn

from .._core import validation as V
from . import functional as F

__all__ = ["WingLoss", "AdaptiveWingLoss"]


class WingLoss(nn.Module):
    """Wing loss (Feng et al., CVPR 2018). See :func:`lossext.functional.wing_loss`."""

    def __init__(self, width=10.0, curvature=2.0, reduction="mean"):
        super().__init__()
        n = "WingLoss"
        self.width = V.check_positive(n, "width", V.number(n, "width", width))
        self.curvature = V.check_positive(n, "curvature", V.number(n, "curvature", curvature))
        self.reduction = V.reduction(n, reduction)

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.wing_loss(input, target, self.width, self.curvature, weight, self.reduction)

    def extra_repr(self):
        return f"width={self.width}, curvature={self.curvature}, reduction={self.reduction!r}"


class AdaptiveWingLoss(nn.Module):
    """Adaptive Wing loss (Wang et al., ICCV 2019). See :func:`lossext.functional.adaptive_wing_loss`."""

    def __init__(self, alpha=2.1, omega=14.0, epsilon=1.0, theta=0.5, reduction="mean"):
        super().__init__()
        n = "AdaptiveWingLoss"
        self.omega = V.check_positive(n, "omega", V.number(n, "omega", omega))
        self.epsilon = V.check_positive(n, "epsilon", V.number(n, "epsilon", epsilon))
        self.theta = V.check_positive(n, "theta", V.number(n, "theta", theta))
        self.alpha = V.check_greater(n, "alpha", V.number(n, "alpha", alpha), "theta", self.theta)
        self.reduction = V.reduction(n, reduction)

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.adaptive_wing_loss(input, target, self.alpha, self.omega, self.epsilon, self.theta,
                                    weight, self.reduction)

    def extra_repr(self):
        return (f"alpha={self.alpha}, omega={self.omega}, epsilon={self.epsilon}, "
                f"theta={self.theta}, reduction={self.reduction!r}")
