"""Landmark loss Modules."""
from torch import nn

from .._core import validation as V
from . import functional as F

__all__ = ["WingLoss", "AdaptiveWingLoss"]


class WingLoss(nn.Module):
    """Wing loss (Feng et al., CVPR 2018). See :func:`lossext.functional.wing_loss`."""

    def __init__(self, width=10.0, curvature=2.0, reduction="mean"):
        super().__init__()
        V.reduction_enum("WingLoss", reduction)
        self.width = V.check_number("WingLoss", "width", width, positive=True)
        self.curvature = V.check_number("WingLoss", "curvature", curvature, positive=True)
        self.reduction = reduction

    def forward(self, input, target, weight=None):
        return F.wing_loss(input, target, self.width, self.curvature, weight, self.reduction)

    def extra_repr(self):
        return f"width={self.width}, curvature={self.curvature}, reduction={self.reduction!r}"


class AdaptiveWingLoss(nn.Module):
    """Adaptive Wing loss (Wang et al., ICCV 2019). See :func:`lossext.functional.adaptive_wing_loss`."""

    def __init__(self, alpha=2.1, omega=14.0, epsilon=1.0, theta=0.5, reduction="mean"):
        super().__init__()
        n = "AdaptiveWingLoss"
        V.reduction_enum(n, reduction)
        self.omega = V.check_number(n, "omega", omega, positive=True)
        self.epsilon = V.check_number(n, "epsilon", epsilon, positive=True)
        self.theta = V.check_number(n, "theta", theta, positive=True)
        self.alpha = V.check_number(n, "alpha", alpha, greater_than=("theta", self.theta))
        self.reduction = reduction

    def forward(self, input, target, weight=None):
        return F.adaptive_wing_loss(input, target, self.alpha, self.omega, self.epsilon, self.theta,
                                    weight, self.reduction)

    def extra_repr(self):
        return (f"alpha={self.alpha}, omega={self.omega}, epsilon={self.epsilon}, "
                f"theta={self.theta}, reduction={self.reduction!r}")
