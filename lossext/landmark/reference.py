"""Float64 references of the landmark losses, from the papers' equations."""
import math

import torch

from .._core.reference import reduce as _reduce

__all__ = ["wing_loss", "adaptive_wing_loss"]


def wing_loss(input, target, width=10.0, curvature=2.0, weight=None, reduction="mean"):
    # Feng et al., CVPR 2018, Eq. (5)
    d = (input - target).abs()
    C = width - width * math.log(1.0 + width / curvature)
    loss = torch.where(d < width, width * torch.log1p(d / curvature), d - C)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def adaptive_wing_loss(input, target, alpha=2.1, omega=14.0, epsilon=1.0, theta=0.5, weight=None,
                       reduction="mean"):
    # Wang et al., ICCV 2019, Eq. (6)-(7)
    D = (target - input).abs()
    p = alpha - target
    t = theta / epsilon
    A = omega * (1.0 / (1.0 + t ** p)) * p * t ** (p - 1.0) * (1.0 / epsilon)
    C = theta * A - omega * torch.log1p(t ** p)
    loss = torch.where(D < theta, omega * torch.log1p((D / epsilon) ** p), A * D - C)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)
