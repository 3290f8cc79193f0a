"""Landmark losses (functional). Element-wise, as torch.nn.functional's: a per-element weight
broadcastable to input; with a weight, 'mean' divides the weighted sum by the number of elements
(as binary_cross_entropy does)."""
from .._core import pointwise
from .._core import validation as V
from . import ops  # noqa: F401  (registers fake kernels and autograd)

__all__ = ["wing_loss", "adaptive_wing_loss"]


def wing_loss(input, target, width=10.0, curvature=2.0, weight=None, reduction="mean"):
    r"""Wing loss (Feng et al., CVPR 2018, Eq. 5) for landmark regression.

    With :math:`d = \text{input} - \text{target}`:
    :math:`w \ln(1 + |d|/\epsilon)` if :math:`|d| < w`, else :math:`|d| - C`,
    :math:`C = w - w \ln(1 + w/\epsilon)`; ``width`` is :math:`w`, ``curvature`` is :math:`\epsilon`.

    Args:
        input, target: tensors of the same shape and floating dtype.
        width, curvature: positive numbers.
        weight: optional per-element weight (e.g. landmark visibility), broadcastable to input.
        reduction: 'none' | 'mean' | 'sum'.
    """
    fn = "wing_loss"
    red = V.reduction_enum(fn, reduction)
    V.check_pair(fn, input, target)
    width = V.check_number(fn, "width", width, positive=True)
    curvature = V.check_number(fn, "curvature", curvature, positive=True)
    w = V.prepare_weight(fn, weight, input)
    return pointwise.call(fn, input, target, w, (width, curvature), red)


def adaptive_wing_loss(input, target, alpha=2.1, omega=14.0, epsilon=1.0, theta=0.5, weight=None,
                       reduction="mean"):
    r"""Adaptive Wing loss (Wang et al., ICCV 2019, Eq. 6) for heatmap regression.

    With :math:`D = |y - \hat y|` and :math:`p = \alpha - y` (y = target in [0, 1]):
    :math:`\omega \ln(1 + (D/\epsilon)^p)` if :math:`D < \theta`, else :math:`A D - C`, where
    :math:`A = \omega \frac{1}{1 + (\theta/\epsilon)^p} p (\theta/\epsilon)^{p-1} \frac{1}{\epsilon}`
    and :math:`C = \theta A - \omega \ln(1 + (\theta/\epsilon)^p)`.

    Gradients flow to input, target (through D and p) and weight. At D = 0 the gradient is 0.
    ``alpha`` must exceed ``theta``; for a smooth loss it should also exceed max(target) + 1.
    """
    fn = "adaptive_wing_loss"
    red = V.reduction_enum(fn, reduction)
    V.check_pair(fn, input, target)
    omega = V.check_number(fn, "omega", omega, positive=True)
    epsilon = V.check_number(fn, "epsilon", epsilon, positive=True)
    theta = V.check_number(fn, "theta", theta, positive=True)
    alpha = V.check_number(fn, "alpha", alpha, greater_than=("theta", theta))
    w = V.prepare_weight(fn, weight, input)
    return pointwise.call(fn, input, target, w, (alpha, omega, epsilon, theta), red)
