"""Landmark losses (functional). Element-wise, as torch.nn.functional's: a per-element weight
broadcastable to input; with a weight, 'mean' divides the weighted sum by the number of elements
(as binary_cross_entropy does).

Each function is scriptable (torch.jit.script); eager calls also accept numpy and other
numbers.Real parameters, promote input and target to one dtype (as F.mse_loss) and follow
autocast (float32 loss)."""
from typing import Optional

import torch
from torch import Tensor

from .._core import pointwise
from .._core import validation as V
from . import ops  # noqa: F401  (registers fake kernels and autograd)

__all__ = ["wing_loss", "adaptive_wing_loss"]


def wing_loss(input: Tensor, target: Tensor, width: float = 10.0, curvature: float = 2.0,
              weight: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    r"""Wing loss (Feng et al., CVPR 2018, Eq. 5) for landmark regression.

    With :math:`d = \text{input} - \text{target}`:
    :math:`w \ln(1 + |d|/\epsilon)` if :math:`|d| < w`, else :math:`|d| - C`,
    :math:`C = w - w \ln(1 + w/\epsilon)`; ``width`` is :math:`w`, ``curvature`` is :math:`\epsilon`.

    Args:
        input: predictions, a floating tensor.
        target: the ground truth, of input's shape and floating dtype.
        width: :math:`w`, a positive number.
        curvature: :math:`\epsilon`, a positive number.
        weight: optional per-element weight (e.g. landmark visibility), broadcastable to input.
        reduction: 'none' | 'mean' | 'sum'.
    """
    fn = "wing_loss"
    if not torch.jit.is_scripting():
        input, target = V.promote(fn, "fp32", ("input", "target"), input, target)
        width, curvature = V.number(fn, "width", width), V.number(fn, "curvature", curvature)
        reduction = V.reduction(fn, reduction)
        weight = V.tensor(fn, "weight", weight, True)
    red = V.reduction_enum(fn, reduction)
    V.check_pair(fn, input, target)
    V.check_positive(fn, "width", width)
    V.check_positive(fn, "curvature", curvature)
    w = V.prepare_weight(fn, weight, input)
    if torch.jit.is_scripting():
        if ops.WING_ONE_PASS and pointwise.one_pass_applies(input, red):
            return torch.ops.lossext.wing_loss_with_grad(input, target, w, width, curvature, red)[0]
        return torch.ops.lossext.wing_loss(input, target, w, width, curvature, red)
    return pointwise.call(fn, input, target, w, (width, curvature), red)


def adaptive_wing_loss(input: Tensor, target: Tensor, alpha: float = 2.1, omega: float = 14.0,
                       epsilon: float = 1.0, theta: float = 0.5, weight: Optional[Tensor] = None,
                       reduction: str = "mean") -> Tensor:
    r"""Adaptive Wing loss (Wang et al., ICCV 2019, Eq. 6) for heatmap regression.

    With :math:`D = |y - \hat y|` and :math:`p = \alpha - y` (y = target in [0, 1]):
    :math:`\omega \ln(1 + (D/\epsilon)^p)` if :math:`D < \theta`, else :math:`A D - C`, where
    :math:`A = \omega \frac{1}{1 + (\theta/\epsilon)^p} p (\theta/\epsilon)^{p-1} \frac{1}{\epsilon}`
    and :math:`C = \theta A - \omega \ln(1 + (\theta/\epsilon)^p)`.

    Gradients flow to input, target (through D and p) and weight. At D = 0 the gradient is 0.
    ``alpha`` must exceed ``theta``; for a smooth loss it should also exceed max(target) + 1.
    """
    fn = "adaptive_wing_loss"
    if not torch.jit.is_scripting():
        input, target = V.promote(fn, "fp32", ("input", "target"), input, target)
        alpha, omega = V.number(fn, "alpha", alpha), V.number(fn, "omega", omega)
        epsilon, theta = V.number(fn, "epsilon", epsilon), V.number(fn, "theta", theta)
        reduction = V.reduction(fn, reduction)
        weight = V.tensor(fn, "weight", weight, True)
    red = V.reduction_enum(fn, reduction)
    V.check_pair(fn, input, target)
    V.check_positive(fn, "omega", omega)
    V.check_positive(fn, "epsilon", epsilon)
    V.check_positive(fn, "theta", theta)
    V.check_greater(fn, "alpha", alpha, "theta", theta)
    w = V.prepare_weight(fn, weight, input)
    if torch.jit.is_scripting():
        if ops.ADAPTIVE_WING_ONE_PASS and pointwise.one_pass_applies(input, red):
            return torch.ops.lossext.adaptive_wing_loss_with_grad(input, target, w, alpha, omega, epsilon, theta,
                                                                 red)[0]
        return torch.ops.lossext.adaptive_wing_loss(input, target, w, alpha, omega, epsilon, theta, red)
    return pointwise.call(fn, input, target, w, (alpha, omega, epsilon, theta), red)
